"""A provider's quota figures kept in its database, so that several node processes share them.

:class:`~.quota.QuotaBook` sums what each space uses in memory: right for one process, wrong for several on one
database, where each would count only its own writes. :class:`StoredQuotaBook` answers the same questions from
the ``node_spaces`` rows instead, which every :class:`~.ledger.Ledger` write updates in its own transaction,
under the provider write lock (``Store.lock_writes``): a check and the write it guards see every write committed
before them, whichever process made it, and no other write runs in between — so concurrent uploads through
different processes cannot go over a quota together.
"""

from __future__ import annotations

from ..core import space
from ..store.db import Store
from .ledger import measure_usage
from .quota import QuotaBook, QuotaPolicy


class StoredQuotaBook(QuotaBook):
    """:class:`QuotaBook` over the ``node_spaces`` table (same policy and checks; figures from the database)."""

    def __init__(self, store: Store, policy: QuotaPolicy) -> None:  # noqa: D107 - no in-memory figures to set up
        self.policy = policy
        self.store = store
        self._spaces = {}  # the base class's in-memory figures: never filled here (check_new_space asks the store)
        self._accounts = {}

    def record(self, space_id: bytes, owner: bytes, used: int) -> None:
        """Nothing to do: the ledger wrote the figure into ``node_spaces`` in its write transaction."""

    @property
    def total_used(self) -> int:  # type: ignore[override]  # a query instead of an attribute
        return self.store.total_usage()

    def used_by(self, owner: bytes) -> int:
        return self.store.owner_usage(owner)[1]

    def spaces_of(self, owner: bytes) -> int:
        return self.store.owner_usage(owner)[0]

    def check_new_space(self, space_id: bytes, owner: bytes, size: int) -> None:
        if self.store.space_state(space_id) is not None:
            return
        super().check_new_space(space_id, owner, size)


def backfill_space_state(store: Store) -> int:
    """Give every space held without a ``node_spaces`` row (held before the table existed) its row, measured
    from its stored changes, ACL records and blobs; returns how many. Idempotent; safe with other processes."""
    filled = 0
    for space_id, header in store.spaces_without_state():
        with store.transaction():
            store.lock_writes()
            if store.space_state(space_id) is not None:
                continue
            owner = space.parse_space_header(header, space_id).owner
            store.save_space_state(space_id, owner, measure_usage(store, space_id).total_bytes)
            filled += 1
    return filled


__all__ = ["StoredQuotaBook", "backfill_space_state"]
