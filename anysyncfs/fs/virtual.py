"""The hidden, read-only ``.anysync`` folder: past versions as plain folders and the list of conflict copies.

Layout (like ZFS's ``.zfs``: readdir of the root does not list it, so ``cp -a``, ``rsync -a`` and ``tar`` of the
root never descend into it, but it opens by path)::

    .anysync/
        conflicts                                   text: the path of every current conflict copy, one a line
        history/
            <YYYY-MM-DD>/                           UTC day of a change (its author's wall clock)
                <HHMMSS.ffffffZ>-<change id>/       the whole tree as of that change (all of it read-only)

A day with more than ``BUCKET_MAX`` changes lists hour folders ``HH/`` instead, and such an hour with more than
``BUCKET_MAX`` lists minute folders ``HHMM/``, so no folder lists more than a few thousand entries. A change
folder's name still opens directly inside its day folder (and inside its hour folder): paths stay stable however
busy the day was.

A change folder shows ``Replica.materialise([change])``: the fold of that change and its ancestors. Folding
costs time proportional to the history, so the last few materialised trees are cached.

Virtual inodes live at and above ``VIRTUAL_BASE``: three fixed ones, then one per day/hour/minute folder and one per
(change, node) pair shown inside a change folder, handed out on first use and stable for the mount's lifetime.
"""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..core import ids, tree
from ..core.ids import ROOT_NODE
from ..core.tree_names import CONFLICT_MARK
from ..errors import FsError, IntegrityError, NotFound
from ..replica.replica import Replica
from .attrs import DIR_SIZE, VIRTUAL_BASE, Attr, blocks_for

log = logging.getLogger(__name__)

HIDDEN_NAME = b".anysync"
HISTORY_NAME = b"history"
CONFLICTS_NAME = b"conflicts"
ANYSYNC_INO = VIRTUAL_BASE + 1
HISTORY_INO = VIRTUAL_BASE + 2
CONFLICTS_INO = VIRTUAL_BASE + 3
FIRST_DYNAMIC = VIRTUAL_BASE + 16
MATERIALISED_CACHE = 4
CHANGE_LABEL_LEN = 12  # base32 characters of the change ID in a change folder's name
BUCKET_MAX = 2000  # a day (or hour) folder with more changes than this lists hour (or minute) folders
BUCKET_DEPTH = 4  # the longest bucket prefix: HHMM

DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444


def day_name(wall_us: int) -> bytes:
    t = _dt.datetime.fromtimestamp(max(wall_us, 0) / 1e6, tz=_dt.UTC)
    return t.strftime("%Y-%m-%d").encode("ascii")


def change_dir_name(change: bytes, wall_us: int) -> bytes:
    t = _dt.datetime.fromtimestamp(max(wall_us, 0) / 1e6, tz=_dt.UTC)
    return (t.strftime("%H%M%S.%fZ") + "-" + ids.short(change, CHANGE_LABEL_LEN)).encode("ascii")


def conflict_paths(state: tree.TreeState) -> list[bytes]:
    """Paths of the live entries shown under a conflict name, sorted."""
    found: list[bytes] = []
    for entry in state.entries.values():
        if not entry.live:
            continue
        name = state.display_name(entry)
        if name is None or CONFLICT_MARK not in name:
            continue
        parent = state.node_path(entry.parent)
        if parent is None:
            continue
        found.append(parent + b"/" + name if parent else name)
    return sorted(found)


class HistView:
    """The tree as of one change, read-only; its nodes get virtual inodes."""

    read_only = True

    def __init__(self, virtual: Virtual, change: bytes) -> None:
        self.virtual = virtual
        self.change = change

    @property
    def state(self) -> tree.TreeState:
        return self.virtual.materialised(self.change)

    def inode_of(self, node: bytes) -> int:
        return self.virtual.hist_inode(self.change, node)


@dataclass(slots=True)
class _Index:
    """The history folders at one set of heads: day -> {change folder name -> (change id, wall µs)}."""

    heads: tuple[bytes, ...]
    days: dict[bytes, dict[bytes, tuple[bytes, int]]]
    last_wall_us: int
    walls: dict[bytes, int]  # change id -> wall µs


class Virtual:
    """Inodes, attributes and listings of the ``.anysync`` tree of one mount."""

    def __init__(self, replica: Replica, owner: Callable[[], tuple[int, int]]) -> None:
        self.replica = replica
        self._owner = owner
        self._next = FIRST_DYNAMIC
        self._by_key: dict[tuple[bytes, ...], int] = {}
        self._keys: dict[int, tuple[bytes, ...]] = {}
        self._views: dict[bytes, HistView] = {}
        self._trees: OrderedDict[bytes, tree.TreeState] = OrderedDict()
        self._index: _Index | None = None
        self._buckets: dict[tuple[bytes, bytes], list[tuple[bytes, int]]] = {}
        self._conflicts: tuple[tuple[bytes, ...], bytes] | None = None

    # ------------------------------------------------------------------------------------------ inodes
    @staticmethod
    def owns(inode: int) -> bool:
        return inode >= VIRTUAL_BASE

    def _alloc(self, key: tuple[bytes, ...]) -> int:
        inode = self._by_key.get(key)
        if inode is None:
            inode = self._next
            self._next += 1
            self._by_key[key] = inode
            self._keys[inode] = key
        return inode

    def day_inode(self, day: bytes) -> int:
        return self.bucket_inode(day, b"")

    def bucket_inode(self, day: bytes, prefix: bytes) -> int:
        """A day folder (prefix b"") or an hour/minute folder inside it (prefix HH or HHMM)."""
        return self._alloc((b"day", day, prefix))

    def hist_inode(self, change: bytes, node: bytes) -> int:
        return self._alloc((b"node", change, node))

    def view(self, change: bytes) -> HistView:
        v = self._views.get(change)
        if v is None:
            v = self._views[change] = HistView(self, change)
        return v

    def is_special(self, inode: int) -> bool:
        """The fixed folders, the conflicts file and day folders (everything but nodes of a change folder)."""
        if inode in (ANYSYNC_INO, HISTORY_INO, CONFLICTS_INO):
            return True
        key = self._keys.get(inode)
        return key is not None and key[0] == b"day"

    def known(self, inode: int) -> bool:
        return inode in (ANYSYNC_INO, HISTORY_INO, CONFLICTS_INO) or inode in self._keys

    def hist_target(self, inode: int) -> tuple[HistView, bytes] | None:
        key = self._keys.get(inode)
        if key is None or key[0] != b"node":
            return None
        return self.view(key[1]), key[2]

    def bucket_of(self, inode: int) -> tuple[bytes, bytes] | None:
        key = self._keys.get(inode)
        return (key[1], key[2]) if key is not None and key[0] == b"day" else None

    def _in_bucket(self, day: bytes, prefix: bytes) -> list[bytes]:
        """Names of the change folders of ``day`` that start with ``prefix``, sorted."""
        changes = self.index().days.get(day, {})
        return [n for n in changes if n.startswith(prefix)] if prefix else list(changes)

    def _bucket_listing(self, day: bytes, prefix: bytes) -> list[tuple[bytes, int]]:
        cached = self._buckets.get((day, prefix))
        if cached is not None:
            return cached
        names = self._in_bucket(day, prefix)
        if len(names) <= BUCKET_MAX or len(prefix) >= BUCKET_DEPTH:
            changes = self.index().days.get(day, {})
            out = [(n, self.hist_inode(changes[n][0], ROOT_NODE)) for n in names]
        else:
            subs = sorted({n[: len(prefix) + 2] for n in names})
            out = [(sub, self.bucket_inode(day, sub)) for sub in subs]
        self._buckets[(day, prefix)] = out
        return out

    def _grouped(self, day: bytes, prefix: bytes) -> bool:
        listing = self._bucket_listing(day, prefix)
        return bool(listing) and self.hist_target(listing[0][1]) is None

    def change_dir_parent(self, change: bytes) -> int:
        """The folder listing a change folder (for '..')."""
        wall = self.index().walls.get(change)
        if wall is None:
            return HISTORY_INO
        day, name = day_name(wall), change_dir_name(change, wall)
        prefix = b""
        while self._grouped(day, prefix) and len(prefix) < BUCKET_DEPTH:
            prefix = name[: len(prefix) + 2]
        return self.bucket_inode(day, prefix)

    def change_root_attr(self, change: bytes) -> Attr:
        """Attributes of a change folder, without materialising its tree (``ls -l`` of a day folder stays
        cheap; the tree is folded only when someone looks inside)."""
        uid, gid = self._owner()
        t = self.index().walls.get(change, 0) * 1000
        inode = self.hist_inode(change, ROOT_NODE)
        return Attr(inode, DIR_MODE, 2, uid, gid, DIR_SIZE, t, t, t, blocks_for(DIR_SIZE))

    # ------------------------------------------------------------------------------------------ contents
    def materialised(self, change: bytes) -> tree.TreeState:
        state = self._trees.get(change)
        if state is not None:
            self._trees.move_to_end(change)
            return state
        try:
            state = self.replica.materialise([change])
        except NotFound:
            raise FsError(errno.ENOENT, "no such version") from None
        except IntegrityError as e:
            log.error("cannot show version %s: %s", ids.change_text(change)[:20], e)
            raise FsError(errno.EIO, "version unreadable") from None
        self._trees[change] = state
        while len(self._trees) > MATERIALISED_CACHE:
            self._trees.popitem(last=False)
        return state

    def index(self) -> _Index:
        heads = self.replica.heads
        if self._index is not None and self._index.heads == heads:
            return self._index
        days: dict[bytes, dict[bytes, tuple[bytes, int]]] = {}
        walls: dict[bytes, int] = {}
        last = 0
        for row in self.replica.store.change_rows(self.replica.space_id):
            days.setdefault(day_name(row.wall_us), {})[change_dir_name(row.id, row.wall_us)] = (row.id, row.wall_us)
            walls[row.id] = row.wall_us
            last = max(last, row.wall_us)
        sorted_days = {d: dict(sorted(c.items())) for d, c in sorted(days.items())}
        self._index = _Index(heads, sorted_days, last, walls)
        self._buckets = {}
        return self._index

    def conflicts_text(self) -> bytes:
        heads = self.replica.heads
        if self._conflicts is None or self._conflicts[0] != heads:
            paths = conflict_paths(self.replica.tree)
            self._conflicts = (heads, b"".join(p + b"\n" for p in paths))
        return self._conflicts[1]

    # ------------------------------------------------------------------------------------------ names
    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode of ``name`` inside a special folder (None if there is no such name)."""
        if parent == ANYSYNC_INO:
            return {HISTORY_NAME: HISTORY_INO, CONFLICTS_NAME: CONFLICTS_INO}.get(name)
        if parent == HISTORY_INO:
            return self.day_inode(name) if name in self.index().days else None
        bucket = self.bucket_of(parent)
        if bucket is None:
            return None
        day, prefix = bucket
        changes = self.index().days.get(day, {})
        hit = changes.get(name)
        if hit is not None and name.startswith(prefix):
            return self.hist_inode(hit[0], ROOT_NODE)  # a change folder opens at any level of its day
        for sub, inode in self._bucket_listing(day, prefix):
            if sub == name:
                return inode
        return None

    def listing(self, inode: int) -> list[tuple[bytes, int]]:
        if inode == ANYSYNC_INO:
            return [(CONFLICTS_NAME, CONFLICTS_INO), (HISTORY_NAME, HISTORY_INO)]
        if inode == HISTORY_INO:
            return [(d, self.day_inode(d)) for d in self.index().days]
        bucket = self.bucket_of(inode)
        return self._bucket_listing(*bucket) if bucket is not None else []

    def parent_of(self, inode: int) -> int:
        if inode == ANYSYNC_INO:
            return 1
        if inode in (HISTORY_INO, CONFLICTS_INO):
            return ANYSYNC_INO
        bucket = self.bucket_of(inode)
        if bucket is None or not bucket[1]:
            return HISTORY_INO  # a day folder
        return self.bucket_inode(bucket[0], bucket[1][:-2])

    def attr(self, inode: int) -> Attr:
        """Attributes of a special inode."""
        uid, gid = self._owner()
        t = self.index().last_wall_us * 1000
        if inode == CONFLICTS_INO:
            size = len(self.conflicts_text())
            return Attr(inode, FILE_MODE, 1, uid, gid, size, t, t, t, blocks_for(size))
        if inode == ANYSYNC_INO:
            subdirs = 1
        else:
            subdirs = len(self.listing(inode))
        return Attr(inode, DIR_MODE, 2 + subdirs, uid, gid, DIR_SIZE, t, t, t, blocks_for(DIR_SIZE))
