"""The account vault end to end (issue 15, docs/protocol.md 25): the CLI as subprocesses against real nodes
(``anysyncfs node serve``) over loopback TCP. The full restore with mounts is in tests/fuse/test_11_vault.py.

- two devices of one account add spaces while the provider is down: both spaces survive;
- a wrong recovery phrase finds nothing: one line, non-zero exit, no home left behind;
- a forged vault is refused by the node (PutVault) and by a device (served from a tampered node);
- a provider serving an older vault is reported as a rollback;
- the provider's files hold no space name, and no ID of a space it does not serve.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from anysyncfs.core import encoding, keys
from anysyncfs.core import ids as id_mod
from anysyncfs.core import vault as v
from anysyncfs.core.address import parse_address
from anysyncfs.errors import NetworkError, ProtocolError
from anysyncfs.net.connection import RemoteError, while_serving
from anysyncfs.net.vault_sync import throwaway_endpoint
from anysyncfs.protocol import messages as m
from tests.conftest import CLI
from tests.conftest import free_port
from tests.fuse.conftest import SyncNode


class Cli:
    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env, self.home = env, home

    def __call__(self, *args: str, input: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*CLI, "--home", str(self.home), *args], input=input, env=self.env, capture_output=True,
                           text=True, timeout=120, check=False)
        if ok and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: {p.stderr}")
        assert "Traceback" not in p.stderr, p.stderr
        return p

    def init(self, name: str) -> str:
        out = self("init", "--device-name", name).stdout.splitlines()
        return out[out.index(next(x for x in out if x.startswith("Your recovery phrase"))) + 1].strip()

    def space_id(self, name: str) -> str:
        return next(line.split()[0] for line in self("space", "list").stdout.splitlines() if line.split()[1] == name)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SyncNode]:
    n = SyncNode(tmp_path / "node", free_port())
    try:
        yield n
    finally:
        n.kill()


@dataclass
class Owner:
    node: SyncNode
    address: str
    cli: Cli
    phrase: str
    env: dict[str, str]
    root: Path


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Owner]:
    """One node and one account with a space on it, for the tests of bad input (they run in file order)."""
    import os

    from tests.conftest import PASSPHRASE, TEST_LOG2N

    root = tmp_path_factory.mktemp("vault")
    env = dict(os.environ, ANYSYNCFS_PASSPHRASE=PASSPHRASE.decode(),
               ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N=str(TEST_LOG2N))
    n = SyncNode(root / "node", free_port())
    try:
        address = n.start()
        cli = Cli(env, root / "owner")
        phrase = cli.init("owner")
        cli("space", "create", "s")
        cli("space", "add-peer", "s", address)
        cli("space", "create", "t")
        cli("space", "add-peer", "t", address)
        cli("sync", "s")
        cli("sync", "t")
        yield Owner(n, address, cli, phrase, env, root)
    finally:
        n.kill()


def vault_row(data: Path) -> tuple[int, bytes]:
    with sqlite3.connect(data / "node.db") as db:
        version, record = db.execute("SELECT version, record FROM vaults").fetchone()
    return int(version), bytes(record)


def set_vault_row(data: Path, version: int, record: bytes) -> None:
    with sqlite3.connect(data / "node.db") as db:
        db.execute("UPDATE vaults SET version = ?, record = ?", (version, record))


def test_offline_devices_both_keep_their_new_spaces(tmp_path: Path, cli_env: dict[str, str], node: SyncNode) -> None:
    address = node.start()
    laptop, phone, third = (Cli(cli_env, tmp_path / n) for n in ("laptop", "phone", "third"))
    phrase = laptop.init("laptop")
    laptop("space", "create", "home-space")
    assert "vault version 2 on 1/1 providers" in laptop("space", "add-peer", "home-space", address).stderr
    laptop("put", "home-space", "/a.txt", input="".join(str(i) for i in range(30_000)))
    laptop("sync", "home-space")
    served = id_mod.from_text(id_mod.PREFIX_SPACE, laptop.space_id("home-space"))
    phone("init", "--restore", "--device-name", "phone", "--peer", address, input=phrase)
    assert phone("space", "list").stdout.split()[1::2] == ["home-space"]

    node.stop()  # both devices are offline now
    p = laptop("space", "create", "from-laptop")
    assert "vault version 3 on 0/1 providers" in p.stderr
    phone("space", "create", "from-phone")
    node.start()
    laptop("vault", "sync")
    phone("vault", "sync")  # the node holds the laptop's version 3: the phone merges and pushes version 4
    shown = laptop("vault", "show").stdout
    assert all(name in shown for name in ("home-space", "from-laptop", "from-phone")), shown
    listed = third("init", "--restore", "--peer", address, "--list-only", input=phrase).stdout.split()[1::2]
    assert sorted(listed) == ["from-laptop", "from-phone", "home-space"]
    assert not (tmp_path / "third").exists()  # --list-only creates nothing

    # rename and leave travel too
    phone("space", "rename", "from-phone", "phone-renamed")
    blob_files = lambda: [f for f in (tmp_path / "laptop" / "blobs").rglob("*") if f.is_file() and f.suffix != ".ob"]  # noqa: E731
    assert blob_files()
    before = len(blob_files())
    assert f"{before} content file(s) deleted" in laptop("space", "leave", "home-space").stdout
    assert not blob_files()  # the only space that used it is gone
    listed = third("init", "--restore", "--peer", address, "--list-only", input=phrase).stdout.split()[1::2]
    assert sorted(listed) == ["from-laptop", "phone-renamed"]
    assert "home-space" not in laptop("space", "list").stdout

    # The provider's files: its vault lists every space, yet no name is readable, nor the ID of a space it does
    # not serve (the two made offline never had a provider).
    node.stop()
    unserved = [phone.space_id("phone-renamed"), laptop.space_id("from-laptop")]
    blob = b"".join(p.read_bytes() for p in node.data.rglob("*") if p.is_file())
    assert vault_row(node.data)[0] >= 4 and served in blob  # (the grep sees what the node does hold)
    for name in ("home-space", "from-laptop", "from-phone", "phone-renamed"):
        assert name.encode() not in blob
    for text in unserved:
        assert text.encode() not in blob and id_mod.from_text(id_mod.PREFIX_SPACE, text) not in blob


def test_wrong_phrase_finds_nothing(owner: Owner) -> None:
    stranger = Cli(owner.env, owner.root / "stranger")
    p = stranger("init", "--restore", "--peer", owner.address, input=keys.generate_phrase(), ok=False)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [f"anysyncfs: error: no vault for this recovery phrase on {owner.address}"]
    assert not (owner.root / "stranger" / "master.keys").exists()


def test_restore_selected_spaces(owner: Owner) -> None:
    new = Cli(owner.env, owner.root / "selective")
    p = new("init", "--restore", "--peer", owner.address, "--space", "nope", input=owner.phrase, ok=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "anysyncfs: error: the vault lists no space named 'nope'"]
    p = new("init", "--restore", "--peer", owner.address, "--space", "t", input=owner.phrase)
    assert p.stdout.count("restored sp-") == 1
    assert new("space", "list").stdout.split()[1::2] == ["t"]


async def _put(address: str, raw: bytes) -> object:
    conn = await throwaway_endpoint().dial(parse_address(address))
    try:
        return await while_serving(conn, lambda: conn.request(m.PutVault(raw)))
    finally:
        await conn.abort("done")


def test_rollback_is_reported(owner: Owner) -> None:
    node, address, cli = owner.node, owner.address, owner.cli
    old_version, old = vault_row(node.data)
    cli("space", "create", "b")
    new_version, _ = vault_row(node.data)
    assert new_version > old_version
    node.stop()
    set_vault_row(node.data, old_version, old)  # the provider rolls the vault back
    node.start()
    p = cli("vault", "sync")
    rollback = [line for line in p.stderr.splitlines() if "rollback" in line]
    assert rollback == [f"anysyncfs: WARNING: vault rollback: {address} served vault version {old_version}, older "
                        f"than version {new_version} seen before (kept the newer one)"]
    assert vault_row(node.data)[0] >= new_version  # and the device put the newer one back


def test_forged_vault_is_refused_by_node_and_device(owner: Owner) -> None:
    node, address, phrase = owner.node, owner.address, owner.phrase
    node.expect_log(r"closed: .*vault")
    version, good = vault_row(node.data)

    # The node: a record whose signature does not verify, and a record of another key under our discovery ID.
    ours = v.VaultKeys.from_account_seed(keys.account_key_from_phrase(phrase).seed)
    flipped = bytearray(good)
    flipped[-1] ^= 1
    other = v.VaultKeys.from_account_seed(bytes(32))
    rec = v.parse_vault_record(v.seal_vault(v.EMPTY, other, version + 1, bytes(24)))
    body = encoding.encode(v.VaultBody(ours.discovery_id, other.signing.public, version + 1, rec.nonce,
                                       rec.ciphertext))
    prefix = encoding.PREFIX.pack(v.FORMAT_VAULT, 1, len(body))
    squat = encoding.pack_signed(v.FORMAT_VAULT, 1, body, [other.signing.sign(v.SIGNING_CONTEXT + prefix + body)])
    for forged in (bytes(flipped), squat):
        with pytest.raises((RemoteError, NetworkError, ProtocolError)) as caught:
            trio.run(_put, address, forged)
        assert not isinstance(caught.value, RemoteError) or caught.value.code == m.ErrorCode.INVALID
    assert vault_row(node.data) == (version, good)  # nothing replaced
    # an older version of a genuine record is refused too
    older = trio.run(_put, address, v.seal_vault(v.EMPTY, ours, 1, bytes(24)))
    assert isinstance(older, m.VaultStored) and not older.stored and older.version == version

    # The device: the node serves a tampered record (changed at rest) -> one warning line, the vault is kept.
    node.stop()
    set_vault_row(node.data, version, bytes(flipped))
    node.start()
    p = Cli(owner.env, owner.root / "new")("init", "--restore", "--peer", address, input=phrase, ok=False)
    assert p.returncode != 0 and "does not verify" in p.stderr
    assert not (owner.root / "new" / "master.keys").exists()
    p = owner.cli("vault", "show")
    assert "WARNING: " in p.stderr and "served a vault that does not verify" in p.stderr
    assert "  s  " in p.stdout
    healed_version, healed = vault_row(node.data)  # the device replaced the damaged record with a newer one
    assert healed_version == version + 1 and v.parse_vault_record(healed, ours.discovery_id)
