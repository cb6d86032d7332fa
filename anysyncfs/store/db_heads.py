"""Store queries of signed heads (docs/protocol.md 70.9): the newest record per device of a space (a provider serves
them; a device keeps its own counter there), what each provider served, and the warnings about providers. A mixin
of :class:`~anysyncfs.store.db.Store`; with db.py and db_sync.py, the one place with SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select

from ..clock import now_us
from . import schema as S

MAX_WARNINGS_PER_SPACE = 64  # provider warnings kept per space (the most recently seen ones)


@dataclass(frozen=True, slots=True)
class SignedHeadsRow:
    device: bytes
    account: bytes
    counter: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class ProviderWarningRow:
    provider: bytes  # the provider's device key
    kind: str  # 'withholds' or 'rollback'
    device: bytes  # whose signed heads prove it
    counter: int
    address: str
    message: str
    first_us: int
    last_us: int


class HeadsQueries:
    """Needs ``_run`` and ``transaction`` from the Store it is mixed into."""

    _upsert: Any  # provided by Store: INSERT with ON CONFLICT for its dialect

    def _run(self, stmt: Any, params: Any = None) -> Any:  # provided by Store
        raise NotImplementedError

    def transaction(self) -> Any:  # provided by Store
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ newest records
    def signed_heads_rows(self, space_id: bytes) -> list[SignedHeadsRow]:
        """The newest stored record of every device of a space, in device order."""
        h = S.signed_heads.c
        q = select(h.device, h.account, h.counter, h.raw).where(h.space == space_id).order_by(h.device)
        return [SignedHeadsRow(r[0], r[1], r[2], r[3]) for r in self._run(q).fetchall()]

    def signed_heads_row(self, space_id: bytes, device: bytes) -> SignedHeadsRow | None:
        """The newest stored record of ``device`` (None: none)."""
        h = S.signed_heads.c
        q = select(h.device, h.account, h.counter, h.raw).where(h.space == space_id, h.device == device)
        r = self._run(q).first()
        return SignedHeadsRow(r[0], r[1], r[2], r[3]) if r is not None else None

    def signed_heads_counter(self, space_id: bytes, device: bytes) -> int:
        """The counter of the newest stored record of ``device`` (0: none)."""
        h = S.signed_heads.c
        r = self._run(select(h.counter).where(h.space == space_id, h.device == device)).first()
        return int(r[0]) if r is not None else 0

    def count_signed_heads(self, space_id: bytes) -> int:
        h = S.signed_heads.c
        return int(self._run(select(func.count()).select_from(S.signed_heads).where(h.space == space_id))
                   .scalar_one())

    def put_signed_heads(self, space_id: bytes, device: bytes, account: bytes, counter: int, raw: bytes) -> bool:
        """Store a verified record unless one with the same or a higher counter is stored for the device; True if
        stored. (Run inside the caller's transaction when it read the previous counter first.)"""
        h = S.signed_heads.c
        with self.transaction():
            if self.signed_heads_counter(space_id, device) >= counter:
                return False
            stmt = self._upsert(S.signed_heads).values(space=space_id, device=device, account=account,
                                                        counter=counter, raw=raw, received_us=now_us())
            self._run(stmt.on_conflict_do_update(
                index_elements=[h.space, h.device],
                set_={c: stmt.excluded[c] for c in ("account", "counter", "raw", "received_us")}))
        return True

    def drop_signed_heads(self, space_id: bytes, devices: list[bytes]) -> None:
        h = S.signed_heads.c
        if devices:
            self._run(delete(S.signed_heads).where(h.space == space_id, h.device.in_(devices)))

    # ------------------------------------------------------------------------------------------ per provider
    def heads_served(self, space_id: bytes, provider: bytes) -> dict[bytes, int]:
        """device -> the highest counter ``provider`` served (or accepted) for it."""
        s = S.heads_served.c
        q = select(s.device, s.counter).where(s.space == space_id, s.provider == provider)
        return {r[0]: int(r[1]) for r in self._run(q).fetchall()}

    def note_heads_served(self, space_id: bytes, provider: bytes, counters: dict[bytes, int]) -> None:
        """Raise the recorded counters of ``provider`` to those given (never lowers one)."""
        s = S.heads_served.c
        with self.transaction():
            for device, counter in counters.items():
                stmt = self._upsert(S.heads_served).values(space=space_id, provider=provider, device=device,
                                                            counter=counter, seen_us=now_us())
                self._run(stmt.on_conflict_do_update(
                    index_elements=[s.space, s.provider, s.device],
                    set_={"counter": stmt.excluded.counter, "seen_us": stmt.excluded.seen_us},
                    where=s.counter < stmt.excluded.counter))

    # ------------------------------------------------------------------------------------------ warnings
    def note_provider_warning(self, space_id: bytes, provider: bytes, kind: str, device: bytes, counter: int,
                              address: str, message: str) -> None:
        """Record (or refresh) a warning about a provider; only the most recent ones per space are kept."""
        w = S.provider_warnings.c
        now = now_us()
        line = (message.strip().splitlines() or [kind])[0][:500]
        with self.transaction():
            stmt = self._upsert(S.provider_warnings).values(
                space=space_id, provider=provider, kind=kind, device=device, counter=counter, address=address,
                message=line, first_us=now, last_us=now)
            self._run(stmt.on_conflict_do_update(
                index_elements=[w.space, w.provider, w.kind, w.device],
                set_={c: stmt.excluded[c] for c in ("counter", "address", "message", "last_us")}))
            stale = select(w.provider, w.kind, w.device).where(w.space == space_id).order_by(
                w.last_us.desc(), w.provider, w.kind, w.device).offset(MAX_WARNINGS_PER_SPACE)
            for provider_, kind_, device_ in self._run(stale).fetchall():
                self._run(delete(S.provider_warnings).where(
                    w.space == space_id, w.provider == provider_, w.kind == kind_, w.device == device_))

    def provider_warnings(self, space_id: bytes) -> list[ProviderWarningRow]:
        """Warnings about the providers of a space, most recently seen first."""
        w = S.provider_warnings.c
        q = select(w.provider, w.kind, w.device, w.counter, w.address, w.message, w.first_us, w.last_us).where(
            w.space == space_id).order_by(w.last_us.desc(), w.provider, w.kind, w.device)
        return [ProviderWarningRow(*r) for r in self._run(q).fetchall()]


__all__ = ["HeadsQueries", "ProviderWarningRow", "SignedHeadsRow"]
