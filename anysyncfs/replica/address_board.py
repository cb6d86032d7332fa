"""The address records a provider or a device keeps for the spaces it serves (in memory: devices publish theirs
again on every sync round, so a restart loses nothing that matters) — the newest record of each member device,
served to members only (protocol.md 70.13). Bounded: :data:`MAX_RECORDS_PER_SPACE` per space."""

from __future__ import annotations

from collections.abc import Callable

from ..core.address_record import MAX_RECORDS_PER_SPACE, AddressRecord, parse_address_record

RoleOf = Callable[[bytes], "acl_mod.Role | None"]


class AddressBoard:
    def __init__(self) -> None:
        self._records: dict[bytes, dict[bytes, AddressRecord]] = {}

    def offer(self, space_id: bytes, role_of: RoleOf, raw: bytes) -> str:
        """Keep a record if it is a member device's newest: "stored", "old", "not-member" or "full".
        Forged or malformed bytes raise (the connection that sent them closes)."""
        record = parse_address_record(raw, space_id)
        if role_of(record.account) is None:
            return "not-member"
        held = self._records.setdefault(space_id, {})
        old = held.get(record.device)
        if old is not None and old.counter >= record.counter:
            return "old"
        if old is None and len(held) >= MAX_RECORDS_PER_SPACE:
            for device in [d for d, r in held.items() if role_of(r.account) is None]:
                del held[device]
            if len(held) >= MAX_RECORDS_PER_SPACE:
                return "full"
        held[record.device] = record
        return "stored"

    def served(self, space_id: bytes, role_of: RoleOf) -> list[bytes]:
        return [r.raw for r in self._records.get(space_id, {}).values() if role_of(r.account) is not None]
