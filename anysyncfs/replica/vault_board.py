"""What a provider keeps of account vaults (docs/protocol.md 25.4): the newest verified record per discovery ID,
within small quotas. Keyless: a provider checks the signature and that the record sits under its signer's
discovery ID, and learns nothing else (the list of spaces is encrypted; the signer is not the account key)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.vault import parse_vault_record
from ..store.db import Store
from .quota import QuotaExceeded

DEFAULT_VAULT_QUOTA = 128 * 1024  # bytes one discovery ID may hold (a record; hundreds of spaces)
DEFAULT_MAX_VAULTS = 10_000  # discovery IDs one node holds (so strangers cannot fill it with vaults)


@dataclass(frozen=True, slots=True)
class VaultPolicy:
    per_vault: int = DEFAULT_VAULT_QUOTA
    max_vaults: int = DEFAULT_MAX_VAULTS


@dataclass(frozen=True, slots=True)
class VaultOffer:
    stored: bool  # False: this version or a newer one is held already (kept)
    version: int  # the version held now


def offer(store: Store, raw: bytes, policy: VaultPolicy) -> VaultOffer:
    """(blocking, under the node's store lock) Verify and keep a record if it is newer than the one held.

    A forged or malformed record raises ``IntegrityError`` (the peer is misbehaving); one over the quotas
    ``QuotaExceeded``; nothing is stored then."""
    record = parse_vault_record(raw)
    if len(raw) > policy.per_vault:
        raise QuotaExceeded(f"a vault may hold at most {policy.per_vault} bytes on this node", policy.per_vault)
    held = store.vault(record.discovery_id)
    if held is not None and held.version >= record.version:
        return VaultOffer(False, held.version)  # a rollback is refused (and an equal version is not replaced)
    if held is None and store.vault_usage()[0] >= policy.max_vaults:
        raise QuotaExceeded(f"this node holds {policy.max_vaults} vaults, its limit", policy.max_vaults)
    store.put_vault(record.discovery_id, record.version, raw, record.version)
    return VaultOffer(True, record.version)


def served(store: Store, discovery_id: bytes) -> bytes | None:
    """(blocking) The record held under a discovery ID, verbatim."""
    row = store.vault(discovery_id)
    return None if row is None else row.record
