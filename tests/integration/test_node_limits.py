"""Node limits over real loopback TCP (issue 10, item 7): what strangers and members can make a node hold.

Each case performs the abuse against a real :class:`~anysyncfs.net.node.Node` through TLS 1.3 and (where the case
is past it) the session handshake, and shows it no longer works: the node reads no more than a handshake frame
from a stranger, stops reading a connection whose requests in flight reach their bound, refuses connections over
its per-address and total caps at accept, and charges every stored byte — ACL records included — to the owner of
the space, within a per-account quota, a number of spaces per account and a total.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from hostile import (
    HANGUP_BOUND_S,
    RawClient,
    RecordLogs,
    connected,
    open_space_as,
    random_identity,
    running_node,
)

from anysyncfs.core import acl, crypto, ids, keys, space
from anysyncfs.core.address import PeerAddress, parse_address
from anysyncfs.errors import NetworkError
from anysyncfs.net.connection import Connection, RemoteError
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.limits import ConnectionLimits
from anysyncfs.net.runner import Runner
from anysyncfs.net.sync import SpaceSync
from anysyncfs.net.tls import make_tls_identity, open_tls_stream, verify_cert_issuer
from anysyncfs.protocol import messages as m
from anysyncfs.protocol.frames import LENGTH, PRE_AUTH_MAX_FRAME, FrameType
from anysyncfs.protocol.session import ErrorReceived, Role, Session
from anysyncfs.replica import create_space
from anysyncfs.replica.home import Unlocked
from tests.conftest import CLI, eventually

MiB = 1024 * 1024
MakeHome = Callable[..., Unlocked]
HANDSHAKE_FAILED = re.compile(r"handshake failed after (\d+) bytes: (.*)")


def handshake_failures(logs: RecordLogs) -> list[tuple[int, str]]:
    return [(int(hit.group(1)), hit.group(2)) for msg in logs.messages() if (hit := HANDSHAKE_FAILED.search(msg))]


async def tls_to(address: PeerAddress, identity: keys.Identity) -> tuple[trio.SSLStream[trio.SocketStream], Session]:
    """TLS to the node and a dialler session whose Hello has not been sent yet (the test sends what it likes)."""
    tls = make_tls_identity(identity.device)
    stream, peer_der = await open_tls_stream(address.host, address.port, tls, address.device, timeout=10)
    session = Session(Role.DIALLER, identity.device, identity.device_cert, tls.cert_der, verify_cert_issuer,
                      pinned_device=address.device, observed_peer_cert=peer_der)
    return stream, session


async def send_until_refused(stream: trio.abc.Stream, data: bytes, total: int) -> int:
    """Write ``data`` then zeros up to ``total`` bytes until the peer hangs up; returns the bytes written."""
    sent = 0
    try:
        await stream.send_all(data)
        sent = len(data)
        chunk = bytes(64 * 1024)
        while sent < total:
            await stream.send_all(chunk)
            sent += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    return sent


async def read_until_hangup(stream: trio.abc.Stream) -> None:
    with trio.fail_after(HANGUP_BOUND_S):
        while True:
            try:
                if not await stream.receive_some(64 * 1024):
                    return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return


# ------------------------------------------------------------------------------------------------ before auth
@pytest.mark.parametrize("after_hello", [False, True], ids=["instead-of-hello", "after-hello"])
async def test_a_16_mib_request_before_authentication_is_refused_after_a_few_kib(tmp_path: Path,
                                                                                  after_hello: bool) -> None:
    """The attack: a stranger announces a 16 MiB REQUEST before authenticating and streams its body. The node
    used to buffer it whole before noticing the frame was out of place; now it reads at most one handshake
    frame's worth and hangs up."""
    async with running_node(tmp_path / "node") as (node, address):
        with RecordLogs() as logs:
            stream, session = await tls_to(address, random_identity("stranger"))
            own_hello = session.data_to_send() if after_hello else b""
            header = LENGTH.pack(16 * MiB + 1) + bytes([FrameType.REQUEST])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_until_refused, stream, own_hello + header, 17 * MiB)
                await read_until_hangup(stream)
            await trio.aclose_forcefully(stream)
            await eventually(lambda: bool(handshake_failures(logs)), "the node logged the refusal")
        [(read, reason)] = handshake_failures(logs)
        assert reason == "REQUEST frame not allowed before authentication"
        assert read <= PRE_AUTH_MAX_FRAME + len(own_hello), read
        # the node is fine: a new stranger still completes a handshake
        async with connected(address, random_identity("next")) as conn:
            with pytest.raises(RemoteError, match="does not hold"):
                await conn.request(m.OpenSpace(os.urandom(32)))


@pytest.mark.parametrize(("kind", "body_len"), [
    pytest.param(kind, size, id=f"{kind.name}-{size}")
    for kind, size in [(FrameType.NOTIFY, 20), (FrameType.ERROR, 20), (FrameType.RESPONSE, 20),
                       (FrameType.REQUEST, 20), (FrameType.HELLO, 60_000), (FrameType.CLOSE, 60_000)]
])
async def test_only_small_handshake_frames_are_accepted_before_authentication(tmp_path: Path, kind: FrameType,
                                                                              body_len: int) -> None:
    async with running_node(tmp_path / "node") as (node, address):
        with RecordLogs() as logs:
            client = await RawClient.connect(address, random_identity("stranger"), handshake=False)
            await client.send(LENGTH.pack(body_len + 1) + bytes([kind]) + bytes(min(body_len, 100)))
            await client.hangup()
            await eventually(lambda: bool(handshake_failures(logs)), "the node logged the refusal")
        [(read, reason)] = handshake_failures(logs)
        if body_len > 100:
            assert reason.startswith(f"{kind.name} frame of {body_len} bytes exceeds its limit of ")
        else:
            assert reason == f"{kind.name} frame not allowed before authentication"
        assert read <= 5 + 100


# ------------------------------------------------------------------------------------------------ in flight
async def test_a_flood_of_large_requests_stays_within_the_bytes_in_flight(tmp_path: Path) -> None:
    """The attack: one authenticated connection pipelines 20 requests of 4 MiB while the node is busy. The node
    used to read them all (up to 64 × 16 MiB per connection); now it stops reading at 32 MiB in flight, TCP holds
    the sender back, and once the node catches up every request is answered on the same connection."""
    count, blob_len = 20, 4 * MiB
    async with running_node(tmp_path / "node") as (node, address):
        client = await RawClient.connect(address, random_identity("flooder"))
        assert client.session is not None
        session = client.session
        sent = 0

        async def flood() -> None:
            nonlocal sent
            data = bytes(blob_len)
            for _ in range(count):
                _rid, frame = session.send_request(m.PutBlob(os.urandom(32), crypto.blake3(data), data))
                await client.send(frame)
                sent += 1

        await trio.to_thread.run_sync(node.run.lock.acquire)  # the node is busy: no request completes
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await eventually(lambda: len(node.connections) == 1, "the node has the connection")
                [conn] = node.connections
                # wait until the node stops reading: bytes_in still for a second
                last, still_since = -1, trio.current_time()
                while trio.current_time() - still_since < 1.0:
                    if conn.bytes_in != last:
                        last, still_since = conn.bytes_in, trio.current_time()
                    await trio.sleep(0.05)
                limit = node.endpoint.limits.max_in_flight_bytes
                assert limit == 32 * MiB
                assert conn.bytes_in <= limit + MiB, conn.bytes_in
                assert conn.session.blocked and conn.session.peak_incoming_bytes <= limit
                assert conn.session.incoming_requests == limit // (blob_len + 100)
                assert sent < count  # the sender is held back by TCP
                node.run.lock.release()
                replies: list[ErrorReceived] = []
                with trio.fail_after(60):
                    while len(replies) < count:
                        data = await client.stream.receive_some(256 * 1024)
                        assert data, "the node hung up on a pipelining client"
                        session.receive_data(bytes(data))
                        while (event := session.next_event()) is not None:
                            replies.append(event)
                assert {(type(r), r.code) for r in replies} == {(ErrorReceived, int(m.ErrorCode.NOT_FOUND))}
        finally:
            if node.run.lock.locked():
                node.run.lock.release()
        await client.aclose()


async def test_small_requests_for_large_replies_stay_within_the_reply_budget(tmp_path: Path) -> None:
    """The attack: 40 tiny GetBlob requests for a 4 MiB blob, and never read the replies. Each handler used to
    load its blob at once (40 × 4 MiB held while the sends wait); now handlers reserve their reply's size and wait
    while 32 MiB of replies are being built or sent on the connection. Once the client reads, all are answered."""
    owner = random_identity("owner")
    push = stranger_space(owner)
    space_id = space.parse_space_header(push.header).id
    data = os.urandom(4 * MiB)
    blob_id = crypto.blake3(data)
    count = 40
    async with running_node(tmp_path / "node") as (node, address):
        async with connected(address, owner) as conn:
            await conn.request(push)
            await conn.request(m.PutBlob(space_id, blob_id, data))
        client = await RawClient.connect(address, owner)
        assert client.session is not None
        session = client.session
        for _ in range(count):
            await client.send(session.send_request(m.GetBlob(space_id, blob_id))[1])
        await eventually(lambda: len(node.connections) == 1, "the node has the connection")
        [served] = node.connections
        budget = node.endpoint.limits.max_in_flight_bytes
        await eventually(lambda: served._reply_bytes + 4 * MiB > budget, "the reply budget is in use")
        await trio.sleep(1.0)  # the node has had every chance to load more
        assert served.peak_reply_bytes <= budget
        # all were admitted (they are tiny); at most the budget's worth of replies has been built
        assert count - served.session.incoming_requests <= budget // (4 * MiB)
        replies = []
        with trio.fail_after(60):
            while len(replies) < count:
                received = await client.stream.receive_some(256 * 1024)
                assert received, "the node hung up"
                session.receive_data(bytes(received))
                while (event := session.next_event()) is not None:
                    replies.append(event)
        assert all(r.body == m.Blob(data) for r in replies)
        assert served.peak_reply_bytes <= budget and served._reply_bytes == 0
        await client.aclose()


# ------------------------------------------------------------------------------------------------ connections
@asynccontextmanager
async def from_source(monkeypatch: pytest.MonkeyPatch, source: str) -> AsyncIterator[None]:
    """Dial from another loopback address (127.0.0.2 is a different address to the node)."""
    real = trio.open_tcp_stream

    async def open_from(host: str, port: int, **kw: object) -> trio.SocketStream:
        return await real(host, port, local_address=source, **kw)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(trio, "open_tcp_stream", open_from)
        yield


async def idle_connections(stack: AsyncExitStack, address: PeerAddress, count: int) -> list[Connection]:
    conns = []
    for i in range(count):
        conn = await Endpoint(random_identity(f"idle {i}")).dial(address)
        stack.push_async_callback(conn.abort, "done")
        conns.append(conn)
    return conns


async def test_the_17th_connection_from_one_address_is_refused(tmp_path: Path, make_home: MakeHome,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    owner = create_space(make_home("owner"), "docs")
    async with running_node(tmp_path / "node") as (node, address):
        async with connected(address, owner.identity) as honest:
            await honest.request(m.PushSpace(owner.header_raw, [raw for _rid, raw in owner.acl_raws()]))
            with RecordLogs() as logs:
                async with AsyncExitStack() as stack:
                    idle = await idle_connections(stack, address, 15)  # 16 with the honest one
                    with pytest.raises(NetworkError):
                        await Endpoint(random_identity("17th")).dial(address)
                    assert "127.0.0.1: connection refused: 16 connections open from 127.0.0.1 (1 refused since " \
                           "start)" in logs.messages()
                    # the honest session keeps working, and so does a client at another address
                    info = await honest.request(m.OpenSpace(owner.space_id))
                    assert info.header == owner.header_raw
                    async with from_source(monkeypatch, "127.0.0.2"):
                        info = await open_space_as(address, owner.identity, owner.space_id)
                    assert info.header == owner.header_raw
                    # a slot freed is a slot taken again
                    await idle[0].abort("done")
                    await eventually(lambda: len(node.connections) == 15, "the node saw the hangup")
                    again = await Endpoint(random_identity("again")).dial(address)
                    await again.abort("done")


async def test_connections_over_the_total_are_refused_from_any_address(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    limits = ConnectionLimits(max_connections=3)
    async with running_node(tmp_path / "node", limits=limits) as (node, address):
        with RecordLogs() as logs:
            async with AsyncExitStack() as stack:
                await idle_connections(stack, address, 3)
                async with from_source(monkeypatch, "127.0.0.2"):
                    with pytest.raises(NetworkError):
                        await Endpoint(random_identity("4th")).dial(address)
            assert any("connection refused: 3 connections open in total" in msg for msg in logs.messages())


# ------------------------------------------------------------------------------------------------ quotas
def stranger_space(identity: keys.Identity) -> m.PushSpace:
    """A brand-new space of ``identity``'s own: all a stranger needs to make a node store something."""
    now = time.time_ns() // 1000
    header = space.make_space_header(identity.account, now)
    return m.PushSpace(header, [acl.make_genesis(identity.account, header, crypto.random_bytes(32), now)])


async def test_a_stranger_creating_many_spaces_hits_the_space_cap_and_the_account_quota(tmp_path: Path) -> None:
    """The attack: any stranger stored as many spaces as it liked, 10 GiB each. Now, with the default
    configuration, its 101st space is refused, and all its spaces share one quota."""
    stranger = random_identity("stranger")
    async with running_node(tmp_path / "node") as (node, address):
        async with connected(address, stranger) as conn:
            for _ in range(100):
                assert await conn.request(stranger_space(stranger)) == m.Ok()
            with pytest.raises(RemoteError, match=r"already owns 100 spaces on this node, its limit") as refused:
                await conn.request(stranger_space(stranger))
            assert refused.value.code == m.ErrorCode.QUOTA
            assert len(node.store.spaces()) == 100
            # another account is not limited by the first one's spaces
            other = random_identity("other")
            async with connected(address, other) as other_conn:
                assert await other_conn.request(stranger_space(other)) == m.Ok()
    async with running_node(tmp_path / "node2", account_quota_bytes=MiB) as (node, address):
        async with connected(address, stranger) as conn:
            pushes = [stranger_space(stranger) for _ in range(2)]
            for push in pushes:
                await conn.request(push)
            space_ids = [space.parse_space_header(p.header).id for p in pushes]
            data = os.urandom(600 * 1024)
            assert await conn.request(m.PutBlob(space_ids[0], crypto.blake3(data), data)) == m.Ok()
            data = os.urandom(600 * 1024)
            account = ids.account_text(stranger.account.public)
            with pytest.raises(RemoteError, match=rf"^peer refused: account {account} is over its quota of {MiB} "
                                                  rf"bytes") as refused:
                await conn.request(m.PutBlob(space_ids[1], crypto.blake3(data), data))
            assert refused.value.code == m.ErrorCode.QUOTA
            assert not node.blobs.has(crypto.blake3(data))


def test_the_default_total_quota_fits_the_disk(tmp_path: Path) -> None:
    import shutil

    from anysyncfs.net.node import DEFAULT_TOTAL_QUOTA, Node

    node = Node(tmp_path / "node")
    try:
        room = shutil.disk_usage(tmp_path).free
        total = node.book.policy.total
        assert total is not None and total <= DEFAULT_TOTAL_QUOTA
        assert total == DEFAULT_TOTAL_QUOTA or abs(total - 0.9 * room) < 0.01 * room
        assert (node.book.policy.per_space, node.book.policy.per_account, node.book.policy.spaces_per_account) == \
            (10 << 30, 10 << 30, 100)
    finally:
        node.close()
    node = Node(tmp_path / "node", total_quota_bytes=12345)
    try:
        assert node.book.policy.total == 12345
    finally:
        node.close()


async def test_a_flood_of_acl_records_hits_the_quota(tmp_path: Path, make_home: MakeHome) -> None:
    """The attack: ACL records were not counted, so a member could store them without limit. Now an owner
    pushing invite after invite through the sync engine runs into its space's quota."""
    owner = create_space(make_home("owner"), "docs")
    genesis_bytes = sum(len(raw) for _rid, raw in owner.acl_raws())
    async with running_node(tmp_path / "node", quota_bytes=genesis_bytes + 4_000) as (node, address):
        owner.store.add_peer(owner.space_id, str(address), address.device)
        sync = SpaceSync(owner, Endpoint(owner.identity), Runner())
        report = await sync.sync_once()
        assert report.reached == 1, report
        for _ in range(30):
            _epoch, key = owner.current_epoch_key()
            raw, _secret = acl.make_invite(owner.identity.account, owner.acl, acl.Role.READER, 0, key,
                                           time.time_ns() // 1000)
            owner.add_acl_record(raw)
        report = await sync.sync_once()
        assert any("is over its quota of" in e for e in report.errors), report
        held = node.store.acl_usage(owner.space_id)
        assert held[1] <= genesis_bytes + 4_000 and held[0] < 31


# ------------------------------------------------------------------------------------------------ the CLI
def test_node_serve_options_set_the_limits(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """``anysyncfs node serve --max-connections-per-address 1 --max-spaces-per-account 1``, as an operator runs it:
    a second connection from the same address is refused at accept (logged), a second space refused."""
    proc = subprocess.Popen([*CLI, "node", "serve", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "node"),
                             "--max-connections-per-address", "1", "--max-spaces-per-account", "1",
                             "--quota-total", "1G"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = parse_address(proc.stdout.readline().strip())
        stranger = random_identity("stranger")

        async def abuse() -> None:
            async with connected(address, stranger) as conn:
                assert await conn.request(stranger_space(stranger)) == m.Ok()
                with pytest.raises(RemoteError, match="already owns 1 space on this node, its limit"):
                    await conn.request(stranger_space(stranger))
                with pytest.raises(NetworkError):
                    await Endpoint(random_identity("second")).dial(address)

        trio.run(abuse)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert "connection refused: 1 connections open from 127.0.0.1" in err
    assert "Traceback" not in err
    for bad in (["--max-connections", "0"], ["--max-in-flight", "0"], ["--quota-per-account", "lots"]):
        p = subprocess.run([*CLI, "node", "serve", "--data", str(tmp_path / "n2"), *bad], env=cli_env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "Traceback" not in p.stderr and p.stderr.strip().splitlines()[-1], bad
