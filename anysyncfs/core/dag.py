"""The change DAG of one space: an in-memory index of change ID -> (parents, lamport), with a pending area.

Pure and compact enough for a million changes: IDs are interned to dense integers, Lamport values and parent
lists live in ``array`` columns (the parent lists in one flat array with offsets), so a change costs roughly its
ID, one dict slot and a few machine words.

Lamport rule. A change's lamport is exactly ``1 + max(lamport of its parents)`` (1 without parents); :meth:`Dag.add`
rejects anything else. Being exact (not merely larger) keeps one member from stalling the space with a huge
lamport, or from winning every last-writer-wins tie by inflating it; it also makes lamport the length of the
longest path from a root, which the ancestry walk uses to prune.

Fold order. Changes are folded in ascending ``(lamport, change id)``. This is a topological order: every parent's
lamport is strictly smaller than its child's, so a parent always sorts first. The sorted order is kept
incrementally: a change whose key exceeds every key seen (the usual case: a local edit on top of the heads) is
appended in O(1); out-of-order arrivals are merged the next time the order is read.

Pending changes. A receiver gets changes before their parents. :meth:`Dag.offer` parks them; :meth:`Dag.missing`
lists what to ask peers for; when :meth:`Dag.add` inserts a change, the pending changes it completes are returned
("ready"), in (lamport, id) order, for the receiver to validate and then ``add`` (which may release more) or
``drop`` (which also forgets everything pending that depends on them).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable

from ..errors import NotFound, Rejected

_LAMPORT_MAX = 2**63 - 1  # lamports are stored as signed 64-bit integers, as in the change header
_MERGE_BY_INSERTION = 64  # up to this many out-of-order arrivals are inserted one by one, else the order is resorted


class Dag:
    """Change IDs with their parents and lamport values, the heads, the fold order and pending changes."""

    __slots__ = (
        "_index",
        "_ids",
        "_lamport",
        "_parent_start",
        "_parent_flat",
        "_heads",
        "_order",
        "_unsorted",
        "_pending",
        "_waiting",
        "_missing",
        "_seg",
        "_seg_pos",
        "_seg_tail",
    )

    def __init__(self) -> None:
        self._index: dict[bytes, int] = {}  # change ID -> dense index
        self._ids: list[bytes] = []  # dense index -> change ID
        self._lamport = array("q")  # dense index -> lamport
        self._parent_start = array("q", [0])  # parents of i are _parent_flat[_parent_start[i]:_parent_start[i+1]]
        self._parent_flat = array("q")  # parent indices, concatenated
        self._heads: set[int] = set()  # indices without children
        self._order: list[int] = []  # indices sorted by (lamport, id)
        self._unsorted: list[int] = []  # indices added out of order since the order was last read
        # Pending area: change ID -> [parents, lamport, number of parents not yet in the DAG]. A count of 0
        # means "ready": returned to the receiver, awaiting add() or drop().
        self._pending: dict[bytes, tuple[tuple[bytes, ...], int, list[int]]] = {}
        self._waiting: dict[bytes, set[bytes]] = {}  # ID not in the DAG -> pending changes that cite it
        self._missing: set[bytes] = set()  # cited by pending changes, neither in the DAG nor pending
        # Linear segments: a change with exactly one parent that was the last change of its segment continues that
        # segment, anything else starts a new one. Inside a segment each change's parent is the one before it, so
        # ancestry there is a comparison of positions: O(1) for the long single-writer chains that are the common
        # case (otherwise rm -rf of N files walks the history N times).
        self._seg = array("q")  # dense index -> segment number
        self._seg_pos = array("q")  # dense index -> position inside its segment
        self._seg_tail: list[int] = []  # segment number -> dense index of its last change

    # ------------------------------------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, change_id: object) -> bool:
        return change_id in self._index

    def contains(self, change_id: bytes) -> bool:
        return change_id in self._index

    def lamport(self, change_id: bytes) -> int | None:
        i = self._index.get(change_id)
        return None if i is None else self._lamport[i]

    def parents(self, change_id: bytes) -> tuple[bytes, ...]:
        ids = self._ids
        return tuple(ids[p] for p in self._parent_indices(self._require(change_id)))

    def heads(self) -> tuple[bytes, ...]:
        """Changes no other change cites, sorted by ID."""
        ids = self._ids
        return tuple(sorted(ids[i] for i in self._heads))

    def next_lamport(self, parents: Iterable[bytes]) -> int:
        """The lamport a new change on ``parents`` must carry. :class:`NotFound` if a parent is unknown."""
        top = 0
        for p in parents:
            lam = self._lamport[self._require(p)]
            if lam > top:
                top = lam
        return top + 1

    def last(self) -> bytes | None:
        """The change that comes last in fold order (None for an empty DAG), without building the order."""
        order = self._sorted()  # the cached index order: O(1) unless changes arrived out of order
        return self._ids[order[-1]] if order else None

    def order(self) -> list[bytes]:
        """All change IDs in fold order: ascending (lamport, change id), which is topological."""
        ids = self._ids
        return [ids[i] for i in self._sorted()]

    def is_ancestor(self, a: bytes, b: bytes) -> bool:
        """True when ``a`` is a strict ancestor of ``b``. :class:`NotFound` if either is unknown.

        Walks back from ``b`` only through changes whose lamport exceeds lamport(a): a change at or below it
        cannot have ``a`` as an ancestor (its ancestors all have smaller lamports). So the cost is the number of
        changes between the two, small when ``a`` is recent.
        """
        ia, ib = self._require(a), self._require(b)
        seg = self._seg
        if seg[ia] == seg[ib]:
            return self._seg_pos[ia] < self._seg_pos[ib]
        lam = self._lamport
        floor = lam[ia]
        if lam[ib] <= floor:
            return False
        seen = {ib}
        stack = [ib]
        while stack:
            for p in self._parent_indices(stack.pop()):
                if p == ia:
                    return True
                if lam[p] > floor and p not in seen:
                    seen.add(p)
                    stack.append(p)
        return False

    def ancestors(self, heads: Iterable[bytes]) -> set[bytes]:
        """The heads and all their ancestors (the changes a past version consists of)."""
        stack = [self._require(h) for h in heads]
        seen = set(stack)
        while stack:
            for p in self._parent_indices(stack.pop()):
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        ids = self._ids
        return {ids[i] for i in seen}

    # ------------------------------------------------------------------------------------------------ insertion
    def add(self, change_id: bytes, parents: Iterable[bytes], lamport: int) -> list[bytes]:
        """Insert a change whose parents are all in the DAG; return the pending changes it made ready.

        Idempotent: a known ID returns ``[]``. Raises :class:`NotFound` when parents are missing (nothing is
        inserted; :meth:`offer` parks such a change) and :class:`Rejected` when ``lamport`` is not exactly
        ``1 + max(parents' lamport)``. The returned IDs (ascending (lamport, id)) stay pending until the caller
        validates each and calls :meth:`add` or :meth:`drop` for it.
        """
        index = self._index
        if change_id in index:
            return []
        parent_ids = parents if isinstance(parents, (tuple, list)) else tuple(parents)
        try:
            parent_idx = [index[p] for p in parent_ids]
        except KeyError:
            missing = sum(1 for p in parent_ids if p not in index)
            raise NotFound(
                f"change {change_id.hex()[:16]}: {missing} of {len(parent_ids)} parents are not known"
            ) from None
        lam = self._lamport
        expected = 1
        for p in parent_idx:
            if lam[p] >= expected:
                expected = lam[p] + 1
        if lamport != expected or lamport > _LAMPORT_MAX:
            raise Rejected(f"change {change_id.hex()[:16]}: lamport {lamport}, must be {expected}")

        ids = self._ids
        i = len(ids)
        index[change_id] = i
        ids.append(change_id)
        lam.append(lamport)
        self._parent_flat.extend(parent_idx)
        self._parent_start.append(len(self._parent_flat))
        if len(parent_idx) == 1 and self._seg_tail[self._seg[parent_idx[0]]] == parent_idx[0]:
            number = self._seg[parent_idx[0]]
            self._seg.append(number)
            self._seg_pos.append(self._seg_pos[parent_idx[0]] + 1)
            self._seg_tail[number] = i
        else:
            self._seg.append(len(self._seg_tail))
            self._seg_pos.append(0)
            self._seg_tail.append(i)
        heads = self._heads
        for p in parent_idx:
            heads.discard(p)
        heads.add(i)
        order = self._order
        if order:
            last = order[-1]
            last_lamport = lam[last]
            in_order = lamport > last_lamport or (lamport == last_lamport and change_id > ids[last])
        else:
            in_order = True
        if in_order:
            order.append(i)  # the common case: newer than everything, stays sorted for free
        else:
            self._unsorted.append(i)

        if not self._pending and not self._waiting:
            return []
        self._pending.pop(change_id, None)
        self._missing.discard(change_id)
        ready: list[bytes] = []
        for child in self._waiting.pop(change_id, ()):
            entry = self._pending[child]
            entry[2][0] -= 1
            if entry[2][0] == 0:
                ready.append(child)
        ready.sort(key=lambda c: (self._pending[c][1], c))
        return ready

    # ------------------------------------------------------------------------------------------------ pending
    def offer(self, change_id: bytes, parents: Iterable[bytes], lamport: int) -> list[bytes]:
        """Register a received change. Returns ``[change_id]`` when it can be added now (all parents known),
        else ``[]`` (already known, already pending, or parked until its parents arrive)."""
        if change_id in self._index or change_id in self._pending:
            return []
        parent_ids = tuple(parents)
        unknown = [p for p in dict.fromkeys(parent_ids) if p not in self._index]
        self._pending[change_id] = (parent_ids, lamport, [len(unknown)])
        self._missing.discard(change_id)
        for p in unknown:
            self._waiting.setdefault(p, set()).add(change_id)
            if p not in self._pending:
                self._missing.add(p)
        return [] if unknown else [change_id]

    def drop(self, change_id: bytes) -> list[bytes]:
        """Forget a pending (or missing) change that failed validation or cannot be had, and every pending change
        that depends on it. Returns the dropped pending IDs, sorted. A change already in the DAG is not touched."""
        if change_id in self._index:
            return []
        dropped: list[bytes] = []
        stack = [change_id]
        while stack:
            c = stack.pop()
            stack.extend(self._waiting.pop(c, ()))
            self._missing.discard(c)
            entry = self._pending.pop(c, None)
            if entry is None:
                continue
            dropped.append(c)
            for p in entry[0]:
                waiters = self._waiting.get(p)
                if waiters is not None:
                    waiters.discard(c)
                    if not waiters:
                        del self._waiting[p]
                        self._missing.discard(p)
        dropped.sort()
        return dropped

    def missing(self) -> set[bytes]:
        """IDs cited by pending changes that are neither in the DAG nor pending themselves: what to fetch."""
        return set(self._missing)

    def is_pending(self, change_id: bytes) -> bool:
        return change_id in self._pending

    @property
    def pending_count(self) -> int:
        """How many changes wait in the pending area (a receiver bounds this against misbehaving peers)."""
        return len(self._pending)

    # ------------------------------------------------------------------------------------------------ internals
    def _require(self, change_id: bytes) -> int:
        i = self._index.get(change_id)
        if i is None:
            raise NotFound(f"change {change_id.hex()[:16]} is not in the DAG")
        return i

    def _parent_indices(self, i: int) -> array[int]:
        return self._parent_flat[self._parent_start[i] : self._parent_start[i + 1]]

    def _key(self, i: int) -> tuple[int, bytes]:
        return (self._lamport[i], self._ids[i])

    def _sorted(self) -> list[int]:
        """The fold order as indices, merging out-of-order arrivals first."""
        late = self._unsorted
        if late:
            order, key = self._order, self._key
            if len(late) <= _MERGE_BY_INSERTION:
                for i in late:
                    bisect.insort(order, i, key=key)
            else:
                order.extend(late)
                order.sort(key=key)  # Timsort merges the two sorted runs
            late.clear()
        return self._order
