"""The account tag of LAN announcements (``a=``, docs/protocol.md 70.15) and the restore's choice among the vault
records it was served (issue 15): pure functions, no network."""

from __future__ import annotations

from mnemonic import Mnemonic

from anysyncfs.core import keys
from anysyncfs.core import vault as v
from anysyncfs.core.address import PeerAddress
from anysyncfs.net import lan
from anysyncfs.net.vault_sync import Fetched, older_records, rollback_line

PHRASE = Mnemonic("english").to_mnemonic(bytes(range(32)))  # the identity of tests/vectors/device_cert.json
SEED = keys.account_key_from_phrase(PHRASE).seed
STRANGER = keys.account_key_from_phrase(Mnemonic("english").to_mnemonic(bytes(range(1, 33)))).seed
DEVICE = bytes([0xD1]) * 32
WINDOW, PORT = 2945376, 7734
NOW = WINDOW * lan.WINDOW_S + 1.0
# The vector of docs/protocol.md 70.15 (nonce 00 01 … 0b).
VECTOR_KEY = "4e63ba44d974f81cd4b5ab893d4cce1d1edc63b91754d470a969e41bb5739403"
VECTOR_A = "AAECAwQFBgcICQoLPruyOzSAistHE6x_Mjh6LBNywr3tEK5DvGjT4XvQZ-8n1XUPWs5WEcQe5BPTJsgT"


def test_account_tag_vector() -> None:
    assert SEED.hex() == "c44631f3c45a49df22dae7fc91a8ab8efd6d1dba5cc2d301be7ec8844483e678"
    assert lan.account_key(SEED, WINDOW).hex() == VECTOR_KEY
    assert lan.seal_account(SEED, WINDOW, PORT, DEVICE, nonce=bytes(range(12))) == VECTOR_A
    assert lan.open_account(VECTOR_A.encode(), SEED, PORT, NOW) == DEVICE


def test_a_strangers_account_key_does_not_open_it() -> None:
    value = lan.seal_account(SEED, WINDOW, PORT, DEVICE).encode()
    assert lan.open_account(value, STRANGER, PORT, NOW) is None
    assert lan.open_account(value, SEED, PORT, NOW) == DEVICE
    # Nor does a space's key open an account tag, or the account key a space tag (separate derivations).
    space_value = lan.seal_device(SEED, bytes(32), WINDOW, PORT, DEVICE).encode()
    assert lan.open_account(space_value, SEED, PORT, NOW) is None
    assert lan.open_device(value, SEED, bytes(32), PORT, NOW) is None


def test_windows_differ_and_only_neighbouring_ones_are_accepted() -> None:
    keys_of = {lan.account_key(SEED, w) for w in range(WINDOW - 3, WINDOW + 3)}
    assert len(keys_of) == 6  # a new key every window: one window's key says nothing of the next
    same_nonce = bytes(range(12))
    assert lan.seal_account(SEED, WINDOW, PORT, DEVICE, same_nonce) != \
        lan.seal_account(SEED, WINDOW + 1, PORT, DEVICE, same_nonce)
    # Two announcements of the same device in the same window look unrelated too (a fresh nonce each).
    assert lan.seal_account(SEED, WINDOW, PORT, DEVICE) != lan.seal_account(SEED, WINDOW, PORT, DEVICE)
    value = lan.seal_account(SEED, WINDOW, PORT, DEVICE).encode()
    for delta, opens in ((-2, False), (-1, True), (0, True), (1, True), (2, False)):
        now = (WINDOW + delta) * lan.WINDOW_S + 1.0
        assert (lan.open_account(value, SEED, PORT, now) == DEVICE) is opens, delta


def test_the_port_is_bound_and_garbage_is_ignored() -> None:
    value = lan.seal_account(SEED, WINDOW, PORT, DEVICE).encode()
    assert lan.open_account(value, SEED, PORT + 1, NOW) is None  # moved to another listener: refused
    for junk in (b"", b"!!!", value[:-4], value + b"AAAA", b"A" * 200):
        assert lan.open_account(junk, SEED, PORT, NOW) is None


def test_recognise_account_device() -> None:
    value = lan.seal_account(SEED, WINDOW, PORT, DEVICE).encode()
    props = {b"v": b"1", b"s": b"whatever", b"a": value}
    hosts = ["10.0.0.7", "fe80::1"]
    assert lan.recognise_account_device(props, PORT, hosts, SEED, NOW) == [PeerAddress(DEVICE, "10.0.0.7", PORT)]
    assert lan.recognise_account_device(props, PORT, hosts, STRANGER, NOW) == []
    assert lan.recognise_account_device({**props, b"v": b"2"}, PORT, hosts, SEED, NOW) == []
    assert lan.recognise_account_device({b"v": b"1", b"s": value}, PORT, hosts, SEED, NOW) == []  # no ``a``
    assert lan.recognise_account_device({**props, b"a": None}, PORT, hosts, SEED, NOW) == []


def _fetched(address: str, version: int, name: str) -> Fetched:
    vkeys = v.VaultKeys.from_account_seed(SEED)
    contents = v.put_entry(v.EMPTY, DEVICE, bytes([version]) * 32, name=name, peers=[], pins=[])
    record = v.parse_vault_record(v.seal_vault(contents, vkeys, version, bytes(24)), vkeys.discovery_id)
    return Fetched(address, record, v.open_vault(record, vkeys))


def test_a_restore_names_the_sources_of_older_records() -> None:
    new, old = _fetched("device-a", 7, "new"), _fetched("device-b", 3, "old")
    forged = Fetched("device-c", error="device-c: served a vault that does not verify (bad signature): ignored")
    assert older_records([old, forged, new]) == [rollback_line("device-b", 3, 7)]
    assert older_records([forged]) == []
    twin = _fetched("provider", 7, "new")
    assert older_records([new, twin]) == []  # the same version from two sources: nothing is behind
