"""The ACL log of a space: record builders, and the one import point for records, fold and epoch keys.

Formats and parsing live in :mod:`.acl_records`, the fold and the permission rules in :mod:`.acl_fold`; this
module re-exports both. Every builder checks its record against the current state with the same rules the fold
applies, so a builder never emits a record every replica would drop (``PermissionDenied`` instead).

Randomness (epoch keys, invite keys, sealed-box ephemerals) can be injected through ``rng`` (a function
``n -> n bytes``) and the explicit key arguments, so test vectors are reproducible. Without ``rng`` the builders
use :func:`crypto.seal` and :func:`crypto.random_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import PermissionDenied, Rejected
from . import crypto
from .acl_fold import (
    AclState,
    AclView,
    InviteState,
    apply_step,
    check_step,
    epoch_keys,
    fold,
    reduces_below_writer,
    unwrap_previous_key,
    wrap_previous_key,
)
from .acl_records import (
    EPOCH_CHAIN_CONTEXT,
    MAX_LAST_CHANGES,
    RECORD_MAX_BODY,
    RECORD_VERSION,
    ZERO_ID,
    AclRecord,
    Genesis,
    Invite,
    Join,
    Kind,
    RecordBody,
    Remove,
    RevokeInvite,
    Role,
    RoleChange,
    SealedFor,
    encode_record,
    parse_record,
)

__all__ = [
    "EPOCH_CHAIN_CONTEXT", "MAX_LAST_CHANGES", "RECORD_MAX_BODY", "RECORD_VERSION", "ZERO_ID",
    "AclRecord", "AclState", "AclView", "Genesis", "Invite", "InviteState", "Join", "Kind", "RecordBody",
    "Remove", "RevokeInvite", "Role", "RoleChange", "SealedFor", "Rng",
    "apply_step", "check_step", "encode_record", "epoch_keys", "fold", "parse_record", "reduces_below_writer",
    "unwrap_previous_key", "wrap_previous_key", "new_epoch_key",
    "make_genesis", "make_invite", "make_join", "make_role_change", "make_remove", "make_revoke_invite",
]  # fmt: skip

Rng = Callable[[int], bytes]


def new_epoch_key(rng: Rng | None = None) -> bytes:
    return (rng or crypto.random_bytes)(crypto.KEY_LEN)


def _seal(recipient: bytes, key: bytes, rng: Rng | None) -> bytes:
    if rng is None:
        return crypto.seal(recipient, key)
    return crypto.seal_with_ephemeral(recipient, key, rng(crypto.KEY_LEN))


def _check_key(key: bytes, what: str) -> None:
    if len(key) != crypto.KEY_LEN:
        raise ValueError(f"{what} is {crypto.KEY_LEN} bytes")


def _finish(view: AclView, raw: bytes) -> bytes:
    """Parse our own record back and check it against the current state, as every replica will."""
    record = parse_record(raw)
    try:
        check_step(view.current, view.space_id, view.head, record)
    except Rejected as e:
        raise PermissionDenied(str(e)) from None
    return raw


def _body(author: crypto.SigningKey, view: AclView, created_us: int, kind: Kind) -> RecordBody:
    return RecordBody(view.space_id, view.head, author.public, created_us, kind)


def make_genesis(
    owner: crypto.SigningKey, header_raw: bytes, epoch0_key: bytes, created_us: int, rng: Rng | None = None
) -> bytes:
    """The chain root of a new space: its header and the epoch-0 key sealed to the owner."""
    _check_key(epoch0_key, "an epoch key")
    kind = Genesis(bytes(header_raw), _seal(owner.public, epoch0_key, rng))
    body = RecordBody(crypto.blake3(header_raw), ZERO_ID, owner.public, created_us, kind)
    raw = encode_record(owner, body)
    parse_record(raw)  # a header that is not the owner's raises here, not on every replica
    return raw


def make_invite(
    author: crypto.SigningKey,
    view: AclView,
    role: Role,
    expires_us: int,
    epoch_key: bytes | None,
    created_us: int,
    invite_key: crypto.SigningKey | None = None,
    rng: Rng | None = None,
) -> tuple[bytes, crypto.SigningKey]:
    """An invite for ``role``. With ``epoch_key`` the current key is sealed to the invite key (offline join);
    with ``None`` the joiner needs the key from an online member. Returns (record, invite key)."""
    if invite_key is None:
        invite_key = crypto.SigningKey(new_epoch_key(rng))
    sealed = b""
    if epoch_key is not None:
        _check_key(epoch_key, "an epoch key")
        sealed = _seal(invite_key.public, epoch_key, rng)
    kind = Invite(invite_key.public, int(role), expires_us, sealed)
    return _finish(view, encode_record(author, _body(author, view, created_us, kind))), invite_key


def make_join(
    joiner: crypto.SigningKey,
    invite_key: crypto.SigningKey,
    view: AclView,
    invite_id: bytes,
    epoch_key: bytes,
    created_us: int,
    rng: Rng | None = None,
) -> bytes:
    """Take up an invite: signed by the joiner and the invite key; the current epoch key is re-sealed to the
    joiner's account so a device restored from the recovery phrase finds it."""
    _check_key(epoch_key, "an epoch key")
    kind = Join(invite_id, invite_key.public, _seal(joiner.public, epoch_key, rng))
    return _finish(view, encode_record(joiner, _body(joiner, view, created_us, kind), co_signer=invite_key))


def make_role_change(
    author: crypto.SigningKey,
    view: AclView,
    member: bytes,
    role: Role,
    created_us: int,
    last_changes: Iterable[bytes] = (),
) -> bytes:
    """Set ``member``'s role. A reduction below WRITER names ``last_changes``, the member's last accepted changes
    (at most 1024; see :func:`make_remove`); they are ignored for any other change of role."""
    changes: list[bytes] = []
    current = view.current.role_of(member)
    if role < Role.WRITER and current is not None and current >= Role.WRITER:
        changes = sorted(set(last_changes))
        if len(changes) > MAX_LAST_CHANGES:
            raise PermissionDenied(f"a role reduction names at most {MAX_LAST_CHANGES} last changes")
    kind = RoleChange(member, int(role), changes)
    return _finish(view, encode_record(author, _body(author, view, created_us, kind)))


def make_remove(
    author: crypto.SigningKey,
    view: AclView,
    member: bytes,
    current_epoch_key: bytes,
    last_changes: Iterable[bytes],
    created_us: int,
    new_key: bytes | None = None,
    rng: Rng | None = None,
) -> tuple[bytes, bytes]:
    """Remove ``member`` and start the next epoch. ``last_changes`` are the removed member's last accepted
    changes (at most 1024). Returns (record, new epoch key)."""
    _check_key(current_epoch_key, "an epoch key")
    if new_key is None:
        new_key = new_epoch_key(rng)
    _check_key(new_key, "an epoch key")
    state = view.current
    new_epoch = state.epoch + 1
    sealed = [SealedFor(r, _seal(r, new_key, rng)) for r in state.key_recipients(member)]
    changes = sorted(set(last_changes))
    if len(changes) > MAX_LAST_CHANGES:
        raise PermissionDenied(f"a removal names at most {MAX_LAST_CHANGES} last changes")
    wrapped = wrap_previous_key(view.space_id, new_epoch, new_key, current_epoch_key)
    kind = Remove(member, new_epoch, sealed, wrapped, changes)
    return _finish(view, encode_record(author, _body(author, view, created_us, kind))), new_key


def make_revoke_invite(author: crypto.SigningKey, view: AclView, invite_id: bytes, created_us: int) -> bytes:
    kind = RevokeInvite(invite_id)
    return _finish(view, encode_record(author, _body(author, view, created_us, kind)))
