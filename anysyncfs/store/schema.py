"""The local store's SQL schema. Every table and column is documented here, and only here.

One SQLite database (``store.db`` in the home directory, WAL mode) holds every space this device has. Blob bytes
live beside it as content-addressed files (:mod:`anysyncfs.store.blobfiles`); the ``blobs`` table only indexes
them. IDs are raw bytes (BLOBs): 32-byte BLAKE3 digests or public keys, 16-byte node and entry IDs.

The materialised tree (``nodes``, ``entries``) is a cache of the deterministic fold of the DAG: it is not part of
the protocol and ``anysyncfs fsck --repair`` can always rebuild it from ``changes``.

A provider (``anysyncfs node``) uses the same tables without the tree: ``spaces``, ``acl_records``, ``changes``,
``heads``, ``blobs``, ``space_blobs`` (which of its blobs belong to which space, for quotas and for serving a
blob only to members of a space that holds it) and ``change_blobs`` (which blobs its accepted changes list in
their headers, so that the others can be collected) and ``node_spaces`` (its figures per space, which several node
processes on one PostgreSQL database share).

The blob cache of a device (:mod:`anysyncfs.replica.cache`) uses ``blobs`` (location, last access, remote
confirmation), ``pins`` (what the user pinned) and ``pinned_blobs`` (the blobs those pins keep on the device).
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
    text,
)

from .dialect import EmptyBytes

SCHEMA_VERSION = 5  # bump on any change below; the store refuses a database with another version
# Version history (the store upgrades an older database in place, in one transaction; see db.py):
#   1  first release
#   2  space_blobs, pins, pinned_blobs (new); peers.device_key, peers.last_attempt_us, peers.last_error;
#      blobs.remote_confirmed
#   3  changes.unreadable
#   4  vaults (new)
#   5  peers_seen (new)

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
    # Added in schema 3 (appended by the upgrade). Device-local, like the tree cache: a fold sets and clears it.
    Column("unreadable", Text, nullable=True,
           doc="on a device: why the payload of this accepted change does not open (AES-GCM) or decode with the "
           "epoch key this device holds; the change stays in the DAG and the fold skips it as if it had no ops. "
           "NULL: readable, or not folded yet, or no key for its epoch yet. Never set on a provider"),
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
    Column("heads_digest", LargeBinary(32), nullable=False, doc="keyed stamp of the cached tree: a MAC over the "
           "sorted heads it was folded at, the change count, the fold version and every node/entry row (60.3)"),
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
BLOB_EVICTED = 2  # the cache deleted the file (only ever done once a provider confirmed storing the blob)

blobs = Table(
    "blobs",
    metadata,
    Column("id", LargeBinary(32), primary_key=True, doc="blob ID = BLAKE3 of the blob bytes"),
    Column("size", BigInteger, nullable=False, doc="blob size in bytes (ciphertext)"),
    Column("location", Integer, nullable=False, doc="BLOB_LOCAL when the file is present, BLOB_EVICTED after the "
           "cache deleted it (fetching it again sets BLOB_LOCAL)"),
    Column("pinned", Integer, nullable=False, default=0,
           doc="1: never evicted, whatever the pins say (nothing sets it today: pins live in pins/pinned_blobs)"),
    Column("last_access_us", BigInteger, nullable=False,
           doc="last read, write or fetch, µs (LRU eviction order; reads are noted in memory and written in batches)"),
    # Added in schema 2 (hence last, and with a default: the upgrade appends it with ALTER TABLE ADD COLUMN).
    Column("remote_confirmed", Integer, nullable=False, server_default=text("0"),
           doc="1 once a provider confirmed it stores the blob (only such blobs may be evicted from the cache)"),
)

space_blobs = Table(
    "space_blobs",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True,
           doc="space the blob was uploaded for (a provider serves it only to members of that space)"),
    Column("blob", LargeBinary(32), primary_key=True, doc="blob ID = BLAKE3 of the blob bytes"),
    Column("size", BigInteger, nullable=False, doc="blob size in bytes (counted against the space's quota)"),
    Column("added_us", BigInteger, nullable=False, doc="when it was linked to the space, µs"),
)

change_blobs = Table(
    "change_blobs",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space of the change"),
    Column("blob", LargeBinary(32), primary_key=True, doc="a blob ID the change's header lists (blob_refs)"),
    Column("change", LargeBinary(32), primary_key=True,
           doc="ID of a change a provider accepted (a blob counts as referenced while such a change is accepted)"),
)

peers = Table(
    "peers",
    metadata,
    Column("space", LargeBinary(32), primary_key=True, doc="space the peer serves (need not be held locally)"),
    Column("address", Text, primary_key=True, doc="network address as given by the user or ticket (host:port)"),
    Column("added_us", BigInteger, nullable=False, doc="when it was recorded, µs"),
    Column("last_sync_us", BigInteger, nullable=True, doc="last successful reconciliation, µs (NULL: never)"),
    # Added in schema 2 (appended by the upgrade; schema 1 never wrote a peer row, so the default is never seen).
    Column("device_key", LargeBinary(32), nullable=False, server_default=EmptyBytes(),
           doc="the peer's device public key (32 bytes), pinned: the TLS listener must prove it holds it"),
    Column("last_attempt_us", BigInteger, nullable=True, doc="last connection attempt, successful or not, µs"),
    Column("last_error", Text, nullable=True, doc="one-line reason the last attempt failed (NULL after a success)"),
)

PEER_VIA = ("manual", "address record", "mdns")  # how a peer was found (peers_seen.via)
PEER_KINDS = ("device", "provider")  # what the engine judged it to be (peers_seen.kind)
MAX_PEERS_SEEN = 64  # peers_seen rows kept per space of peers found by address records or mDNS (oldest go first)

# What the sync engine learnt of a peer it reached: kept so that ``anysyncfs status`` tells a member's device from a
# provider, and lists the devices found by address records or mDNS, while no mount or sync --watch runs. Only a
# peer that authenticated as the device key it was dialled by and got through the ACL round gets a row (a spoofed
# announcement or a stranger never does). Rows of recorded peers go with their peers row (remove_peer); those of
# found peers are bounded by MAX_PEERS_SEEN per space.
peers_seen = Table(
    "peers_seen",
    metadata,
    Column("space", LargeBinary(32), primary_key=True, doc="space the peer was reached for"),
    Column("address", Text, primary_key=True, doc="the address it was dialled at (anysync://dv-…@host:port)"),
    Column("device_key", LargeBinary(32), nullable=False, doc="its device key, proven in the handshake"),
    Column("via", Text, nullable=False, doc="how it was found: 'manual' (the peers table: a provider or a device "
           "added with space add-peer), 'address record' or 'mdns'"),
    Column("kind", Text, nullable=False, doc="'device' (its account is a member of the space) or 'provider' (its "
           "account is not), as judged after the ACL round of the last connection"),
    Column("seen_us", BigInteger, nullable=False, doc="when it was last judged, µs"),
    Column("last_sync_us", BigInteger, nullable=True, doc="start of its last successful sync round, µs (NULL: none "
           "yet)"),
)

pins = Table(
    "pins",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space"),
    Column("node", LargeBinary(16), primary_key=True,
           doc="node ID of a file or directory the user pinned on this device (not synced); everything below a "
           "pinned directory is pinned too, files created there later included"),
    Column("pinned_us", BigInteger, nullable=False, doc="when it was pinned, µs"),
)

pinned_blobs = Table(
    "pinned_blobs",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space whose pins keep the blob"),
    Column("blob", LargeBinary(32), primary_key=True,
           doc="a blob of the current content of a pinned file: never evicted (rewritten by the space's cache "
           "whenever its pins or its tree change, so that the mounts of other spaces, which share the blob "
           "directory, respect these pins too)"),
)
Index("pinned_blobs_by_blob", pinned_blobs.c.blob)

upload_queue = Table(
    "upload_queue",
    metadata,
    Column("space", LargeBinary(32), primary_key=True, doc="space the blob belongs to"),
    Column("blob", LargeBinary(32), primary_key=True, doc="blob ID made here that not every provider of the space has "
           "confirmed storing yet (upload_confirmations says which did; the row is deleted, and "
           "blobs.remote_confirmed set, once all did)"),
    Column("queued_us", BigInteger, nullable=False, doc="when it was queued, µs"),
)

# Many providers per space (docs/protocol.md 70.10): added within version 3 (created when a store opens, like pins).
upload_confirmations = Table(
    "upload_confirmations",
    metadata,
    Column("space", LargeBinary(32), primary_key=True, doc="space the blob was queued for"),
    Column("provider", LargeBinary(32), primary_key=True,
           doc="device key of a provider of the space that confirmed storing the blob"),
    Column("blob", LargeBinary(32), primary_key=True,
           doc="a blob of upload_queue; the queue row and these rows go once every provider recorded for the space "
           "(peers.device_key) has one"),
)

# Signed heads (docs/protocol.md 70.9): tables added within version 2 (created when a store opens, like pins).
signed_heads = Table(
    "signed_heads",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space"),
    Column("device", LargeBinary(32), primary_key=True, doc="device public key that signed the record"),
    Column("account", LargeBinary(32), nullable=False, doc="account that certified the device (from the record)"),
    Column("counter", BigInteger, nullable=False, doc="the record's counter: only a higher one replaces the row (on "
           "a device, its own row is where the next counter comes from: never reused, survives restarts)"),
    Column("raw", LargeBinary, nullable=False, doc="the newest verified signed heads record of the device, verbatim"),
    Column("received_us", BigInteger, nullable=False, doc="when it was stored, µs"),
)

heads_served = Table(
    "heads_served",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space"),
    Column("provider", LargeBinary(32), primary_key=True, doc="device key of the provider"),
    Column("device", LargeBinary(32), primary_key=True, doc="device whose signed heads the provider served"),
    Column("counter", BigInteger, nullable=False, doc="highest counter of that device the provider served to this "
           "device, or accepted from it (a lower one served later is a rollback)"),
    Column("seen_us", BigInteger, nullable=False, doc="when that counter was first seen, µs"),
)

provider_warnings = Table(
    "provider_warnings",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="space"),
    Column("provider", LargeBinary(32), primary_key=True, doc="device key of the provider caught"),
    Column("kind", Text, primary_key=True, doc="'withholds' (it kept back changes a device's signed heads name) or "
           "'rollback' (it served an older signed heads record than before)"),
    Column("device", LargeBinary(32), primary_key=True, doc="the device whose signed heads prove it"),
    Column("counter", BigInteger, nullable=False, doc="counter of that device's record (the newest such finding)"),
    Column("address", Text, nullable=False, doc="the provider's address when it was last caught"),
    Column("message", Text, nullable=False, doc="one line, as logged"),
    Column("first_us", BigInteger, nullable=False, doc="when it was first caught, µs"),
    Column("last_us", BigInteger, nullable=False, doc="when it was last caught, µs"),
)

# A provider's figures per space, shared by every node process on one database (table added within version 3,
# created when a store opens; a node fills the rows of spaces it held before at start: see replica/shared_state.py).
node_spaces = Table(
    "node_spaces",
    metadata,
    Column("space", LargeBinary(32), ForeignKey("spaces.id"), primary_key=True, doc="a space a provider holds"),
    Column("owner", LargeBinary(32), nullable=False, doc="account that signed the space header (charged for it)"),
    Column("used_bytes", BigInteger, nullable=False,
           doc="bytes of its stored changes, ACL records and blobs (what its quotas count), as of the last write"),
    Column("generation", BigInteger, nullable=False,
           doc="bumped by every write to the space in the same transaction: a node process whose copy in memory "
           "(ACL, DAG, heads, usage) was read at another generation reloads it"),
)
Index("node_spaces_by_owner", node_spaces.c.owner)
# The account vault (docs/protocol.md 25): one table for both sides, added in version 4.
vaults = Table(
    "vaults",
    metadata,
    Column("discovery_id", LargeBinary(32), primary_key=True,
           doc="discovery ID of a vault (HKDF of its signing key: links to no account without the phrase)"),
    Column("version", BigInteger, nullable=False, doc="version of the record held in `record`"),
    Column("record", LargeBinary, nullable=False,
           doc="the signed, encrypted vault record, verbatim (a provider: the newest it accepted, which it serves; "
           "a device: its own account's vault as it last merged it, which it pushes)"),
    Column("highest_seen", BigInteger, nullable=False,
           doc="on a device: the highest version any provider served or accepted (a lower one later is a "
           "rollback); on a provider equal to `version`"),
    Column("stored_us", BigInteger, nullable=False, doc="when the row last changed, µs"),
)

# Upgrades of an older database, by the version they start from: the columns to append (ALTER TABLE ADD COLUMN,
# with their DDL as declared above). Tables that did not exist are then created by ``metadata.create_all``.
COLUMNS_ADDED_AFTER: dict[int, tuple[Column, ...]] = {
    1: (peers.c.device_key, peers.c.last_attempt_us, peers.c.last_error, blobs.c.remote_confirmed),
    2: (changes.c.unreadable,),
    3: (),  # version 4 only adds the table vaults
    4: (),  # version 5 only adds the table peers_seen
}
