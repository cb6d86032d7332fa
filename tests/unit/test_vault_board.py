"""What a provider keeps of account vaults (replica/vault_board.py, docs/protocol.md 25.4): newest version only,
forged records refused, quotas per vault and in number."""

from __future__ import annotations

from pathlib import Path

import pytest

from anysyncfs.core import vault as v
from anysyncfs.errors import IntegrityError
from anysyncfs.replica import vault_board as vb
from anysyncfs.replica.quota import QuotaExceeded
from anysyncfs.store.db import Store


def record(seed: int, version: int, spaces: int = 1) -> bytes:
    keys = v.VaultKeys.from_account_seed(bytes([seed]) * 32)
    contents = v.EMPTY
    for i in range(spaces):
        contents = v.put_entry(contents, b"\x01" * 32, i.to_bytes(32, "big"), name=f"space {i}", peers=[])
    return v.seal_vault(contents, keys, version, bytes(24))


def test_newest_version_wins_and_rollbacks_are_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "node.db"))
    policy = vb.VaultPolicy()
    assert vb.offer(store, record(1, 2), policy) == vb.VaultOffer(True, 2)
    assert vb.offer(store, record(1, 1), policy) == vb.VaultOffer(False, 2)  # older: kept the newer
    assert vb.offer(store, record(1, 2, spaces=2), policy) == vb.VaultOffer(False, 2)  # same version: no replace
    assert vb.served(store, v.VaultKeys.from_account_seed(bytes([1]) * 32).discovery_id) == record(1, 2)
    assert vb.offer(store, record(1, 3), policy) == vb.VaultOffer(True, 3)
    bad = bytearray(record(1, 4))
    bad[40] ^= 1
    with pytest.raises(IntegrityError):
        vb.offer(store, bytes(bad), policy)
    assert store.vault(v.VaultKeys.from_account_seed(bytes([1]) * 32).discovery_id).version == 3
    store.close()


def test_quotas(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "node.db"))
    policy = vb.VaultPolicy(per_vault=2000, max_vaults=2)
    with pytest.raises(QuotaExceeded, match="at most 2000 bytes"):
        vb.offer(store, record(1, 1, spaces=40), policy)
    vb.offer(store, record(1, 1), policy)
    vb.offer(store, record(2, 1), policy)
    with pytest.raises(QuotaExceeded, match="holds 2 vaults"):
        vb.offer(store, record(3, 1), policy)
    assert vb.offer(store, record(2, 2), policy).stored  # a held vault may still move forward
    assert store.vault_usage()[0] == 2
    store.close()
