"""Signed heads over real TCP on loopback (docs/protocol.md 70.9): devices sign their heads with a counter and
publish them to a real node; a device warns when a provider keeps back changes another device's signed heads prove
exist, or rolls a record back; forged, oversized and old records are refused by node and device.

Before signed heads, a provider that left a change out of reconciliation (or answered ``GetChanges`` with nothing)
went unnoticed: the victim simply never saw the change. These tests perform that attack with a real node whose
only dishonesty is to hide one change ID."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from anysyncfs.core import crypto, keys
from anysyncfs.core import signed_heads as sh
from anysyncfs.core.address import PeerAddress
from anysyncfs.core.reconcile import IdSet
from anysyncfs.errors import NetworkError
from anysyncfs.net.connection import RemoteError, ServiceError, while_serving
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.net.tls import make_tls_identity
from anysyncfs.protocol import messages as m
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.files import put_file
from anysyncfs.replica.home import Unlocked
from anysyncfs.replica.ledger import Ledger
from tests.conftest import CLI, PASSPHRASE, TEST_LOG2N
from tests.integration.hostile import HostileProvider, SpaceCopy, flip, random_identity, serving
from tests.integration.test_sync import engine, running_node

pytestmark = pytest.mark.trio


class WithholdingNode(Node):
    """A real node that keeps some changes back from everyone. ``how``: ``never-offered`` leaves them out of
    reconciliation; ``getchanges-empty`` offers them but answers ``GetChanges`` for them with nothing;
    ``getchanges-error`` answers it with "not found". Everything else — signed heads included — it serves
    honestly, which is exactly what lets a device catch it."""

    def __init__(self, data: Path, how: str = "never-offered") -> None:
        super().__init__(data)
        self.hidden: set[bytes] = set()
        self.how = how
        self.withhold_new = False  # hide every change pushed from now on (set from another thread: a plain flag)

    def _id_set(self, ledger: Ledger, kind: int) -> IdSet:
        if kind == m.SetKind.CHANGES and self.hidden and self.how == "never-offered":
            return IdSet(c for c in ledger.change_ids() if c not in self.hidden)
        return super()._id_set(ledger, kind)

    async def handle(self, conn: Any, body: object) -> object:
        if isinstance(body, m.PutChanges) and self.withhold_new:
            self.hidden |= {crypto.blake3(bytes(raw)) for raw in body.changes}
        if isinstance(body, m.GetChanges) and self.hidden.intersection(body.ids):
            if self.how == "getchanges-error":
                raise ServiceError(m.ErrorCode.NOT_FOUND, "no such change")
            body = m.GetChanges(body.space, [c for c in body.ids if c not in self.hidden])
        return await super().handle(conn, body)


@asynccontextmanager
async def running(node: Node) -> AsyncIterator[PeerAddress]:
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, "127.0.0.1", 0)
            yield node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()
    finally:
        node.close()


async def two_devices(make_home: Any, addr: PeerAddress) -> tuple[Replica, Replica]:
    """a creates a space and syncs it to the node; b (same account, another device) fetches it from there."""
    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    put_file(a, "/first.txt", b"one")
    a.store.add_peer(a.space_id, str(addr), addr.device)
    assert (await engine(a).sync_once()).errors == []
    b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
    full = await _sync_space(b_home, a.space_id, "docs", False, None, 60.0)
    assert full.reached == 1, full.errors
    return a, Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)


def node_record(node: Node, space_id: bytes, device: bytes) -> sh.SignedHeads | None:
    row = node.store.signed_heads_row(space_id, device)
    return sh.parse_signed_heads(row.raw) if row is not None else None


def status_json(home: Unlocked) -> list[dict[str, Any]]:
    """``anysyncfs status --json`` of a home, run as the user runs it."""
    env = dict(os.environ, ANYSYNCFS_HOME=str(home.home.root), ANYSYNCFS_PASSPHRASE=PASSPHRASE.decode(),
               ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N=str(TEST_LOG2N))
    p = subprocess.run([*CLI, "status", "--json"], env=env, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def status_text(home: Unlocked) -> str:
    env = dict(os.environ, ANYSYNCFS_HOME=str(home.home.root), ANYSYNCFS_PASSPHRASE=PASSPHRASE.decode(),
               ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N=str(TEST_LOG2N))
    p = subprocess.run([*CLI, "status"], env=env, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


# ------------------------------------------------------------------------------------------------ honest
async def test_an_honest_node_keeps_every_devices_newest_signed_heads_and_nobody_warns(
        tmp_path: Path, make_home: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with running_node(tmp_path / "node") as (node, addr):
        a, b = await two_devices(make_home, addr)
        first = node_record(node, a.space_id, a.identity.device_id)
        assert first is not None and first.heads == sh.select_heads(a.heads) and first.counter == 1
        put_file(a, "/second.txt", b"two")
        await engine(a).sync_once()
        second = node_record(node, a.space_id, a.identity.device_id)
        assert second is not None and second.counter == 2 and second.heads == sh.select_heads(a.heads)
        sb = engine(b)
        assert (await sb.sync_once()).errors == []
        assert b.heads == a.heads
        # b published its own heads too, and holds a's newest record
        assert node_record(node, a.space_id, b.identity.device_id) is not None
        assert b.store.signed_heads_counter(a.space_id, a.identity.device_id) == 2
        await engine(a).sync_once()  # nothing moved: no new counter
        assert node_record(node, a.space_id, a.identity.device_id).counter == 2  # type: ignore[union-attr]
    assert b.store.provider_warnings(a.space_id) == [] and a.store.provider_warnings(a.space_id) == []
    assert sb.status()["warnings"] == []
    assert not [r for r in caplog.records if "withholds" in r.getMessage() or "rolled back" in r.getMessage()]


async def test_the_counter_survives_restarts_and_is_never_reused(tmp_path: Path, make_home: Any) -> None:
    async with running_node(tmp_path / "node") as (node, addr):
        a, _b = await two_devices(make_home, addr)
        for n in range(2):
            put_file(a, f"/more-{n}.txt", b"x")
            await engine(a).sync_once()
        assert node_record(node, a.space_id, a.identity.device_id).counter == 3  # type: ignore[union-attr]
        # a new process (a fresh replica and engine over the same home) continues from the stored counter
        a2 = Replica(a.unlocked, a.store, a.blobs, a.space_id)
        put_file(a2, "/after-restart.txt", b"y")
        await engine(a2).sync_once()
        assert node_record(node, a.space_id, a.identity.device_id).counter == 4  # type: ignore[union-attr]
        # a store restored from an old backup lost its row: the provider serves our newest back before we sign,
        # so the next record still goes above every counter we ever used
        a.store.drop_signed_heads(a.space_id, [a.identity.device_id])
        put_file(a2, "/after-restore.txt", b"z")
        await engine(a2).sync_once()
        record = node_record(node, a.space_id, a.identity.device_id)
        assert record is not None and record.counter == 5 and record.heads == sh.select_heads(a2.heads)


# ------------------------------------------------------------------------------------------------ withholding
@pytest.mark.parametrize("how", ["never-offered", "getchanges-empty", "getchanges-error"])
async def test_a_provider_that_withholds_a_change_is_caught(
        tmp_path: Path, make_home: Any, caplog: pytest.LogCaptureFixture, how: str) -> None:
    node = WithholdingNode(tmp_path / "node", how)
    async with running(node) as addr:
        a, b = await two_devices(make_home, addr)
        put_file(a, "/secret-plan.txt", b"the change the provider keeps from b")
        (hidden,) = set(a.heads) - set(b.heads)
        await engine(a).sync_once()  # a pushes the change and its signed heads naming it
        signed = node_record(node, a.space_id, a.identity.device_id)
        assert signed is not None and hidden in signed.heads
        node.hidden = {hidden}
        sb = engine(b)
        with caplog.at_level(logging.WARNING):
            report = await sb.sync_once()
        assert hidden not in set(b.store.change_statuses([hidden]))  # the attack itself still works: no change
        if how != "never-offered":
            assert report.errors  # announced but not delivered: the round also failed
        provider, device = node.identity.device_text, a.identity.device_text
        expected = f"provider {provider} withholds changes that device {device} signed at counter {signed.counter}"
        assert any(r.levelno == logging.WARNING and expected in r.getMessage() for r in caplog.records)
        (warning,) = b.store.provider_warnings(a.space_id)
        assert warning.kind == "withholds" and warning.provider == node.identity.device_id
        assert sb.status()["warnings"][0]["message"].startswith(expected)  # what the mount's status file shows
    (space,) = status_json(b.unlocked)
    assert [w["kind"] for w in space["warnings"]] == ["withholds"]
    assert space["warnings"][0]["provider"] == provider and space["warnings"][0]["device"] == device
    assert expected in status_text(b.unlocked)


async def test_a_provider_serving_an_older_record_than_before_is_caught(tmp_path: Path, make_home: Any) -> None:
    async with running_node(tmp_path / "node") as (node, addr):
        a, b = await two_devices(make_home, addr)
        old_raw = node.store.signed_heads_row(a.space_id, a.identity.device_id).raw  # type: ignore[union-attr]
        put_file(a, "/second.txt", b"two")
        await engine(a).sync_once()
        await engine(b).sync_once()
        assert b.store.provider_warnings(a.space_id) == []
    # The same provider (its device key), restored from an old backup or lying: it serves counter 1 after 2.
    copy = SpaceCopy.of(b)
    copy.signed_heads = [old_raw]
    provider = HostileProvider(copy, tls=make_tls_identity(node.identity.device))
    provider.identity = node.identity
    async with serving(provider) as hostile_addr:
        b.store.add_peer(b.space_id, str(hostile_addr), hostile_addr.device)
        b.store.remove_peer(b.space_id, str(addr))
        await engine(b).sync_once()
    (warning,) = b.store.provider_warnings(b.space_id)
    assert warning.kind == "rollback" and warning.counter == 1 and "after 2" in warning.message
    # and the device kept the newer record it had
    assert b.store.signed_heads_counter(b.space_id, a.identity.device_id) == 2


# ------------------------------------------------------------------------------------------------ refused
async def test_the_node_refuses_forged_oversized_old_and_unbacked_records(tmp_path: Path, make_home: Any) -> None:
    async with running_node(tmp_path / "node") as (node, addr):
        a, _b = await two_devices(make_home, addr)
        space_id, me = a.space_id, a.identity
        newest = node_record(node, space_id, me.device_id)
        assert newest is not None

        async def put(raw: bytes) -> Any:
            conn = await Endpoint(me).dial(addr)
            try:
                return await while_serving(conn, lambda: conn.request(m.PutHeads(space_id, raw)))
            finally:
                await conn.abort("done")

        # the same counter again (other bytes: another time): known, not stored — a counter is never reused
        old = sh.sign_heads(me, space_id, newest.counter, a.heads, 0)
        reply = await put(old)
        assert isinstance(reply, m.Accepted) and (reply.accepted, reply.known) == (0, 1)
        # a record naming a change the node does not hold: not stored, the change is named
        unknown = crypto.blake3(b"no such change")
        reply = await put(sh.sign_heads(me, space_id, 50, [unknown], 0))
        assert isinstance(reply, m.Accepted) and reply.accepted == 0 and list(reply.missing) == [unknown]
        # a forged signature: refused as invalid data (the node hangs up)
        with pytest.raises((RemoteError, NetworkError)):
            await put(flip(sh.sign_heads(me, space_id, 60, a.heads, 0), -1))
        # a record of a device whose account is not a member
        stranger = random_identity("stranger")
        with pytest.raises(RemoteError) as info:
            await put(sh.sign_heads(stranger, space_id, 70, a.heads, 0))
        assert info.value.code == m.ErrorCode.FORBIDDEN
        # a record of another space
        with pytest.raises((RemoteError, NetworkError)):
            await put(sh.sign_heads(me, bytes(32), 80, a.heads, 0))
        # an oversized record never gets past the message decoder
        with pytest.raises((RemoteError, NetworkError)):
            await put(sh.sign_heads(me, space_id, 90, a.heads, 0) + bytes(sh.MAX_RECORD_LEN))
        # none of it replaced the newest record
        assert node_record(node, space_id, me.device_id) == newest
        # a newer, honest one is stored
        reply = await put(sh.sign_heads(me, space_id, newest.counter + 1, a.heads, 0))
        assert isinstance(reply, m.Accepted) and reply.accepted == 1
        assert node_record(node, space_id, me.device_id).counter == newest.counter + 1  # type: ignore[union-attr]


async def test_a_device_refuses_forged_and_old_records_a_provider_serves(tmp_path: Path, make_home: Any) -> None:
    async with running_node(tmp_path / "node") as (node, addr):
        a, b = await two_devices(make_home, addr)
        put_file(a, "/second.txt", b"two")
        await engine(a).sync_once()
        await engine(b).sync_once()
        newest = node_record(node, a.space_id, a.identity.device_id)
        assert newest is not None and newest.counter == 2
    # a forged record (a flipped signature byte): the device drops the provider as hostile, stores nothing
    copy = SpaceCopy.of(b)
    copy.signed_heads = [flip(newest.raw, -1)]
    forger = HostileProvider(copy)
    async with serving(forger) as forger_addr:
        b.store.add_peer(b.space_id, str(forger_addr), forger_addr.device)
        b.store.remove_peer(b.space_id, str(addr))
        report = await engine(b).sync_once()
        b.store.remove_peer(b.space_id, str(forger_addr))
    assert report.errors and "signature" in report.errors[0]
    assert b.store.heads_served(b.space_id, forger.identity.device_id) == {}
    # an older record of a device (from a provider that never served a newer one): not stored over the newer
    old = sh.sign_heads(a.identity, a.space_id, 1, newest.heads, 0)
    copy.signed_heads = [old]
    stale = HostileProvider(copy)
    async with serving(stale) as stale_addr:
        b.store.add_peer(b.space_id, str(stale_addr), stale_addr.device)
        assert (await engine(b).sync_once()).errors == []
    assert b.store.signed_heads_counter(b.space_id, a.identity.device_id) == 2
    # two records of one device in one reply: hostile
    copy.signed_heads = [old, newest.raw]
    double = HostileProvider(copy)
    async with serving(double) as double_addr:
        b.store.remove_peer(b.space_id, str(stale_addr))
        b.store.add_peer(b.space_id, str(double_addr), double_addr.device)
        report = await engine(b).sync_once()
    assert report.errors and "two signed heads records" in report.errors[0]


async def test_the_node_keeps_a_bounded_number_of_records_per_space(tmp_path: Path, make_home: Any) -> None:
    async with running_node(tmp_path / "node") as (node, addr):
        a, _b = await two_devices(make_home, addr)
        space_id, me = a.space_id, a.identity
        held = node.store.count_signed_heads(space_id)  # a's and b's own
        # The account certifies as many devices as it likes; the node keeps at most MAX_DEVICES_PER_SPACE.
        devices = []
        for i in range(sh.MAX_DEVICES_PER_SPACE - held + 1):
            device = crypto.SigningKey.generate()
            cert = keys.issue_device_cert(me.account, device.public, f"extra {i}", 0)
            devices.append(keys.Identity(me.account, device, cert, f"extra {i}"))

        async def fill() -> Any:
            for ident in devices[:-1]:
                reply = await conn.request(m.PutHeads(space_id, sh.sign_heads(ident, space_id, 1, a.heads, 0)))
                assert isinstance(reply, m.Accepted) and reply.accepted == 1
            with pytest.raises(RemoteError) as info:
                await conn.request(m.PutHeads(space_id, sh.sign_heads(devices[-1], space_id, 1, a.heads, 0)))
            assert info.value.code == m.ErrorCode.QUOTA
            # a device already held still moves on
            newer = sh.sign_heads(me, space_id, 99, a.heads, 0)
            assert (await conn.request(m.PutHeads(space_id, newer))).accepted == 1
            return await conn.request(m.GetHeads(space_id))

        conn = await Endpoint(me).dial(addr)
        try:
            served = await while_serving(conn, fill)
        finally:
            await conn.abort("done")
        assert isinstance(served, m.HeadsRecords) and len(served.records) == sh.MAX_DEVICES_PER_SPACE
        assert node.store.count_signed_heads(space_id) == sh.MAX_DEVICES_PER_SPACE
