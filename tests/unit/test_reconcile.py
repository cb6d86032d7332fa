"""Tests for anysyncfs.core.reconcile: exact differences, cost that grows with the differences, strict decoding."""

from __future__ import annotations

import contextlib
import functools
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import crypto
from anysyncfs.core.reconcile import (
    ID_LEN,
    INFINITY,
    MAX_IDS_PER_LIST,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_ITEMS,
    MIN_BUDGET_BYTES,
    MIN_BUDGET_ITEMS,
    IdSet,
    Item,
    Mode,
    Reconciler,
    decode_message,
    encode_message,
    encode_varint,
    fingerprint,
    separator,
)
from anysyncfs.errors import ProtocolError, UsageError

# The vector of docs/protocol.md section 70.3.
VECTOR_IDS = [crypto.blake3(b"0"), crypto.blake3(b"1"), crypto.blake3(b"2")]
VECTOR_FINGERPRINT = "6f54a9afa47c21867ef3f6650ac0719c"
VECTOR_EMPTY_FINGERPRINT = "352bd266dae53c6e6a29244011cfa029"
VECTOR_SKIP_THEN_FINGERPRINT = "01018000ff016f54a9afa47c21867ef3f6650ac0719c"


# ---------------------------------------------------------------------------------------------------- helpers
class Run:
    """The outcome of one in-process reconciliation."""

    def __init__(self, initiator: Reconciler, messages: list[bytes]) -> None:
        self.initiator = initiator
        self.messages = messages
        self.total_bytes = sum(map(len, messages))
        self.round_trips = (len(messages) + 1) // 2


def reconcile(a: IdSet, b: IdSet, initiator_budget: tuple[int, int] | None = None,
              responder_budget: tuple[int, int] | None = None, max_messages: int = 100_000) -> Run:
    """Run initiator (holding a) against responder (holding b) until the initiator returns None."""
    ib = initiator_budget or (MAX_MESSAGE_BYTES, MAX_MESSAGE_ITEMS)
    rb = responder_budget or (MAX_MESSAGE_BYTES, MAX_MESSAGE_ITEMS)
    initiator = Reconciler(a, initiator=True, max_message_bytes=ib[0], max_message_items=ib[1])
    responder = Reconciler(b, initiator=False, max_message_bytes=rb[0], max_message_items=rb[1])
    messages = [initiator.initiate()]
    while True:
        assert len(messages) < max_messages, "reconciliation did not end"
        reply = responder.reconcile(messages[-1])
        assert reply is not None  # a responder always answers a message that is not all SKIP
        messages.append(reply)
        nxt = initiator.reconcile(reply)
        if nxt is None:
            break
        messages.append(nxt)
    assert initiator.done
    assert initiator.rounds == len(messages) // 2 and responder.rounds == (len(messages) + 1) // 2
    return Run(initiator, messages)


def random_ids(rnd: random.Random, n: int, prefix: bytes = b"") -> list[bytes]:
    return [prefix + rnd.randbytes(ID_LEN - len(prefix)) for _ in range(n)]


def check_exact(run: Run, a: list[bytes], b: list[bytes]) -> None:
    sa, sb = set(a), set(b)
    assert run.initiator.have == sa - sb
    assert run.initiator.need == sb - sa


def check_canonical(messages: list[bytes], budget: tuple[int, int] = (MAX_MESSAGE_BYTES, MAX_MESSAGE_ITEMS)) -> None:
    for m in messages:
        items = decode_message(m)
        assert encode_message(items) == m
        assert len(m) <= budget[0] and len(items) <= budget[1]
        for x, y in itertools.pairwise(items):
            assert not (x.mode is Mode.SKIP and y.mode is Mode.SKIP)  # adjacent SKIPs are merged


# ---------------------------------------------------------------------------------------------------- fingerprints
def test_fingerprint_vector() -> None:
    assert fingerprint(VECTOR_IDS).hex() == VECTOR_FINGERPRINT
    assert fingerprint([]).hex() == VECTOR_EMPTY_FINGERPRINT
    # The definition spelled out: sum mod 2^256 little-endian (32 bytes) || count little-endian (8 bytes).
    total = sum(int.from_bytes(x, "little") for x in VECTOR_IDS) % (1 << 256)
    data = total.to_bytes(32, "little") + (3).to_bytes(8, "little")
    assert crypto.blake3(data)[:16].hex() == VECTOR_FINGERPRINT
    assert crypto.blake3(bytes(40))[:16].hex() == VECTOR_EMPTY_FINGERPRINT
    s = IdSet(VECTOR_IDS)
    assert s.fingerprint(0, 3).hex() == VECTOR_FINGERPRINT
    assert s.fingerprint(2, 2).hex() == VECTOR_EMPTY_FINGERPRINT


def test_message_vector() -> None:
    items = [Item(b"\x80", Mode.SKIP), Item(INFINITY, Mode.FINGERPRINT, bytes.fromhex(VECTOR_FINGERPRINT))]
    assert encode_message(items).hex() == VECTOR_SKIP_THEN_FINGERPRINT
    assert decode_message(bytes.fromhex(VECTOR_SKIP_THEN_FINGERPRINT)) == items


def test_reply_vector() -> None:
    """Initiator holds ids 0 and 1, responder ids 1 and 2: the vector of the ID_LIST_REPLY in the docs."""
    ids = sorted(VECTOR_IDS)
    initiator = Reconciler(IdSet(ids[:2]), initiator=True)
    responder = Reconciler(IdSet(ids[1:]), initiator=False)
    first = initiator.initiate()
    assert first == bytes([1, 0xFF, 2, 2]) + ids[0] + ids[1]
    reply = responder.reconcile(first)
    assert reply == bytes([1, 0xFF, 3, 1]) + ids[2] + bytes([2, 0b10])
    assert initiator.reconcile(reply) is None
    assert initiator.have == {ids[0]} and initiator.need == {ids[2]}


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=60), st.data())
def test_range_fingerprints_match_definition(ids: list[bytes], data: st.DataObject) -> None:
    s = IdSet(ids)
    ordered = sorted(set(ids))
    assert list(s) == ordered and len(s) == len(ordered)
    lo = data.draw(st.integers(0, len(s)))
    hi = data.draw(st.integers(lo, len(s)))
    assert s.fingerprint(lo, hi) == fingerprint(ordered[lo:hi])
    assert s.between(lo, hi) == ordered[lo:hi]


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_separator_is_shortest_prefix_between(x: bytes, y: bytes) -> None:
    if x == y:
        return
    a, b = min(x, y), max(x, y)
    p = separator(a, b)
    assert b.startswith(p) and a < p <= b
    assert not a < p[:-1]  # one byte shorter no longer separates


def test_idset_validation_and_lookup() -> None:
    with pytest.raises(ValueError):
        IdSet([b"short"])
    with pytest.raises(ValueError):
        IdSet([bytearray(32)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        IdSet([32])  # type: ignore[list-item]
    s = IdSet(VECTOR_IDS + VECTOR_IDS)
    assert len(s) == 3
    first, second, third = sorted(VECTOR_IDS)
    assert first in s and bytes(32) not in s and "x" not in s
    assert s.index(b"") == 0 and s.index(INFINITY) == 3
    assert s.index(second) == 1 and s.index(second[:1]) == 1 and s.index(third[:1] + b"\xff") == 3
    with pytest.raises(ValueError):
        s.fingerprint(2, 1)
    with pytest.raises(ValueError):
        s.fingerprint(0, 4)


# ---------------------------------------------------------------------------------------------------- exactness
SMALL = (MIN_BUDGET_BYTES, MIN_BUDGET_ITEMS)


@settings(max_examples=60)
@given(
    common=st.integers(0, 2000),
    only_a=st.integers(0, 2000),
    only_b=st.integers(0, 2000),
    # A shared prefix makes long bounds. It also weakens the sum: the prefix is the low end of each little-endian
    # integer, so only the last 32 - prefix_len bytes vary and carries past 2^256 are lost. Real IDs are digests;
    # with 8 varying bytes a false "equal" has odds of about 2^-64 per comparison.
    prefix_len=st.sampled_from([0, 0, 2, 16, 24]),
    budgets=st.sampled_from(["default", "small"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_finds_exact_symmetric_difference(common: int, only_a: int, only_b: int, prefix_len: int,
                                          budgets: str, seed: int) -> None:
    """Random overlaps: identical, disjoint and one empty set are all drawn."""
    rnd = random.Random(seed)
    prefix = rnd.randbytes(prefix_len)
    shared = random_ids(rnd, common, prefix)
    a = shared + random_ids(rnd, only_a, prefix)
    b = shared + random_ids(rnd, only_b, prefix)
    ib = rb = SMALL if budgets == "small" else None
    run = reconcile(IdSet(a), IdSet(b), ib, rb)
    check_exact(run, a, b)
    check_canonical(run.messages[::2], ib or (MAX_MESSAGE_BYTES, MAX_MESSAGE_ITEMS))
    check_canonical(run.messages[1::2], rb or (MAX_MESSAGE_BYTES, MAX_MESSAGE_ITEMS))
    if a == b or set(a) == set(b):
        assert run.initiator.have == run.initiator.need == set()


@functools.cache
def hundred_thousand() -> list[bytes]:
    return random_ids(random.Random(100_000), 100_000)


@pytest.mark.parametrize("missing", [1, 10, 1000])
@pytest.mark.parametrize("side", ["initiator lacks", "responder lacks", "both lack"])
def test_cost_grows_with_differences(missing: int, side: str) -> None:
    ids = hundred_thousand()
    rnd = random.Random(missing)
    gone = set(rnd.sample(range(len(ids)), missing))
    fewer = [x for i, x in enumerate(ids) if i not in gone]
    if side == "initiator lacks":
        a, b = fewer, ids
    elif side == "responder lacks":
        a, b = ids, fewer
    else:  # each side lacks about half of the missing IDs
        half = set(rnd.sample(sorted(gone), missing // 2))
        a = [x for i, x in enumerate(ids) if i not in half]
        b = [x for i, x in enumerate(ids) if i not in gone - half]
    run = reconcile(IdSet(a), IdSet(b))
    check_exact(run, a, b)
    print(f"\n100,000 IDs, {missing} missing ({side}): {len(run.messages)} messages, "
          f"{run.round_trips} round trips, {run.total_bytes} bytes")
    if missing == 1:
        assert len(run.messages) <= 6 and run.total_bytes <= 8 * 1024
    assert run.total_bytes <= 2048 * missing + 2048
    assert run.round_trips <= 3 if missing <= 10 else run.round_trips <= 5


def test_one_missing_among_a_million() -> None:
    raw = random.Random(1_000_000).randbytes(ID_LEN * 1_000_001)
    ids = [raw[i : i + ID_LEN] for i in range(0, len(raw), ID_LEN)]
    a, b = IdSet(ids[1:]), IdSet(ids)
    run = reconcile(a, b)
    assert run.initiator.need == {ids[0]} and run.initiator.have == set()
    print(f"\n1,000,000 IDs, 1 missing: {len(run.messages)} messages, {run.round_trips} round trips, "
          f"{run.total_bytes} bytes")
    assert run.round_trips <= 3 and run.total_bytes <= 4096
    # Split bounds are the shortest separating prefixes: about 3 bytes among a million random IDs.
    bounds = [it.bound for it in decode_message(run.messages[0]) if it.bound != INFINITY]
    assert len(bounds) == 15 and sum(map(len, bounds)) / len(bounds) <= 4


def test_empty_initiator_pulls_everything_in_bounded_messages() -> None:
    ids = hundred_thousand()
    run = reconcile(IdSet([]), IdSet(ids))
    assert run.initiator.need == set(ids) and run.initiator.have == set()
    check_canonical(run.messages)
    # 3.2 MB of IDs cannot fit one message: the responder spreads them over several, each near the limit.
    assert len(run.messages) > 4 and max(map(len, run.messages)) > MAX_MESSAGE_BYTES // 2


def test_tiny_budgets_defer_but_finish() -> None:
    rnd = random.Random(7)
    shared = random_ids(rnd, 3000)
    a = shared + random_ids(rnd, 1500)
    b = shared + random_ids(rnd, 1500)
    run = reconcile(IdSet(a), IdSet(b), SMALL, SMALL)
    check_exact(run, a, b)
    check_canonical(run.messages, SMALL)
    assert len(run.messages) > 6  # the budget forced deferral


@pytest.mark.parametrize("small_side", ["initiator", "responder"])
def test_different_budgets_still_finish(small_side: str) -> None:
    """Budgets should match (the peer's deferrals then keep their fine ranges); if they don't, the smaller side
    coalesces what it defers, which costs rounds but never exactness or termination."""
    rnd = random.Random(8)
    shared = random_ids(rnd, 600)
    a = shared + random_ids(rnd, 400)
    b = shared + random_ids(rnd, 400)
    small = small_side == "initiator"
    run = reconcile(IdSet(a), IdSet(b), SMALL if small else None, None if small else SMALL)
    check_exact(run, a, b)
    check_canonical(run.messages[::2] if small else run.messages[1::2], SMALL)


def test_full_length_bounds() -> None:
    """IDs that differ only in their last byte: every split bound is a whole 32-byte ID."""
    prefix = bytes(range(31))
    a = [prefix + bytes([i]) for i in range(64)]
    b = [x for x in a if x[-1] != 5] + [prefix + bytes([100])]
    run = reconcile(IdSet(a), IdSet(b))
    assert run.initiator.have == {prefix + bytes([5])} and run.initiator.need == {prefix + bytes([100])}
    bounds = [it.bound for it in decode_message(run.messages[0]) if it.bound != INFINITY]
    assert len(bounds) == 15 and all(len(x) == ID_LEN for x in bounds)


def test_identical_sets_take_one_round_trip() -> None:
    ids = random_ids(random.Random(3), 500)
    run = reconcile(IdSet(ids), IdSet(list(reversed(ids))))
    assert len(run.messages) == 2 and decode_message(run.messages[1]) == [Item(INFINITY, Mode.SKIP)]


# ---------------------------------------------------------------------------------------------------- roles and states
def test_usage_errors() -> None:
    s = IdSet(VECTOR_IDS)
    with pytest.raises(UsageError):
        Reconciler(s, initiator=False).initiate()
    initiator = Reconciler(s, initiator=True)
    with pytest.raises(UsageError):
        initiator.reconcile(bytes.fromhex(VECTOR_SKIP_THEN_FINGERPRINT))
    initiator.initiate()
    with pytest.raises(UsageError):
        initiator.initiate()
    assert initiator.reconcile(encode_message([Item(INFINITY, Mode.SKIP)])) is None
    with pytest.raises(UsageError):
        initiator.reconcile(encode_message([Item(INFINITY, Mode.SKIP)]))
    for kwargs in ({"max_message_bytes": MIN_BUDGET_BYTES - 1}, {"max_message_bytes": MAX_MESSAGE_BYTES + 1},
                   {"max_message_items": MIN_BUDGET_ITEMS - 1}, {"max_message_items": MAX_MESSAGE_ITEMS + 1}):
        with pytest.raises(ValueError):
            Reconciler(s, initiator=True, **kwargs)


def test_responder_returns_none_only_for_all_skip() -> None:
    responder = Reconciler(IdSet(VECTOR_IDS), initiator=False)
    assert responder.reconcile(encode_message([Item(INFINITY, Mode.SKIP)])) is None
    agreed = encode_message([Item(INFINITY, Mode.FINGERPRINT, fingerprint(VECTOR_IDS))])
    assert responder.reconcile(agreed) == encode_message([Item(INFINITY, Mode.SKIP)])


def test_peer_breaking_the_roles_is_rejected() -> None:
    ids = sorted(VECTOR_IDS)
    reply_item = Item(INFINITY, Mode.ID_LIST_REPLY, ids=(ids[2],), present=(True, True))
    with pytest.raises(ProtocolError, match="only the initiator"):
        Reconciler(IdSet(ids), initiator=False).reconcile(encode_message([reply_item]))

    def initiator() -> Reconciler:
        r = Reconciler(IdSet(ids[:2]), initiator=True)
        r.initiate()
        return r

    wrong_bits = Item(INFINITY, Mode.ID_LIST_REPLY, ids=(ids[2],), present=(True,))
    with pytest.raises(ProtocolError, match="bitmap"):
        initiator().reconcile(encode_message([wrong_bits]))
    claims_ours = Item(INFINITY, Mode.ID_LIST_REPLY, ids=(ids[0],), present=(True, True))
    with pytest.raises(ProtocolError, match="we hold"):
        initiator().reconcile(encode_message([claims_ours]))
    rejected = initiator()
    with pytest.raises(ProtocolError):
        rejected.reconcile(encode_message([claims_ours]))
    assert rejected.have == rejected.need == set() and rejected.rounds == 0


# ---------------------------------------------------------------------------------------------------- strict decoding
ID_A, ID_B = sorted(VECTOR_IDS)[:2]
INF = bytes([0xFF])
FP = bytes(16)


def msg(*parts: bytes) -> bytes:
    return bytes([1]) + b"".join(parts)


def bound(b: bytes) -> bytes:
    return bytes([len(b)]) + b


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (bytes([2]) + INF + bytes([0]), "version"),
        (msg(), "before a range"),
        (msg(INF + bytes([4])), "unknown reconciliation mode"),
        (msg(INF + bytes([0xFF])), "unknown reconciliation mode"),
        (msg(bytes([33]) + bytes(33) + bytes([0]), INF + bytes([0])), "longer than 32"),
        (msg(bytes([0xFE])), "longer than 32"),
        (msg(bound(b"") + bytes([0]), INF + bytes([0])), "strictly increasing"),
        (msg(bound(b"\x05") + bytes([0]), bound(b"\x05") + bytes([0]), INF + bytes([0])), "strictly increasing"),
        (msg(bound(b"\x05") + bytes([0]), bound(b"\x04\xff") + bytes([0]), INF + bytes([0])), "strictly increasing"),
        (msg(INF + bytes([0]), INF + bytes([0])), "trailing"),
        (msg(bound(b"\x05") + bytes([0])), "before a range"),
        (msg(bound(b"\x05") + bytes([1]) + FP), "before a range"),
        (msg(INF + bytes([0]), b"\x00"), "trailing"),
        (msg(INF + bytes([2, 2]) + ID_B + ID_A), "strictly increasing"),
        (msg(INF + bytes([2, 2]) + ID_A + ID_A), "strictly increasing"),
        (msg(bound(ID_B[:1]) + bytes([2, 1]) + ID_B, INF + bytes([0])), "outside its range"),
        (msg(bound(ID_B[:1]) + bytes([0]), INF + bytes([2, 1]) + ID_A), "outside its range"),
        (msg(INF + bytes([2]) + encode_varint(MAX_IDS_PER_LIST + 1)), "exceeds"),
        (msg(INF + bytes([3, 0]) + encode_varint(MAX_IDS_PER_LIST + 1)), "exceeds"),
        (msg(INF + bytes([2, 0x80, 0x00])), "minimal"),
        (msg(INF + bytes([2, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01])), "longer than 5"),
        (msg(INF + bytes([2, 0x81])), "ends inside the ID count"),
        (msg(INF + bytes([2, 2]) + ID_A), "ends inside an ID list"),
        (msg(INF + bytes([3, 0, 3, 0b1000])), "unused bits"),
        (msg(INF + bytes([3, 0, 9, 0])), "ends inside a bitmap"),
        (msg(INF + bytes([1]) + bytes(15)), "ends inside a fingerprint"),
        (msg(bytes([5, 1, 2])), "ends inside a bound"),
        (msg(bound(b"\x05")), "before an item's mode"),
        (msg(INF + bytes([0])) + bytes(MAX_MESSAGE_BYTES), "exceeds"),
    ],
)
def test_strict_decoding(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_message(data)


def test_too_many_items() -> None:
    skips = [Item(i.to_bytes(3, "big"), Mode.SKIP) for i in range(1, MAX_MESSAGE_ITEMS + 1)]
    at_limit = encode_message(skips[:-1] + [Item(INFINITY, Mode.SKIP)])
    assert len(decode_message(at_limit)) == MAX_MESSAGE_ITEMS
    with pytest.raises(ProtocolError, match="more than"):
        decode_message(encode_message(skips + [Item(INFINITY, Mode.SKIP)]))


def test_valid_edge_messages_decode() -> None:
    full_bound = bytes([0xFF]) * 32
    items = decode_message(msg(bound(full_bound) + bytes([2, 1]) + ID_A, INF + bytes([3, 0, 8, 0xFF])))
    assert items[0].bound == full_bound and items[0].ids == (ID_A,)
    assert items[1].present == (True,) * 8 and items[1].ids == ()
    assert decode_message(msg(INF + bytes([2, 0]))) == [Item(INFINITY, Mode.ID_LIST)]


@functools.cache
def corpus() -> list[bytes]:
    """Valid messages of every mode, from a few small runs."""
    rnd = random.Random(11)
    out: list[bytes] = []
    for common, only_a, only_b in [(200, 5, 5), (0, 3, 40), (600, 60, 0), (40, 0, 0)]:
        shared = random_ids(rnd, common)
        out += reconcile(IdSet(shared + random_ids(rnd, only_a)), IdSet(shared + random_ids(rnd, only_b))).messages
    return out


def fuzz_targets() -> tuple[Reconciler, Reconciler]:
    ids = random_ids(random.Random(5), 300)
    initiator = Reconciler(IdSet(ids[:250]), initiator=True)
    initiator.initiate()
    return initiator, Reconciler(IdSet(ids[50:]), initiator=False)


def decode_or_reject(data: bytes) -> None:
    try:
        items = decode_message(data)
    except ProtocolError:
        pass
    else:
        assert encode_message(items) == data  # anything accepted is in canonical form
    for target in fuzz_targets():
        with contextlib.suppress(ProtocolError):
            target.reconcile(data)


@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decode_or_reject(data)


@given(st.binary(max_size=40))
def test_fuzz_arbitrary_items(data: bytes) -> None:
    decode_or_reject(bytes([1]) + data)


@given(st.data())
def test_fuzz_mutated_messages(data: st.DataObject) -> None:
    message = bytearray(data.draw(st.sampled_from(corpus())))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(0, len(message) - 1)))
        if kind == "flip" and message:
            message[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            message[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete":
            del message[at : at + data.draw(st.integers(1, 3))]
        else:
            del message[at:]
    decode_or_reject(bytes(message))
