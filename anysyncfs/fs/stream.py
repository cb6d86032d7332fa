"""Sealing a sequential writer's bytes as they arrive, instead of staging them and reading them back at commit.

A file written front to back (``dd``, ``cp``, a download, an editor's save) used to cost, per byte: sealing a
4 KiB staging block and writing it, then at commit reading and opening that block again before cutting and
sealing the chunk. A :class:`SealStream` takes such a writer's bytes straight from the write call: it keeps the
not yet final end of the file in memory, cuts it with the space's keyed FastCDC, and seals every chunk as soon as
it is final (on one worker thread, a few chunks in flight), handing the blob to ``put_blob`` in file order (the open batch: written without fsync, made durable by the group
commit timer in the background, or at the fsync). The staging files never see these bytes.

The cuts are those of cutting the whole file at once: a chunk starting at ``s`` is decided by at most
``max_size`` bytes from ``s`` on, so a chunk is sealed only once ``max_size`` bytes from its start are in memory
(the finality rule of :func:`..core.chunking.iter_chunks`), and a stream that starts at an append re-cuts from
the start of the file's last chunk, which is the only chunk an end of file can have cut short (the rule of
:func:`.commit.plan_regions`).

The stream is a front layer of :class:`.staging.Staged`: while it lasts, every byte of the file below its end
comes from it (its sealed prefix, then its buffered tail). Anything but an append (a write elsewhere, a
truncation, the commit) **settles** it: the sealed prefix becomes the staged overlay's base content and the tail
goes to the staging files as an ordinary dirty range, so every other path (reads, planning regions, commit) is
the one that exists for staged writes. Crash semantics do not change: blobs of a file not committed yet are
unreferenced, as those of a commit that had not finished were.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..core import blob as blobs
from ..core.chunking import ChunkParams
from ..core.ops import ChunkRef, Extent

PutBlob = Callable[[bytes, bytes], None]

# Bytes of tail buffered beyond max_size before a cut: each cut seals at least this much, and the carried part
# (under max_size) moves to the buffer's front. 4 MiB keeps the buffer and its translated copy at 16 MiB together
# (default parameters) while the move costs under a byte per byte sealed.
CUT_EVERY = 4 << 20
_TRANSLATE_PIECE = 256 << 10  # translated while still in the CPU cache (see core/chunking.py)
_ZERO_PROBE = bytes(64)
# Sealing (the chunk key's BLAKE3, the compression probe, AES-GCM, the blob ID) runs on one worker thread while
# the FUSE thread takes the next write, translates and cuts it: two cores in use. At most this many chunks are in
# flight (a few MiB): the writer waits for the oldest beyond that.
SEAL_WINDOW = 3
_sealer: ThreadPoolExecutor | None = None


def _seal_pool() -> ThreadPoolExecutor:
    global _sealer  # noqa: PLW0603 - one worker for the process, started on first use
    if _sealer is None:
        _sealer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anysyncfs-seal")
    return _sealer


def _is_zero(data: memoryview) -> bool:
    if data[: len(_ZERO_PROBE)] != _ZERO_PROBE[: min(len(_ZERO_PROBE), len(data))]:
        return False
    whole = bytes(data)
    return whole.count(0) == len(whole)


class SealStream:
    """The bytes of one file from offset 0 up to :attr:`end`: chunks already sealed (:attr:`sealed`, covering
    ``[0, start)``, holes left out) and a buffered tail ``[start, end)`` not cut for good yet. Not thread-safe
    (the Vfs lock covers it)."""

    def __init__(self, params: ChunkParams, key_base: bytes, put_blob: PutBlob, *,
                 sealed: list[Extent], start: int, tail: bytes | memoryview = b"") -> None:  # fmt: skip
        self._params = params
        self._key_base = key_base
        self._put_blob = put_blob
        self._cutter = params.chunker()
        self._translation = params.translation
        self.sealed = sealed
        self.start = start
        # Chunks handed to the sealing thread, in file order; their bytes are copies (the buffer moves on).
        self._pending: deque[tuple[int, Future[tuple[ChunkRef, bytes]]]] = deque()
        capacity = params.max_size + CUT_EVERY
        self._buf = memoryview(bytearray(max(capacity, len(tail))))
        # Keyed chunking cuts the translated bytes: keep the translation of the buffered tail beside it, so each
        # byte is translated once (public parameters cut the bytes themselves).
        self._cut_buf = self._buf if self._translation is None else memoryview(bytearray(len(self._buf)))
        self._fill = 0
        self._seen: set[bytes] = set()
        self.append(tail)

    @property
    def end(self) -> int:
        return self.start + self._fill

    @property
    def buffered(self) -> int:
        return self._fill

    def tail(self) -> memoryview:
        """The buffered bytes ``[start, end)`` (a view: valid until the next append)."""
        return self._buf[: self._fill]

    def drain(self) -> None:
        """Wait for every chunk in flight and store it: :attr:`sealed` then covers ``[0, start)``. A failed store
        (disk full) leaves that chunk first in line, so calling again retries it."""
        while self._pending:
            self._store_first()

    def abandon(self) -> None:
        """Drop the chunks in flight without storing them (the file was truncated to nothing: no byte of this
        stream is the file's any more, and a full disk must not fail the truncation that frees it)."""
        for _offset, future in self._pending:
            if not future.cancel():
                future.exception()  # a seal already running is waited for; its result is not used
        self._pending.clear()

    def _store_first(self) -> None:
        offset, future = self._pending[0]
        ref, blob = future.result()
        if ref.blob not in self._seen:
            self._put_blob(ref.blob, blob)
            self._seen.add(ref.blob)
        self._pending.popleft()
        self.sealed.append(Extent(offset=offset, chunk=ref))

    def append(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            room = len(self._buf) - self._fill
            if room == 0:
                self._cut()
                continue
            n = min(room, len(view))
            lo = self._fill
            self._buf[lo : lo + n] = view[:n]
            if self._translation is not None:
                for at in range(lo, lo + n, _TRANSLATE_PIECE):
                    hi = min(at + _TRANSLATE_PIECE, lo + n)
                    self._cut_buf[at:hi] = self._buf[at:hi].tobytes().translate(self._translation)
            self._fill += n
            view = view[n:]

    def _cut(self) -> None:
        """Seal every chunk of the buffer that is final, and move the rest to the buffer's front."""
        fill = self._fill
        safe_end = fill - self._params.max_size + 1  # chunks starting before this are final
        done = 0
        try:
            for chunk in self._cutter.cut_buf(self._cut_buf[:fill]):
                if chunk.offset >= safe_end:
                    break
                end = chunk.offset + chunk.length
                self._seal(self.start + chunk.offset, self._buf[chunk.offset : end])
                done = end
        finally:  # a failed put (disk full) keeps every chunk sealed before it: the state stays exact
            if done:
                self._drop_front(done)

    def _drop_front(self, done: int) -> None:
        fill = self._fill
        rest = fill - done
        self._buf[:rest] = self._buf[done:fill]  # memoryview assignment: overlap-safe
        if self._cut_buf is not self._buf:
            self._cut_buf[:rest] = self._cut_buf[done:fill]
        self._fill = rest
        self.start += done

    def _seal(self, offset: int, data: memoryview) -> None:
        if _is_zero(data):
            return  # a hole, as in every commit
        while len(self._pending) >= SEAL_WINDOW:
            self._store_first()
        self._pending.append((offset, _seal_pool().submit(blobs.seal_chunk, bytes(data), self._key_base)))
