"""A provider's storage quotas: per space, per owner account, spaces per account, and in total.

Policy (docs/protocol.md 60.6). Every space a provider holds is charged to its owner: the account that signed the
space header. What a space occupies is the bytes of its stored changes (accepted and rejected), of its ACL records
and of its blobs (a blob linked to two spaces is charged to each). Four bounds, each optional:

- per space: what one space may occupy;
- per account: what all the spaces one account owns may occupy together;
- spaces per account: how many spaces one account may own here;
- total: what all spaces together may occupy.

A write (a batch of changes, ACL records, a blob, a new space) that would take any of them over is refused whole,
before anything is stored. The node runs every ledger call under one lock, so a check and the store it guards are
one critical section: concurrent uploads cannot overshoot. Members of a space spend its owner's quota: the owner
chooses who may write.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import ids
from ..errors import Rejected


class QuotaExceeded(Rejected):
    """Storing what was sent would go over a quota on this provider (nothing was stored)."""

    def __init__(self, message: str, quota_bytes: int) -> None:
        super().__init__(message)
        self.quota_bytes = quota_bytes

    @classmethod
    def space(cls, space_id: bytes, quota_bytes: int) -> QuotaExceeded:
        return cls(f"space {ids.space_text(space_id)} is over its quota of {quota_bytes} bytes", quota_bytes)


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """The bounds of a provider (None: unbounded). ``anysyncfs node serve`` sets all four."""

    per_space: int | None = None
    per_account: int | None = None
    spaces_per_account: int | None = None
    total: int | None = None


@dataclass(slots=True)
class _Account:
    spaces: int = 0
    used: int = 0


class QuotaBook:
    """What each space held occupies, summed per owner account and in total, checked against a policy.

    Ledgers report their usage (:meth:`record`) whenever it changes and ask :meth:`check` before they store."""

    def __init__(self, policy: QuotaPolicy) -> None:
        self.policy = policy
        self._spaces: dict[bytes, tuple[bytes, int]] = {}  # space ID -> (owner account, bytes used)
        self._accounts: dict[bytes, _Account] = {}
        self.total_used = 0

    def record(self, space_id: bytes, owner: bytes, used: int) -> None:
        """Space ``space_id``, owned by ``owner``, now occupies ``used`` bytes."""
        old = self._spaces.get(space_id)
        account = self._accounts.setdefault(owner, _Account())
        if old is None:
            account.spaces += 1
        else:
            account.used -= old[1]
            self.total_used -= old[1]
        account.used += used
        self.total_used += used
        self._spaces[space_id] = (owner, used)

    def used_by(self, owner: bytes) -> int:
        account = self._accounts.get(owner)
        return account.used if account is not None else 0

    def spaces_of(self, owner: bytes) -> int:
        account = self._accounts.get(owner)
        return account.spaces if account is not None else 0

    def check(self, owner: bytes, extra: int) -> None:
        """Raise :class:`QuotaExceeded` if ``extra`` more bytes charged to ``owner`` go over a bound."""
        if extra <= 0:
            return
        p = self.policy
        if p.per_account is not None and self.used_by(owner) + extra > p.per_account:
            raise QuotaExceeded(f"account {ids.account_text(owner)} is over its quota of {p.per_account} bytes",
                                p.per_account)
        if p.total is not None and self.total_used + extra > p.total:
            raise QuotaExceeded(f"this node is over its total quota of {p.total} bytes", p.total)

    def check_new_space(self, space_id: bytes, owner: bytes, size: int) -> None:
        """A new space of ``size`` bytes (its ACL records) for ``owner``: within the number of spaces per
        account, the space quota, the account quota and the total."""
        p = self.policy
        if space_id in self._spaces:
            return
        if p.spaces_per_account is not None and self.spaces_of(owner) >= p.spaces_per_account:
            n = p.spaces_per_account
            raise QuotaExceeded(f"account {ids.account_text(owner)} already owns {n} space{'s' * (n != 1)} on this "
                                f"node, its limit", n)
        if p.per_space is not None and size > p.per_space:
            raise QuotaExceeded.space(space_id, p.per_space)
        self.check(owner, size)
