"""BLAKE3 verified streaming (the BAO tree) at chunk-group granularity: outboards, range slices, verification.

A blob's ID is its plain BLAKE3 hash, which is the root of a binary tree over its 1 KiB chunks. Cutting that tree
at **groups** of 16 chunks (16 KiB) gives what is stored and sent:

* the **outboard**: every parent node above the groups (64 bytes: left chaining value ‖ right chaining value), in
  pre-order, behind an 8-byte little-endian length prefix (the bao outboard format with the nodes below the group
  level left out; at ``group_len=1024`` it *is* the bao outboard);
* a **slice** for some byte ranges: the length prefix, then in pre-order every parent node on a path to a wanted
  group and the bytes of every wanted group (the bao "combined" slice format, again cut at groups);
* :class:`SliceDecoder`: sans-I/O, bytes in, verified groups out. It checks each parent node against the chaining
  value its parent vouched for (the root against the blob ID) and each group against its parent before it hands
  out a byte of it, so a wrong group, a wrong proof node or a wrong length is found at the first bad group.

The hashing runs in C (``anysyncfs._bao_native``, built by cffi at install from ``anysyncfs/native/bao_tree.c``);
:mod:`.bao_ref` is the pure Python reference with the same functions. Everything here takes a ``backend`` so the
two can be tested against each other; production code leaves it at :data:`DEFAULT`. The whole-blob ID is still
computed by :func:`.crypto.blake3` (the ``blake3`` package, multithreaded): equal to :func:`root_hash`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from ..errors import IntegrityError
from . import bao_ref

CHUNK_LEN = 1024
GROUP_LEN = 16 * 1024  # 16 chunks: the granularity of outboards, slices and partial blobs
NODE_LEN = 64  # a parent node: left CV ‖ right CV
CV_LEN = 32
LENGTH_PREFIX_LEN = 8  # u64 little-endian, as in bao

Range = tuple[int, int]  # (offset, length) in bytes


class BaoError(IntegrityError):
    """A slice or an outboard fails verification (the message says at which byte and why)."""


class WrongLength(BaoError):
    """The length a slice claims is not the expected one, or is out of bounds."""


class WrongProof(BaoError):
    """A parent node does not hash to the chaining value above it."""


class WrongGroup(BaoError):
    """A group's bytes do not hash to the chaining value its parent gives."""


class Truncated(BaoError):
    """A slice ended before every wanted group arrived, or bytes follow its end."""


class RangeOutside(BaoError):
    """A wanted range lies (partly) outside the blob."""


class Backend(Protocol):
    def subtree_cv(self, data: bytes | memoryview, chunk_counter: int, is_root: bool) -> bytes: ...

    def parent_cv(self, left: bytes, right: bytes, is_root: bool) -> bytes: ...

    def outboard(self, data: bytes | memoryview, group_len: int) -> tuple[bytes, bytes]: ...


class PythonBackend:
    """The reference (:mod:`.bao_ref`): slow, for tests."""

    name = "python"

    def subtree_cv(self, data: bytes | memoryview, chunk_counter: int, is_root: bool) -> bytes:
        return bao_ref.subtree_cv(bytes(data), chunk_counter, is_root)

    def parent_cv(self, left: bytes, right: bytes, is_root: bool) -> bytes:
        return bao_ref.parent_cv(left, right, is_root)

    def outboard(self, data: bytes | memoryview, group_len: int) -> tuple[bytes, bytes]:
        return bao_ref.outboard(bytes(data), group_len)


class NativeBackend:
    """The C extension (cffi, API mode)."""

    name = "native"

    def __init__(self, module: ModuleType) -> None:
        self._ffi = module.ffi
        self._lib = module.lib

    def subtree_cv(self, data: bytes | memoryview, chunk_counter: int, is_root: bool) -> bytes:
        out = self._ffi.new("uint8_t[32]")
        self._lib.abao_subtree_cv(self._ffi.from_buffer(data), len(data), chunk_counter, int(is_root), out)
        return bytes(self._ffi.buffer(out))

    def parent_cv(self, left: bytes, right: bytes, is_root: bool) -> bytes:
        out = self._ffi.new("uint8_t[32]")
        self._lib.abao_parent_cv(left, right, int(is_root), out)
        return bytes(self._ffi.buffer(out))

    def outboard(self, data: bytes | memoryview, group_len: int) -> tuple[bytes, bytes]:
        n = self._lib.abao_outboard_parents(len(data), group_len)
        parents = bytearray(n * NODE_LEN)
        root = self._ffi.new("uint8_t[32]")
        self._lib.abao_outboard(self._ffi.from_buffer(data), len(data), group_len,
                                self._ffi.from_buffer(parents), root)
        return bytes(self._ffi.buffer(root)), bytes(parents)


def _load_native() -> NativeBackend | None:
    try:
        from .. import _bao_native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return NativeBackend(_bao_native)


PYTHON = PythonBackend()
NATIVE = _load_native()
# Without the compiled extension (a source tree never installed) everything still works, only slower;
# tests/unit/test_bao.py fails in that case, so an install that lost the extension is noticed.
DEFAULT: Backend = NATIVE if NATIVE is not None else PYTHON


# ---------------------------------------------------------------------------------------------------- tree shape
def group_count(length: int, group_len: int = GROUP_LEN) -> int:
    """Groups of a blob of ``length`` bytes (the empty blob has one, empty)."""
    return max(1, -(-length // group_len))


def parent_count(length: int, group_len: int = GROUP_LEN) -> int:
    """Parent nodes above the groups: the outboard holds this many nodes of 64 bytes."""
    return group_count(length, group_len) - 1


def _left_len(length: int) -> int:
    return bao_ref.left_len(length)


def _check_group_len(group_len: int) -> None:
    if group_len < CHUNK_LEN or group_len & (group_len - 1):
        raise ValueError("a group is a power of two of chunks")


# ---------------------------------------------------------------------------------------------------- hashing
def root_hash(data: bytes | memoryview, *, backend: Backend = DEFAULT) -> bytes:
    """BLAKE3 of ``data`` computed through the tree (equal to :func:`.crypto.blake3`)."""
    return backend.subtree_cv(data, 0, True)


def outboard_nodes(data: bytes | memoryview, group_len: int = GROUP_LEN, *,
                   backend: Backend = DEFAULT) -> tuple[bytes, bytes]:
    """(root hash, parent nodes above the groups in pre-order) — the outboard without its length prefix, as it
    is kept on disk (the prefix is the blob file's size)."""
    _check_group_len(group_len)
    return backend.outboard(data, group_len)


def outboard(data: bytes | memoryview, group_len: int = GROUP_LEN, *, backend: Backend = DEFAULT) -> bytes:
    """The outboard: length prefix (u64 LE) ‖ parent nodes above the groups, pre-order."""
    _, nodes = outboard_nodes(data, group_len, backend=backend)
    return len(data).to_bytes(LENGTH_PREFIX_LEN, "little") + nodes


# ---------------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True, slots=True)
class Wanted:
    """Which bytes of a blob of ``length`` bytes a slice covers, as half-open byte intervals."""

    length: int
    intervals: tuple[tuple[int, int], ...]

    def touches(self, start: int, end: int) -> bool:
        return any(a < end and b > start for a, b in self.intervals)


def wanted(length: int, ranges: Sequence[Range], *, strict: bool = True, include_last: bool = True) -> Wanted:
    """The intervals a slice for ``ranges`` covers.

    ``strict`` (the wire): every range must have a length ≥ 1 and start inside the blob (at 0 for the empty
    blob), else :class:`RangeOutside`; one that runs past the end is cut there. Not strict (bao's seek semantics,
    for the official vectors): a range of length 0 covers the byte at its offset and an offset at or past the end
    covers the last byte. ``include_last``: the group holding the last byte is always covered, which proves the
    length (the path to it fixes the tree's right edge).
    """
    intervals: list[tuple[int, int]] = []
    last = max(length - 1, 0)
    for offset, size in ranges:
        if offset < 0 or size < 0:
            raise RangeOutside("a range has a negative offset or length")
        if strict:
            if size == 0 or offset > last:
                raise RangeOutside(f"range {offset}+{size} is outside the blob of {length} bytes")
            intervals.append((offset, min(offset + size, length)))
        else:
            start = min(offset, last)
            intervals.append((start, start + max(size, 1)))
    if include_last:
        intervals.append((last, last + 1))
    return Wanted(length, tuple(intervals))


def groups_of(want: Wanted, group_len: int = GROUP_LEN) -> list[int]:
    """Indices of the groups a slice for ``want`` carries, in order."""
    out: set[int] = set()
    count = group_count(want.length, group_len)
    for a, b in want.intervals:
        out.update(range(a // group_len, min(count, -(-b // group_len))))
    return sorted(out) if want.length else [0]


# ---------------------------------------------------------------------------------------------------- encoding
ReadFn = Callable[[int, int], bytes]  # (offset, size) -> exactly that many bytes of the blob


def encode_slice(read: ReadFn, nodes: bytes | memoryview, length: int, want: Wanted,
                 group_len: int = GROUP_LEN, *, with_data: bool = True) -> bytes:
    """The slice covering ``want``: length prefix, then pre-order the parent nodes on the paths to the wanted
    groups (taken from ``nodes``, the outboard without its prefix) and, ``with_data``, the groups' bytes (read
    with ``read``). ``nodes`` must hold :func:`parent_count` nodes; the encoder trusts it (it is this device's
    own outboard) — the receiver verifies everything."""
    _check_group_len(group_len)
    if len(nodes) != parent_count(length, group_len) * NODE_LEN:
        raise ValueError("outboard does not match the length")
    out = [length.to_bytes(LENGTH_PREFIX_LEN, "little")]

    def walk(start: int, end: int, index: int) -> None:
        if end - start <= group_len:
            if with_data:
                data = read(start, end - start)
                if len(data) != end - start:
                    raise ValueError("short read while encoding a slice")
                out.append(data)
            return
        out.append(bytes(nodes[index * NODE_LEN : (index + 1) * NODE_LEN]))
        mid = start + _left_len(end - start)
        if want.touches(start, mid):
            walk(start, mid, index + 1)
        if want.touches(mid, end):
            walk(mid, end, index + group_count(mid - start, group_len))

    walk(0, length, 0)
    return b"".join(out)


def encode_outboard_slice(nodes: bytes | memoryview, length: int, want: Wanted, group_len: int = GROUP_LEN) -> bytes:
    """:func:`encode_slice` without the group bytes (the proof only)."""
    return encode_slice(lambda _o, _n: b"", nodes, length, want, group_len, with_data=False)


# ---------------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True, slots=True)
class VerifiedGroup:
    offset: int  # byte offset of the group in the blob
    data: bytes


@dataclass(frozen=True, slots=True)
class VerifiedNode:
    index: int  # pre-order index of the parent node in the outboard
    node: bytes  # 64 bytes


@dataclass(frozen=True, slots=True)
class _Step:
    """One item of a slice, in stream order: a parent node (``node``) or a group, with where its expected CV
    comes from (the root, or the left/right half of an earlier node step)."""

    node: bool
    start: int
    end: int
    index: int  # pre-order index of a node in the outboard
    parent: int  # step number of the parent node, -1 for the root
    side: int  # 0 left, 1 right
    is_root: bool


class SliceDecoder:
    """Sans-I/O verifier of a slice (or a whole-blob stream, or an outboard with ``with_data=False``).

    ``feed(bytes)`` returns what it verified so far (:class:`VerifiedNode`, :class:`VerifiedGroup`, in stream
    order); nothing is returned before it is verified. ``finish()`` raises :class:`Truncated` if the slice is not
    complete. Errors are raised at the first bad byte that can be judged, and the decoder is unusable after one.
    ``expected_length``: the length the caller knows (from authenticated data); a different prefix is a
    :class:`WrongLength` before anything else. ``max_length`` bounds an unknown one (and with it the work a
    hostile prefix can ask for). The walk is planned once from the length (a list of steps), then bytes are
    matched against it without recursion.
    """

    def __init__(self, root: bytes, ranges: Sequence[Range], *, group_len: int = GROUP_LEN,
                 expected_length: int | None = None, max_length: int = 1 << 26, strict: bool = True,
                 include_last: bool = True, with_data: bool = True, backend: Backend = DEFAULT) -> None:
        _check_group_len(group_len)
        self._root = root
        self._ranges = list(ranges)
        self._group_len = group_len
        self._expected_length = expected_length
        self._max_length = max_length
        self._strict = strict
        self._include_last = include_last
        self._with_data = with_data
        self._backend = backend
        self._buf = b""
        self._steps: list[_Step] | None = None  # planned once the length prefix arrived
        self._pos = 0
        self._nodes: dict[int, bytes] = {}  # step number -> verified node (only while its children are pending)
        self._failed = False
        self.length: int | None = None  # the length the slice claims, once its prefix arrived
        self.want: Wanted | None = None

    @property
    def done(self) -> bool:
        return self._steps is not None and self._pos == len(self._steps)

    def _need(self) -> int:
        if self._steps is None:
            return LENGTH_PREFIX_LEN
        step = self._steps[self._pos]
        return NODE_LEN if step.node else step.end - step.start

    def feed(self, data: bytes | memoryview) -> list[VerifiedNode | VerifiedGroup]:
        if self._failed:
            raise BaoError("slice decoder used after an error")
        if self.done:
            if len(data):
                self._failed = True
                raise Truncated("bytes follow the end of the slice")
            return []
        buf = self._buf + bytes(data) if self._buf else bytes(data)
        view = memoryview(buf)  # slices of immutable bytes: safe to hand out
        used = 0
        out: list[VerifiedNode | VerifiedGroup] = []
        try:
            while not self.done:
                need = self._need()
                if len(buf) - used < need:
                    break
                piece = view[used : used + need]
                used += need
                if self._steps is None:
                    self._start(piece)
                else:
                    self._check(piece, out)
            if self.done and used < len(buf):
                raise Truncated("bytes follow the end of the slice")
        except BaoError:
            self._failed = True
            raise
        self._buf = buf[used:]
        return out

    def finish(self) -> None:
        if not self.done:
            self._failed = True
            raise Truncated("the slice ended early" + (f" (blob of {self.length} bytes)" if self.length else ""))

    def _start(self, prefix: memoryview) -> None:
        length = int.from_bytes(prefix, "little")
        if self._expected_length is not None and length != self._expected_length:
            raise WrongLength(f"the slice claims {length} bytes, the blob has {self._expected_length}")
        if length > self._max_length:
            raise WrongLength(f"the slice claims {length} bytes, more than the limit of {self._max_length}")
        self.length = length
        self.want = want = wanted(length, self._ranges, strict=self._strict, include_last=self._include_last)
        group_len, with_data = self._group_len, self._with_data
        steps: list[_Step] = []

        def plan(start: int, end: int, index: int, parent: int, side: int, is_root: bool) -> None:
            if end - start <= group_len:
                if with_data:
                    steps.append(_Step(False, start, end, index, parent, side, is_root))
                return
            me = len(steps)
            steps.append(_Step(True, start, end, index, parent, side, is_root))
            mid = start + _left_len(end - start)
            if want.touches(start, mid):
                plan(start, mid, index + 1, me, 0, False)
            if want.touches(mid, end):
                plan(mid, end, index + group_count(mid - start, group_len), me, 1, False)

        plan(0, length, 0, -1, 0, True)
        self._steps = steps

    def _check(self, piece: memoryview, out: list[VerifiedNode | VerifiedGroup]) -> None:
        assert self._steps is not None
        step = self._steps[self._pos]
        if step.parent < 0:
            expected = self._root
        else:
            node = self._nodes[step.parent]
            expected = node[step.side * CV_LEN : (step.side + 1) * CV_LEN]
            if step.side == 1:
                del self._nodes[step.parent]  # a right child is the last to need its parent
        if step.node:
            node = bytes(piece)
            if not hmac.compare_digest(self._backend.parent_cv(node[:CV_LEN], node[CV_LEN:], step.is_root),
                                       expected):
                raise WrongProof(f"parent node above byte {step.start} does not match the tree")
            self._nodes[self._pos] = node
            out.append(VerifiedNode(step.index, node))
        else:
            cv = self._backend.subtree_cv(piece, step.start // CHUNK_LEN, step.is_root)
            if not hmac.compare_digest(cv, expected):
                raise WrongGroup(f"group at byte {step.start} does not match the tree")
            out.append(VerifiedGroup(step.start, bytes(piece)))
        self._pos += 1


def decode_slice(root: bytes, slice_bytes: bytes | memoryview, ranges: Sequence[Range], **options: object) -> bytes:
    """Verify a complete slice and return the bytes of ``ranges`` (joined, in the order given)."""
    decoder = SliceDecoder(root, ranges, **options)  # type: ignore[arg-type]
    groups = [item for item in decoder.feed(slice_bytes) if isinstance(item, VerifiedGroup)]
    decoder.finish()
    assert decoder.want is not None
    return extract(groups, decoder.want.intervals[: len(ranges)])


def extract(groups: Iterable[VerifiedGroup], intervals: Iterable[tuple[int, int]]) -> bytes:
    """The bytes of the half-open ``intervals`` from verified groups (which must cover them)."""
    by_offset = sorted(groups, key=lambda g: g.offset)
    out = bytearray()
    for a, b in intervals:
        for group in by_offset:
            g_end = group.offset + len(group.data)
            if group.offset < b and g_end > a:
                out += group.data[max(a, group.offset) - group.offset : min(b, g_end) - group.offset]
    return bytes(out)


# ---------------------------------------------------------------------------------------------------- outboards
def verify_outboard(root: bytes, length: int, nodes: bytes | memoryview, group_len: int = GROUP_LEN, *,
                    backend: Backend = DEFAULT) -> None:
    """Check that a stored outboard (without prefix) is the tree of a blob with ID ``root`` and ``length`` bytes,
    down to the chaining values of the groups (which only the groups' bytes can confirm): :class:`BaoError`."""
    if len(nodes) != parent_count(length, group_len) * NODE_LEN:
        raise WrongLength(f"outboard of {len(nodes)} bytes for a blob of {length} bytes")
    decoder = SliceDecoder(root, [(0, length)] if length else [], group_len=group_len, expected_length=length,
                           with_data=False, backend=backend, strict=False)
    decoder.feed(length.to_bytes(LENGTH_PREFIX_LEN, "little") + bytes(nodes))
    decoder.finish()


def group_cvs(root: bytes, length: int, nodes: bytes | memoryview, group_len: int = GROUP_LEN) -> list[bytes]:
    """The chaining value each group must have, read from a trusted outboard (index = group number)."""
    out: list[bytes] = []

    def walk(start: int, end: int, index: int, cv: bytes) -> None:
        if end - start <= group_len:
            out.append(cv)
            return
        node = nodes[index * NODE_LEN : (index + 1) * NODE_LEN]
        mid = start + _left_len(end - start)
        walk(start, mid, index + 1, bytes(node[:CV_LEN]))
        walk(mid, end, index + group_count(mid - start, group_len), bytes(node[CV_LEN:]))

    walk(0, length, 0, root)
    return out


def verify_group(expected_cv: bytes, group_index: int, data: bytes | memoryview, *, is_root: bool,
                 group_len: int = GROUP_LEN, backend: Backend = DEFAULT) -> bool:
    """Whether ``data`` is group ``group_index`` with chaining value ``expected_cv`` (``is_root`` for a blob of
    one group, whose group CV is the blob ID)."""
    cv = backend.subtree_cv(data, group_index * group_len // CHUNK_LEN, is_root)
    return hmac.compare_digest(cv, expected_cv)


def verify_blob(root: bytes, nodes: bytes | memoryview, data: bytes | memoryview, group_len: int = GROUP_LEN, *,
                backend: Backend = DEFAULT) -> None:
    """Check a whole blob and its outboard (without prefix) against the blob ID, one group at a time, as a
    receiver of the combined stream would: :class:`BaoError` at the first bad node or group."""
    length = len(data)
    if len(nodes) != parent_count(length, group_len) * NODE_LEN:
        raise WrongLength(f"outboard of {len(nodes)} bytes for a blob of {length} bytes")
    everything = wanted(length, [(0, length)], strict=False)
    view = memoryview(data)
    stream = encode_slice(lambda o, n: view[o : o + n], nodes, length, everything, group_len)
    decoder = SliceDecoder(root, [(0, length)], group_len=group_len, strict=False, backend=backend)
    decoder.feed(stream)
    decoder.finish()
