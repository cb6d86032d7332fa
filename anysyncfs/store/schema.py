"""The local store's SQL schema. Every table and column is documented here, and only here.

One SQLite database (``store.db`` in the home directory, WAL mode) holds every space this device has. Blob bytes
live beside it as content-addressed files (:mod:`anysyncfs.store.blobfiles`); the ``blobs`` table only indexes
them. IDs are raw bytes (BLOBs): 32-byte BLAKE3 digests or public keys, 16-byte node and entry IDs.

The materialised tree (``nodes``, ``entries``) is a cache of the deterministic fold of the DAG: it is not part of
the protocol and ``anysyncfs fsck --repair`` can always rebuild it from ``changes``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)

SCHEMA_VERSION = 1  # bump on any change below; the store refuses a database with another version

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True, doc="setting name, e.g. 'schema_version'"),
    Column("value", Text, nullable=False, doc="setting value as text"),
)

spaces = Table(
    "spaces",
    metadata,
    Column("id", LargeBinary(32), primary_key=True, doc="space ID = BLAKE3 of the signed space header"),
    Column("name", Text, nullable=False, doc="local label chosen by this device's user (not synced)"),
    Column("header", LargeBinary, nullable=False, doc="the signed space header, verbatim"),
    Column("added_us", BigInteger, nullable=False, doc="when this device added the space, µs since the epoch"),
)

acl_records = Table(
    "acl_records",
    metadata,
    Column("id", LargeBinary(32), primary_key=True, doc="record ID = BLAKE3 of the record bytes"),
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), nullable=False, doc="space the record belongs to"),
    Column("raw", LargeBinary, nullable=False, doc="the signed record, verbatim (verified before insertion)"),
    Column("received_us", BigInteger, nullable=False, doc="when this device stored it, µs since the epoch"),
)
Index("acl_records_space", acl_records.c.space)

CHANGE_ACCEPTED = 1  # passed every check and is part of the fold
CHANGE_REJECTED = 2  # decoded and signed but refused by the ACL rules (kept so it is not fetched again)

changes = Table(
    "changes",
    metadata,
    Column("id", LargeBinary(32), primary_key=True, doc="change ID = BLAKE3 of the change bytes"),
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), nullable=False, doc="space the change belongs to"),
    Column("raw", LargeBinary, nullable=False, doc="the signed, encrypted change, verbatim"),
    Column("parents", LargeBinary, nullable=False, doc="parent change IDs, concatenated 32-byte IDs, sorted"),
    Column("lamport", BigInteger, nullable=False, doc="Lamport clock from the header (fold order, first key)"),
    Column("author", LargeBinary(32), nullable=False, doc="author account public key from the header"),
    Column("wall_us", BigInteger, nullable=False, doc="author's wall clock from the header, µs"),
    Column("status", Integer, nullable=False, doc="CHANGE_ACCEPTED or CHANGE_REJECTED"),
    Column("reason", Text, nullable=True, doc="why a change was rejected (NULL when accepted)"),
    Column("received_us", BigInteger, nullable=False, doc="when this device stored it, µs since the epoch"),
)
Index("changes_fold_order", changes.c.space, changes.c.lamport, changes.c.id)

heads = Table(
    "heads",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space"),
    Column("change", LargeBinary(32), primary_key=True, doc="an accepted change no accepted change names as parent"),
)

tree_meta = Table(
    "tree_meta",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space"),
    Column("heads_digest", LargeBinary(32), nullable=False, doc="BLAKE3 of the sorted heads the tree was folded at"),
    Column("change_count", BigInteger, nullable=False, doc="number of accepted changes folded into the tree"),
    Column("fold_version", Integer, nullable=False, doc="version of the fold rules/serialisation that built it"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("inode", Integer, primary_key=True, autoincrement=True, doc="local inode number, stable for a node"),
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), nullable=False, doc="space"),
    Column("node", LargeBinary(16), nullable=False, doc="node ID (16 bytes; the root is 16 zero bytes)"),
    Column("kind", Integer, nullable=False, doc="1 file, 2 directory, 3 symlink"),
    Column("size", BigInteger, nullable=False, doc="file size in bytes (0 for directories)"),
    Column("version", LargeBinary(32), nullable=True, doc="ID of the last change that touched the node"),
    Column("state", LargeBinary, nullable=True, doc="msgpack of the full folded node (attributes, content, fold "
           "bookkeeping); NULL for an inode reserved for a node not (yet) in the folded tree"),
)
Index("nodes_by_id", nodes.c.space, nodes.c.node, unique=True)

entries = Table(
    "entries",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space"),
    Column("entry", LargeBinary(16), primary_key=True, doc="entry ID (one name of a node)"),
    Column("parent", LargeBinary(16), nullable=False, doc="node ID of the directory holding the name"),
    Column("node", LargeBinary(16), nullable=False, doc="node ID the name points at"),
    Column("live", Integer, nullable=False, doc="1 if the name exists, 0 if unlinked (kept for the fold)"),
    Column("state", LargeBinary, nullable=False, doc="msgpack of the full folded entry (raw name, fold bookkeeping)"),
)
Index("entries_by_parent", entries.c.space, entries.c.parent)
Index("entries_by_node", entries.c.space, entries.c.node)

BLOB_LOCAL = 1  # the blob file is in blobs/ on this device

blobs = Table(
    "blobs",
    metadata,
    Column("id", LargeBinary(32), primary_key=True, doc="blob ID = BLAKE3 of the blob bytes"),
    Column("size", BigInteger, nullable=False, doc="blob size in bytes (ciphertext)"),
    Column("location", Integer, nullable=False, doc="BLOB_LOCAL when the file is present"),
    Column("pinned", Integer, nullable=False, default=0, doc="1 if kept offline (never evicted)"),
    Column("last_access_us", BigInteger, nullable=False, doc="last read or write, µs (LRU eviction order)"),
)

peers = Table(
    "peers",
    metadata,
    Column("space", LargeBinary(32), primary_key=True, doc="space the peer serves (need not be held locally)"),
    Column("address", Text, primary_key=True, doc="anysync://<device key>@host:port"),
    Column("added_us", BigInteger, nullable=False, doc="when it was recorded, µs"),
    Column("last_sync_us", BigInteger, nullable=True, doc="last successful reconciliation, µs (NULL: never)"),
)

upload_queue = Table(
    "upload_queue",
    metadata,
    Column("space", LargeBinary(32), primary_key=True, doc="space the blob belongs to"),
    Column("blob", LargeBinary(32), primary_key=True, doc="blob ID a provider has not yet confirmed storing"),
    Column("queued_us", BigInteger, nullable=False, doc="when it was queued, µs"),
)
