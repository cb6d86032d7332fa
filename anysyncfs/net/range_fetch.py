"""Fetching a blob by verified ranges (docs/protocol.md 70.12): ``GetBlobRanges`` → ``BlobSlice``.

A whole blob is asked for in windows of at most :data:`WINDOW_GROUPS` groups (4 MiB), each answer verified group
by group (:class:`~anysyncfs.core.bao.SliceDecoder`) and recorded in the device's partial blobs before the next
window is asked, so a peer that turns out bad costs at most one window and the fetch goes on from the groups
already verified — with the same peer's successor. The first answer proves the blob's length (a slice always
carries the last group); every later one must claim exactly that length.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..core import bao
from ..errors import ProtocolError
from ..protocol import messages as m
from ..store.blobfiles import BlobFiles
from ..store.partial import PartialBlobs
from .connection import Connection

WINDOW_GROUPS = m.MAX_SLICE_GROUPS


def next_window(length: int | None, have: set[int]) -> list[bao.Range] | None:
    """The ranges to ask next for a whole blob: the first run of missing groups (at most a window); None when
    every group is held. Before the length is known, the first window from offset 0 (cut by the responder at the
    blob's end)."""
    if length is None:
        return [(0, WINDOW_GROUPS * bao.GROUP_LEN)]
    count = bao.group_count(length)
    first = next((g for g in range(count) if g not in have), None)
    if first is None:
        return None
    end = first
    while end < count and end not in have and end - first < WINDOW_GROUPS:
        end += 1
    start = first * bao.GROUP_LEN
    return [(start, max(1, min(end * bao.GROUP_LEN, length) - start))]


def verify_slice(blob_id: bytes, ranges: Sequence[bao.Range], data: bytes, length: int | None,
                 max_length: int) -> tuple[int, list[bao.VerifiedNode | bao.VerifiedGroup]]:
    """(verified length, verified items) of one answer, or :class:`bao.BaoError` at the first bad group."""
    decoder = bao.SliceDecoder(blob_id, ranges, expected_length=length, max_length=max_length)
    items = decoder.feed(data)
    decoder.finish()
    assert decoder.length is not None
    return decoder.length, items


async def fetch_ranges(conn: Connection, space_id: bytes, blob_id: bytes, ranges: Sequence[bao.Range], *,
                       length: int | None, max_length: int) -> tuple[int, list[bao.VerifiedNode | bao.VerifiedGroup]]:
    """One ``GetBlobRanges`` round trip, verified off the trio thread (the hashing runs in C without the GIL)."""
    reply = await conn.request(m.GetBlobRanges(space_id, blob_id, list(ranges)))
    if not isinstance(reply, m.BlobSlice):
        raise ProtocolError(f"expected BlobSlice, got {type(reply).__name__}")
    return await trio.to_thread.run_sync(verify_slice, blob_id, ranges, reply.slice, length, max_length)


def assemble(length: int, items: Sequence[bao.VerifiedNode | bao.VerifiedGroup]) -> tuple[bytes, bytes] | None:
    """(bytes, outboard nodes) of a blob when ``items`` (verified, in slice order) hold every group, else None.
    A slice wanting every group visits every node and group, in pre-order: groups left to right, nodes by index."""
    groups = [i.data for i in items if isinstance(i, bao.VerifiedGroup)]
    if len(groups) != bao.group_count(length):
        return None
    nodes = [i.node for i in items if isinstance(i, bao.VerifiedNode)]
    assert len(nodes) == bao.parent_count(length)
    return b"".join(groups), b"".join(nodes)


async def fetch_whole(conn: Connection, space_id: bytes, blob_id: bytes,
                      partials: PartialBlobs) -> tuple[bytes, bytes]:
    """Every group of a blob, from ``conn``, resuming from (and adding to) the partial blob held; returns the
    bytes and the outboard nodes once complete (the caller stores them through the blob files, which hash the
    bytes whole once more and check the nodes). A blob that fits one window never touches the partial files."""
    while True:
        held = await trio.to_thread.run_sync(partials.state, blob_id)
        length, have = held if held is not None else (None, set())
        if length is not None:
            done = await trio.to_thread.run_sync(partials.complete_data, blob_id)
            if done is not None:
                return done
        ranges = next_window(length, have)
        if ranges is None:  # every group recorded but the data file is short: the partial is damaged
            await trio.to_thread.run_sync(partials.delete, blob_id)
            continue
        length, items = await fetch_ranges(conn, space_id, blob_id, ranges, length=length,
                                           max_length=partials.max_blob_len)
        if held is None and (whole := assemble(length, items)) is not None:
            return whole
        await trio.to_thread.run_sync(partials.record, blob_id, length, items)


def serve_slice(blobs: BlobFiles, partials: PartialBlobs, blob_id: bytes, ranges: Sequence[bao.Range]) -> bytes:
    """(blocking) What a device answers to ``GetBlobRanges``: the slice from its whole blob file if it has one,
    else from the groups of its partial blob (:class:`NotFound` when a group asked for is not held). Both paths
    verify what they read before it leaves. For the device listener (devices answering requests: issue 13)."""
    if blobs.has(blob_id):
        return blobs.read_slice(blob_id, ranges)
    return partials.read_slice(blob_id, ranges)
