"""The replica layer: one space's verified state on this device (store + core), used by the CLI, the VFS and sync.

Public surface: :class:`Home` (a device's home directory), :class:`Replica` (one space), :func:`create_space`,
:func:`open_replica`, :func:`fsck`; :class:`Ledger` (a space held by a provider, without keys) and
:class:`SpaceData` (what the sync layer needs of either).
"""

from .home import Home, Unlocked
from .ledger import IngestResult, Ledger, QuotaExceeded, SpaceData, Usage
from .replica import Replica, adopt_space, create_space, open_replica, resolve_space
from .fsck import fsck

__all__ = [
    "Home", "Unlocked", "IngestResult", "Ledger", "QuotaExceeded", "SpaceData", "Usage",
    "Replica", "adopt_space", "create_space", "open_replica", "resolve_space", "fsck",
]  # fmt: skip
