"""The folded file tree: nodes, directory entries, the indexes the mount reads, and a canonical serialisation.

Nodes (files, directories, symlinks) and entries (names) are separate: an entry names a node inside a parent
directory node, a hard link is a second entry for one node, and an unlinked entry stays in ``entries`` with
``live = False`` (so a concurrent write can bring it back). Nodes are never removed: one without live entries is
invisible but kept for open files and history.

Invariant kept by the fold (checked by :meth:`TreeIndex.problems`): the parent of every live entry is the root
or a directory with a live entry, so every live entry is reachable from the root; directories have exactly one
entry.

This module holds the state and its read side; :mod:`.tree_fold` applies ops through the mutation primitives
at the end of :class:`TreeIndex`, and :class:`.tree.TreeState` joins the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self, cast

import msgspec

from . import ops
from .encoding import encode
from .ids import NODE_ID_LEN, ROOT_NODE
from .tree_names import display_names

OrderKey = tuple[int, bytes, int]  # (lamport, change id, op index) of the op that placed an entry
NO_CHANGE = bytes(32)  # version/author of the root before any change touches it
ROOT_MODE = 0o755
CANONICAL_VERSION = 1  # first element of canonical(): bump when its layout changes

@dataclass(frozen=True, slots=True)
class ChangeInfo:
    """What the fold needs from a change header."""

    id: bytes  # change ID (32 bytes)
    lamport: int  # Lamport clock: greater than every parent's
    author: bytes  # account public key of the signer (32 bytes)
    wall_us: int  # author's wall clock, microseconds since the Unix epoch (only shown, never ordered by)


class Node(msgspec.Struct, array_like=True, gc=False):
    """A file, directory or symlink and its attributes. A msgspec Struct (not a dataclass) so the cached tree
    decodes quickly on reopen; it holds no reference cycles, so it need not be tracked by the GC."""

    id: bytes
    kind: int  # ops.KIND_*
    mode: int  # permission bits (0..0o7777); the kind is separate
    uid: int
    gid: int
    content: ops.Content  # ops.EMPTY for directories and symlinks
    target: bytes  # symlink target, a device node's number (ops.RDEV_LEN bytes), else empty
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    xattrs: dict[bytes, bytes]
    version: bytes  # ID of the last change that touched this node
    author: bytes  # author of that change
    # Fold bookkeeping: the write that produced `content` (None while the file was never written), with the wall
    # time and author that name its conflict copy if a concurrent write displaces it.
    last_write: bytes | None = None
    write_wall_us: int = 0
    write_author: bytes = NO_CHANGE

    @property
    def size(self) -> int:
        return self.content.size

    def clone(self) -> Node:
        return Node(
            self.id, self.kind, self.mode, self.uid, self.gid, self.content, self.target, self.atime_ns,
            self.mtime_ns, self.ctime_ns, dict(self.xattrs), self.version, self.author, self.last_write,
            self.write_wall_us, self.write_author,
        )  # fmt: skip


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One name of a node inside a parent directory (a msgspec Struct, like :class:`Node`)."""

    id: bytes
    parent: bytes  # directory node ID
    name: bytes  # raw name as created or renamed; the shown name may carry a conflict suffix
    node: bytes
    live: bool
    order: OrderKey  # placement of the op that last put this entry at (parent, name)
    wall_us: int  # wall time of that op's change (names a collision suffix)
    author: bytes  # author of that change
    deleted_by: bytes | None = None  # change that unlinked it (None while live)

    def clone(self) -> Entry:
        return Entry(
            self.id, self.parent, self.name, self.node, self.live, self.order, self.wall_us, self.author,
            self.deleted_by,
        )  # fmt: skip


@dataclass(slots=True)
class _DirView:
    """Cached listing of one directory: display name <-> entry, and how many children are directories.

    While no two live entries share a raw name (``suffixed == 0``) every display name is the raw name, so adding
    or removing an entry is an O(1) edit; otherwise any change drops the view and it is rebuilt from the live
    entries, so it always equals :func:`display_names` of them."""

    by_name: dict[bytes, Entry] = field(default_factory=dict)  # display name -> entry, in no particular order
    name_of: dict[bytes, bytes] = field(default_factory=dict)  # entry id -> display name
    subdirs: int = 0
    suffixed: int = 0  # entries shown under a conflict name
    listing: dict[bytes, Entry] | None = None  # by_name sorted by name, built when first asked for


@dataclass(slots=True)
class TreeDelta:
    """What landed changes altered in a folded tree, for a mount to invalidate the kernel's caches with exactly:
    ``nodes`` whose attributes, content or listing changed, and ``names``: every (directory, display name) that
    was shown before and may now be gone or name another entry, with the entry it showed (the first one seen)."""

    nodes: set[bytes] = field(default_factory=set)
    names: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.nodes or self.names)

    def merge(self, other: TreeDelta) -> None:
        self.nodes |= other.nodes
        for key, entry in other.names.items():
            self.names.setdefault(key, entry)  # the earlier one is what the kernel may have cached

    def gone(self, state: TreeIndex) -> list[tuple[bytes, bytes]]:
        """The recorded names that ``state`` no longer shows for the same entry (removed, renamed away, replaced,
        or renamed under a new conflict suffix). A name that now shows what it showed before needs nothing."""
        out = []
        for (parent, name), entry in self.names.items():
            now = state.lookup(parent, name)
            if now is None or now.id != entry:
                out.append((parent, name))
        return out


def root_node() -> Node:
    return Node(ROOT_NODE, ops.KIND_DIR, ROOT_MODE, 0, 0, ops.EMPTY, b"", 0, 0, 0, {}, NO_CHANGE, NO_CHANGE)


class TreeIndex:
    """The tree state with its indexes. Read it through the query methods; change it only by applying changes."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, Node] = {ROOT_NODE: root_node()}
        self.entries: dict[bytes, Entry] = {}
        self._of_node: dict[bytes, dict[bytes, Entry]] = {}  # node id -> all its entries, live or not
        self._live_in: dict[bytes, dict[bytes, Entry]] = {}  # directory node id -> its live entries
        self._views: dict[bytes, _DirView] = {}  # directory node id -> cached listing
        # Set by a replica while it applies changes that did not come from the mount (received, or committed by
        # another process): every shown name that an edit may take away is noted here (see _note_names).
        self.journal: dict[tuple[bytes, bytes], bytes] | None = None
        self._fresh: set[tuple[bytes, bytes]] = set()  # names that appeared while noting: nobody saw them before

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_parts(
        cls, nodes: Mapping[bytes, Node], entries: Mapping[bytes, Entry], *, adopt: bool = False
    ) -> Self:
        """A state from stored nodes and entries (e.g. a cached fold); indexes are rebuilt. The objects are
        copied unless ``adopt`` says the caller hands them over (freshly decoded ones, for a fast reopen)."""
        state = cls()
        for node in nodes.values():
            state.nodes[node.id] = node if adopt else node.clone()
        if ROOT_NODE not in state.nodes:
            state.nodes[ROOT_NODE] = root_node()
        for entry in entries.values():
            state.put_entry(entry if adopt else entry.clone())
        return state

    def copy(self) -> Self:
        """An independent deep copy (the caches are rebuilt on demand)."""
        return type(self).from_parts(self.nodes, self.entries)

    # ------------------------------------------------------------------------------------------------ queries
    def _view(self, parent: bytes) -> _DirView:
        view = self._views.get(parent)
        if view is None:
            live = self._live_in.get(parent)
            if not live:
                return _DirView()  # not cached: lookups in empty directories or non-directories leave no trace
            view = _DirView()
            for name, placed in display_names(live.values()).items():
                entry = cast(Entry, placed)
                view.by_name[name] = entry
                view.name_of[entry.id] = name
                view.suffixed += name != entry.name
                view.subdirs += self.nodes[entry.node].kind == ops.KIND_DIR
            self._views[parent] = view
        return view

    def _listing(self, parent: bytes) -> dict[bytes, Entry]:
        view = self._view(parent)
        if view.listing is None:
            view.listing = dict(sorted(view.by_name.items()))
        return view.listing

    def children(self, parent: bytes) -> dict[bytes, Entry]:
        """Live entries of a directory by display name, sorted by name (empty for a non-directory); a copy."""
        return dict(self._listing(parent))

    def lookup(self, parent: bytes, name: bytes) -> Entry | None:
        """The live entry shown as ``name`` in directory ``parent``."""
        return self._view(parent).by_name.get(name)

    def display_name(self, entry: Entry) -> bytes | None:
        """The name a live entry is shown under (None for an unlinked entry)."""
        if not entry.live:
            return None
        return self._view(entry.parent).name_of.get(entry.id)

    def entries_of(self, node: bytes) -> list[Entry]:
        """Every entry (live or not) of a node, oldest placement first."""
        return sorted(self._of_node.get(node, {}).values(), key=lambda e: (e.order, e.id))

    def live_entries(self, node: bytes) -> list[Entry]:
        """The live entries of a node, oldest placement first."""
        return [e for e in self.entries_of(node) if e.live]

    def primary_entry(self, node: bytes) -> Entry | None:
        """The oldest live entry of a node: where its path and its conflict copies go."""
        live = self.live_entries(node)
        return live[0] if live else None

    def dir_entry(self, node: bytes) -> Entry | None:
        """The one entry of a directory node, live or not (None for the root)."""
        for entry in self._of_node.get(node, {}).values():
            return entry
        return None

    def visible(self, node: bytes) -> bool:
        return node == ROOT_NODE or any(e.live for e in self._of_node.get(node, {}).values())

    def nlink(self, node: bytes) -> int:
        """POSIX link count: 2 + subdirectories for a directory, live entries otherwise."""
        found = self.nodes.get(node)
        if found is None:
            return 0
        if found.kind == ops.KIND_DIR:
            return (2 if self.visible(node) else 0) + self._view(node).subdirs
        return sum(1 for e in self._of_node.get(node, {}).values() if e.live)

    def resolve(self, path: bytes) -> Node | None:
        """The visible node at ``a/b/c`` (display names; empty components ignored, so b"" is the root)."""
        current = ROOT_NODE
        for part in path.split(b"/"):
            if not part:
                continue
            entry = self.lookup(current, part)
            if entry is None:
                return None
            current = entry.node
        return self.nodes[current]

    def node_path(self, node: bytes) -> bytes | None:
        """Path of a visible node through its oldest live entries (b"" for the root, None if invisible)."""
        parts: list[bytes] = []
        current = node
        for _ in range(len(self.nodes) + 1):  # the fold keeps the tree acyclic; the bound is belt and braces
            if current == ROOT_NODE:
                return b"/".join(reversed(parts))
            entry = self.primary_entry(current)
            if entry is None:
                return None
            name = self.display_name(entry)
            if name is None:
                return None
            parts.append(name)
            current = entry.parent
        return None

    # ------------------------------------------------------------------------------------------ serialisation
    def canonical(self) -> bytes:
        """Deterministic msgpack of the visible tree: ``[CANONICAL_VERSION, [record...]]`` with one record per
        path, depth first in byte order of display names. A record is ``[path, node id, kind, mode, uid, gid,
        atime, mtime, ctime, [[xattr name, value]...] sorted, content, symlink target, nlink, version, author]``.
        A hard-linked node appears at each of its paths."""
        records: list[list[object]] = []
        stack: list[tuple[bytes, bytes]] = [(b"", ROOT_NODE)]
        while stack:
            path, node_id = stack.pop()
            node = self.nodes[node_id]
            records.append([
                path, node.id, node.kind, node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns,
                node.ctime_ns, [[k, v] for k, v in sorted(node.xattrs.items())], node.content, node.target,
                self.nlink(node_id), node.version, node.author,
            ])  # fmt: skip
            if node.kind == ops.KIND_DIR:
                prefix = path + b"/" if path else b""
                kids = self._listing(node_id)
                stack.extend((prefix + name, kids[name].node) for name in reversed(kids))
        return encode([CANONICAL_VERSION, records])

    def problems(self) -> list[str]:
        """Broken invariants (an fsck helper; empty when the state is sound)."""
        found: list[str] = []
        for entry in self.entries.values():
            if entry.node not in self.nodes:
                found.append(f"entry {entry.id.hex()} names a missing node")
                continue
            parent = self.nodes.get(entry.parent)
            if parent is None or parent.kind != ops.KIND_DIR:
                found.append(f"entry {entry.id.hex()} has no directory parent")
            elif entry.live and not self.visible(entry.parent):
                found.append(f"live entry {entry.id.hex()} sits in an unlinked directory")
            if not ops.valid_name(entry.name):
                found.append(f"entry {entry.id.hex()} has an invalid name")
        for node in self.nodes.values():
            count = len(self._of_node.get(node.id, {}))
            if node.kind == ops.KIND_DIR and node.id != ROOT_NODE and count != 1:
                found.append(f"directory {node.id.hex()} has {count} entries")
            unreachable = node.kind == ops.KIND_DIR and self.visible(node.id) and self.node_path(node.id) is None
            if unreachable:
                found.append(f"directory {node.id.hex()} is not reachable from the root")
        for directory, live in self._live_in.items():
            fresh = {name: entry.id for name, entry in display_names(live.values()).items()}
            cached = self._views.get(directory)
            if cached is not None and {n: e.id for n, e in cached.by_name.items()} != fresh:
                found.append(f"cached listing of {directory.hex()} is stale")
            found.extend(f"display name {name!r} is invalid" for name in fresh if not ops.valid_name(name))
        for directory, view in self._views.items():
            subdirs = sum(self.nodes[e.node].kind == ops.KIND_DIR for e in self._live_in.get(directory, {}).values())
            if view.subdirs != subdirs or (directory not in self._live_in and view.by_name):
                found.append(f"cached listing of {directory.hex()} is stale")
        return found

    # ------------------------------------------------------- mutation primitives (used only by tree_fold)
    def put_node(self, node: Node) -> None:
        self.nodes[node.id] = node

    def put_entry(self, entry: Entry) -> None:
        """Add a new entry (its node must be in ``nodes`` already)."""
        self.entries[entry.id] = entry
        self._of_node.setdefault(entry.node, {})[entry.id] = entry
        if entry.live:
            self._add_live(entry)

    def set_live(self, entry: Entry, live: bool, deleted_by: bytes | None) -> None:
        if live and not entry.live:
            entry.live = True
            self._add_live(entry)
        elif entry.live and not live:
            self._remove_live(entry)
            entry.live = False
        entry.deleted_by = deleted_by

    def move_entry(self, entry: Entry, parent: bytes, name: bytes, order: OrderKey, wall_us: int,
                   author: bytes) -> None:  # fmt: skip
        if entry.live:
            self._remove_live(entry)
        entry.parent, entry.name, entry.order, entry.wall_us, entry.author = parent, name, order, wall_us, author
        if entry.live:
            self._add_live(entry)

    def _note_names(self, entry: Entry, adding: bool) -> None:
        """Before ``entry`` is added to or removed from its directory's live entries: note the names shown there
        that this may take away or hand to another entry. Without a conflict suffix in the directory that is
        only the entry's own name (on removal), or the name it collides with (on addition: the earlier placed of
        the two keeps it); with suffixes, a counter may move, so every shown name is noted (rare). The view is
        built if it was not cached (once per directory: later edits keep it current), since the kernel may hold
        names from before a reload or a collision dropped it."""
        journal, fresh = self.journal, self._fresh
        assert journal is not None
        parent = entry.parent
        view = self._view(parent)
        if view.suffixed:
            for name, shown in view.by_name.items():
                if (parent, name) not in fresh:
                    journal.setdefault((parent, name), shown.id)
            return
        key = (parent, entry.name)
        if key in fresh:
            return  # it appeared in this same application: the kernel cannot have it
        if not adding:
            journal.setdefault(key, entry.id)
        elif (taken := view.by_name.get(entry.name)) is not None:
            journal.setdefault(key, taken.id)
        else:
            fresh.add(key)

    def note_names(self, into: dict[tuple[bytes, bytes], bytes] | None) -> None:
        """Start noting into ``into`` the shown names that applied changes take away (None: stop). Call it around
        one application under the mount's lock: names that appear and go again inside it were never shown."""
        self.journal = into
        self._fresh = set()

    def _add_live(self, entry: Entry) -> None:
        if self.journal is not None:
            self._note_names(entry, True)
        self._live_in.setdefault(entry.parent, {})[entry.id] = entry
        view = self._views.get(entry.parent)
        if view is None:
            return
        if view.suffixed or entry.name in view.by_name:
            del self._views[entry.parent]  # names collide: rebuild on demand
            return
        view.by_name[entry.name] = entry
        view.name_of[entry.id] = entry.name
        view.subdirs += self.nodes[entry.node].kind == ops.KIND_DIR
        view.listing = None

    def _remove_live(self, entry: Entry) -> None:
        if self.journal is not None:
            self._note_names(entry, False)
        siblings = self._live_in[entry.parent]
        del siblings[entry.id]
        if not siblings:
            del self._live_in[entry.parent]
        view = self._views.get(entry.parent)
        if view is None:
            return
        if view.suffixed:
            del self._views[entry.parent]  # a suffix may change: rebuild on demand
            return
        del view.by_name[entry.name]
        del view.name_of[entry.id]
        view.subdirs -= self.nodes[entry.node].kind == ops.KIND_DIR
        view.listing = None

    def restore(self, nodes: Mapping[bytes, Node | None], entries: Mapping[bytes, Entry | None]) -> None:
        """Put nodes and entries back as they were (``None``: did not exist), with every index: the undo of a
        provisional application (the mount's open batch, see :mod:`anysyncfs.fs.batch`). The given objects are
        adopted; the caller must name every node and entry that changed since they were taken."""
        for entry_id in entries:
            current = self.entries.pop(entry_id, None)
            if current is None:
                continue
            if current.live:
                self._remove_live(current)
            siblings = self._of_node.get(current.node)
            if siblings is not None:
                siblings.pop(entry_id, None)
                if not siblings:
                    del self._of_node[current.node]
        for node_id, node in nodes.items():
            if node is None:
                self.nodes.pop(node_id, None)
                self._views.pop(node_id, None)
            else:
                self.nodes[node_id] = node
        for entry in entries.values():
            if entry is not None:
                self.put_entry(entry)

    def has_live_children(self, directory: bytes) -> bool:
        return bool(self._live_in.get(directory))


def tree_delta(old: TreeIndex, new: TreeIndex) -> TreeDelta:
    """What differs between two folds of one space (a refold or a reload replaced the tree): nodes whose record
    differs or is new, and the names ``old`` showed that ``new`` does not show for the same entry. One pass over
    both trees (a refold costs far more); only directories with a changed entry are compared name by name."""
    delta = TreeDelta()
    for node_id, node in new.nodes.items():
        before = old.nodes.get(node_id)
        if before is None or before != node:
            delta.nodes.add(node_id)
    dirs: set[bytes] = set()
    for entry_id, entry in old.entries.items():
        after = new.entries.get(entry_id)
        if after is None or after != entry:
            dirs.add(entry.parent)
            if after is not None:
                dirs.add(after.parent)
    dirs.update(entry.parent for entry_id, entry in new.entries.items() if entry_id not in old.entries)
    for parent in dirs:
        shown_now = new._view(parent).by_name  # noqa: SLF001 - same class
        for name, entry in old._view(parent).by_name.items():  # noqa: SLF001
            now = shown_now.get(name)
            if now is None or now.id != entry.id:
                delta.names[(parent, name)] = entry.id
    return delta


def valid_id(raw: bytes) -> bool:
    """A node or entry ID as ops carry it (checked again here: ops built in-process skip msgspec's checks)."""
    return isinstance(raw, bytes) and len(raw) == NODE_ID_LEN
