"""Range-based set reconciliation of 32-byte IDs: pure and sans-I/O (bytes in, bytes out).

Two sides each hold a set of IDs (change IDs, ACL record IDs, blob IDs). The *initiator* and the *responder*
exchange messages until the initiator knows ``have`` (IDs only it holds) and ``need`` (IDs only the responder
holds). A message covers the whole ID space, from ``b""`` to +infinity, as consecutive ranges; each range says
"agreed" (SKIP), "here is my fingerprint" (FINGERPRINT), "here are my IDs" (ID_LIST) or, responder to initiator
only, "here is what you lack and which of your IDs I hold" (ID_LIST_REPLY). A differing range is split into 16 by
the sender's own items, so the work grows with the number of differences, not with the set size.

Fingerprint of a range = first 16 bytes of BLAKE3(sum of its IDs as 256-bit little-endian integers mod 2^256,
written as 32 bytes little-endian || count as 8 bytes little-endian). Sums, unlike XOR, cannot be cancelled by
adding an ID twice, and prefix sums make every range's fingerprint O(1). The sum is only as strong as the IDs are
random: IDs are digests, but IDs sharing a long leading prefix vary only in their high bytes (the integers are
little-endian) and carries past 2^256 are lost, so such sets collide far more easily.

Message layout (docs/protocol.md section 70.3)::

    offset  size  field
    0       1     version, MESSAGE_VERSION (0x01)
    1       ...   items, at least one; the last one's bound is +infinity; nothing follows it

    item:   1     bound length: 0..32, or BOUND_INFINITY (0xFF) for +infinity (then no bound bytes)
            n     bound bytes (the range's exclusive upper bound; its lower bound is the previous item's bound)
            1     mode (Mode)
            ...   payload:  SKIP           nothing
                            FINGERPRINT    16 bytes
                            ID_LIST        varint count, count * 32 bytes of IDs (strictly increasing, in range)
                            ID_LIST_REPLY  varint count, count * 32 bytes of the responder's IDs that were not in
                                           the initiator's list (strictly increasing, in range), varint bit count,
                                           ceil(bits / 8) bytes: bit i (byte i // 8, bit i % 8, least significant
                                           first) = the responder holds the initiator's i-th ID in this range;
                                           unused high bits of the last byte are 0

Varints are unsigned LEB128, minimal, at most 5 bytes.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

from ..errors import ProtocolError, UsageError
from . import crypto

ID_LEN: Final = 32  # every reconciled ID is a 32-byte digest or key
FINGERPRINT_LEN: Final = 16  # bytes of BLAKE3 kept as a range fingerprint
SPLIT_PIECES: Final = 16  # a differing range is split into this many sub-ranges
ID_LIST_THRESHOLD: Final = 32  # a differing range where the sender holds fewer IDs is sent as its ID list

MESSAGE_VERSION: Final = 0x01
BOUND_INFINITY: Final = 0xFF  # bound length byte meaning +infinity
MAX_BOUND_LEN: Final = ID_LEN  # a finite bound is a prefix of an ID, at most a whole ID
VARINT_MAX_BYTES: Final = 5  # LEB128 of every count allowed here fits in 5 bytes

MAX_MESSAGE_BYTES: Final = 1 << 20  # whole message, version byte included
# About what 1 MiB of FINGERPRINT items holds (~21 bytes each): the byte limit, not this one, normally defers
# work. It bounds the CPU a peer can demand per message (one bisect and one BLAKE3 per item).
MAX_MESSAGE_ITEMS: Final = 65536
MAX_IDS_PER_LIST: Final = 8192  # IDs in one ID_LIST, extras in one ID_LIST_REPLY, bits in its bitmap

# Smallest outgoing budgets a Reconciler accepts: enough for one item's full answer (an ID list of 31 IDs, 16
# fingerprints, or a reply with one extra ID and a bitmap of MAX_IDS_PER_LIST bits) plus a SKIP before it and a
# deferred fingerprint after it, so every message makes progress whatever the budget.
MIN_BUDGET_BYTES: Final = 4096
MIN_BUDGET_ITEMS: Final = SPLIT_PIECES + 4

# In memory, +infinity is a 33-byte string of 0xFF: it sorts after every ID and every finite bound, so bisect and
# comparisons need no special case. It is never sent as bytes (the length byte BOUND_INFINITY stands for it).
INFINITY: Final = b"\xff" * (ID_LEN + 1)
Bound = bytes  # b"" .. 32 bytes, or INFINITY

_SUM_MODULUS: Final = 1 << 256
_SUM_LEN: Final = 32  # the range sum, little-endian, in the fingerprint input
_COUNT_LEN: Final = 8  # the range count, little-endian, in the fingerprint input
_ECHO_MAX: Final = 2 + MAX_BOUND_LEN + FINGERPRINT_LEN  # largest FINGERPRINT item
# An ID_LIST_REPLY item without its IDs and bitmap: bound (1 + 32), mode, two varints, bitmap rounding byte.
_REPLY_OVERHEAD: Final = 1 + MAX_BOUND_LEN + 1 + 2 * VARINT_MAX_BYTES + 1


class Mode(enum.IntEnum):
    """What an item says about its range."""

    SKIP = 0  # nothing to do: the range agrees, or its differences are already known
    FINGERPRINT = 1  # payload: the sender's 16-byte fingerprint of the range
    ID_LIST = 2  # payload: every ID the sender holds in the range
    ID_LIST_REPLY = 3  # responder only: the responder's IDs missing from the list, and a bitmap over the list


@dataclass(frozen=True, slots=True)
class Item:
    """One range of a message: [previous item's bound (b"" for the first), bound)."""

    bound: Bound
    mode: Mode
    fingerprint: bytes = b""  # FINGERPRINT
    ids: tuple[bytes, ...] = ()  # ID_LIST: the sender's IDs; ID_LIST_REPLY: the responder's extra IDs
    present: tuple[bool, ...] = ()  # ID_LIST_REPLY: per initiator ID in the range, does the responder hold it


# ---------------------------------------------------------------------------------------------- fingerprints
_as_int = partial(int.from_bytes, byteorder="little")


def _fingerprint_of(total: int, count: int) -> bytes:
    data = (total % _SUM_MODULUS).to_bytes(_SUM_LEN, "little") + count.to_bytes(_COUNT_LEN, "little")
    return crypto.blake3(data)[:FINGERPRINT_LEN]


def fingerprint(ids: Sequence[bytes]) -> bytes:
    """The fingerprint of a range holding exactly ``ids``, from the definition (tests and documentation)."""
    for x in ids:
        if not isinstance(x, bytes) or len(x) != ID_LEN:
            raise ValueError("every ID is 32 bytes")
    return _fingerprint_of(sum(map(_as_int, ids)), len(ids))


class IdSet:
    """An immutable sorted set of 32-byte IDs with O(1) range fingerprints (prefix sums of the IDs as integers)."""

    __slots__ = ("_ids", "_sums")

    def __init__(self, ids: Iterable[bytes]) -> None:
        try:
            unique = set(ids)
        except TypeError:
            raise ValueError("IDs must be bytes") from None
        for x in unique:
            if type(x) is not bytes or len(x) != ID_LEN:
                raise ValueError("every ID is 32 bytes")
        self._ids: list[bytes] = sorted(unique)
        # _sums[i] = sum of the first i IDs, unreduced: a range's sum is one subtraction.
        self._sums: list[int] = list(itertools.accumulate(map(_as_int, self._ids), initial=0))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, x: object) -> bool:
        if not isinstance(x, bytes):
            return False
        i = bisect.bisect_left(self._ids, x)
        return i < len(self._ids) and self._ids[i] == x

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._ids)

    def index(self, bound: Bound) -> int:
        """How many IDs are below ``bound`` (so the IDs in [lo, hi) are those at index(lo) .. index(hi) - 1)."""
        return bisect.bisect_left(self._ids, bound)

    def between(self, lo: int, hi: int) -> list[bytes]:
        """The IDs at indexes lo .. hi - 1, in order."""
        return self._ids[lo:hi]

    def fingerprint(self, lo: int, hi: int) -> bytes:
        """Fingerprint of the IDs at indexes lo .. hi - 1."""
        if not 0 <= lo <= hi <= len(self._ids):
            raise ValueError(f"index range [{lo}, {hi}) outside a set of {len(self._ids)}")
        return _fingerprint_of(self._sums[hi] - self._sums[lo], hi - lo)


def separator(a: bytes, b: bytes) -> bytes:
    """The shortest prefix p of ``b`` with a < p <= b (for IDs a < b): the bound between them in a split."""
    diff = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    first_difference = ID_LEN - (diff.bit_length() + 7) // 8
    return b[: first_difference + 1]


# ---------------------------------------------------------------------------------------------- encoding
def encode_varint(n: int) -> bytes:
    if not 0 <= n < 1 << (7 * VARINT_MAX_BYTES):
        raise ValueError("varint out of range")
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bound_size(bound: Bound) -> int:
    return 1 if bound == INFINITY else 1 + len(bound)


def item_size(item: Item) -> int:
    """Encoded size of one item, in bytes."""
    size = _bound_size(item.bound) + 1
    if item.mode is Mode.FINGERPRINT:
        size += FINGERPRINT_LEN
    elif item.mode is Mode.ID_LIST:
        size += len(encode_varint(len(item.ids))) + ID_LEN * len(item.ids)
    elif item.mode is Mode.ID_LIST_REPLY:
        bits = len(item.present)
        size += len(encode_varint(len(item.ids))) + ID_LEN * len(item.ids)
        size += len(encode_varint(bits)) + (bits + 7) // 8
    return size


def encode_message(items: Sequence[Item]) -> bytes:
    """The bytes of a message (the items must already form a valid message: see decode_message)."""
    out = bytearray([MESSAGE_VERSION])
    for item in items:
        if item.bound == INFINITY:
            out.append(BOUND_INFINITY)
        else:
            out.append(len(item.bound))
            out += item.bound
        out.append(item.mode)
        if item.mode is Mode.FINGERPRINT:
            out += item.fingerprint
        elif item.mode in (Mode.ID_LIST, Mode.ID_LIST_REPLY):
            out += encode_varint(len(item.ids))
            out += b"".join(item.ids)
            if item.mode is Mode.ID_LIST_REPLY:
                bitmap = bytearray((len(item.present) + 7) // 8)
                for i, held in enumerate(item.present):
                    if held:
                        bitmap[i >> 3] |= 1 << (i & 7)
                out += encode_varint(len(item.present))
                out += bitmap
    return bytes(out)


def _read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for k in range(VARINT_MAX_BYTES):
        if pos >= len(data):
            raise ProtocolError(f"reconciliation message ends inside the {what}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * k)
        if not byte & 0x80:
            if byte == 0 and k > 0:
                raise ProtocolError(f"the {what} is not a minimal varint")
            return value, pos
    raise ProtocolError(f"the {what} is a varint longer than {VARINT_MAX_BYTES} bytes")


def _read_ids(data: bytes, pos: int, count: int, lo: Bound, hi: Bound) -> tuple[tuple[bytes, ...], int]:
    end = pos + count * ID_LEN
    if end > len(data):
        raise ProtocolError("reconciliation message ends inside an ID list")
    ids = tuple(data[p : p + ID_LEN] for p in range(pos, end, ID_LEN))
    previous = None
    for x in ids:
        if previous is not None and x <= previous:
            raise ProtocolError("IDs in a list are not strictly increasing")
        if not lo <= x < hi:
            raise ProtocolError("an ID in a list lies outside its range")
        previous = x
    return ids, end


def decode_message(data: bytes) -> list[Item]:
    """Decode a message strictly; anything malformed or over a limit is a ProtocolError (and nothing else)."""
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"reconciliation message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if not data:
        raise ProtocolError("empty reconciliation message")
    if data[0] != MESSAGE_VERSION:
        raise ProtocolError(f"unknown reconciliation message version {data[0]}")
    items: list[Item] = []
    pos, lo = 1, b""
    while lo != INFINITY:
        if pos >= len(data):
            raise ProtocolError("reconciliation message ends before a range reaching +infinity")
        if len(items) >= MAX_MESSAGE_ITEMS:
            raise ProtocolError(f"reconciliation message has more than {MAX_MESSAGE_ITEMS} items")
        length = data[pos]
        pos += 1
        if length == BOUND_INFINITY:
            bound = INFINITY
        elif length > MAX_BOUND_LEN:
            raise ProtocolError(f"bound of {length} bytes is longer than {MAX_BOUND_LEN}")
        else:
            if pos + length > len(data):
                raise ProtocolError("reconciliation message ends inside a bound")
            bound = data[pos : pos + length]
            pos += length
        if bound <= lo:
            raise ProtocolError("bounds are not strictly increasing")
        if pos >= len(data):
            raise ProtocolError("reconciliation message ends before an item's mode")
        try:
            mode = Mode(data[pos])
        except ValueError:
            raise ProtocolError(f"unknown reconciliation mode {data[pos]}") from None
        pos += 1
        if mode is Mode.SKIP:
            items.append(Item(bound, mode))
        elif mode is Mode.FINGERPRINT:
            if pos + FINGERPRINT_LEN > len(data):
                raise ProtocolError("reconciliation message ends inside a fingerprint")
            items.append(Item(bound, mode, fingerprint=data[pos : pos + FINGERPRINT_LEN]))
            pos += FINGERPRINT_LEN
        else:
            count, pos = _read_varint(data, pos, "ID count")
            if count > MAX_IDS_PER_LIST:
                raise ProtocolError(f"ID list of {count} IDs exceeds {MAX_IDS_PER_LIST}")
            ids, pos = _read_ids(data, pos, count, lo, bound)
            present: tuple[bool, ...] = ()
            if mode is Mode.ID_LIST_REPLY:
                bits, pos = _read_varint(data, pos, "bitmap length")
                if bits > MAX_IDS_PER_LIST:
                    raise ProtocolError(f"bitmap of {bits} bits exceeds {MAX_IDS_PER_LIST}")
                end = pos + (bits + 7) // 8
                if end > len(data):
                    raise ProtocolError("reconciliation message ends inside a bitmap")
                bitmap = data[pos:end]
                if bits % 8 and bitmap[-1] >> (bits % 8):
                    raise ProtocolError("unused bits of a bitmap are not zero")
                present = tuple(bool(bitmap[i >> 3] >> (i & 7) & 1) for i in range(bits))
                pos = end
            items.append(Item(bound, mode, ids=ids, present=present))
        lo = bound
    if pos != len(data):
        raise ProtocolError("trailing bytes after a reconciliation message")
    return items


# ---------------------------------------------------------------------------------------------- the state machine
class _Output:
    """A message being built: merges adjacent SKIP items, keeps its encoded size and its echo weight."""

    __slots__ = ("items", "size", "echo")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.size = 1  # the version byte
        self.echo = 0  # what the peer would spend to defer all of this message (sum of _echo_size)

    def add(self, item: Item) -> None:
        if item.mode is Mode.SKIP and self.items and self.items[-1].mode is Mode.SKIP:
            merged = self.items.pop()
            self.size -= item_size(merged)
            self.echo -= _echo_size(merged)
        self.items.append(item)
        self.size += item_size(item)
        self.echo += _echo_size(item)


def _echo_size(item: Item) -> int:
    """Upper bound of what deferring an item costs: a SKIP stays a SKIP, anything else becomes a FINGERPRINT."""
    return _bound_size(item.bound) + 1 + (0 if item.mode is Mode.SKIP else FINGERPRINT_LEN)


@dataclass(slots=True)
class _Room:
    """What an answer may still use: bytes and items (hard limits), echo weight (keeps the peer able to defer)."""

    size: int
    items: int
    echo: int

    def admits(self, answer: list[Item]) -> bool:
        return (len(answer) <= self.items and sum(map(item_size, answer)) <= self.size
                and sum(map(_echo_size, answer)) <= self.echo)


class Reconciler:
    """One side of a reconciliation. The initiator calls initiate(), then feeds each reply to reconcile() until it
    returns None; ``have`` and ``need`` are then complete. The responder feeds each message to reconcile() and
    sends back what it returns: it always answers (an all-SKIP answer tells the initiator it is done) and returns
    None only for an all-SKIP message, which a conforming initiator never sends.

    Outgoing messages stay within ``max_message_bytes`` and ``max_message_items``; work that does not fit is
    deferred to a later round (its ranges are sent again as fingerprints), and every message settles at least the
    first open range it was sent, so the exchange always ends.
    """

    def __init__(
        self,
        ids: IdSet,
        *,
        initiator: bool,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_message_items: int = MAX_MESSAGE_ITEMS,
    ) -> None:
        if not MIN_BUDGET_BYTES <= max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be in [{MIN_BUDGET_BYTES}, {MAX_MESSAGE_BYTES}]")
        if not MIN_BUDGET_ITEMS <= max_message_items <= MAX_MESSAGE_ITEMS:
            raise ValueError(f"max_message_items must be in [{MIN_BUDGET_ITEMS}, {MAX_MESSAGE_ITEMS}]")
        self.ids = ids
        self.initiator = initiator
        self.have: set[bytes] = set()  # initiator: IDs it holds that the responder lacks
        self.need: set[bytes] = set()  # initiator: IDs the responder holds that it lacks
        self.rounds = 0  # messages processed by reconcile()
        # The initiator finished. A responder cannot always know (the initiator may settle everything from its
        # last answer); it sets this only when it answers, or is sent, an all-SKIP message.
        self.done = False
        self._max_bytes = max_message_bytes
        self._max_items = max_message_items
        # Our messages' echo weight stays within half our byte budget, so a peer with the same budget can always
        # defer what it does not answer one range at a time, and spend the other half on answers.
        self._echo_budget = max_message_bytes // 2
        self._initiated = False

    def initiate(self) -> bytes:
        """The initiator's first message: its whole set as an ID list if small, else 16 fingerprints."""
        if not self.initiator:
            raise UsageError("only the initiator starts a reconciliation")
        if self._initiated:
            raise UsageError("reconciliation already started")
        self._initiated = True
        n = len(self.ids)
        if n < ID_LIST_THRESHOLD:
            return encode_message([Item(INFINITY, Mode.ID_LIST, ids=tuple(self.ids.between(0, n)))])
        return encode_message(self._split(INFINITY, 0, n))

    def reconcile(self, message: bytes) -> bytes | None:
        """Process the peer's message; return the next message to send, or None when there is nothing to send."""
        if self.initiator and not self._initiated:
            raise UsageError("the initiator must call initiate() first")
        if self.initiator and self.done:
            raise UsageError("reconciliation already finished")
        incoming = decode_message(message)
        have: set[bytes] = set()
        need: set[bytes] = set()
        out = self._respond(incoming, have, need)
        self.have |= have
        self.need |= need
        self.rounds += 1
        if len(out) == 1 and out[0].mode is Mode.SKIP:
            self.done = True
            if self.initiator or all(x.mode is Mode.SKIP for x in incoming):
                return None
        return encode_message(out)

    # -- building an answer
    def _respond(self, incoming: list[Item], have: set[bytes], need: set[bytes]) -> list[Item]:
        # echo_bytes[i]: what deferring items i.. one by one would cost at most.
        echo_bytes = [0] * (len(incoming) + 1)
        for i in range(len(incoming) - 1, -1, -1):
            echo_bytes[i] = echo_bytes[i + 1] + _echo_size(incoming[i])
        out = _Output()
        answered = False
        lo = b""
        for i, item in enumerate(incoming):
            if item.mode is Mode.SKIP:
                out.add(item)
                lo = item.bound
                continue
            tail = echo_bytes[i + 1]
            room = _Room(self._max_bytes - out.size - tail, self._max_items - len(out.items) - (len(incoming) - i - 1),
                         self._echo_budget - out.echo - tail)
            answer = self._answer(lo, item, room, have, need)
            if answer is None and answered:
                # Earlier items made progress; this one and the rest wait for the next round.
                self._defer_tail(lo, incoming[i:], out)
                break
            if answer is None:
                # Not even the first open range fits beside a one-by-one deferral of the rest: answer it within
                # the hard limits, then defer the rest in fewer, coarser ranges.
                room = _Room(self._max_bytes - out.size - _ECHO_MAX, self._max_items - len(out.items) - 1,
                             self._max_bytes)
                answer = self._answer(lo, item, room, have, need)
                if answer is None:  # impossible with budgets >= MIN_BUDGET_*: a bug, not a peer's fault
                    raise AssertionError("reconciliation budget too small for one answer")
                for a in answer:
                    out.add(a)
                self._defer_tail(item.bound, incoming[i + 1 :], out)
                break
            for a in answer:
                out.add(a)
            answered = True
            lo = item.bound
        return out.items

    def _defer_tail(self, lo: Bound, tail: list[Item], out: _Output) -> None:
        """Cover the ranges of ``tail`` with our fingerprints: one by one if that fits, else in contiguous groups
        (a group's fingerprint spans its ranges; later splits rebuild the finer structure)."""
        if not tail:
            return
        room_size, room_items = self._max_bytes - out.size, self._max_items - len(out.items)
        room_echo = self._echo_budget - out.echo
        if sum(map(_echo_size, tail)) <= min(room_size, room_echo) and len(tail) <= room_items:
            groups = len(tail)
        else:
            # A group costs at most a FINGERPRINT item with the longest bound among the tail's.
            group_cost = max(_bound_size(x.bound) for x in tail) + 1 + FINGERPRINT_LEN
            groups = max(1, min(len(tail), room_items, min(room_size, room_echo) // group_cost))
        for g in range(groups):
            part = tail[len(tail) * g // groups : len(tail) * (g + 1) // groups]
            hi = part[-1].bound
            if len(part) == 1:
                out.add(self._defer(lo, part[0]))
            elif all(x.mode is Mode.SKIP for x in part):
                out.add(Item(hi, Mode.SKIP))
            else:
                out.add(Item(hi, Mode.FINGERPRINT, self.ids.fingerprint(self.ids.index(lo), self.ids.index(hi))))
            lo = hi

    def _defer(self, lo: Bound, item: Item) -> Item:
        if item.mode is Mode.SKIP:
            return item
        mine = self.ids.fingerprint(self.ids.index(lo), self.ids.index(item.bound))
        if item.mode is Mode.FINGERPRINT and mine == item.fingerprint:
            return Item(item.bound, Mode.SKIP)
        return Item(item.bound, Mode.FINGERPRINT, mine)

    def _answer(self, lo: Bound, item: Item, room: _Room, have: set[bytes], need: set[bytes]) -> list[Item] | None:
        """Items covering exactly [lo, item.bound), or None if they would not fit the room given."""
        hi = item.bound
        lo_i, hi_i = self.ids.index(lo), self.ids.index(hi)
        if item.mode is Mode.FINGERPRINT:
            if self.ids.fingerprint(lo_i, hi_i) == item.fingerprint:
                answer = [Item(hi, Mode.SKIP)]
            elif hi_i - lo_i < ID_LIST_THRESHOLD:
                answer = [Item(hi, Mode.ID_LIST, ids=tuple(self.ids.between(lo_i, hi_i)))]
            else:
                answer = self._split(hi, lo_i, hi_i)
            return answer if room.admits(answer) else None
        if item.mode is Mode.ID_LIST and not self.initiator:
            reply = self._reply(hi, item.ids, lo_i, hi_i, room.size, room.items)
            return reply if reply is not None and room.admits(reply) else None
        if item.mode is Mode.ID_LIST_REPLY and not self.initiator:
            raise ProtocolError("only the initiator accepts ID_LIST_REPLY items")
        # The initiator settles the range: the peer's list, or its reply to our list, gives both differences.
        skip = Item(hi, Mode.SKIP)
        if not room.admits([skip]):
            return None
        mine = self.ids.between(lo_i, hi_i)
        if item.mode is Mode.ID_LIST:
            theirs = set(item.ids)
            have.update(x for x in mine if x not in theirs)
            need.update(theirs.difference(mine))
            return [skip]
        if len(item.present) != len(mine):
            raise ProtocolError(f"reply bitmap has {len(item.present)} bits for a range where we listed {len(mine)}")
        for x in item.ids:
            if x in self.ids:
                raise ProtocolError("reply lists as missing an ID we hold")
        have.update(x for x, held in zip(mine, item.present, strict=True) if not held)
        need.update(item.ids)
        return [skip]

    def _split(self, hi: Bound, lo_i: int, hi_i: int) -> list[Item]:
        """Up to 16 FINGERPRINT items with equal shares of our IDs at lo_i .. hi_i - 1, the last ending at hi."""
        ids, n = self.ids._ids, hi_i - lo_i
        pieces = min(SPLIT_PIECES, n)
        starts = [lo_i + n * k // pieces for k in range(pieces + 1)]
        items = []
        for k in range(pieces):
            end = starts[k + 1]
            bound = hi if k == pieces - 1 else separator(ids[end - 1], ids[end])
            items.append(Item(bound, Mode.FINGERPRINT, self.ids.fingerprint(starts[k], end)))
        return items

    def _reply(self, hi: Bound, theirs: tuple[bytes, ...], lo_i: int, hi_i: int,
               room_bytes: int, room_items: int) -> list[Item] | None:
        """The responder's answer to an ID list: our IDs it lacks, and a bitmap of its IDs we hold, in chunks of
        at most MAX_IDS_PER_LIST extras. What does not fit is left as one FINGERPRINT of the rest of the range."""
        bitmap_bytes = (len(theirs) + 7) // 8
        # Room for extras, reserving a deferred fingerprint and the whole bitmap; each chunk costs an overhead.
        avail = room_bytes - _ECHO_MAX - bitmap_bytes
        if avail < _REPLY_OVERHEAD or room_items < 2:
            return None
        full_chunks, rest = divmod(avail, _REPLY_OVERHEAD + ID_LEN * MAX_IDS_PER_LIST)
        capacity = full_chunks * MAX_IDS_PER_LIST + max(0, rest - _REPLY_OVERHEAD) // ID_LEN
        capacity = min(capacity, (room_items - 1) * MAX_IDS_PER_LIST)
        their_set = set(theirs)
        extras: list[bytes] = []
        # Walk only as far as needed: the extras we send plus one, to place the cut (commons are at most |theirs|).
        ours = self.ids._ids
        for i in range(lo_i, hi_i):
            x = ours[i]
            if x not in their_set:
                extras.append(x)
                if len(extras) > capacity:
                    break
        end = hi
        tail: list[Item] = []
        if len(extras) > capacity:
            if capacity == 0:
                return None
            end = separator(extras[capacity - 1], extras[capacity])
            del extras[capacity:]
            tail = [Item(hi, Mode.FINGERPRINT, self.ids.fingerprint(self.ids.index(end), hi_i))]
        answer: list[Item] = []
        t = 0
        for start in range(0, max(1, len(extras)), MAX_IDS_PER_LIST):
            chunk = extras[start : start + MAX_IDS_PER_LIST]
            after = start + MAX_IDS_PER_LIST
            chunk_hi = separator(chunk[-1], extras[after]) if after < len(extras) else end
            t_end = bisect.bisect_left(theirs, chunk_hi, lo=t)
            present = tuple(x in self.ids for x in theirs[t:t_end])
            answer.append(Item(chunk_hi, Mode.ID_LIST_REPLY, ids=tuple(chunk), present=present))
            t = t_end
        return answer + tail
