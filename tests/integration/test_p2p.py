"""Devices syncing directly, without a provider, over real TCP on loopback (issue 13).

Each device runs what a mount or ``sync --watch`` runs: its sync engine and its listener (DeviceServer), each
with its own endpoint; every connection is TLS 1.3 + the session handshake, as between processes."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from anysyncfs.core import keys
from anysyncfs.core.address import PeerAddress
from anysyncfs.errors import NetworkError
from anysyncfs.net.connection import RemoteError, while_serving
from anysyncfs.net.device_server import DeviceServer, ListenSpec, local_ipv6_addresses, parse_listen
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.fetch_space import _missing_blobs
from anysyncfs.net.node import Node
from anysyncfs.net.p2p import DevicePeering
from anysyncfs.net.runner import Runner
from anysyncfs.net.sync import SpaceSync
from anysyncfs.protocol import messages as m
from anysyncfs.replica import Replica, adopt_space, create_space
from anysyncfs.replica.files import put_file, read_file, resolve

from tests.conftest import eventually
from tests.integration.test_sync import content

pytestmark = pytest.mark.trio

LOOPBACK = ListenSpec("127.0.0.1", 0, False)


@asynccontextmanager
async def device(replica: Replica, *, discovery: bool = False) -> AsyncIterator[tuple[SpaceSync, DevicePeering]]:
    """A device as a mount runs it: sync engine + listener (+ address records / mDNS when asked)."""
    sync = SpaceSync(replica, Endpoint(replica.identity), Runner(), interval=5.0, fetch_timeout=10.0)
    peering = DevicePeering(sync, listen=LOOPBACK, discovery=discovery)
    async with trio.open_nursery() as nursery:
        await nursery.start(peering.run)
        nursery.start_soon(sync.run_forever)
        yield sync, peering
        nursery.cancel_scope.cancel()


def second_device(make_home, a: Replica, phrase: str, name: str) -> Replica:
    home = make_home(name, phrase)
    return adopt_space(home, "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])


def own_address(peering: DevicePeering) -> PeerAddress:
    assert peering.server is not None
    return peering.server.addresses()[0]


async def test_listen_option() -> None:
    assert parse_listen(None) == ListenSpec(None, 7734, True)
    assert parse_listen("off") is None
    assert parse_listen("127.0.0.1:0") == ListenSpec("127.0.0.1", 0, False)
    assert parse_listen("[::1]:9000") == ListenSpec("::1", 9000, False)
    with pytest.raises(Exception, match="HOST:PORT"):
        parse_listen("nonsense")


async def test_two_devices_sync_both_ways_through_a_manual_device_address(make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    put_file(a, "/before.txt", b"written before b existed")
    b = second_device(make_home, a, phrase, "b")
    big = os.urandom(300_000)
    async with device(a) as (sa, pa), device(b) as (sb, pb):
        # Only b knows a's address (add-peer with a device address); a learns nothing of b.
        b.store.add_peer(b.space_id, str(own_address(pa)), own_address(pa).device)
        await eventually(lambda: b.tree.canonical() == a.tree.canonical(), "b has a's tree")
        assert content(b, "/before.txt") == b"written before b existed"  # blob fetched from a device
        st = next(iter(sb.peers.values()))
        assert st.kind == "device" and st.via == "manual"
        # live push a -> b (over b's connection: a announces its heads to its subscribers)
        put_file(a, "/big.bin", big)
        await eventually(lambda: resolve_or_none(b, "/big.bin"), "a's new file reached b")
        await fetch_missing(sb)  # what a read in a mount does: GetBlob from the connected device
        assert content(b, "/big.bin") == big
        # and b -> a over the same connection (b pushes its commit to a's listener)
        put_file(b, "/from-b.txt", b"hello a" * 20000)
        await eventually(lambda: resolve_or_none(a, "/from-b.txt"), "b's file reached a")
        assert b.store.count_pending_uploads(b.space_id) > 0  # a device is no provider: nothing counts as uploaded
        # a reads b's blobs once it dials b (it learns b's address here by hand)
        a.store.add_peer(a.space_id, str(own_address(pb)), own_address(pb).device)
        await eventually(lambda: "device" in [p.kind for p in sa.peers.values()], "a connected to b")
        await fetch_missing(sa)
        assert blob_here(a, "/from-b.txt")


async def fetch_missing(sync: SpaceSync) -> None:
    for _ in range(4):  # a manifest first, then its chunks
        missing = _missing_blobs(sync.replica)
        if not missing:
            return
        for blob_id in missing:
            await sync.fetch_blob(blob_id, timeout=10)
    raise AssertionError("blobs still missing")


def resolve_or_none(r: Replica, path: str) -> bool:
    try:
        resolve(r.tree, path)
        return True
    except Exception:  # noqa: BLE001
        return False


def blob_here(r: Replica, path: str) -> bool:
    try:
        return b"".join(read_file(r, resolve(r.tree, path))) == b"hello a" * 20000
    except Exception:  # noqa: BLE001
        return False


async def test_a_stranger_is_refused_after_authentication_and_learns_nothing(make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "secret-docs")
    put_file(a, "/names-are-secret.txt", b"x" * 1000)
    stranger = make_home("stranger")  # another account
    other = create_space(stranger, "theirs")
    async with device(a) as (_sa, pa):
        endpoint = Endpoint(stranger.identity)
        conn = await endpoint.dial(own_address(pa))  # TLS + authentication succeed: the key was pinned right

        async def ask() -> object:
            return await conn.request(m.OpenSpace(a.space_id, with_acl=True))

        with pytest.raises((NetworkError, RemoteError)) as info:
            await while_serving(conn, ask)
        assert isinstance(info.value, NetworkError)  # closed at once: no answer at all, not even "forbidden"
        received = conn.bytes_in
        await conn.abort("done")
        assert pa.server is not None and pa.server.refused_strangers == 1
        # Everything it received is the handshake (TLS records of a few KiB); no reply frame ever arrived.
        assert received < 8192
        del other


async def test_devices_dial_each_other_through_published_address_records_and_survive_the_provider(
        tmp_path: Path, make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    b = second_device(make_home, a, phrase, "b")
    async with trio.open_nursery() as outer:
        node_scope = trio.CancelScope()
        node = Node(tmp_path / "node")

        async def serve_node(task_status=trio.TASK_STATUS_IGNORED) -> None:
            with node_scope:
                await node.serve("127.0.0.1", 0, task_status=task_status)

        listeners = await outer.start(serve_node)
        provider = node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
        for r in (a, b):  # each device knows only the provider
            r.store.add_peer(r.space_id, str(provider), provider.device)
        async with device(a) as (sa, pa), device(b) as (sb, pb):
            # The provider keeps the records sealed: it holds them, it cannot read them.
            await eventually(lambda: len(node.address_board.served(a.space_id, lambda _a: 1)) == 2, "both published")
            for raw in node.address_board.served(a.space_id, lambda _a: 1):
                assert b"127.0.0.1" not in raw
            # Each dials the other at the address it published.
            await eventually(lambda: any(p.via == "address record" and p.kind == "device" and p.connected
                                         for p in sb.peers.values()), "b dialled a by its record")
            assert str(own_address(pa)) in sb.peers
            await eventually(lambda: any(p.via == "address record" and p.connected for p in sa.peers.values()),
                             "a dialled b by its record")
            node_scope.cancel()  # the provider dies
            await eventually(lambda: not any(p.connected for k, p in sb.peers.items() if k == str(provider)),
                             "b noticed the provider is gone")
            put_file(a, "/after-provider.txt", b"direct" * 50_000)
            await eventually(lambda: resolve_or_none(b, "/after-provider.txt"), "a's file reached b directly")
            await fetch_missing(sb)
            assert content(b, "/after-provider.txt") == b"direct" * 50_000
        outer.cancel_scope.cancel()
    node.close()


async def test_mdns_sealed_device_key_opens_only_for_the_space_and_window() -> None:
    from anysyncfs.net import lan

    key, space, device = b"k" * 32, b"s" * 32, b"d" * 32
    now = 1_800_000_000.0
    value = lan.seal_device(key, space, lan.window_of(now), 7734, device).encode()
    assert device not in value and len(value) <= lan.MAX_TXT_VALUE
    assert lan.open_device(value, key, space, 7734, now) == device
    assert lan.open_device(value, key, space, 7734, now + lan.WINDOW_S) == device  # the next window still opens
    assert lan.open_device(value, key, space, 7734, now + 3 * lan.WINDOW_S) is None  # an old announcement
    assert lan.open_device(value, b"x" * 32, space, 7734, now) is None  # another space's members
    assert lan.open_device(value, key, b"t" * 32, 7734, now) is None
    assert lan.open_device(value, key, space, 7735, now) is None  # moved to another port
    assert lan.open_device(b"A" * 500, key, space, 7734, now) is None  # oversized: not even decoded


async def test_two_devices_find_each_other_by_mdns_on_this_host(make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    b = second_device(make_home, a, phrase, "b")
    start = trio.current_time()
    async with device(a, discovery=True) as (sa, _pa), device(b, discovery=True) as (sb, _pb):
        # One finds the other by mDNS and dials it; the other may hear of the first from the address record
        # it offers on connecting, before its own mDNS lookup completes: either way, both dial.
        def connected(sync: SpaceSync) -> set[str]:
            return {p.via for p in sync.peers.values() if p.connected and p.kind == "device"}

        await eventually(lambda: bool(connected(sa)) and bool(connected(sb))
                         and "mdns" in connected(sa) | connected(sb), "found by mDNS", 10)
        found_after = trio.current_time() - start
        put_file(a, "/lan.txt", b"over the LAN")
        await eventually(lambda: resolve_or_none(b, "/lan.txt"), "a's file reached b")
    assert found_after < 5.0, found_after


async def test_a_strangers_oversized_frame_is_refused_like_at_a_node(make_home) -> None:
    from tests.integration.hostile import random_identity
    from tests.integration.test_node_limits import read_until_hangup, send_until_refused, tls_to

    from anysyncfs.protocol.frames import LENGTH, FrameType

    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    async with device(a) as (_sa, pa):
        stream, session = await tls_to(own_address(pa), random_identity("stranger"))
        header = LENGTH.pack(16 * 2**20 + 1) + bytes([FrameType.REQUEST])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_until_refused, stream, session.data_to_send() + header, 17 * 2**20)
            await read_until_hangup(stream)  # hung up long before 16 MiB
        await trio.aclose_forcefully(stream)
        assert pa.server is not None and pa.server.refused_strangers == 0  # never authenticated
        assert a.store.heads(a.space_id) == a.heads


async def test_a_spoofed_mdns_announcement_leads_to_a_listener_that_fails_authentication(make_home) -> None:
    """An attacker replays a member's announcement (it cannot make one) with its own listener's address, same
    port: a member that dials it pins the announced device key, the hostile listener cannot prove it, and
    nothing is stored. Garbage announcements are ignored."""
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    from anysyncfs.net import lan

    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    put_file(a, "/real.txt", b"real")
    b = second_device(make_home, a, phrase, "b")
    stranger = make_home("stranger")
    hostile_space = create_space(stranger, "bait")
    put_file(hostile_space, "/bait.txt", b"bait")
    hostile_sync = SpaceSync(hostile_space, Endpoint(stranger.identity), Runner())
    async with device(a) as (_sa, pa):
        port = own_address(pa).port
        a_value = lan.seal_device(a.current_epoch_key()[1], a.space_id, lan.window_of(time.time()),
                                  port, a.identity.device_id)
        server = DeviceServer(hostile_sync.endpoint, hostile_sync.run)
        server.add_replica(hostile_space)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.listen, ListenSpec("127.0.0.2", port, False))
            zc = await trio.to_thread.run_sync(lambda: Zeroconf(ip_version=IPVersion.V4Only))
            try:
                spoofed = ServiceInfo(lan.SERVICE_TYPE, f"spoof.{lan.SERVICE_TYPE}", port=port,
                                      properties={"v": "1", "s": a_value}, server="spoof.local.",
                                      addresses=[bytes([127, 0, 0, 2])])
                garbage = ServiceInfo(lan.SERVICE_TYPE, f"junk.{lan.SERVICE_TYPE}", port=port,
                                      properties={"v": "1", "s": "A" * 80}, server="junk.local.",
                                      addresses=[bytes([127, 0, 0, 2])])
                await trio.to_thread.run_sync(zc.register_service, spoofed)
                await trio.to_thread.run_sync(zc.register_service, garbage)
                # b knows nobody; it listens on loopback only, so it dials what mDNS tells it
                async with device(b, discovery=True) as (sb, pb):
                    spoof_key = str(PeerAddress(a.identity.device_id, "127.0.0.2", port))
                    await eventually(lambda: spoof_key in sb.peers and sb.peers[spoof_key].last_error != "",
                                     "b dialled the spoofed address", 10)
                    assert not sb.peers[spoof_key].connected
                    assert "not device" in sb.peers[spoof_key].last_error
                    # what b stores of the peers it reached: never the address of a listener that failed
                    assert spoof_key not in {p.address for p in b.store.peers_seen(b.space_id)}
                    assert pb.lan is not None
                    await eventually(lambda: pb.lan.ignored >= 1, "the garbage announcement was ignored", 10)
            finally:
                await trio.to_thread.run_sync(zc.close)
            nursery.cancel_scope.cancel()
    # nothing of the hostile listener's space reached b
    assert not any(r.id == hostile_space.space_id for r in b.store.spaces())
    assert not resolve_or_none(b, "/bait.txt")


async def test_a_member_is_answered_only_for_its_own_spaces(tmp_path: Path, make_home) -> None:
    """The device serves two spaces; another account is a member of the first only. For the second — and for a
    space the device does not hold at all — it gets the same refusal, so it cannot tell which the device holds."""
    from anysyncfs.core import acl
    from tests.integration.test_replicas import invite_and_join

    owner = make_home("owner")
    shared = create_space(owner, "shared")
    private = create_space(owner, "private")
    put_file(private, "/mine.txt", b"only mine")
    friend = make_home("friend")
    invite_and_join(shared, friend, acl.Role.WRITER)
    sync = SpaceSync(shared, Endpoint(owner.identity), Runner())
    peering = DevicePeering(sync, listen=LOOPBACK, discovery=False)
    assert peering.server is not None
    peering.server.add_replica(private)
    async with trio.open_nursery() as nursery:
        await nursery.start(peering.run)
        conn = await Endpoint(friend.identity).dial(own_address(peering))

        async def ask() -> list[str]:
            info = await conn.request(m.OpenSpace(shared.space_id, with_acl=False))
            assert isinstance(info, m.SpaceInfo) and list(info.heads) == list(shared.heads)
            refusals = []
            for space_id in (private.space_id, os.urandom(32)):
                for body in (m.OpenSpace(space_id), m.GetChanges(space_id, private.change_ids()[:1]),
                             m.GetBlob(space_id, os.urandom(32))):
                    with pytest.raises(RemoteError) as info_:
                        await conn.request(body)
                    refusals.append(f"{info_.value.code} {info_.value.remote_message}")
            return refusals

        refusals = await while_serving(conn, ask)
        await conn.abort("done")
        assert set(refusals) == {f"{int(m.ErrorCode.FORBIDDEN)} not available to you here"}
        nursery.cancel_scope.cancel()


async def test_two_devices_sync_over_ipv6_loopback(make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    put_file(a, "/v6.txt", b"over IPv6")
    b = second_device(make_home, a, phrase, "b")
    sync = SpaceSync(a, Endpoint(a.identity), Runner(), interval=5.0, fetch_timeout=10.0)
    peering = DevicePeering(sync, listen=parse_listen("[::1]:0"), discovery=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(peering.run)
        nursery.start_soon(sync.run_forever)
        address = own_address(peering)
        assert address.host == "::1" and str(address).endswith(f"@[::1]:{address.port}")
        async with device(b) as (sb, _pb):
            b.store.add_peer(b.space_id, str(address), address.device)  # as `space add-peer` records it
            await eventually(lambda: resolve_or_none(b, "/v6.txt"), "a's file reached b over IPv6")
            await fetch_missing(sb)
            assert content(b, "/v6.txt") == b"over IPv6"
            put_file(b, "/back.txt", b"and back")
            await eventually(lambda: resolve_or_none(a, "/back.txt"), "b's file reached a over IPv6")
        nursery.cancel_scope.cancel()


async def test_every_address_an_all_interfaces_listener_publishes_answers_as_this_device(make_home) -> None:
    """Listening on every interface with a free port: IPv4 and IPv6 listeners get ports of their own, and each
    published address (IPv6 ones too when the host has a routable one) reaches this device's listener."""
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    b = second_device(make_home, a, phrase, "b")
    sync = SpaceSync(a, Endpoint(a.identity), Runner())
    peering = DevicePeering(sync, listen=ListenSpec(None, 0, False), discovery=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(peering.run)
        assert peering.server is not None
        published = peering.server.addresses()
        assert published and all(addr.device == a.identity.device_id for addr in published)
        if any(ln.socket.getsockname()[0] == "::" for ln in peering.server.listeners) \
                and local_ipv6_addresses():
            assert any(":" in addr.host for addr in published), published
        for addr in published:
            conn = await Endpoint(b.identity).dial(addr)  # pins a's device key: a wrong port would not answer
            try:
                reply = await while_serving(conn, lambda: conn.request(m.OpenSpace(a.space_id, with_acl=False)))
                assert isinstance(reply, m.SpaceInfo)
            finally:
                await conn.abort("done")
        nursery.cancel_scope.cancel()


async def test_a_taken_default_port_falls_back_to_a_free_one_and_an_explicit_one_is_not_replaced(make_home) -> None:
    """-o listen's default port is taken (another device process on this host): a free port instead. An explicit
    HOST:PORT that is taken gets no listener (logged), and the device still dials out."""
    import socket

    a = create_space(make_home("a"), "docs")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for fallback in (True, False):
            sync = SpaceSync(a, Endpoint(a.identity), Runner())
            peering = DevicePeering(sync, listen=ListenSpec("127.0.0.1", port, fallback), discovery=False)
            async with trio.open_nursery() as nursery:
                await nursery.start(peering.run)
                if fallback:
                    assert own_address(peering).port not in (port, 0)
                    assert peering.own_record() is not None  # the free port is what it publishes
                else:
                    assert peering.server is None and peering.addresses() == []
                nursery.cancel_scope.cancel()


async def test_blobs_come_from_a_members_device_before_the_provider_that_holds_them(tmp_path: Path,
                                                                                   make_home) -> None:
    """Path choice: b is connected to the provider and to a's device, and both hold a's file; b's reads fetch from
    the device (a fetch from a device is no confirmation that a provider stores it: the blobs stay unconfirmed)."""
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    b = second_device(make_home, a, phrase, "b")
    async with trio.open_nursery() as outer:
        node = Node(tmp_path / "node")
        listeners = await outer.start(node.serve, "127.0.0.1", 0)
        provider = node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
        for r in (a, b):
            r.store.add_peer(r.space_id, str(provider), provider.device)
        async with device(a), device(b) as (sb, _pb):
            put_file(a, "/both.bin", os.urandom(400_000))
            await eventually(lambda: a.store.count_pending_uploads(a.space_id) == 0, "the provider holds a's blobs")
            await eventually(lambda: resolve_or_none(b, "/both.bin"), "a's file listed on b")
            await eventually(lambda: {p.kind for p in sb.peers.values() if p.connected} == {"device", "provider"},
                             "b connected to the provider and to a")
            assert _missing_blobs(b)
            await fetch_missing(sb)
            fetched = b.store.local_blob_ids()  # b made no blob: every one it holds was fetched for this file
            assert fetched and not any(b.store.is_remote_confirmed(blob) for blob in fetched)  # none from the provider
            assert content(b, "/both.bin") == content(a, "/both.bin")
        outer.cancel_scope.cancel()
    node.close()


async def test_a_device_with_discovery_off_is_not_found_on_the_lan(make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    b = second_device(make_home, a, phrase, "b")
    async with device(a, discovery=False) as (_sa, pa), device(b, discovery=True) as (sb, pb):
        assert pa.lan is None and pb.lan is not None
        await trio.sleep(4.0)  # twice the slowest discovery measured (docs/benchmarks.md)
        assert sb.peers == {}


async def test_a_discovered_address_that_fails_is_backed_off_and_dialled_at_once_when_heard_of_again(
        make_home) -> None:
    from tests.conftest import free_port

    a = create_space(make_home("a"), "docs")
    sync = SpaceSync(a, Endpoint(a.identity), Runner())
    dials: list[float] = []
    real_dial = sync.endpoint.dial

    async def counting_dial(addr: PeerAddress, **kw: object) -> object:
        dials.append(trio.current_time())
        return await real_dial(addr, **kw)  # type: ignore[arg-type]

    sync.endpoint.dial = counting_dial  # type: ignore[method-assign]
    gone = PeerAddress(os.urandom(32), "127.0.0.1", free_port())  # nothing listens there
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run_forever)
        sync.add_discovered(gone, "mdns")
        await eventually(lambda: len(dials) >= 4, "four dials", 15)
        gaps = [t1 - t0 for t0, t1 in zip(dials, dials[1:])]
        assert gaps[2] > gaps[0], gaps  # 0.5 s, then 1, then 2 (each ±50 %): it backs off
        assert sync.peers[str(gone)].via == "mdns" and "cannot connect" in sync.peers[str(gone)].last_error
        n, heard = len(dials), trio.current_time()
        sync.add_discovered(gone, "mdns")  # announced again (back on the LAN): no waiting out the backoff
        await eventually(lambda: len(dials) > n, "dialled again", 2)
        assert dials[n] - heard < 0.5
        nursery.cancel_scope.cancel()
    assert a.store.peers_seen(a.space_id) == []  # never reached: nothing stored
