"""Hostile peers over real loopback TCP: forged data, malformed and oversized frames, garbage, stalls, strangers.

Every hostile party here completes TLS 1.3 and (unless the case is about the handshake) the session handshake for
real, so the honest side has authenticated it before the abuse starts. Each case checks three things: the bad
input was refused (or timed out), the connection was closed, and the honest side is unaffected — a device's
replica keeps its heads and tree and still reads its files; a node still serves an honest member.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from hostile import (
    HANGUP_BOUND_S,
    HostileProvider,
    NodeThread,
    RawBytes,
    RawClient,
    RecordLogs,
    Refuse,
    SpaceCopy,
    connected,
    duplicate_extension_cert,
    flip,
    open_space_as,
    random_identity,
    running_node,
    serving,
    tcp_garbage_hangup,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import crypto, keys
from anysyncfs.core.address import PeerAddress
from anysyncfs.core.change import parse_change
from anysyncfs.errors import NetworkError, NotFound, ProtocolError
from anysyncfs.net.connection import RemoteError, Timeouts
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.net.runner import Runner
from anysyncfs.net.sync import SpaceSync
from anysyncfs.net.tls import TlsIdentity, make_tls_identity
from anysyncfs.protocol import messages as m
from anysyncfs.protocol.frames import (
    LENGTH,
    MAX_FRAME_LEN,
    SMALL_FRAME_LEN,
    FrameType,
    encode_frame,
)
from anysyncfs.replica import Replica, adopt_space, create_space
from anysyncfs.replica.files import put_file, read_file, resolve
from anysyncfs.replica.home import Unlocked
from tests.conftest import eventually

HELLO_TEXT = b"hello from a"
GARBAGE = random.Random(7).randbytes(70_000)  # more than any handshake frame may hold: it cannot just be waited on
SHORT = Timeouts(handshake=2.0, frame=0.5, request=20.0)
MakeHome = Callable[..., Unlocked]


# ------------------------------------------------------------------------------------------------ helpers
def replicas(make_home: MakeHome, count: int = 2) -> list[Replica]:
    """Devices of one account holding one space, in sync: the first (a) writes the changes that get forged, the
    second (b) is the honest device under attack."""
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    put_file(a, "/hello.txt", HELLO_TEXT)
    return [a] + [copy_of(a, make_home(f"device{i}", phrase)) for i in range(1, count)]


def copy_of(a: Replica, home: Unlocked) -> Replica:
    """Another device's replica of ``a``'s space, holding every change and blob ``a`` has now."""
    b = adopt_space(home, "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    b.ingest_batch(a.get_changes(a.change_ids(), 1 << 40))
    for blob in a.blob_ids():
        b.put_fetched_blob(blob, a.get_blob(blob))
    return b


def content(replica: Replica, path: str) -> bytes:
    return b"".join(read_file(replica, resolve(replica.tree, path)))


def state(replica: Replica) -> tuple[object, ...]:
    """Everything a hostile peer must not move, read back from the store as well as from memory."""
    return (replica.heads, replica.store.heads(replica.space_id), sorted(replica.change_ids()),
            replica.tree.canonical(), content(replica, "/hello.txt"))


def engine(replica: Replica, timeouts: Timeouts | None = None, **kw: object) -> SpaceSync:
    return SpaceSync(replica, Endpoint(replica.identity, timeouts=timeouts), Runner(), **kw)  # type: ignore[arg-type]


def add_peer(replica: Replica, address: PeerAddress) -> None:
    replica.store.add_peer(replica.space_id, str(address), address.device)


async def run_until_refused(sync: SpaceSync, provider: HostileProvider, address: PeerAddress) -> str:
    """Run the engine as a mount does until it gives up on the provider; return the peer status error."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run_forever)
        await eventually(lambda: bool(provider.connections) and provider.connections[0].ended.is_set(),
                         "the device hung up on the provider")
        await eventually(lambda: str(address) in sync.peers and bool(sync.peers[str(address)].last_error),
                         "the peer status shows an error")
        nursery.cancel_scope.cancel()
    return sync.peers[str(address)].last_error


def recorded_error(replica: Replica, address: PeerAddress) -> str:
    (row,) = [r for r in replica.store.peers(replica.space_id) if r.address == str(address)]
    return row.last_error or ""


async def pushed_to_node(a: Replica, address: PeerAddress) -> None:
    add_peer(a, address)
    report = await engine(a).sync_once()
    assert report.reached == 1 and report.errors == []


async def node_state(node: Node, space_id: bytes) -> tuple[list[bytes], tuple[bytes, ...], list[bytes]]:
    """(change IDs, heads, blob IDs) of a space on a node, read under the node's own lock."""
    ledger = await node.run(node._ledger, space_id)
    return await node.run(lambda: (sorted(ledger.change_ids()), ledger.heads, ledger.blob_ids()))


# ------------------------------------------------------------------------------------------------ 1, 2: forged changes
@pytest.mark.trio
async def test_a_change_with_a_forged_signature_is_not_applied(make_home: MakeHome) -> None:
    a, b = replicas(make_home)
    before = state(b)
    new = put_file(a, "/evil.txt", b"a real change, then a forged signature")
    # The last 64 bytes of a change are its signature. A change's ID covers them, so the provider reconciles
    # under the forged change's ID: the device asks for exactly those bytes, and only the signature is wrong.
    forged = flip(new.raw, -10)
    copy = SpaceCopy.of(a)
    del copy.changes[new.id]
    copy.changes[crypto.blake3(forged)] = forged
    provider = HostileProvider(copy)
    async with serving(provider) as address:
        add_peer(b, address)
        error = await run_until_refused(engine(b), provider, address)
    assert "invalid data" in error and "signature" in error
    assert "signature" in recorded_error(b, address)
    conn = provider.only_connection()  # hung up, and not dialled again at once (hostile peers are backed off)
    asked = [r.ids for r in conn.requests if isinstance(r, m.GetChanges)]
    assert conn.established and asked == [[crypto.blake3(forged)]]
    assert state(b) == before
    with pytest.raises(NotFound):
        resolve(b.tree, "/evil.txt")


@pytest.mark.trio
@pytest.mark.parametrize("forgery", ["another-valid-change", "flipped-ciphertext-byte"])
async def test_a_change_that_is_not_the_one_asked_for_is_not_applied(make_home: MakeHome, forgery: str) -> None:
    a, b, c = replicas(make_home, 3)
    before = state(b)
    asked = put_file(a, "/asked.txt", b"the change the device will ask for")
    copy = SpaceCopy.of(a)
    if forgery == "another-valid-change":
        # A valid, correctly signed change the provider keeps out of reconciliation, sent in place of the one the
        # device asked for: its parents are known to the device, so only the ID check can refuse it.
        sibling = put_file(c, "/sibling.txt", b"never asked for")
        copy.changes[sibling.id] = sibling.raw
        copy.hidden.add(sibling.id)
        substitute = {asked.id: sibling.raw}
    else:
        ciphertext = parse_change(asked.raw).ciphertext
        at = asked.raw.index(ciphertext) + len(ciphertext) // 2
        substitute = {asked.id: flip(asked.raw, at)}
    provider = HostileProvider(copy)
    provider.tamper[m.GetChanges] = lambda body, honest: m.Changes(
        [substitute.get(cid, copy.changes[cid]) for cid in body.ids])
    async with serving(provider) as address:
        add_peer(b, address)
        error = await run_until_refused(engine(b), provider, address)
    assert "invalid data" in error
    conn = provider.only_connection()
    assert [r.ids for r in conn.requests if isinstance(r, m.GetChanges)] == [[asked.id]]
    assert state(b) == before
    for path in ("/asked.txt", "/sibling.txt"):
        with pytest.raises(NotFound):
            resolve(b.tree, path)


# ------------------------------------------------------------------------------------------------ 3: a forged blob
@pytest.mark.trio
async def test_a_blob_that_does_not_match_its_id_is_not_stored(make_home: MakeHome) -> None:
    a, b = replicas(make_home)
    lazy = put_file(a, "/lazy.bin", os.urandom(5000))
    b.ingest_batch([lazy.raw])  # b has the change (metadata) but not the content
    missing = [blob for blob in a.blob_ids() if not b.blobs.has(blob)]
    assert missing
    before = state(b)
    provider = HostileProvider(SpaceCopy.of(a))
    provider.tamper[m.GetBlobRanges] = lambda body, honest: m.BlobSlice(flip(honest.slice, -1))
    sync = engine(b)
    async with serving(provider) as address:
        with trio.fail_after(HANGUP_BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, address)
                with pytest.raises(NotFound, match="could not be fetched"):
                    await sync.fetch_blob(missing[0], timeout=2.0)
                # the engine aborted the connection: the holder ends by itself, no cancellation needed
    conn = provider.only_connection()
    assert conn.ended.is_set() and [r.blob for r in conn.requests if isinstance(r, m.GetBlobRanges)] == [missing[0]]
    assert not b.blobs.has(missing[0]) and missing[0] not in b.blob_ids()
    assert state(b) == before
    with pytest.raises(NotFound):
        content(b, "/lazy.bin")


# ------------------------------------------------------------------------------------------------ 4: oversized frames
def oversized_header(kind: FrameType, limit: int) -> bytes:
    """The 5-byte header of a frame one byte over ``kind``'s body limit (no body: it must never be awaited)."""
    return LENGTH.pack(limit + 2) + bytes([kind])


@pytest.mark.trio
async def test_an_oversized_frame_from_a_client_closes_that_connection_only(tmp_path: Path,
                                                                            make_home: MakeHome) -> None:
    (a,) = replicas(make_home, 1)
    async with running_node(tmp_path / "node") as (node, address):
        await pushed_to_node(a, address)
        before = await node_state(node, a.space_id)
        with RecordLogs() as logs:
            # after the handshake: a request over the largest frame there is
            client = await RawClient.connect(address, a.identity)
            await client.send(oversized_header(FrameType.REQUEST, MAX_FRAME_LEN))
            await client.hangup()
            # during the handshake: a Hello over the handshake limit
            client = await RawClient.connect(address, a.identity, hello=oversized_header(FrameType.HELLO,
                                                                                          SMALL_FRAME_LEN))
            await client.hangup()
        # the node closed both as protocol violations (a ProtocolError, logged with its reason)
        assert len([line for line in logs.messages() if "exceeds its limit" in line]) == 2, logs.messages()
        info = await open_space_as(address, a.identity, a.space_id)
        assert info.header == a.header_raw
        assert await node_state(node, a.space_id) == before


@pytest.mark.trio
async def test_an_oversized_frame_from_a_provider_closes_the_connection(make_home: MakeHome) -> None:
    a, b = replicas(make_home)
    put_file(a, "/new.txt", b"never delivered")
    before = state(b)
    provider = HostileProvider(SpaceCopy.of(a))
    provider.tamper[m.OpenSpace] = lambda body, honest: RawBytes(oversized_header(FrameType.RESPONSE, MAX_FRAME_LEN))
    async with serving(provider) as address:
        conn = await Endpoint(b.identity).dial(address)

        async def ask() -> None:
            with pytest.raises(NetworkError, match="exceeds its limit"):
                await conn.request(m.OpenSpace(b.space_id))

        with trio.fail_after(HANGUP_BOUND_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                with pytest.raises(ProtocolError, match="exceeds its limit"):
                    await conn.serve()
        assert conn.closed.is_set()
        # the engine, as a mount runs it: the peer is refused as hostile
        add_peer(b, address)
        error = await run_until_refused(engine(b), provider, address)
    assert "invalid data" in error and "exceeds its limit" in error
    assert all(c.ended.is_set() for c in provider.connections)
    assert state(b) == before


@pytest.mark.trio
@pytest.mark.parametrize("answer", ["oversized-frame", "refusal", "another-space"])
async def test_bootstrapping_from_a_hostile_provider_reports_an_error(make_home: MakeHome, answer: str) -> None:
    """``anysyncfs sync SPACE`` on a device that does not hold the space yet: its first OpenSpace goes to the
    hostile provider; the command reports the failure (no crash) and adopts nothing."""
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    other = create_space(make_home("other", None), "other")
    provider = HostileProvider(SpaceCopy.of(a))
    if answer == "oversized-frame":
        provider.tamper[m.OpenSpace] = lambda body, honest: RawBytes(oversized_header(FrameType.RESPONSE,
                                                                                      MAX_FRAME_LEN))
    elif answer == "refusal":
        provider.tamper[m.OpenSpace] = lambda body, honest: Refuse(m.ErrorCode.FORBIDDEN, "go away")
    else:
        provider.tamper[m.OpenSpace] = lambda body, honest: m.SpaceInfo(
            other.header_raw, [raw for _rid, raw in other.acl_raws()], [])
    b_home = make_home("b", phrase)
    async with serving(provider) as address:
        b_home.home.store().add_peer(a.space_id, str(address), address.device)
        with trio.fail_after(HANGUP_BOUND_S):
            report = await _sync_space(b_home, a.space_id, "docs", True, None, 10.0)
    assert report.reached == 0 and len(report.errors) == 1, report
    assert provider.only_connection().ended.is_set()
    assert [r.id for r in b_home.home.store().spaces()] == []

# ------------------------------------------------------------------------------------------------ 5: garbage
@pytest.mark.trio
async def test_garbage_to_a_node_closes_the_connection(tmp_path: Path, make_home: MakeHome) -> None:
    (a,) = replicas(make_home, 1)
    async with running_node(tmp_path / "node") as (node, address):
        await pushed_to_node(a, address)
        before = await node_state(node, a.space_id)
        await tcp_garbage_hangup(address, GARBAGE)  # instead of TLS
        client = await RawClient.connect(address, a.identity, handshake=False)  # after TLS, instead of Hello
        await client.send(GARBAGE)
        await client.hangup()
        client = await RawClient.connect(address, a.identity)  # after the handshake
        await client.send(GARBAGE)
        await client.hangup()
        assert (await open_space_as(address, a.identity, a.space_id)).header == a.header_raw
        assert await node_state(node, a.space_id) == before


@pytest.mark.trio
@pytest.mark.parametrize("mode", ["garbage-instead-of-tls", "garbage-after-tls"])
async def test_garbage_from_a_provider_fails_the_dial(make_home: MakeHome, mode: str) -> None:
    a, b = replicas(make_home)
    before = state(b)
    provider = HostileProvider(SpaceCopy.of(a), mode=mode, garbage=GARBAGE)  # type: ignore[arg-type]
    async with serving(provider) as address:
        add_peer(b, address)
        with trio.fail_after(HANGUP_BOUND_S):
            report = await engine(b).sync_once()
    assert report.reached == 0 and len(report.errors) == 1
    assert recorded_error(b, address)
    assert provider.only_connection().ended.is_set()
    assert state(b) == before


# ------------------------------------------------------------------------------------------------ 6: stalls
@pytest.mark.trio
async def test_a_client_that_stalls_mid_frame_is_cut_off(tmp_path: Path, make_home: MakeHome) -> None:
    (a,) = replicas(make_home, 1)
    async with running_node(tmp_path / "node", timeouts=SHORT) as (_node, address):
        await pushed_to_node(a, address)
        request = encode_frame(FrameType.REQUEST, m.encode(m.Request(1, m.OpenSpace(a.space_id))))
        # after the handshake: 3 bytes of a frame header, then nothing
        client = await RawClient.connect(address, a.identity)
        await client.send(request[:3])
        hangup = await client.hangup()
        assert hangup.close_reason is not None and "stalled" in hangup.close_reason
        # during the handshake: 3 bytes of the Hello
        client = await RawClient.connect(address, a.identity, hello=b"\x00\x00\x01")
        await client.hangup()
        # a slow drip: every byte arrives in time, but the frame as a whole does not
        client = await RawClient.connect(address, a.identity)
        drip = encode_frame(FrameType.REQUEST, m.encode(m.Request(1, m.GetChanges(a.space_id, [bytes(32)] * 60))))

        async def dribble() -> None:
            try:
                for i in range(len(drip)):
                    await client.send(drip[i : i + 1])
                    await trio.sleep(SHORT.frame / 5)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            hangup = await client.hangup()  # fails (TooSlowError) if the node waits for the whole drip
            nursery.cancel_scope.cancel()
        assert hangup.close_reason is not None and "stalled" in hangup.close_reason
        assert (await open_space_as(address, a.identity, a.space_id)).header == a.header_raw


@pytest.mark.trio
async def test_a_provider_that_stalls_mid_frame_is_cut_off(make_home: MakeHome) -> None:
    a, b = replicas(make_home)
    put_file(a, "/new.txt", b"never delivered")
    before = state(b)
    provider = HostileProvider(SpaceCopy.of(a))
    provider.tamper[m.OpenSpace] = lambda body, honest: RawBytes(b"\x00\x00\x10")
    async with serving(provider) as address:
        add_peer(b, address)
        with trio.fail_after(HANGUP_BOUND_S):
            report = await engine(b, SHORT).sync_once()
    assert report.reached == 0 and len(report.errors) == 1 and "stalled" in report.errors[0]
    assert "stalled" in recorded_error(b, address)
    assert provider.only_connection().ended.is_set()
    assert state(b) == before


# ------------------------------------------------------------------------------------------------ 7: strangers, forgers
@pytest.mark.trio
async def test_a_stranger_is_forbidden_everything(tmp_path: Path, make_home: MakeHome) -> None:
    (a,) = replicas(make_home, 1)
    put_file(a, "/stored.bin", os.urandom(10_000))  # a blob the node holds, for GetBlob
    async with running_node(tmp_path / "node") as (node, address):
        await pushed_to_node(a, address)
        before = await node_state(node, a.space_id)
        assert before[2]
        unsent = put_file(a, "/unsent.txt", os.urandom(10_000))
        blob = next(b for b in a.blob_ids() if b not in before[2])
        stranger = random_identity("stranger")
        async with connected(address, stranger) as conn:
            for request in (m.OpenSpace(a.space_id), m.GetBlob(a.space_id, before[2][0]),
                            m.PutChanges(a.space_id, [unsent.raw]), m.PutBlob(a.space_id, blob, a.get_blob(blob)),
                            m.Reconcile(a.space_id, int(m.SetKind.CHANGES), b"\x01"),
                            m.GetChanges(a.space_id, before[0])):
                with pytest.raises(RemoteError) as refused:
                    await conn.request(request)
                assert refused.value.code == m.ErrorCode.FORBIDDEN, request
        assert await node_state(node, a.space_id) == before
        assert not node.blobs.has(blob)
        assert (await open_space_as(address, a.identity, a.space_id)).header == a.header_raw


@pytest.mark.trio
@pytest.mark.parametrize("forgery", ["change-signature", "blob-bytes"])
async def test_a_member_sending_forged_data_is_disconnected(tmp_path: Path, make_home: MakeHome,
                                                            forgery: str) -> None:
    (a,) = replicas(make_home, 1)
    async with running_node(tmp_path / "node") as (node, address):
        await pushed_to_node(a, address)
        before = await node_state(node, a.space_id)
        unsent = put_file(a, "/unsent.txt", os.urandom(10_000))
        blob = next(b for b in a.blob_ids() if b not in before[2])
        if forgery == "change-signature":
            request: object = m.PutChanges(a.space_id, [flip(unsent.raw, -1)])
        else:
            request = m.PutBlob(a.space_id, blob, flip(a.get_blob(blob), 0))
        async with connected(address, a.identity) as conn:
            with pytest.raises(RemoteError) as refused:
                await conn.request(request)
            assert refused.value.code == m.ErrorCode.INVALID
            with trio.fail_after(HANGUP_BOUND_S):
                await conn.closed.wait()
        assert await node_state(node, a.space_id) == before
        assert not node.blobs.has(blob)
        assert (await open_space_as(address, a.identity, a.space_id)).header == a.header_raw


@pytest.mark.trio
async def test_a_hello_with_a_malformed_certificate_does_not_take_the_node_down(tmp_path: Path,
                                                                              make_home: MakeHome) -> None:
    (a,) = replicas(make_home, 1)
    async with running_node(tmp_path / "node") as (_node, address):
        await pushed_to_node(a, address)
        stranger = random_identity("stranger")
        hello = m.Hello(m.PROTOCOL_VERSION, m.PROTOCOL_VERSION, os.urandom(m.NONCE_LEN),
                        duplicate_extension_cert(stranger.device), stranger.device_cert, "hostile")
        client = await RawClient.connect(address, stranger, hello=encode_frame(FrameType.HELLO, m.encode(hello)))
        await client.hangup()
        assert (await open_space_as(address, a.identity, a.space_id)).header == a.header_raw


# ------------------------------------------------------------------------------------------------ 8: random frames
def random_frames(space_id: bytes) -> st.SearchStrategy[list[bytes]]:
    """Frames with valid headers: random bodies under every type, mixed with well-formed requests (so that
    sequences get past the first frame), random request IDs (duplicates included)."""
    raw = st.builds(lambda kind, body: encode_frame(kind, body), st.sampled_from(list(FrameType)),
                    st.binary(max_size=48))
    ids32 = st.binary(min_size=32, max_size=32)
    body = st.one_of(
        st.just(m.OpenSpace(space_id)),
        st.builds(lambda message: m.Reconcile(space_id, int(m.SetKind.CHANGES), message), st.binary(max_size=64)),
        st.builds(lambda blob: m.GetBlob(space_id, blob), ids32),
        st.builds(lambda ids: m.HasBlobs(space_id, ids), st.lists(ids32, max_size=3)),
        st.builds(lambda ids: m.GetChanges(space_id, ids), st.lists(ids32, max_size=3)),
    )
    request = st.builds(lambda rid, b: encode_frame(FrameType.REQUEST, m.encode(m.Request(rid, b))),
                        st.integers(0, 3), body)
    return st.lists(st.one_of(raw, request), min_size=1, max_size=6)


async def frames_then_hangup(address: PeerAddress, identity: keys.Identity, tls: TlsIdentity, frames: list[bytes],
                             handshake: bool) -> None:
    client = await RawClient.connect(address, identity, tls, handshake=handshake)
    try:
        for frame in frames:
            await client.send(frame)
        await client.send(b"\x00\x00\x00\x01\xff")  # an unknown frame type: whatever came before, this ends it
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the node hung up already
    await client.hangup()


def test_random_frames_only_close_the_connection(tmp_path: Path, make_home: MakeHome) -> None:
    (a,) = replicas(make_home, 1)
    identity = a.identity
    tls = make_tls_identity(identity.device)
    node = NodeThread(tmp_path / "node")
    with RecordLogs() as logs, node as address:
        trio.run(pushed_to_node, a, address)
        examples = 0

        @settings(max_examples=30)
        @given(frames=random_frames(a.space_id), handshake=st.booleans())
        def one_connection(frames: list[bytes], handshake: bool) -> None:
            nonlocal examples
            trio.run(frames_then_hangup, address, identity, tls, frames, handshake)  # TooSlowError if not closed
            examples += 1

        one_connection()
        assert node.running, node.failure
        assert (trio.run(open_space_as, address, identity, a.space_id)).header == a.header_raw
    assert examples >= 30
    assert logs.at_least(logging.ERROR) == []  # no request failed inside the node (those log tracebacks)
