"""Signed heads over the store (docs/protocol.md 70.9): what a provider keeps and serves, what a device signs, and
what a device concludes from the records a provider served. Blocking (SQLite, signatures): callers run these
through their :class:`~anysyncfs.net.runner.Runner`.

A provider keeps the newest record per device of a space — highest counter wins — and only of a member's device
whose every named change it holds (accepted), so that serving a record promises those changes. A device signs its
own heads with the next counter (its own row in ``signed_heads``), compares what each provider serves with what
that provider served before (``heads_served``), and records its findings (``provider_warnings``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..core import acl as acl_mod
from ..core import ids
from ..core import signed_heads as sh
from ..core import keys
from ..errors import ProtocolError
from ..store import schema as S
from ..store.db import Store

MAX_DEVICES = sh.MAX_DEVICES_PER_SPACE  # records a provider keeps per space (one per device)


class SpaceView(Protocol):
    """What these functions need of a :class:`Replica` or a :class:`Ledger`."""

    @property
    def space_id(self) -> bytes: ...

    store: Store

    def role_of(self, account: bytes) -> acl_mod.Role | None: ...


# ------------------------------------------------------------------------------------------------ provider
@dataclass(frozen=True, slots=True)
class Offer:
    """The outcome of offering a record to a provider."""

    status: str  # 'stored', 'old' (it holds this counter or a higher one), 'missing' (it lacks named changes),
    #              'not-member' (the device's account is not a member), 'full' (MAX_DEVICES records already)
    missing: tuple[bytes, ...] = ()


def accepted_among(store: Store, change_ids: Sequence[bytes]) -> set[bytes]:
    statuses = store.change_statuses(list(change_ids))
    return {c for c, status in statuses.items() if status == S.CHANGE_ACCEPTED}


def offer(space: SpaceView, raw: bytes) -> Offer:
    """(provider) Verify a record (:class:`IntegrityError` for a forged or malformed one: the sender is hostile)
    and keep it if it is the newest of a member's device whose every named change is held here."""
    record = sh.parse_signed_heads(raw, space.space_id)
    if space.role_of(record.account) is None:
        return Offer("not-member")
    held = accepted_among(space.store, record.heads)
    missing = tuple(h for h in record.heads if h not in held)
    if missing:
        return Offer("missing", missing)
    store = space.store
    with store.transaction():
        if store.signed_heads_counter(space.space_id, record.device) >= record.counter:
            return Offer("old")
        if store.signed_heads_row(space.space_id, record.device) is None and \
                store.count_signed_heads(space.space_id) >= MAX_DEVICES:
            # Make room from devices whose account left the space before refusing a member's device.
            gone = [r.device for r in store.signed_heads_rows(space.space_id) if space.role_of(r.account) is None]
            store.drop_signed_heads(space.space_id, gone)
            if store.count_signed_heads(space.space_id) >= MAX_DEVICES:
                return Offer("full")
        store.put_signed_heads(space.space_id, record.device, record.account, record.counter, record.raw)
    return Offer("stored")


def served(space: SpaceView) -> list[bytes]:
    """(provider) The records to serve: those of members' devices whose named changes are all still accepted here
    (an ACL change can reject a change a record named: the record then waits for the device's next one)."""
    rows = [r for r in space.store.signed_heads_rows(space.space_id) if space.role_of(r.account) is not None]
    named = {row.device: sh.peek_heads(row.raw) for row in rows}
    held = accepted_among(space.store, [h for heads in named.values() for h in heads])
    return [row.raw for row in rows if all(h in held for h in named[row.device])][:MAX_DEVICES]


# ------------------------------------------------------------------------------------------------ device
def own_record(space: SpaceView, identity: keys.Identity, heads: Sequence[bytes]) -> sh.SignedHeads | None:
    """(device) This device's record of ``heads``: the newest one when it names the same heads, else a new one
    with the next counter, stored before it is returned (so a counter is never used for two records, restarts
    included). None when there are no heads to sign."""
    chosen = sh.select_heads(heads)
    if not chosen:
        return None
    store, me = space.store, identity.device_id
    with store.transaction():
        row = store.signed_heads_row(space.space_id, me)
        if row is not None:
            latest = sh.parse_signed_heads(row.raw, space.space_id)
            if latest.heads == chosen:
                return latest
        counter = (row.counter if row is not None else 0) + 1
        raw = sh.sign_heads(identity, space.space_id, counter, chosen, time.time_ns() // 1000)
        record = sh.parse_signed_heads(raw, space.space_id)
        store.put_signed_heads(space.space_id, me, identity.account_id, counter, raw)
    return record


def examine(space: SpaceView, raws: Sequence[bytes]) -> list[sh.SignedHeads]:
    """(device) Verify the records a provider served: a forged one, one of another space or two of one device
    mean the provider is hostile (:class:`IntegrityError`). Records of devices whose account is not a member
    here (yet, or any more) are left out."""
    out: list[sh.SignedHeads] = []
    seen: set[bytes] = set()
    for raw in raws:
        record = sh.parse_signed_heads(bytes(raw), space.space_id)
        if record.device in seen:
            raise ProtocolError("the provider served two signed heads records of one device")
        seen.add(record.device)
        if space.role_of(record.account) is not None:
            out.append(record)
    return out


@dataclass(frozen=True, slots=True)
class ProviderWarning:
    """A finding against a provider, worded for the log and ``anysyncfs status``."""

    provider: bytes
    address: str
    finding: sh.Finding
    message: str


def conclude(space: SpaceView, me: bytes, provider: bytes, address: str,
             records: Sequence[sh.SignedHeads]) -> list[ProviderWarning]:
    """(device) After a round with ``provider``: judge the records it served before the round against the changes
    now here and against what it served before; remember the newest counters and record every finding."""
    store = space.store
    previous = store.heads_served(space.space_id, provider)
    named = [h for r in records for h in r.heads]
    known = set(store.change_statuses(named))
    findings = sh.judge(records, previous, known, me)
    warnings = [ProviderWarning(provider, address, f, describe(provider, f)) for f in findings]
    with store.transaction():
        store.note_heads_served(space.space_id, provider, {r.device: r.counter for r in records})
        for r in records:
            # The newest record of each device (a device also learns its own counter back here if its store lost
            # it: it then signs above it). put_signed_heads keeps a higher counter that is already stored.
            store.put_signed_heads(space.space_id, r.device, r.account, r.counter, r.raw)
        for w in warnings:
            store.note_provider_warning(space.space_id, provider, w.finding.kind, w.finding.device,
                                        w.finding.counter, address, w.message)
    return warnings


def note_accepted(space: SpaceView, provider: bytes, record: sh.SignedHeads) -> None:
    """(device) ``provider`` stored our record: serving an older one later is a rollback."""
    space.store.note_heads_served(space.space_id, provider, {record.device: record.counter})


def describe(provider: bytes, finding: sh.Finding) -> str:
    who, device = ids.device_text(provider), ids.device_text(finding.device)
    if finding.kind == sh.WITHHOLDS:
        example = ids.change_text(finding.missing[0])
        return (f"provider {who} withholds changes that device {device} signed at counter {finding.counter} "
                f"({len(finding.missing)} not delivered, e.g. {example})")
    return (f"provider {who} rolled back the signed heads of device {device}: it served counter "
            f"{finding.counter} after {finding.previous}")
