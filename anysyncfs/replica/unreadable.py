"""Accepted changes whose payload this device cannot read: kept in the DAG, skipped by the fold, reported.

A keyless provider accepts any change a writer signs at the right ACL head and epoch: it cannot tell whether the
payload opens. A writer (hostile, or with a bug) can therefore get a change accepted whose ciphertext does not open
under the epoch key (AES-GCM tag), whose plaintext is not a payload of ops, or whose cleartext blob list
(``header.blob_refs``) does not match its payload. Such a change must not stop the space:
it stays an accepted DAG member (its children, reconciliation and heads need it) and the tree fold treats it as a
change without ops. This module decides, per change, whether its ops can be read, remembers the verdict in
``changes.unreadable`` (written in the transaction of the fold that found it) and logs each newly found one once,
at WARNING, with its ID and a fixed reason — never plaintext or keys.

The mark is device-local and derived: every fold re-reads the payloads, so a change marked while this device held a
wrong or stale key for its epoch is cleared by the next refold once the key is right.
"""

from __future__ import annotations

import logging

from ..core import blob_refs, ids, ops
from ..core.change import Change, open_payload
from ..errors import DecodeError, IntegrityError
from ..store.db import Store

log = logging.getLogger(__name__)

UNOPENABLE = "payload does not open with the epoch key (AES-GCM tag)"
UNDECODABLE = "payload does not decode as file-tree ops"
REFS_LIE = "the blob list in the header does not match the payload"
STATUS_IDS_MAX = 100  # IDs listed in a status report (the count is always exact)


def read_ops(change: Change, epoch_key: bytes) -> tuple[list[ops.Op] | None, str | None]:
    """(ops, None) when the payload opens and decodes, else (None, the reason). Never raises for bad payloads:
    only the fixed reasons leave this function (a decode error may quote plaintext bytes)."""
    try:
        plaintext = open_payload(change, epoch_key)
    except IntegrityError:
        return None, UNOPENABLE
    except DecodeError:  # the tag verified, but the padding inside it is malformed (core/padding.py)
        return None, UNDECODABLE
    try:
        op_list = ops.decode_payload(plaintext)
    except DecodeError:
        return None, UNDECODABLE
    # Providers keep blobs by the header's cleartext list (core/blob_refs.py): a change whose list lies is not shown.
    if blob_refs.check_refs(change.header.blob_refs, op_list) is not None:
        return None, REFS_LIE
    return op_list, None


class UnreadableChanges:
    """The unreadable marks of one space on this device: loaded from the store, updated by the fold, written back
    with the fold's rows (:meth:`flush`, inside the caller's transaction)."""

    def __init__(self, store: Store, space_id: bytes) -> None:
        self._store = store
        self._space_id = space_id
        self.marks: dict[bytes, str] = {}
        self._pending: dict[bytes, str | None] = {}
        self.ids: tuple[bytes, ...] = ()  # sorted snapshot, replaced whole: safe to read from another thread
        self.reload()

    def reload(self) -> None:
        """Forget what was not written (a failed transaction) and read the marks back from the store."""
        self.marks = self._store.unreadable_changes(self._space_id)
        self._pending.clear()
        self.ids = tuple(sorted(self.marks))

    def ops_of(self, change: Change, epoch_key: bytes) -> list[ops.Op] | None:
        """The change's ops, or None (and the change marked, logged the first time) when they cannot be read."""
        op_list, reason = read_ops(change, epoch_key)
        if reason is None:
            if change.id in self.marks:  # readable now (this device's key for the epoch changed): unmark
                del self.marks[change.id]
                self._pending[change.id] = None
                self.ids = tuple(sorted(self.marks))
            return op_list
        if self.marks.get(change.id) != reason:
            log.warning("space %s: change %s by %s is unreadable (%s): kept in the DAG, skipped by the fold",
                        ids.space_text(self._space_id), ids.change_text(change.id),
                        ids.account_text(change.header.author), reason)
            self.marks[change.id] = reason
            self._pending[change.id] = reason
            self.ids = tuple(sorted(self.marks))
        return None

    def flush(self) -> None:
        """Write the marks found or cleared since the last flush (call inside the fold's transaction)."""
        if self._pending:
            self._store.set_unreadable(self._pending)
            self._pending = {}

    def status(self) -> dict[str, object]:
        """For status reports: the exact count and the first :data:`STATUS_IDS_MAX` IDs (text form)."""
        snapshot = self.ids
        return {"unreadable_changes": len(snapshot),
                "unreadable_change_ids": [ids.change_text(c) for c in snapshot[:STATUS_IDS_MAX]]}
