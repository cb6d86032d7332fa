"""Range GetBlob over real loopback TCP (protocol.md 70.12): a real node serves verified slices; a device fetches
a blob in windows, verifies every 16 KiB group before recording it, keeps the verified part, and drops a peer that
sends a wrong group, a wrong proof node, a truncated stream, a wrong length or a slice for other ranges — at the
first bad group, with nothing of it stored — then finishes from another peer where it left off."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hostile import (
    HANGUP_BOUND_S,
    HostileProvider,
    SpaceCopy,
    blob_slice,
    connected,
    flip,
    running_node,
    serving,
)
from test_hostile import MakeHome, add_peer, content, engine, replicas

from anysyncfs.core import bao
from anysyncfs.errors import NotFound
from anysyncfs.net import range_fetch
from anysyncfs.net.connection import RemoteError
from anysyncfs.protocol import messages as m
from anysyncfs.replica.files import put_file

G = bao.GROUP_LEN


def lazy_blob(make_home: MakeHome, size: int = 260_000):
    """Two devices of one space: ``a`` wrote /lazy.bin, ``b`` has the change but not its blob (the largest one;
    below the space's minimum chunk size of 256 KiB the file is one blob)."""
    a, b = replicas(make_home)
    data = os.urandom(size)
    change = put_file(a, "/lazy.bin", data)
    b.ingest_batch([change.raw])
    blob = max((x for x in a.blob_ids() if not b.blobs.has(x)), key=lambda x: len(a.get_blob(x)))
    return a, b, blob, data


async def test_a_node_serves_verified_ranges(tmp_path: Path, make_home: MakeHome,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    a, _b, blob, _ = lazy_blob(make_home)  # one blob of 17 groups
    raw = a.get_blob(blob)
    async with running_node(tmp_path / "node") as (_node, address):
        add_peer(a, address)
        assert (await engine(a).sync_once()).errors == []
        # The node stored the outboard the device sent with PutBlob (checked against the ID on arrival).
        on_node = tmp_path / "node" / "blobs" / blob.hex()[:2] / (blob.hex()[2:] + ".ob")
        assert on_node.read_bytes() == bao.outboard_nodes(raw)[1]
        async with connected(address, a.identity) as conn:
            ranges = [(5 * G + 100, 4096)]
            reply = await conn.request(m.GetBlobRanges(a.space_id, blob, ranges), timeout=HANGUP_BOUND_S)
            assert isinstance(reply, m.BlobSlice)
            got = bao.decode_slice(blob, reply.slice, ranges, expected_length=len(raw))
            assert got == raw[5 * G + 100 :][:4096]
            # one group for the range, one for the last byte, and the proof nodes: far below the blob
            assert len(reply.slice) <= 2 * G + 8 + 2 * 5 * 64 < len(raw) // 4
            for outside in (len(raw), len(raw) + 5):
                with pytest.raises(RemoteError) as refused:
                    await conn.request(m.GetBlobRanges(a.space_id, blob, [(outside, 1)]), timeout=HANGUP_BOUND_S)
                assert refused.value.code == m.ErrorCode.BAD_REQUEST and "outside" in str(refused.value)
            monkeypatch.setattr(m, "MAX_SLICE_GROUPS", 8)  # the node's bound on groups per answer (4 MiB)
            with pytest.raises(RemoteError) as too_many:
                await conn.request(m.GetBlobRanges(a.space_id, blob, [(0, 9 * G)]), timeout=HANGUP_BOUND_S)
            assert too_many.value.code == m.ErrorCode.BAD_REQUEST and "ask in parts" in str(too_many.value)
            reply = await conn.request(m.GetBlobRanges(a.space_id, blob, [(0, 8 * G)]), timeout=HANGUP_BOUND_S)
            assert bao.decode_slice(blob, reply.slice, [(0, 8 * G)]) == raw[: 8 * G]


async def test_a_device_fetches_a_blob_by_windows_from_a_node(tmp_path: Path, make_home: MakeHome,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(range_fetch, "WINDOW_GROUPS", 4)  # 64 KiB windows: several round trips
    a, b, blob, data = lazy_blob(make_home)
    async with running_node(tmp_path / "node") as (_node, address):
        add_peer(a, address)
        assert (await engine(a).sync_once()).errors == []
        sync = engine(b)
        with trio.fail_after(HANGUP_BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, address)
                await sync.fetch_blob(blob, timeout=10.0)
                nursery.cancel_scope.cancel()
    assert content(b, "/lazy.bin") == data
    assert Path(str(b.blobs.path_of(blob)) + ".ob").is_file()  # the outboard is computed on arrival
    assert not any((b.blobs.root / "partial").iterdir())  # the partial is gone once the blob is whole


Tamper = Callable[[Any, Any], Any]


def _nth_window(n: int, tamper: Callable[[m.GetBlobRanges, bytes], bytes]) -> Tamper:
    """Answer the first ``n`` windows honestly, then tamper with the slice of every later one."""
    seen = [0]

    def answer(body: m.GetBlobRanges, honest: Any) -> Any:
        seen[0] += 1
        if seen[0] <= n:
            return honest
        return m.BlobSlice(tamper(body, honest.slice))

    return answer


def _other_ranges(data_of: Callable[[], bytes]) -> Callable[[m.GetBlobRanges, bytes], bytes]:
    return lambda body, honest: blob_slice(data_of(), [(0, 1)])


# Each case: what the hostile peer does to the slice of the second window, and what the device then logs.
CASES: dict[str, Callable[[m.GetBlobRanges, bytes], bytes]] = {
    "wrong group": lambda body, s: flip(s, -1),  # the last byte of the last group
    "wrong proof node": lambda body, s: flip(s, 8 + 3),  # the first parent node
    "truncated": lambda body, s: s[: len(s) // 2],
    "wrong length": lambda body, s: (int.from_bytes(s[:8], "little") + G).to_bytes(8, "little") + s[8:],
    "length that puts the range outside": lambda body, s: (100).to_bytes(8, "little") + s[8:],
}
LOGGED: dict[str, Callable[[int], str]] = {  # blob length -> a fragment of the warning
    "wrong group": lambda n: f"group at byte {(n - 1) // G * G} does not match",  # the last group
    "wrong proof node": lambda n: "parent node above byte 0 does not match",
    "truncated": lambda n: "the slice ended early",
    "wrong length": lambda n: f"the slice claims {n + G} bytes, the blob has {n}",
    "length that puts the range outside": lambda n: "the slice claims 100 bytes",
    "other ranges": lambda n: "does not match",
}


@pytest.mark.parametrize("case", [*CASES, "other ranges"])
async def test_a_hostile_peer_is_dropped_at_the_first_bad_group_and_another_finishes(
        make_home: MakeHome, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, case: str) -> None:
    monkeypatch.setattr(range_fetch, "WINDOW_GROUPS", 4)
    a, b, blob, data = lazy_blob(make_home)
    raw = a.get_blob(blob)
    hostile = HostileProvider(SpaceCopy.of(a))
    tamper = CASES.get(case) or _other_ranges(lambda: raw)
    hostile.tamper[m.GetBlobRanges] = _nth_window(1, tamper)
    honest = HostileProvider(SpaceCopy.of(a))  # answers honestly; records what it was asked
    sync = engine(b)
    async with serving(hostile) as bad_address, serving(honest) as good_address:
        with trio.fail_after(HANGUP_BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, bad_address)
                while not sync._conns:
                    await trio.sleep(0.01)
                # Only the hostile peer: the fetch fails, having kept the first (verified) window.
                with pytest.raises(NotFound, match="could not be fetched"):
                    await sync.fetch_blob(blob, timeout=1.0)
                assert hostile.only_connection().ended.is_set()  # dropped
                assert [r for r in caplog.records if "sent a bad blob" in r.getMessage()
                        and LOGGED[case](len(raw)) in r.getMessage()], caplog.text
                length, have = sync._partials.state(blob)
                assert length == len(raw) and have == {0, 1, 2, 3, len(raw) // G}  # window 1 and the last group
                assert not b.blobs.has(blob)
                with pytest.raises(NotFound):
                    content(b, "/lazy.bin")
                # Another peer: the fetch resumes after the verified groups and completes.
                nursery.start_soon(sync.hold_connection, good_address)
                await sync.fetch_blob(blob, timeout=10.0)
                nursery.cancel_scope.cancel()
    asked = [r.ranges for r in honest.only_connection().requests if isinstance(r, m.GetBlobRanges)]
    assert asked[0] == [(4 * G, 4 * G)]  # it did not ask again for what it had verified
    assert content(b, "/lazy.bin") == data


async def test_partial_blobs_serve_what_they_hold(tmp_path: Path) -> None:
    from anysyncfs.store.partial import PartialBlobs

    data = os.urandom(10 * G + 5)
    root, nodes = bao.outboard_nodes(data)
    partials = PartialBlobs(tmp_path / "partial", max_blob_len=1 << 24)
    ranges = [(2 * G, 3 * G)]
    length, items = range_fetch.verify_slice(root, ranges, blob_slice(data, ranges), None, 1 << 24)
    assert partials.record(root, length, items) == {2, 3, 4, 10}
    served = partials.read_slice(root, [(3 * G + 7, 100)])
    assert bao.decode_slice(root, served, [(3 * G + 7, 100)], expected_length=len(data)) == data[3 * G + 7 :][:100]
    with pytest.raises(NotFound):
        partials.read_slice(root, [(0, 10)])  # group 0 is not held
    assert partials.complete_data(root) is None
    # A damaged partial is never served: it is dropped.
    path = tmp_path / "partial" / f"{root.hex()}.data"
    raw = bytearray(path.read_bytes())
    raw[3 * G + 50] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(bao.WrongGroup):
        partials.read_slice(root, [(3 * G + 7, 100)])
    assert partials.state(root) is None


def test_a_device_serves_whole_and_partial_blobs(tmp_path: Path) -> None:
    from anysyncfs.store.blobfiles import BlobFiles
    from anysyncfs.store.partial import PartialBlobs

    blobs = BlobFiles(tmp_path / "blobs")
    partials = PartialBlobs(tmp_path / "blobs" / "partial", max_blob_len=1 << 24)
    whole = os.urandom(3 * G + 1)
    whole_id = bao.root_hash(whole)
    blobs.put(whole_id, whole)
    part = os.urandom(6 * G)
    part_id, _ = bao.outboard_nodes(part)
    length, items = range_fetch.verify_slice(part_id, [(G, 10)], blob_slice(part, [(G, 10)]), None, 1 << 24)
    partials.record(part_id, length, items)
    for blob_id, data, ranges in ((whole_id, whole, [(2 * G, 100)]), (part_id, part, [(G + 5, 20)])):
        served = range_fetch.serve_slice(blobs, partials, blob_id, ranges)
        assert bao.decode_slice(blob_id, served, ranges) == data[ranges[0][0]:][: ranges[0][1]]
    with pytest.raises(NotFound):
        range_fetch.serve_slice(blobs, partials, part_id, [(0, 1)])
    assert sorted(blobs.iter_ids()) == [whole_id]  # partial blobs are not blob files
