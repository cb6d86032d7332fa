"""A device's listener serves the account's vault to another device of the same account — the one being
restored from the phrase with ``init --restore --lan`` — and to nobody else (issue 15, docs/protocol.md 70.15).
Real TCP on loopback, TLS and the session handshake as between processes; the LAN browsing itself is tested in
network namespaces (tests/integration/test_lan_restore_netns.py)."""

from __future__ import annotations

import pytest
import trio

from anysyncfs.core import keys
from anysyncfs.core import vault as v
from anysyncfs.net.vault_sync import account_endpoint, fetch_all, fetch_one, older_records, rollback_line
from anysyncfs.replica import Replica, create_space

from tests.integration.test_p2p import device, own_address

pytestmark = pytest.mark.trio


def keep_vault(replica: Replica, version: int, name: str, vkeys: v.VaultKeys) -> bytes:
    contents = v.put_entry(v.EMPTY, replica.identity.device_id, replica.space_id, name=name, peers=[])
    raw = v.seal_vault(contents, vkeys, version, bytes(24))
    replica.store.put_vault(vkeys.discovery_id, version, raw, version)
    return raw


async def test_a_device_serves_its_vault_to_its_own_account_only(make_home) -> None:
    phrase = keys.generate_phrase()
    account = keys.account_key_from_phrase(phrase)
    vkeys = v.VaultKeys.from_account_seed(account.seed)
    a = create_space(make_home("a", phrase), "docs")
    raw = keep_vault(a, 4, "docs", vkeys)
    async with device(a) as (_sync, peering):
        address = str(own_address(peering))
        got = await fetch_one(address, vkeys, 10.0, account_endpoint(account))
        assert got.error is None and got.record is not None and got.record.raw == raw
        assert got.contents is not None and [e.name for e in got.contents.live()] == ["docs"]
        # A throwaway identity (what a provider is asked with) is a stranger here: closed after authentication.
        stranger = await fetch_one(address, vkeys, 10.0)
        assert stranger.record is None and stranger.error is not None
        # Another account asking for this vault's ID: the same.
        other = keys.account_key_from_phrase(keys.generate_phrase())
        theirs = await fetch_one(address, vkeys, 10.0, account_endpoint(other))
        assert theirs.record is None and theirs.error is not None
        # Our account asking for another discovery ID: refused (the device keeps only its own account's vault).
        elsewhere = await fetch_one(address, v.VaultKeys.from_account_seed(other.seed), 10.0,
                                    account_endpoint(account))
        assert elsewhere.record is None and "not available" in (elsewhere.error or "")
        assert peering.server is not None and peering.server.refused_strangers == 2


async def test_a_forged_or_older_vault_from_a_lan_device_is_refused(make_home) -> None:
    phrase = keys.generate_phrase()
    account = keys.account_key_from_phrase(phrase)
    vkeys = v.VaultKeys.from_account_seed(account.seed)
    a = create_space(make_home("a", phrase), "docs")
    b = create_space(make_home("b", phrase), "photos")
    c = create_space(make_home("c", phrase), "music")
    newest = keep_vault(a, 9, "docs", vkeys)
    keep_vault(b, 2, "photos", vkeys)  # a device that slept through seven updates, or lies
    # C offers a record under our discovery ID signed by someone else's vault key: it cannot be ours.
    forger = v.VaultKeys.from_account_seed(keys.account_key_from_phrase(keys.generate_phrase()).seed)
    forged = v.seal_vault(v.put_entry(v.EMPTY, bytes(32), bytes(32), name="bait", peers=[]), forger, 99, bytes(24))
    c.store.put_vault(vkeys.discovery_id, 99, forged, 99)
    async with device(a) as (_sa, pa), device(b) as (_sb, pb), device(c) as (_sc, pc):
        addresses = [str(own_address(p)) for p in (pa, pb, pc)]
        fetched = await fetch_all(addresses, vkeys, 10.0, [account_endpoint(account) for _ in addresses])
    assert fetched[2].record is None and "does not verify" in (fetched[2].error or "")
    assert [f.record.raw for f in fetched[:1] if f.record is not None] == [newest]
    assert older_records(fetched) == [rollback_line(addresses[1], 2, 9)]


async def test_the_announcement_carries_the_account_tag_and_discovery_off_announces_nothing(make_home) -> None:
    import time

    from anysyncfs.net import lan
    from anysyncfs.net.endpoint import Endpoint
    from anysyncfs.net.p2p import DevicePeering
    from anysyncfs.net.runner import Runner
    from anysyncfs.net.sync import SpaceSync

    from tests.integration.test_p2p import LOOPBACK

    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    discovery = lan.LanDiscovery(SpaceSync(a, Endpoint(a.identity), Runner()), lambda: (["10.0.0.7"], 7734))
    now = time.time()
    info = discovery._info(lan.window_of(now))
    assert info is not None
    props = dict(info.properties)  # type: ignore[attr-defined]
    seed = keys.account_key_from_phrase(phrase).seed
    assert lan.recognise_account_device(props, 7734, ["10.0.0.7"], seed, now)[0].device == a.identity.device_id
    assert lan.recognise_account_device(props, 7734, ["10.0.0.7"], bytes(32), now) == []
    # discovery=off: no LanDiscovery at all, so neither the space's tag nor the account's is announced.
    off = DevicePeering(SpaceSync(a, Endpoint(a.identity), Runner()), listen=LOOPBACK, discovery=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(off.run)
        assert off.server is not None and off.addresses()  # listening, and still announcing nothing
        assert off.lan is None
        nursery.cancel_scope.cancel()
