"""Tests for anysyncfs.core.dag: insertion rules, heads, fold order, ancestry and the pending area."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import crypto
from anysyncfs.core.dag import Dag
from anysyncfs.errors import NotFound, Rejected


def cid(n: int, salt: int = 0) -> bytes:
    return crypto.blake3(b"change %d %d" % (salt, n))


# ---------------------------------------------------------------------------------------------------- a model
class Model:
    """A random DAG: node i's parents are earlier nodes; lamport = 1 + max(parents' lamport)."""

    def __init__(self, parent_lists: list[list[int]], salt: int) -> None:
        self.ids = [cid(i, salt) for i in range(len(parent_lists))]
        self.parents: dict[bytes, tuple[bytes, ...]] = {}
        self.lamport: dict[bytes, int] = {}
        for i, ps in enumerate(parent_lists):
            c = self.ids[i]
            self.parents[c] = tuple(self.ids[p] for p in sorted(set(ps)))
            self.lamport[c] = 1 + max((self.lamport[p] for p in self.parents[c]), default=0)

    def closure(self, c: bytes) -> set[bytes]:
        """Strict ancestors, by brute force."""
        out: set[bytes] = set()
        todo = list(self.parents[c])
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo.extend(self.parents[p])
        return out

    def heads(self, subset: set[bytes]) -> tuple[bytes, ...]:
        cited = {p for c in subset for p in self.parents[c]}
        return tuple(sorted(subset - cited))

    def order(self, subset: set[bytes]) -> list[bytes]:
        return sorted(subset, key=lambda c: (self.lamport[c], c))


@st.composite
def models(draw: st.DrawFn, max_size: int = 30) -> Model:
    n = draw(st.integers(1, max_size))
    parent_lists = [
        draw(st.lists(st.integers(0, i - 1), max_size=3)) if i else [] for i in range(n)
    ]
    return Model(parent_lists, draw(st.integers(0, 2**32)))


def deliver(dag: Dag, m: Model, c: bytes, invalid: frozenset[bytes] = frozenset()) -> None:
    """What a receiver does: offer, then validate and add (or drop) whatever became ready, in order."""
    queue = dag.offer(c, m.parents[c], m.lamport[c])
    while queue:
        r = queue.pop(0)
        if r in invalid:
            dag.drop(r)
        else:
            queue.extend(dag.add(r, m.parents[r], m.lamport[r]))


def build(m: Model, order: list[int]) -> Dag:
    dag = Dag()
    for i in order:
        deliver(dag, m, m.ids[i])
    return dag


# ---------------------------------------------------------------------------------------------------- basics
def test_empty() -> None:
    d = Dag()
    assert len(d) == 0 and d.heads() == () and d.order() == [] and d.missing() == set()
    assert d.lamport(cid(0)) is None and not d.contains(cid(0))
    assert d.next_lamport([]) == 1


def test_add_chain_and_merge() -> None:
    d = Dag()
    a, b, c, m = cid(1), cid(2), cid(3), cid(4)
    assert d.add(a, [], 1) == []
    d.add(b, [a], 2)
    d.add(c, [a], 2)
    assert d.heads() == tuple(sorted([b, c]))
    assert d.next_lamport([b, c]) == 3
    d.add(m, (b, c), 3)
    assert d.heads() == (m,)
    assert len(d) == 4 and d.contains(m) and m in d
    assert d.lamport(m) == 3 and d.parents(m) == (b, c) and d.parents(a) == ()
    assert d.order() == [a] + sorted([b, c]) + [m]
    assert d.is_ancestor(a, m) and d.is_ancestor(b, m) and not d.is_ancestor(b, c) and not d.is_ancestor(m, a)
    assert not d.is_ancestor(m, m)
    assert d.ancestors([b]) == {a, b} and d.ancestors([m]) == {a, b, c, m} and d.ancestors([]) == set()


def test_add_rules() -> None:
    d = Dag()
    a, b = cid(1), cid(2)
    with pytest.raises(Rejected):
        d.add(a, [], 2)  # a root has lamport 1
    with pytest.raises(Rejected):
        d.add(a, [], 0)
    d.add(a, [], 1)
    with pytest.raises(NotFound, match="1 of 2 parents"):
        d.add(b, [a, cid(9)], 2)
    assert not d.contains(b) and len(d) == 1
    for wrong in (1, 3, 2**62):
        with pytest.raises(Rejected):
            d.add(b, [a], wrong)
    assert not d.contains(b) and d.heads() == (a,)
    d.add(b, [a], 2)
    assert d.add(b, [a], 2) == []  # idempotent
    assert len(d) == 2 and d.heads() == (b,)


def test_unknown_ids_in_queries() -> None:
    d = Dag()
    d.add(cid(1), [], 1)
    for call in (
        lambda: d.is_ancestor(cid(1), cid(2)),
        lambda: d.is_ancestor(cid(2), cid(1)),
        lambda: d.ancestors([cid(2)]),
        lambda: d.next_lamport([cid(2)]),
        lambda: d.parents(cid(2)),
    ):
        with pytest.raises(NotFound):
            call()


def test_order_ties_broken_by_id() -> None:
    d = Dag()
    roots = [cid(i) for i in range(5)]
    for r in roots:
        d.add(r, [], 1)
    assert d.order() == sorted(roots)
    assert d.heads() == tuple(sorted(roots))


@pytest.mark.parametrize("late", [3, 200])  # below and above the insertion/resort threshold
def test_out_of_order_arrivals_merge_into_the_order(late: int) -> None:
    d = Dag()
    prev: list[bytes] = []
    chain = [cid(i, 1) for i in range(500)]
    for i, c in enumerate(chain):
        d.add(c, prev, i + 1)
        prev = [c]
    assert d.order() == chain
    side = [cid(i, 2) for i in range(late)]  # a second branch, arriving after the first: lamports 2..late+1
    prev = [chain[0]]
    for i, c in enumerate(side):
        d.add(c, prev, i + 2)
        prev = [c]
    expected = sorted(chain + side, key=lambda c: (d.lamport(c), c))
    assert d.order() == expected
    assert d.order() == expected  # reading twice is stable
    assert d.heads() == tuple(sorted([chain[-1], side[-1]]))


def test_appending_newest_keeps_order_without_resorting() -> None:
    d = Dag()
    prev: list[bytes] = []
    for i in range(10_000):
        c = cid(i)
        d.add(c, prev, i + 1)
        prev = [c]
    assert d._unsorted == []  # every append landed at the end of the cached order
    assert d.order()[-1] == prev[0]


def test_is_ancestor_prunes_by_lamport() -> None:
    d = Dag()
    chain = [cid(i) for i in range(2000)]
    prev: list[bytes] = []
    for i, c in enumerate(chain):
        d.add(c, prev, i + 1)
        prev = [c]
    assert d.is_ancestor(chain[-5], chain[-1])
    assert d.is_ancestor(chain[0], chain[-1])
    assert not d.is_ancestor(chain[-1], chain[0])


# ---------------------------------------------------------------------------------------------------- pending
def test_pending_release_in_dependency_order() -> None:
    d = Dag()
    a, b, c, e = cid(1), cid(2), cid(3), cid(4)
    # e <- (b, c); b <- a; c <- a. Deliver e, b, c first; a last.
    assert d.offer(e, [b, c], 3) == []
    assert d.missing() == {b, c}
    assert d.offer(b, [a], 2) == []
    assert d.missing() == {a, c}
    assert d.offer(c, [a], 2) == []
    assert d.missing() == {a}
    assert d.offer(e, [b, c], 3) == []  # already pending
    assert d.pending_count == 3 and d.is_pending(e)
    assert d.offer(a, [], 1) == [a]
    assert d.missing() == set()
    ready = d.add(a, [], 1)
    assert ready == sorted([b, c])
    assert d.is_pending(b)  # ready, but still held until added or dropped
    assert d.add(ready[0], [a], 2) == []
    assert d.add(ready[1], [a], 2) == [e]
    assert d.add(e, [b, c], 3) == []
    assert d.pending_count == 0 and d.missing() == set() and d.heads() == (e,)
    assert d.offer(e, [b, c], 3) == []  # already in the DAG


def test_add_with_missing_parent_raises_and_offer_parks() -> None:
    d = Dag()
    with pytest.raises(NotFound):
        d.add(cid(2), [cid(1)], 2)
    assert d.offer(cid(2), [cid(1)], 2) == []
    assert d.missing() == {cid(1)}


def test_drop_forgets_dependents() -> None:
    d = Dag()
    a, b, c, x = cid(1), cid(2), cid(3), cid(4)
    d.offer(c, [b], 3)
    d.offer(b, [a], 2)
    d.offer(x, [cid(9)], 2)
    assert d.missing() == {a, cid(9)}
    assert d.drop(a) == sorted([b, c])  # a cannot be had: b and c can never be added
    assert d.missing() == {cid(9)} and d.pending_count == 1
    d.add(a, [], 1)
    assert d.drop(a) == []  # in the DAG: untouched
    assert d.contains(a)
    # A ready change that fails validation is dropped the same way.
    assert d.offer(b, [a], 2) == [b]
    d.offer(c, [b], 3)
    assert d.drop(b) == sorted([b, c])
    assert d.missing() == {cid(9)}
    # Dropping the last change that cites a missing ID stops asking for it; other citers keep it asked for.
    d.offer(cid(5), [cid(9), a], 2)
    assert d.drop(x) == [x]
    assert d.missing() == {cid(9)}
    assert d.drop(cid(5)) == [cid(5)]
    assert d.missing() == set() and d.pending_count == 0
    assert not d._waiting  # no empty bookkeeping left behind (a peer could otherwise grow it without bound)


# ---------------------------------------------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None)
@given(m=models(), data=st.data())
def test_any_delivery_order_gives_the_same_dag(m: Model, data: st.DataObject) -> None:
    n = len(m.ids)
    orders = [data.draw(st.permutations(range(n))) for _ in range(2)]
    dags = [build(m, list(o)) for o in orders]
    everything = set(m.ids)
    for d in dags:
        assert len(d) == n and d.pending_count == 0 and d.missing() == set()
        assert d.heads() == m.heads(everything)
        assert d.order() == m.order(everything)
        position = {c: i for i, c in enumerate(d.order())}
        for c in m.ids:
            assert all(position[p] < position[c] for p in m.parents[c])  # topological
            assert d.lamport(c) == m.lamport[c]
    assert dags[0].order() == dags[1].order() and dags[0].heads() == dags[1].heads()


@settings(max_examples=150, deadline=None)
@given(m=models(), data=st.data())
def test_partial_delivery_pending_and_missing_are_exact(m: Model, data: st.DataObject) -> None:
    n = len(m.ids)
    order = data.draw(st.permutations(range(n)))
    cut = data.draw(st.integers(0, n))
    delivered = {m.ids[i] for i in order[:cut]}
    d = build(m, list(order[:cut]))
    # In the DAG: exactly the delivered changes whose whole ancestry was delivered.
    complete = {c for c in delivered if m.closure(c) <= delivered}
    assert {c for c in m.ids if d.contains(c)} == complete
    pending = delivered - complete
    assert {c for c in m.ids if d.is_pending(c)} == pending and d.pending_count == len(pending)
    assert d.missing() == {p for c in pending for p in m.parents[c]} - delivered
    assert d.heads() == m.heads(complete)
    assert d.order() == m.order(complete)


@settings(max_examples=100, deadline=None)
@given(m=models(), data=st.data())
def test_is_ancestor_and_ancestors_match_brute_force(m: Model, data: st.DataObject) -> None:
    d = build(m, list(range(len(m.ids))))
    for a in m.ids:
        for b in m.ids:
            assert d.is_ancestor(a, b) == (a in m.closure(b))
    heads = data.draw(st.lists(st.sampled_from(m.ids), max_size=4))
    expected = set(heads).union(*(m.closure(h) for h in heads))
    assert d.ancestors(heads) == expected


@settings(max_examples=100, deadline=None)
@given(m=models(), data=st.data())
def test_rejected_changes_and_their_descendants_never_enter(m: Model, data: st.DataObject) -> None:
    n = len(m.ids)
    invalid = frozenset(data.draw(st.sets(st.sampled_from(m.ids), max_size=3)))
    d = Dag()
    for i in data.draw(st.permutations(range(n))):
        deliver(d, m, m.ids[i], invalid)
    tainted = {c for c in m.ids if c in invalid or m.closure(c) & invalid}
    assert {c for c in m.ids if d.contains(c)} == set(m.ids) - tainted
    # Whatever is still pending descends from a rejected change (it arrived after that change was dropped), and
    # what it waits for is a dropped change: the receiver, not the DAG, remembers what it rejected.
    pending = {c for c in m.ids if d.is_pending(c)}
    assert all(m.closure(c) & invalid for c in pending)
    assert d.missing() == {p for c in pending for p in m.parents[c]} - (set(m.ids) - tainted) - pending
    assert d.missing() <= tainted
    assert d.heads() == m.heads(set(m.ids) - tainted)


def test_large_random_dag_matches_model() -> None:
    rng = random.Random(7)
    n = 3000
    parent_lists = [rng.sample(range(max(0, i - 20), i), min(i, rng.randint(1, 3))) if i else [] for i in range(n)]
    m = Model(parent_lists, 99)
    order = list(range(n))
    rng.shuffle(order)
    d = build(m, order)
    everything = set(m.ids)
    assert d.heads() == m.heads(everything)
    assert d.order() == m.order(everything)


def test_last_is_the_end_of_the_fold_order() -> None:
    import os as _os

    dag = Dag()
    assert dag.last() is None
    a, b, c = (_os.urandom(32) for _ in range(3))
    dag.add(a, [], 1)
    dag.add(b, [a], 2)
    dag.add(c, [a], 2)
    assert dag.last() == dag.order()[-1] == max(b, c)
