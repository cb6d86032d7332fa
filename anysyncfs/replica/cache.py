"""The blob cache of one space on a device: pins, the blobs they keep, access times, and eviction.

Which blob files may be deleted to free space — every rule, every time:

* only a blob whose file is here AND that providers have confirmed storing (``blobs.remote_confirmed``: set when
  every provider of the space accepted our upload — store/db_uploads.py — or when we fetched the blob from one):
  the only copy of anything is never evicted;
* never a pinned blob: a blob of the current content (manifest and chunks) of a pinned file — of this space
  (computed here from the tree and the pins) or of any other space of the home (``pinned_blobs``, which the cache
  of each space keeps current, so that a space that is not mounted now keeps its pinned content too);
* never a blob the caller says is in use (the VFS passes the blobs of open files and of the base of staged writes).

Pins: a node is pinned if it, or a directory above it through any of its live names, is in ``pins`` — so a file
created later in a pinned folder is pinned, and a file moved out of it is not. Pins are per device and not synced.

The size limit bounds the bytes of every local blob file of the home (the spaces of a home share one blob
directory). Over the limit, evictable blobs go in least-recently-used order (``blobs.last_access_us``) until the
total is at the low-water mark (the limit minus 1/16), so that a reader streaming through a full cache evicts in
batches rather than after every blob. Pinned, unconfirmed and in-use blobs count towards the total but are never
evicted: the total stays above the limit while they alone exceed it.

Access times: reads are noted in memory (:meth:`BlobCache.touch`) and written in one statement by
:meth:`BlobCache.flush_access` (the mount flushes every few seconds and before it evicts): a SQLite write per read
would cost more than the read.

Not thread-safe: in a mount every call runs under the adapter lock, like every other replica access.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from ..clock import now_us
from ..core import ids, ops
from ..core.content import load_extents
from ..core.ops import Content
from ..errors import BlobMissing, IntegrityError, StoreError
from ..store.db import BlobRow
from .replica import Replica

log = logging.getLogger(__name__)

MANIFEST_MEMO = 4096  # manifest blob -> its chunk blob IDs (a manifest never changes: its ID is its hash)
EVICT_PAGE = 256  # candidate rows read per query while choosing what to evict
LOW_WATER_DIVISOR = 16  # evict down to limit - limit / 16


@dataclass
class EvictResult:
    """What an eviction did (blob counts and bytes) and what it had to keep."""

    evicted: int = 0
    freed: int = 0  # bytes of the blob files deleted
    kept_unconfirmed: int = 0  # bytes kept because no provider has confirmed storing them yet
    kept_pinned: int = 0  # bytes kept because a pinned file uses them
    kept_in_use: int = 0  # bytes kept because an open or staged file uses them


@dataclass(frozen=True, slots=True)
class ContentUsage:
    """How much of one content is on this device."""

    local: int  # bytes of its blob files here
    unsynced: int  # of those, bytes no provider has confirmed storing yet
    missing: int  # blobs not here (a manifest not here counts as one: its chunks are unknown)


class BlobCache:
    """Pins, pinned blobs, access times and eviction for ``replica`` (see the module doc)."""

    def __init__(self, replica: Replica, *, limit: int | None = None) -> None:
        self.replica = replica
        self.store = replica.store
        self.space_id = replica.space_id
        self.limit = limit  # bytes of local blobs (whole home); None: no limit
        self._accessed: dict[bytes, int] = {}
        self._pins: set[bytes] = set(self.store.pins(self.space_id))
        self._pins_version = 0
        self._pinned_key: tuple[object, ...] | None = None
        self._pinned: frozenset[bytes] = frozenset()
        self._pinned_complete = True
        self._saved_pinned: set[bytes] | None = None  # this space's rows of pinned_blobs, loaded when first needed
        self._manifests: OrderedDict[bytes, tuple[bytes, ...]] = OrderedDict()
        self._local_bytes: int | None = None

    # ------------------------------------------------------------------------------------------ pins
    @property
    def pins(self) -> frozenset[bytes]:
        """The node IDs pinned themselves (not through a directory above them)."""
        return frozenset(self._pins)

    def pin(self, node_id: bytes) -> bool:
        """Pin a file or directory (and so everything below it); False if it was pinned itself already."""
        added = self.store.add_pin(self.space_id, node_id)
        if added:
            self._pins.add(node_id)
            self._pins_version += 1
        return added

    def unpin(self, node_id: bytes) -> int:
        """Unpin a node and every pinned node below it; returns how many pins went. A node may stay pinned
        through a pinned directory above it (see :meth:`pinned_through`)."""
        gone = [n for n in self._below(node_id) if n in self._pins]
        if gone:
            self.store.remove_pins(self.space_id, gone)
            self._pins.difference_update(gone)
            self._pins_version += 1
        return len(gone)

    def pinned_through(self, node_id: bytes) -> bytes | None:
        """The node whose pin covers ``node_id``: itself, or the nearest pinned directory above it (None: not
        pinned). A hard-linked file is pinned if any of its names is under a pin."""
        if not self._pins:
            return None
        state = self.replica.tree
        seen: set[bytes] = set()
        todo = [node_id]
        while todo:
            current = todo.pop(0)
            if current in seen:
                continue
            seen.add(current)
            if current in self._pins:
                return current
            todo.extend(e.parent for e in state.live_entries(current))
        return None

    def is_pinned(self, node_id: bytes) -> bool:
        return self.pinned_through(node_id) is not None

    def _below(self, node_id: bytes) -> list[bytes]:
        """``node_id`` and every visible node below it (just the node for a file)."""
        state = self.replica.tree
        out = [node_id]
        seen = {node_id}
        at = 0
        while at < len(out):
            current = out[at]
            at += 1
            node = state.nodes.get(current)
            if node is None or node.kind != ops.KIND_DIR:
                continue
            for entry in state.children(current).values():
                if entry.node not in seen:
                    seen.add(entry.node)
                    out.append(entry.node)
        return out

    def files_below(self, node_id: bytes) -> list[bytes]:
        """Regular files at or below ``node_id`` in the current tree."""
        nodes = self.replica.tree.nodes
        return [n for n in self._below(node_id) if n in nodes and nodes[n].kind == ops.KIND_FILE]

    def pinned_files(self) -> list[bytes]:
        """Every regular file that is pinned (itself or through a directory), each once."""
        state = self.replica.tree
        out: dict[bytes, None] = {}
        for pin in sorted(self._pins):
            if pin in state.nodes and state.visible(pin):
                out.update(dict.fromkeys(self.files_below(pin)))
        return list(out)

    # ------------------------------------------------------------------------------------------ blobs of contents
    def content_blobs(self, content: Content) -> tuple[list[bytes], bool]:
        """(blob IDs of ``content``: manifest first, then chunks, each once; complete?). Not complete when the
        manifest blob is not here (its chunks are unknown until it is fetched)."""
        if content.inline:
            return [], True
        if content.manifest is None:
            return list(dict.fromkeys(e.chunk.blob for e in content.extents)), True
        manifest = content.manifest.blob
        chunks = self._manifests.get(manifest)
        if chunks is None:
            try:
                extents = load_extents(content, self.replica.get_blob, verify_id=False)  # get_blob verifies
            except BlobMissing:
                return [manifest], False
            except IntegrityError as e:
                log.warning("manifest %s unreadable: %s", ids.to_text(ids.PREFIX_BLOB, manifest)[:20], e)
                return [manifest], False
            chunks = tuple(dict.fromkeys(e.chunk.blob for e in extents))
            self._manifests[manifest] = chunks
            while len(self._manifests) > MANIFEST_MEMO:
                self._manifests.popitem(last=False)
        else:
            self._manifests.move_to_end(manifest)
        return [manifest, *(c for c in chunks if c != manifest)], True

    def contents_blobs(self, contents: Iterable[Content]) -> set[bytes]:
        out: set[bytes] = set()
        for content in contents:
            out.update(self.content_blobs(content)[0])
        return out

    def content_usage(self, content: Content) -> ContentUsage:
        blob_ids, complete = self.content_blobs(content)
        if not complete:
            return ContentUsage(0, 0, 1)  # only the manifest is known, and it is not here
        rows = self.store.blob_rows(blob_ids)
        local = unsynced = missing = 0
        for blob_id in blob_ids:
            row = rows.get(blob_id)
            if row is None or not row.local or not self.replica.blobs.has(blob_id):
                missing += 1
                continue
            local += row.size
            if not row.remote_confirmed:
                unsynced += row.size
        return ContentUsage(local, unsynced, missing)

    def pinned_blobs(self) -> frozenset[bytes]:
        """Every blob of the current content of every pinned file; recomputed when the tree or the pins changed
        (or a manifest that was missing may have arrived), and saved to ``pinned_blobs`` when it changed."""
        key = (self.replica.heads, self._pins_version)
        if key == self._pinned_key and self._pinned_complete:
            return self._pinned
        nodes = self.replica.tree.nodes
        found: set[bytes] = set()
        complete = True
        for node_id in self.pinned_files():
            blob_ids, whole = self.content_blobs(nodes[node_id].content)
            found.update(blob_ids)
            complete = complete and whole
        pinned = frozenset(found)
        self._save_pinned(pinned)
        self._pinned, self._pinned_key, self._pinned_complete = pinned, key, complete
        return pinned

    def _save_pinned(self, pinned: frozenset[bytes]) -> None:
        if self._saved_pinned is None:
            self._saved_pinned = self.store.pinned_blob_ids(self.space_id)
        added = sorted(pinned - self._saved_pinned)
        removed = sorted(self._saved_pinned - pinned)
        if added or removed:
            self.store.update_pinned_blobs(self.space_id, added, removed)
            self._saved_pinned = set(pinned)

    def missing_pinned(self, limit: int) -> list[bytes]:
        """Up to ``limit`` pinned blobs whose file is not here (to fetch in the background), in ID order."""
        out = []
        for blob_id in sorted(self.pinned_blobs()):
            if not self.replica.blobs.has(blob_id):
                out.append(blob_id)
                if len(out) >= limit:
                    break
        return out

    # ------------------------------------------------------------------------------------------ access times
    def touch(self, blob_id: bytes) -> None:
        """Note a read of a blob (kept in memory until :meth:`flush_access`)."""
        self._accessed[blob_id] = now_us()

    def flush_access(self) -> None:
        """Write the noted access times in one statement."""
        if not self._accessed:
            return
        accessed, self._accessed = self._accessed, {}
        self.store.note_blob_access(accessed)

    # ------------------------------------------------------------------------------------------ eviction
    def local_bytes(self, *, refresh: bool = False) -> int:
        """Bytes of the home's local blob files: counted by the store when asked to (or never yet), else the
        last count kept up to date with this cache's own fetches and evictions."""
        if self._local_bytes is None or refresh:
            self._local_bytes = self.store.local_blob_bytes()
        return self._local_bytes

    def note_stored(self, blob_id: bytes) -> None:
        """A blob was fetched and stored: count it (cheaper than counting everything again)."""
        row = self.store.blob_rows([blob_id]).get(blob_id)
        if row is not None and row.local and self._local_bytes is not None:
            self._local_bytes += row.size

    def over_limit(self) -> bool:
        return self.limit is not None and self.local_bytes() > self.limit

    def evict_to_limit(self, in_use: Collection[bytes] = ()) -> EvictResult:
        """If the local blobs exceed the limit, evict evictable ones, least recently used first, down to the
        low-water mark (or as far as the rules allow)."""
        if self.limit is None or self.local_bytes() <= self.limit:
            return EvictResult()
        total = self.local_bytes(refresh=True)  # other processes may have added or evicted blobs
        target = self.limit - self.limit // LOW_WATER_DIVISOR
        if total <= self.limit:
            return EvictResult()
        self.flush_access()
        pinned = self.pinned_blobs()
        victims: list[BlobRow] = []
        freed = 0
        after: tuple[int, bytes] | None = None
        while total - freed > target:
            page = self.store.eviction_candidates(EVICT_PAGE, after)
            if not page:
                break
            for row in page:
                if row.id in pinned or row.id in in_use:
                    continue
                victims.append(row)
                freed += row.size
                if total - freed <= target:
                    break
            after = (page[-1].last_access_us, page[-1].id)
        result = self._evict(victims)
        if result.evicted:
            log.info("cache: evicted %d blobs (%.1f MiB) to stay under %.1f MiB", result.evicted,
                     result.freed / 2**20, self.limit / 2**20)
        return result

    def evict_content(self, content: Content, in_use: Collection[bytes] = ()) -> EvictResult:
        """Evict what the rules allow of one content's blobs now (``anysyncfs evict``)."""
        blob_ids, _complete = self.content_blobs(content)
        rows = self.store.blob_rows(blob_ids)
        pinned = self.pinned_blobs()
        victims: list[BlobRow] = []
        kept = EvictResult()
        for blob_id in blob_ids:
            row = rows.get(blob_id)
            if row is None or not row.local:
                continue
            if blob_id in pinned:
                kept.kept_pinned += row.size
            elif blob_id in in_use:
                kept.kept_in_use += row.size
            elif not row.remote_confirmed:
                kept.kept_unconfirmed += row.size
            else:
                victims.append(row)
        result = self._evict(victims)
        result.kept_pinned, result.kept_in_use, result.kept_unconfirmed = (
            kept.kept_pinned, kept.kept_in_use, kept.kept_unconfirmed)
        return result

    def _evict(self, victims: Sequence[BlobRow]) -> EvictResult:
        """Delete blob files (the index first: a crash in between leaves a stray file, never a row that claims
        a file that is gone)."""
        result = EvictResult()
        if not victims:
            return result
        self.store.mark_evicted([row.id for row in victims])
        for row in victims:
            try:
                self.replica.blobs.delete(row.id)
            except StoreError as e:
                log.warning("cache: %s", e)
                continue
            result.evicted += 1
            result.freed += row.size
        if self._local_bytes is not None:
            self._local_bytes -= sum(row.size for row in victims)
        return result
