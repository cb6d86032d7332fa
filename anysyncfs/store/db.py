"""The local store: SQLAlchemy Core over SQLite in WAL mode.

All SQL of the project lives in this module and its mixins :mod:`.db_sync` (peers, blob cache, pins) and
:mod:`.db_gc` (a provider's blob collection). Callers
get plain tuples and bytes; they never see a connection. Every write method runs in the caller's transaction when one is open (``with store.transaction():``) so that a
change, its heads and its tree rows land atomically, or not at all.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, create_engine, delete, event, func, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn

from ..errors import NotFound, StoreError
from . import dialect
from . import schema as S
from .db_gc import GcQueries
from .db_heads import HeadsQueries
from .db_node import NodeQueries
from .db_vault import VaultQueries
from .db_sync import IN_BATCH, BlobRow, PeerRow, SyncQueries, _batches, now_us
from .db_uploads import UploadQueries
from .files import PRIVATE_FILE_MODE, tighten

__all__ = ["BlobRow", "ChangeRow", "IN_BATCH", "PeerRow", "SpaceRow", "Store", "split_ids"]


# Hot-path statements are built once: SQLAlchemy then reuses their compiled form and cache key, which measured
# several times cheaper per commit than building an expression per call.
_INSERT_CHANGE = insert(S.changes)
_DELETE_HEADS = delete(S.heads).where(S.heads.c.space == bindparam("s"))
_INSERT_HEAD = insert(S.heads)
_MARK_UNREADABLE = update(S.changes).where(S.changes.c.id == bindparam("i")).values(unreadable=bindparam("r"))


@functools.cache
def _tree_upserts(dialect_name: str) -> tuple[Any, Any, Any]:
    """The upserts of the cached tree (tree_meta, nodes, entries) for a dialect, built once."""
    upsert = dialect.upsert_insert(dialect_name)
    meta_ = upsert(S.tree_meta)
    meta_ = meta_.on_conflict_do_update(
        index_elements=[S.tree_meta.c.space],
        set_={c: meta_.excluded[c] for c in ("heads_digest", "change_count", "fold_version")},
    )
    node = upsert(S.nodes)
    node = node.on_conflict_do_update(  # keeps the row, hence the node's inode number
        index_elements=[S.nodes.c.space, S.nodes.c.node],
        set_={c: node.excluded[c] for c in ("kind", "size", "version", "state")},
    )
    entry = upsert(S.entries)
    entry = entry.on_conflict_do_update(
        index_elements=[S.entries.c.space, S.entries.c.entry],
        set_={c: entry.excluded[c] for c in ("parent", "node", "live", "state")},
    )
    return meta_, node, entry


_SELECT_INODE = select(S.nodes.c.inode).where(S.nodes.c.space == bindparam("s"), S.nodes.c.node == bindparam("n"))
_RESERVE_INODE = insert(S.nodes).values(kind=0, size=0, version=None, state=None)
# The cached tree of a space in the driver's SQL (SQLite only: see Store.tree_rows); {} is "" or " NOT INDEXED".
_TREE_NODE_ROWS = "SELECT inode, node, state FROM nodes{} WHERE space = ? AND state IS NOT NULL"
_TREE_ENTRY_ROWS = "SELECT entry, state FROM entries{} WHERE space = ?"


@dataclass(frozen=True, slots=True)
class SpaceRow:
    id: bytes
    name: str
    header: bytes
    added_us: int


@dataclass(frozen=True, slots=True)
class ChangeRow:
    id: bytes
    parents: tuple[bytes, ...]
    lamport: int
    author: bytes
    wall_us: int
    status: int


def split_ids(packed: bytes, size: int = 32) -> tuple[bytes, ...]:
    return tuple(packed[i : i + size] for i in range(0, len(packed), size))


class Store(SyncQueries, HeadsQueries, GcQueries, UploadQueries, NodeQueries, VaultQueries):
    """One database for every space of a home directory or a node: a SQLite file (``path``), or for a node a
    PostgreSQL database (``path`` is then a ``postgresql://`` URL; see :mod:`.dialect`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if dialect.is_postgres_url(path):
            self.path = make_url(dialect.engine_url(path)).render_as_string(hide_password=True)  # for messages
            # pre_ping: a pooled connection that died with a restarted server is replaced, not handed out.
            self._engine: Engine = create_engine(dialect.engine_url(path), future=True, pool_pre_ping=True,
                                                 pool_size=4, max_overflow=4)
        else:
            _private_database_files(path)
            self._engine = create_engine(dialect.engine_url(path), future=True)
            event.listen(self._engine, "connect", _on_connect)
        self.dialect = self._engine.dialect.name
        self._upsert = dialect.upsert_insert(self.dialect)
        self._conn: Connection | None = None
        self._depth = 0
        try:
            with self._engine.begin() as conn:
                _prepare_schema(conn, self.path)
        except (DBAPIError, sqlite3.Error) as e:
            raise StoreError(f"cannot open store {self.path}: {_reason(e)}") from None

    @property
    def shared(self) -> bool:
        """Whether other processes may write this database at the same time (PostgreSQL)."""
        return self.dialect == "postgresql"

    def close(self) -> None:
        self._engine.dispose()

    def sync(self) -> None:
        """Make every committed transaction durable.

        A FULL checkpoint: with synchronous=NORMAL, SQLite fsyncs the write-ahead log before copying it into the
        database and fsyncs the database afterwards. (Never open and close the database file ourselves to fsync
        it: closing any descriptor of it drops the POSIX locks SQLite holds in this process, which lets another
        process delete a live WAL — measured here: later commits vanished.)"""
        if self._conn is not None:
            raise StoreError("sync() inside a transaction")
        if self.dialect != "sqlite":
            return  # PostgreSQL: a committed transaction is durable (synchronous_commit) when COMMIT returns
        for _attempt in range(50):
            try:
                with self._engine.connect() as conn:
                    busy, _log, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(FULL)").one()
            except (DBAPIError, sqlite3.Error) as e:
                raise StoreError(f"cannot sync the store: {_reason(e)}") from None
            if not busy:
                return
            time.sleep(0.01)  # a reader in another process (e.g. `anysyncfs history`) holds an old snapshot
        raise StoreError("cannot sync the store: other processes keep it busy")

    # ------------------------------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes; nests (only the outermost commits)."""
        if self._conn is not None:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            with self._engine.begin() as conn:
                self._conn = conn
                self._depth = 1
                try:
                    yield
                finally:
                    self._conn = None
                    self._depth = 0
        except (DBAPIError, sqlite3.Error) as e:
            raise StoreError(f"store write failed: {_reason(e)}") from None

    def _run(self, stmt: Any, params: Any = None) -> Any:
        try:
            if self._conn is not None:
                return self._conn.execute(stmt, params) if params is not None else self._conn.execute(stmt)
            with self._engine.begin() as conn:
                res = conn.execute(stmt, params) if params is not None else conn.execute(stmt)
                return _Buffered(res.fetchall()) if res.returns_rows else None
        except (DBAPIError, sqlite3.Error) as e:
            raise StoreError(f"store operation failed: {_reason(e)}") from None

    def _run_sql(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """A statement in the driver's own SQL (the dialect-specific bits of :mod:`.dialect`), inside the
        current transaction."""
        if self._conn is None:
            raise StoreError("a driver statement outside a transaction")
        try:
            self._conn.exec_driver_sql(sql, params or {})
        except (DBAPIError, sqlite3.Error) as e:
            raise StoreError(f"store operation failed: {_reason(e)}") from None

    # ------------------------------------------------------------------------------------------ spaces
    def add_space(self, space_id: bytes, name: str, header: bytes) -> None:
        self._run(insert(S.spaces).values(id=space_id, name=name, header=header, added_us=now_us()))

    def spaces(self) -> list[SpaceRow]:
        rows = self._run(select(S.spaces).order_by(S.spaces.c.added_us)).fetchall()
        return [SpaceRow(r.id, r.name, r.header, r.added_us) for r in rows]

    def space(self, space_id: bytes) -> SpaceRow:
        r = self._run(select(S.spaces).where(S.spaces.c.id == space_id)).first()
        if r is None:
            raise NotFound("unknown space")
        return SpaceRow(r.id, r.name, r.header, r.added_us)

    # ------------------------------------------------------------------------------------------ ACL records
    def add_acl_record(self, space_id: bytes, record_id: bytes, raw: bytes) -> bool:
        """Store a verified record; False if it was already there."""
        if self._run(select(S.acl_records.c.id).where(S.acl_records.c.id == record_id)).first():
            return False
        self._run(insert(S.acl_records).values(id=record_id, space=space_id, raw=raw, received_us=now_us()))
        return True

    def count_acl_records(self, space_id: bytes) -> int:
        a = S.acl_records.c
        return int(self._run(select(func.count()).select_from(S.acl_records).where(a.space == space_id)).scalar_one())

    def acl_usage(self, space_id: bytes) -> tuple[int, int]:
        """(records, bytes) of the ACL records stored for a space."""
        a = S.acl_records.c
        q = select(func.count(), func.coalesce(func.sum(func.length(a.raw)), 0)).where(a.space == space_id)
        n, size = self._run(q).first()
        return int(n), int(size)

    def acl_records(self, space_id: bytes) -> list[tuple[bytes, bytes]]:
        """(id, raw) of every stored record of the space, in ID order."""
        q = select(S.acl_records.c.id, S.acl_records.c.raw).where(S.acl_records.c.space == space_id)
        return [(r[0], r[1]) for r in self._run(q.order_by(S.acl_records.c.id)).fetchall()]

    # ------------------------------------------------------------------------------------------ changes
    def add_change(
        self,
        space_id: bytes,
        change_id: bytes,
        raw: bytes,
        parents: Sequence[bytes],
        lamport: int,
        author: bytes,
        wall_us: int,
        status: int = S.CHANGE_ACCEPTED,
        reason: str | None = None,
    ) -> None:
        self._run(_INSERT_CHANGE, {
            "id": change_id, "space": space_id, "raw": raw, "parents": b"".join(parents), "lamport": lamport,
            "author": author, "wall_us": wall_us, "status": status, "reason": reason, "received_us": now_us(),
        })

    def has_change(self, change_id: bytes) -> bool:
        return self._run(select(S.changes.c.id).where(S.changes.c.id == change_id)).first() is not None

    def change_raw(self, change_id: bytes) -> bytes:
        r = self._run(select(S.changes.c.raw).where(S.changes.c.id == change_id)).first()
        if r is None:
            raise NotFound("unknown change")
        return r[0]

    def change_rows(self, space_id: bytes, status: int | None = S.CHANGE_ACCEPTED) -> list[ChangeRow]:
        """Changes of a space in fold order (lamport, id)."""
        c = S.changes.c
        q = select(c.id, c.parents, c.lamport, c.author, c.wall_us, c.status).where(c.space == space_id)
        if status is not None:
            q = q.where(c.status == status)
        rows = self._run(q.order_by(c.lamport, c.id)).fetchall()
        return [ChangeRow(r[0], split_ids(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def iter_change_raws(self, space_id: bytes, status: int | None = S.CHANGE_ACCEPTED) -> list[tuple[bytes, bytes]]:
        """(id, raw) in fold order."""
        c = S.changes.c
        q = select(c.id, c.raw).where(c.space == space_id)
        if status is not None:
            q = q.where(c.status == status)
        return [(r[0], r[1]) for r in self._run(q.order_by(c.lamport, c.id)).fetchall()]

    def reject_change(self, change_id: bytes, reason: str) -> None:
        """Mark a stored change as rejected (it stays, so it is not fetched again, but is never folded)."""
        c = S.changes.c
        self._run(update(S.changes).where(c.id == change_id).values(status=S.CHANGE_REJECTED, reason=reason))

    def change_statuses(self, change_ids: Sequence[bytes]) -> dict[bytes, int]:
        """The stored status (CHANGE_ACCEPTED / CHANGE_REJECTED) of those ``change_ids`` that are stored."""
        c = S.changes.c
        out: dict[bytes, int] = {}
        for part in _batches(change_ids):
            out.update({r[0]: r[1] for r in self._run(select(c.id, c.status).where(c.id.in_(part))).fetchall()})
        return out

    def change_raws_by_ids(
        self, space_id: bytes, change_ids: Sequence[bytes], status: int | None = S.CHANGE_ACCEPTED
    ) -> dict[bytes, bytes]:
        """{id: raw} of those ``change_ids`` stored for this space (with ``status``, by default accepted only)."""
        c = S.changes.c
        out: dict[bytes, bytes] = {}
        for part in _batches(change_ids):
            q = select(c.id, c.raw).where(c.space == space_id, c.id.in_(part))
            if status is not None:
                q = q.where(c.status == status)
            out.update({r[0]: r[1] for r in self._run(q).fetchall()})
        return out

    def accepted_change_ids(self, space_id: bytes) -> list[bytes]:
        """IDs of the accepted changes of a space, in ID order."""
        return self._change_ids(space_id, S.CHANGE_ACCEPTED)

    def rejected_change_ids(self, space_id: bytes) -> list[bytes]:
        """IDs of the stored, rejected changes of a space, in ID order."""
        return self._change_ids(space_id, S.CHANGE_REJECTED)

    def count_rejected_with_reason(self, space_id: bytes, prefix: str) -> int:
        """How many stored changes of a space are rejected with a reason starting with ``prefix``."""
        c = S.changes.c
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        q = select(func.count()).where(c.space == space_id, c.status == S.CHANGE_REJECTED,
                                        c.reason.like(pattern, escape="\\"))
        return int(self._run(q).scalar_one())

    def _change_ids(self, space_id: bytes, status: int) -> list[bytes]:
        c = S.changes.c
        q = select(c.id).where(c.space == space_id, c.status == status).order_by(c.id)
        return [r[0] for r in self._run(q).fetchall()]

    def unreadable_changes(self, space_id: bytes) -> dict[bytes, str]:
        """{id: reason} of the accepted changes of a space whose payload this device could not open or decode
        (``changes.unreadable``), in ID order."""
        c = S.changes.c
        q = select(c.id, c.unreadable).where(
            c.space == space_id, c.status == S.CHANGE_ACCEPTED, c.unreadable.is_not(None)).order_by(c.id)
        return {r[0]: r[1] for r in self._run(q).fetchall()}

    def set_unreadable(self, marks: dict[bytes, str | None]) -> None:
        """Set (a reason) or clear (None) the unreadable mark of stored changes."""
        if marks:
            self._run(_MARK_UNREADABLE, [{"i": cid, "r": reason} for cid, reason in marks.items()])

    def count_changes(self, space_id: bytes) -> int:
        c = S.changes.c
        q = select(func.count()).select_from(S.changes).where(c.space == space_id, c.status == S.CHANGE_ACCEPTED)
        return int(self._run(q).scalar_one())

    def set_heads(self, space_id: bytes, heads: Iterable[bytes]) -> None:
        self._run(_DELETE_HEADS, {"s": space_id})
        rows = [{"space": space_id, "change": h} for h in heads]
        if rows:
            self._run(_INSERT_HEAD, rows)

    def heads(self, space_id: bytes) -> tuple[bytes, ...]:
        q = select(S.heads.c.change).where(S.heads.c.space == space_id).order_by(S.heads.c.change)
        return tuple(r[0] for r in self._run(q).fetchall())

    # ------------------------------------------------------------------------------------------ materialised tree
    def tree_meta(self, space_id: bytes) -> tuple[bytes, int, int] | None:
        """(heads_digest, change_count, fold_version) of the cached tree, or None."""
        t = S.tree_meta.c
        r = self._run(select(t.heads_digest, t.change_count, t.fold_version).where(t.space == space_id)).first()
        return None if r is None else (r[0], r[1], r[2])

    def set_tree_meta(self, space_id: bytes, heads_digest: bytes, change_count: int, fold_version: int) -> None:
        self._run(_tree_upserts(self.dialect)[0], {"space": space_id, "heads_digest": heads_digest,
                                      "change_count": change_count, "fold_version": fold_version})

    def upsert_nodes(self, space_id: bytes, rows: Sequence[tuple[bytes, int, int, bytes | None, bytes]]) -> None:
        """rows: (node id, kind, size, version, state). Keeps each node's inode number."""
        if rows:
            self._run(_tree_upserts(self.dialect)[1], [
                {"space": space_id, "node": r[0], "kind": r[1], "size": r[2], "version": r[3], "state": r[4]}
                for r in rows
            ])

    def upsert_entries(self, space_id: bytes, rows: Sequence[tuple[bytes, bytes, bytes, bool, bytes]]) -> None:
        """rows: (entry id, parent, node, live, state)."""
        if rows:
            self._run(_tree_upserts(self.dialect)[2], [
                {"space": space_id, "entry": r[0], "parent": r[1], "node": r[2], "live": int(r[3]), "state": r[4]}
                for r in rows
            ])

    def clear_tree(self, space_id: bytes) -> None:
        """Forget the cached tree (inode numbers of nodes are kept: the rows stay with a NULL state)."""
        self._run(delete(S.entries).where(S.entries.c.space == space_id))
        self._run(update(S.nodes).where(S.nodes.c.space == space_id).values(state=None))
        self._run(delete(S.tree_meta).where(S.tree_meta.c.space == space_id))

    def tree_rows(self, space_id: bytes) -> tuple[list[tuple[int, bytes, bytes]], list[tuple[bytes, bytes]]]:
        """([(inode, node id, node state)], [(entry id, entry state)]) of the cached tree."""
        n, e = S.nodes.c, S.entries.c
        if self._engine.dialect.name == "sqlite":
            # Straight from the driver: SQLAlchemy's row objects cost 3-4x the query itself for 200,000 rows.
            nodes_, entries_ = self._driver_tree_rows(space_id)
        else:
            q = select(n.inode, n.node, n.state).where(n.space == space_id, n.state.is_not(None))
            nodes_ = self._run(q).fetchall()
            entries_ = self._run(select(e.entry, e.state).where(e.space == space_id)).fetchall()
        return [(r[0], r[1], r[2]) for r in nodes_], [(r[0], r[1]) for r in entries_]

    def _driver_tree_rows(self, space_id: bytes) -> tuple[list[Any], list[Any]]:
        # Without statistics SQLite reads these through the (space, node) and (space, parent) indexes: one random
        # lookup into the table per row, ~4x slower than reading the table in order (measured on a 100,000-file
        # space; worse when the pages are cold). When the space is most of the table, read the table in order.
        hint = " NOT INDEXED" if self._holds_most_rows(space_id) else ""
        nodes_sql, entries_sql = _TREE_NODE_ROWS.format(hint), _TREE_ENTRY_ROWS.format(hint)
        try:
            with contextlib.ExitStack() as stack:
                conn = self._conn if self._conn is not None else stack.enter_context(self._engine.begin())
                raw = conn.connection.dbapi_connection
                return raw.execute(nodes_sql, (space_id,)).fetchall(), raw.execute(entries_sql, (space_id,)).fetchall()
        except (DBAPIError, sqlite3.Error) as e:
            raise StoreError(f"store operation failed: {_reason(e)}") from None

    def _holds_most_rows(self, space_id: bytes) -> bool:
        """True if at least half of the node rows belong to this space (two counts over indexes: milliseconds)."""
        n = S.nodes.c
        mine = int(self._run(select(func.count()).select_from(S.nodes).where(n.space == space_id)).scalar_one())
        every = int(self._run(select(func.count()).select_from(S.nodes)).scalar_one())
        return 2 * mine >= every

    def tree_row_states(self, space_id: bytes, node_ids: Sequence[bytes],
                        entry_ids: Sequence[bytes]) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """The stored states of those nodes and entries that have one: ({node id: state}, {entry id: state})."""
        n, e = S.nodes.c, S.entries.c
        nodes_: dict[bytes, bytes] = {}
        for part in _batches(node_ids):
            q = select(n.node, n.state).where(n.space == space_id, n.node.in_(part), n.state.is_not(None))
            nodes_.update({r[0]: r[1] for r in self._run(q).fetchall()})
        entries_: dict[bytes, bytes] = {}
        for part in _batches(entry_ids):
            q = select(e.entry, e.state).where(e.space == space_id, e.entry.in_(part))
            entries_.update({r[0]: r[1] for r in self._run(q).fetchall()})
        return nodes_, entries_

    def inode_of(self, space_id: bytes, node_id: bytes) -> int:
        """The stable inode number of a node, reserving one if the node has none yet."""
        row = self._run(_SELECT_INODE, {"s": space_id, "n": node_id}).first()
        if row is not None:
            return int(row[0])
        self._run(_RESERVE_INODE, {"space": space_id, "node": node_id})
        return int(self._run(_SELECT_INODE, {"s": space_id, "n": node_id}).first()[0])

    def node_of_inode(self, space_id: bytes, inode: int) -> bytes | None:
        """The node an inode number belongs to in this space (None if none): numbers are never reused."""
        n = S.nodes.c
        row = self._run(select(n.node).where(n.space == space_id, n.inode == inode)).first()
        return None if row is None else bytes(row[0])

    def inodes_of(self, space_id: bytes, node_ids: Sequence[bytes]) -> dict[bytes, int]:
        """The inode numbers of those ``node_ids`` that have one (many inode_of lookups in a few queries)."""
        return self._inodes_for(space_id, node_ids)

    def _inodes_for(self, space_id: bytes, node_ids: Sequence[bytes]) -> dict[bytes, int]:
        n = S.nodes.c
        out: dict[bytes, int] = {}
        for i in range(0, len(node_ids), 500):
            part = list(node_ids[i : i + 500])
            q = select(n.node, n.inode).where(n.space == space_id, n.node.in_(part))
            out.update({r[0]: r[1] for r in self._run(q).fetchall()})
        return out

    def reserve_inodes(self, space_id: bytes, node_ids: Sequence[bytes]) -> dict[bytes, int]:
        """:meth:`inode_of` for many nodes at once (new node IDs a mount will hand out): one transaction."""
        with self.transaction():
            found = self._inodes_for(space_id, node_ids)
            missing = [{"space": space_id, "node": n} for n in node_ids if n not in found]
            if missing:
                self._run(_RESERVE_INODE, missing)
                found.update(self._inodes_for(space_id, [m["node"] for m in missing]))
        return found

    # ------------------------------------------------------------------------------------------ blobs
    def index_new_blobs(self, space_id: bytes, items: Sequence[tuple[bytes, int]]) -> None:
        """:meth:`index_blob` and :meth:`queue_upload` for many blobs made here, in a few statements."""
        if not items:
            return
        b, u = S.blobs.c, S.upload_queue.c
        ids_ = [blob_id for blob_id, _size in items]
        known: set[bytes] = set()
        queued: set[bytes] = set()
        for part in _batches(ids_):
            known.update(r[0] for r in self._run(select(b.id).where(b.id.in_(part))).fetchall())
            queued.update(r[0] for r in self._run(select(u.blob).where(u.space == space_id, u.blob.in_(part))))
        now = now_us()
        new = [{"id": i, "size": n, "location": S.BLOB_LOCAL, "pinned": 0, "last_access_us": now,
                "remote_confirmed": 0} for i, n in items if i not in known]  # fmt: skip
        if new:
            self._run(insert(S.blobs), new)
        if known:
            self._run(update(S.blobs).where(b.id == bindparam("bid")).values(location=S.BLOB_LOCAL, last_access_us=now),
                      [{"bid": i} for i in known])
        fresh = [{"space": space_id, "blob": i, "queued_us": now} for i in dict.fromkeys(ids_) if i not in queued]
        if fresh:
            self._run(insert(S.upload_queue), fresh)

    def index_blob(self, blob_id: bytes, size: int, pinned: bool = False, *, remote_confirmed: bool = False) -> None:
        """Record that the blob file is here. ``remote_confirmed`` marks it as stored by a provider too (it is
        never unmarked here)."""
        b = S.blobs.c
        if self._run(select(b.id).where(b.id == blob_id)).first() is None:
            self._run(insert(S.blobs).values(id=blob_id, size=size, location=S.BLOB_LOCAL, pinned=int(pinned),
                                             last_access_us=now_us(), remote_confirmed=int(remote_confirmed)))
        else:
            values: dict[str, int] = {"location": S.BLOB_LOCAL, "last_access_us": now_us()}
            if remote_confirmed:
                values["remote_confirmed"] = 1
            self._run(update(S.blobs).where(b.id == blob_id).values(**values))

    def blob_ids(self) -> list[bytes]:
        return [r[0] for r in self._run(select(S.blobs.c.id)).fetchall()]

    def local_blob_ids(self) -> list[bytes]:
        """IDs of indexed blobs whose file is on this device, in ID order."""
        b = S.blobs.c
        return [r[0] for r in self._run(select(b.id).where(b.location == S.BLOB_LOCAL).order_by(b.id)).fetchall()]

    def blob_size(self, blob_id: bytes) -> int | None:
        """The indexed size of a blob, or None if it is not indexed."""
        r = self._run(select(S.blobs.c.size).where(S.blobs.c.id == blob_id)).first()
        return None if r is None else int(r[0])

    def is_remote_confirmed(self, blob_id: bytes) -> bool:
        r = self._run(select(S.blobs.c.remote_confirmed).where(S.blobs.c.id == blob_id)).first()
        return r is not None and bool(r[0])

    def queue_upload(self, space_id: bytes, blob_ids: Iterable[bytes]) -> None:
        rows = [{"space": space_id, "blob": b, "queued_us": now_us()} for b in blob_ids]
        u = S.upload_queue.c
        for r in rows:
            if self._run(select(u.blob).where(u.space == space_id, u.blob == r["blob"])).first() is None:
                self._run(insert(S.upload_queue).values(**r))

    def pending_uploads(self, space_id: bytes, limit: int, offset: int = 0) -> list[bytes]:
        """Up to ``limit`` queued blob IDs of a space, oldest first, after the first ``offset`` (new entries are
        queued last, so a sync round pages through the queue while it leaves it untouched)."""
        u = S.upload_queue.c
        q = select(u.blob).where(u.space == space_id).order_by(u.queued_us, u.blob).limit(limit).offset(offset)
        return [r[0] for r in self._run(q).fetchall()]

    def count_pending_uploads(self, space_id: bytes) -> int:
        q = select(func.count()).select_from(S.upload_queue).where(S.upload_queue.c.space == space_id)
        return int(self._run(q).scalar_one())

    def mark_uploaded(self, space_id: bytes, blob_ids: Sequence[bytes]) -> None:
        """Unqueue these blobs for every provider and mark them evictable (remote_confirmed). Per provider:
        :meth:`confirm_uploads`."""
        u, b, c = S.upload_queue.c, S.blobs.c, S.upload_confirmations.c
        with self.transaction():
            for part in _batches(blob_ids):
                self._run(delete(S.upload_queue).where(u.space == space_id, u.blob.in_(part)))
                self._run(delete(S.upload_confirmations).where(c.space == space_id, c.blob.in_(part)))
                self._run(update(S.blobs).where(b.id.in_(part)).values(remote_confirmed=1))

    # ------------------------------------------------------------------------------------------ blobs of a space
    def add_space_blob(self, space_id: bytes, blob_id: bytes, size: int) -> bool:
        """Link a stored blob to a space (a provider's record of what it holds for whom); False if linked."""
        with self.transaction():
            if self.has_space_blob(space_id, blob_id):
                return False
            self._run(insert(S.space_blobs).values(space=space_id, blob=blob_id, size=size, added_us=now_us()))
        return True

    def has_space_blob(self, space_id: bytes, blob_id: bytes) -> bool:
        sb = S.space_blobs.c
        return self._run(select(sb.blob).where(sb.space == space_id, sb.blob == blob_id)).first() is not None

    def space_blobs_among(self, space_id: bytes, blob_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``blob_ids`` linked to a space (one query per :data:`IN_BATCH` IDs, not one per ID)."""
        sb = S.space_blobs.c
        out: set[bytes] = set()
        for part in _batches(blob_ids):
            query = select(sb.blob).where(sb.space == space_id, sb.blob.in_(part))
            out.update(r[0] for r in self._run(query).fetchall())
        return out

    def space_blob_ids(self, space_id: bytes) -> list[bytes]:
        """Blob IDs linked to a space, in ID order."""
        sb = S.space_blobs.c
        return [r[0] for r in self._run(select(sb.blob).where(sb.space == space_id).order_by(sb.blob)).fetchall()]

    def space_usage(self, space_id: bytes) -> tuple[int, int, int, int]:
        """(changes, change bytes, blobs, blob bytes) stored for a space; changes of either status count."""
        c, sb = S.changes.c, S.space_blobs.c
        # length() of a BLOB reads its size from the record header, not the bytes.
        changes_q = select(func.count(), func.coalesce(func.sum(func.length(c.raw)), 0)).where(c.space == space_id)
        blobs_q = select(func.count(), func.coalesce(func.sum(sb.size), 0)).where(sb.space == space_id)
        n_changes, change_bytes = self._run(changes_q).first()
        n_blobs, blob_bytes = self._run(blobs_q).first()
        return int(n_changes), int(change_bytes), int(n_blobs), int(blob_bytes)

def _schema_version(conn: Connection) -> str | None:
    """The stored schema version, or None for a database without one (a new file)."""
    if not inspect(conn).has_table("meta"):
        return None
    row = conn.execute(select(S.meta.c.value).where(S.meta.c.key == "schema_version")).first()
    return None if row is None else str(row[0])


def _prepare_schema(conn: Connection, path: str) -> None:
    """Create the tables of a new database, upgrade an older one in place, refuse any other version."""
    lock = dialect.lock_writes_sql(conn.dialect.name)
    if lock is not None:  # node processes starting at once on a new PostgreSQL database: one creates the tables
        conn.exec_driver_sql(lock)
    version = _schema_version(conn)
    if version is None:
        S.metadata.create_all(conn)
        conn.execute(insert(S.meta).values(key="schema_version", value=str(S.SCHEMA_VERSION)))
        return
    wanted = str(S.SCHEMA_VERSION)
    if version == wanted:
        # Tables added while the current version was unreleased (pins, pinned_blobs) appear in databases made by
        # earlier builds of it; creation checks first, so this costs a few catalogue reads when nothing is new.
        S.metadata.create_all(conn)
        return
    while version != wanted:
        if not version.isdigit() or int(version) not in S.COLUMNS_ADDED_AFTER:
            raise StoreError(f"store {path} has schema version {version}, this build needs {S.SCHEMA_VERSION}")
        version = _upgrade_from(conn, int(version))
    S.metadata.create_all(conn)  # the tables that are new since the old version (inside the same transaction)


def _upgrade_from(conn: Connection, version: int) -> str:
    """Move the schema one version up; returns the version now stored."""
    # The UPDATE comes first on purpose. Python's sqlite3 opens a transaction at the first data-changing
    # statement, not at DDL: this puts the ALTER and CREATE statements that follow inside it, so an upgrade that
    # fails half-way leaves the old schema intact. Its WHERE also settles a race with another process upgrading
    # the same file at the same moment: only one of them changes the row (the other then finds the new version).
    m = S.meta.c
    res = conn.execute(
        update(S.meta).where(m.key == "schema_version", m.value == str(version)).values(value=str(version + 1))
    )
    if res.rowcount != 1:
        return _schema_version(conn) or ""
    for column in S.COLUMNS_ADDED_AFTER[version]:
        ddl = CreateColumn(column).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {column.table.name} ADD COLUMN {ddl}")
    return str(version + 1)


class _Buffered:
    """Rows fetched inside a short-lived connection, offering the Result methods callers use."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar_one(self) -> Any:
        return self._rows[0][0]


def _private_database_files(path: str) -> None:
    """Create the database file 0600 before SQLite does (SQLite gives a new database the umask's mode, typically
    0644, and its -wal and -shm files the database's mode), and narrow an older install's files to 0600."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    except OSError as e:
        raise StoreError(f"cannot open store {path}: {e.strerror or e}") from None
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        tighten(name, PRIVATE_FILE_MODE)


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a crash of this process at once (it is in the OS page cache) and
    # survives power loss after the next Store.sync() — which fsync() and unmount call. FULL would fsync on every
    # commit: 2-5 ms per file created, measured, for a promise nobody asked for yet.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _reason(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    if isinstance(orig, OSError) and orig.errno == 28 or "disk is full" in text or "database or disk is full" in text:
        return "disk full"
    return text
