"""Two devices of one account that sync directly — no provider — exchange the account's vault as well (issue 15:
"devices of the account sync it like a space"; docs/protocol.md 70.16). Real TCP on loopback, TLS and the session
handshake as between processes; the CLI as subprocesses on the same homes.

- through the CLI alone (``sync --watch`` on device 1, ``space add-peer`` + ``sync`` on device 2): a space created
  on either device reaches the other's vault and ``space list``;
- a space created on device 1 (``space create``) reaches device 2's vault, and device 2's entries reach device 1's
  (a CRDT merge, pushed with ``PutVault``); ``vault show`` and ``space list`` on device 2 name it;
- a device of another account — even a member of a space the device serves — can neither read nor write the vault
  through the listener (the refusal of a space not held here; nothing stored);
- a device of the account pushing an older record, a forged one, or one that drops an entry is refused.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from anysyncfs.core import acl, keys
from anysyncfs.core import vault as v
from anysyncfs.net.connection import RemoteError, while_serving
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.vault_sync import account_endpoint
from anysyncfs.protocol import messages as m
from anysyncfs.replica import Replica, create_space

from tests.conftest import CLI, eventually
from tests.integration.test_p2p import device, own_address, second_device



def vault_of(replica: Replica, vkeys: v.VaultKeys) -> tuple[int, bytes, v.VaultContents] | None:
    row = replica.store.vault(vkeys.discovery_id)
    if row is None:
        return None
    return row.version, row.record, v.open_vault(v.parse_vault_record(row.record, vkeys.discovery_id), vkeys)


def names(replica: Replica, vkeys: v.VaultKeys) -> set[str]:
    got = vault_of(replica, vkeys)
    return set() if got is None else {e.name for e in got[2].live()}


def cli(env: dict[str, str], home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*CLI, "--home", str(home), *args], env=env, capture_output=True, text=True, timeout=120,
                       check=False, cwd=os.getcwd())
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return p


def keep(replica: Replica, vkeys: v.VaultKeys, version: int, contents: v.VaultContents) -> bytes:
    raw = v.seal_vault(contents, vkeys, version, os.urandom(24))
    replica.store.put_vault(vkeys.discovery_id, version, raw, version)
    return raw


@pytest.mark.trio
async def test_a_space_created_on_one_device_reaches_the_others_vault_without_a_provider(
        tmp_path: Path, make_home, cli_env: dict[str, str]) -> None:
    phrase = keys.generate_phrase()
    vkeys = v.VaultKeys.from_account_seed(keys.account_key_from_phrase(phrase).seed)
    a = create_space(make_home("a", phrase), "docs")
    b = second_device(make_home, a, phrase, "b")
    # Device 1 creates a space with the CLI (no provider: the vault is kept on the device only).
    created = cli(cli_env, tmp_path / "a", "space", "create", "photos").stdout.split()[0]
    assert names(a, vkeys) == {"photos"}
    # Device 2 has an entry of its own that device 1 lacks (made while they were apart).
    music = os.urandom(32)
    keep(b, vkeys, 1, v.put_entry(v.EMPTY, b.identity.device_id, music, name="music", peers=[]))
    async with device(a) as (_sa, pa), device(b) as (_sb, _pb):
        a_address = str(own_address(pa))
        b.store.add_peer(b.space_id, a_address, own_address(pa).device)  # space add-peer, by hand
        await eventually(lambda: names(b, vkeys) == {"photos", "music"}, "b's vault has the space made on a")
        await eventually(lambda: names(a, vkeys) == {"photos", "music"}, "a's vault has b's entry (pushed)")
        await eventually(lambda: vault_of(a, vkeys)[:2] == vault_of(b, vkeys)[:2], "both keep the same record")
    assert not any(r.id == music for r in a.store.spaces())  # the vault lists it; nothing else changed on a
    # On device 2: `vault show` lists the space made on device 1, `space list` names it as not held here.
    shown = cli(cli_env, tmp_path / "b", "vault", "show")
    assert f"{created}  photos  (not on this device;" in shown.stdout
    # a's listener is a device, not a provider: not asked with a throwaway identity (it would refuse it), so
    # `vault sync` on a device that syncs only directly succeeds instead of "no provider could be reached".
    assert "no provider recorded" in shown.stderr and a_address not in shown.stderr
    assert "no provider recorded" in cli(cli_env, tmp_path / "b", "vault", "sync").stderr
    listed = cli(cli_env, tmp_path / "b", "space", "list")
    assert listed.stdout.split()[1::2] == ["docs"]  # held here: stdout, as before (scripts read it)
    assert f"  {created}  photos  (no peer recorded)" in listed.stderr.splitlines()
    assert "not on this device" in listed.stderr and "music" in listed.stderr


@pytest.mark.trio
async def test_another_account_can_neither_read_nor_write_the_vault_through_the_listener(make_home) -> None:
    from tests.integration.test_replicas import invite_and_join

    phrase = keys.generate_phrase()
    account = keys.account_key_from_phrase(phrase)
    vkeys = v.VaultKeys.from_account_seed(account.seed)
    a = create_space(make_home("a", phrase), "shared")
    held = keep(a, vkeys, 5, v.put_entry(v.EMPTY, a.identity.device_id, a.space_id, name="shared", peers=[]))
    friend = make_home("friend")
    invite_and_join(a, friend, acl.Role.WRITER)  # a member of the space a serves: answered for that space
    # A genuine record of the account at a higher version (replayed from somewhere): still not the friend's to push.
    replayed = v.seal_vault(v.put_entry(v.EMPTY, a.identity.device_id, a.space_id, name="renamed", peers=[]),
                            vkeys, 9, os.urandom(24))
    async with device(a) as (_sa, pa):
        conn = await Endpoint(friend.identity).dial(own_address(pa))

        async def ask() -> list[str]:
            info = await conn.request(m.OpenSpace(a.space_id, with_acl=False))
            assert isinstance(info, m.SpaceInfo)  # a member indeed
            refusals = []
            for body in (m.GetVault(vkeys.discovery_id), m.PutVault(replayed), m.PutVault(b"garbage")):
                with pytest.raises(RemoteError) as info_:
                    await conn.request(body)
                refusals.append(f"{info_.value.code} {info_.value.remote_message}")
            return refusals

        refusals = await while_serving(conn, ask)
        await conn.abort("done")
        # The same answer as for a space this device does not hold.
        assert set(refusals) == {f"{int(m.ErrorCode.FORBIDDEN)} not available to you here"}
        # A stranger (another account, member of nothing here) is closed right after authentication.
        stranger = keys.account_key_from_phrase(keys.generate_phrase())
        conn = await account_endpoint(stranger).dial(own_address(pa))
        with pytest.raises(Exception):
            await while_serving(conn, lambda: conn.request(m.PutVault(replayed)))
        await conn.abort("done")
    assert vault_of(a, vkeys)[:2] == (5, held)  # nothing stored


@pytest.mark.trio
async def test_an_older_forged_or_shrinking_record_from_a_device_of_the_account_is_refused(make_home) -> None:
    phrase = keys.generate_phrase()
    account = keys.account_key_from_phrase(phrase)
    vkeys = v.VaultKeys.from_account_seed(account.seed)
    a = create_space(make_home("a", phrase), "docs")
    other = os.urandom(32)
    two = v.put_entry(v.put_entry(v.EMPTY, a.identity.device_id, a.space_id, name="docs", peers=[]),
                      a.identity.device_id, other, name="other", peers=[])
    held = keep(a, vkeys, 5, two)
    older = v.seal_vault(two, vkeys, 4, os.urandom(24))
    same = v.seal_vault(two, vkeys, 5, os.urandom(24))
    # Drops "other" (no tombstone): a newer version, but it would lose an entry of the vault held here.
    shrunk = v.seal_vault(v.VaultContents([two.entries[0] if two.entries[0].space == a.space_id
                                           else two.entries[1]]), vkeys, 6, os.urandom(24))
    forger = v.VaultKeys.from_account_seed(keys.account_key_from_phrase(keys.generate_phrase()).seed)
    forged = v.seal_vault(two, forger, 99, os.urandom(24))  # signed by another vault key
    newer = v.put_entry(two, a.identity.device_id, os.urandom(32), name="new", peers=[])
    good = v.seal_vault(newer, vkeys, 6, os.urandom(24))
    async with device(a) as (_sa, pa):
        async def push(raw: bytes) -> object:
            conn = await account_endpoint(account).dial(own_address(pa))
            try:
                return await while_serving(conn, lambda: conn.request(m.PutVault(raw)))
            finally:
                await conn.abort("done")

        assert await push(older) == m.VaultStored(False, 5)
        assert await push(same) == m.VaultStored(False, 5)
        assert await push(shrunk) == m.VaultStored(False, 5)
        for bad in (forged, held[:-1] + bytes([held[-1] ^ 1])):  # another signer; a flipped signature byte
            with pytest.raises(RemoteError) as info:
                await push(bad)
            assert info.value.code == m.ErrorCode.INVALID
        assert vault_of(a, vkeys)[:2] == (5, held)  # nothing stored
        assert await push(good) == m.VaultStored(True, 6)
        assert vault_of(a, vkeys)[:2] == (6, good)


def test_through_the_cli_a_space_created_on_either_device_reaches_the_other(make_home, tmp_path: Path) -> None:
    from anysyncfs.core import ids
    from anysyncfs.replica import adopt_space

    from tests.integration.test_p2p_cli import _cli, _env, _stop, _watch

    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    adopt_space(b_home, "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    space = ids.space_text(a.space_id)

    def listed(home: Path) -> tuple[str, str]:
        done = subprocess.run([*CLI, "space", "list"], env=_env(home), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    procs = []
    try:
        pa, a_address = _watch(a_home.home.root, space, tmp_path / "a.log")  # device 1 listens; no provider
        procs.append(pa)
        _cli(b_home.home.root, "space", "add-peer", space, a_address)
        photos = _cli(a_home.home.root, "space", "create", "photos").split()[0]
        _cli(b_home.home.root, "sync", space)  # one round with device 1: the vault comes with it
        out, err = listed(b_home.home.root)
        assert out.split()[1::2] == ["docs"] and f"  {photos}  photos  (no peer recorded)" in err.splitlines()
        music = _cli(b_home.home.root, "space", "create", "music").split()[0]
        _cli(b_home.home.root, "sync", space)  # pushes the merged vault to device 1's listener
        out, err = listed(a_home.home.root)
        assert out.split()[1::2] == ["docs", "photos"] and f"  {music}  music  (no peer recorded)" in err.splitlines()
    finally:
        _stop(procs)
