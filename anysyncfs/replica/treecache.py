"""Serialisation of the cached folded tree rows, encrypted at rest and bound together by a keyed stamp.

The ``state`` column of ``nodes``/``entries`` holds one row's full folded record. It contains names, attributes
and small files' bytes, so it is sealed with AES-256-GCM under a device-local cache key derived from the account
secret and the space ID (never synced; a lost cache is rebuilt from the DAG):

    offset  size  field
    0       1     CACHE_ROW_VERSION (2)
    1       12    random nonce
    13      n+16  AES-256-GCM(msgpack of the record), associated data = space id || kind (b"N"/b"E") || row id

Sealing each row alone would still let anyone who can write store.db put back an *older* sealed row of the same
node (it opens fine) and show stale content under the current heads. So the rows are also bound together: every
row has a secret digest ``D = BLAKE3-keyed(mac key, kind || row id || sealed row)``, the XOR of the digests of all
rows is kept in memory and updated as rows are replaced, and ``tree_meta.heads_digest`` holds the **stamp**

    BLAKE3-keyed(mac key, "S" || BLAKE3(sorted heads) || change count (u64) || fold version (u32)
                 || node rows (u64) || entry rows (u64) || XOR of the row digests (32 bytes))

(integers big-endian). The mac key is ``derive_key("anysyncfs 2026 local tree cache mac v1", account seed ||
space ID)``: the digests are never stored, so without the unlocked keyring nobody can compute which combination
of rows a stamp accepts. Opening a replica recomputes the stamp from the rows and refolds if it differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ..core import crypto, tree
from ..errors import DecodeError, IntegrityError

CACHE_ROW_VERSION = 2  # 1: associated data without the row ID, no stamp over the rows
CACHE_KEY_CONTEXT = "anysyncfs 2026 local tree cache v1"
CACHE_MAC_CONTEXT = "anysyncfs 2026 local tree cache mac v1"
KIND_NODE = b"N"
KIND_ENTRY = b"E"
STAMP_TAG = b"S"
ROW_ID_LEN = 16

_encoder = msgspec.msgpack.Encoder()
_node_decoder = msgspec.msgpack.Decoder(tree.Node)
_entry_decoder = msgspec.msgpack.Decoder(tree.Entry)


@dataclass
class RowSet:
    """What the stamp covers of the rows in the store: how many of each kind, and the XOR of their digests."""

    nodes: int = 0
    entries: int = 0
    digests: int = 0  # XOR of the row digests, as a 256-bit integer


class TreeCodec:
    """Seals and opens cached tree rows of one space, and computes their stamp."""

    def __init__(self, account_seed: bytes, space_id: bytes) -> None:
        self._aead = crypto.Aead(crypto.derive_key(CACHE_KEY_CONTEXT, account_seed + space_id))
        self._mac_key = crypto.derive_key(CACHE_MAC_CONTEXT, account_seed + space_id)
        self._space = space_id

    def _seal(self, plain: bytes, kind: bytes, row_id: bytes) -> bytes:
        nonce = crypto.random_bytes(crypto.NONCE_LEN)
        return bytes([CACHE_ROW_VERSION]) + nonce + self._aead.encrypt(nonce, plain, self._space + kind + row_id)

    def _open(self, row: bytes, kind: bytes, row_id: bytes) -> bytes:
        if len(row) < 1 + crypto.NONCE_LEN + crypto.TAG_LEN or row[0] != CACHE_ROW_VERSION:
            raise DecodeError("cached tree row has an unknown layout")
        try:
            return self._aead.decrypt(row[1:13], row[13:], self._space + kind + row_id)
        except IntegrityError:
            raise DecodeError("cached tree row does not authenticate") from None

    def encode_node(self, node: tree.Node) -> bytes:
        return self._seal(_encoder.encode(node), KIND_NODE, node.id)

    def encode_entry(self, entry: tree.Entry) -> bytes:
        return self._seal(_encoder.encode(entry), KIND_ENTRY, entry.id)

    # ------------------------------------------------------------------------------------------ the stamp
    def digest(self, kind: bytes, row_id: bytes, row: bytes) -> int:
        """The secret digest of one stored row (kinds and IDs have fixed lengths: the input is unambiguous)."""
        if len(row_id) != ROW_ID_LEN:
            raise ValueError("a tree row ID is 16 bytes")
        return int.from_bytes(crypto.blake3_keyed(self._mac_key, kind + row_id + row), "big")

    def replace(self, rows: RowSet, kind: bytes, row_id: bytes, old: bytes | None, new: bytes) -> None:
        """Account in ``rows`` for the row ``row_id`` of ``kind`` going from ``old`` (None: no row) to ``new``."""
        if old is None:
            if kind == KIND_NODE:
                rows.nodes += 1
            else:
                rows.entries += 1
        else:
            rows.digests ^= self.digest(kind, row_id, old)
        rows.digests ^= self.digest(kind, row_id, new)

    def stamp(self, heads_digest: bytes, change_count: int, fold_version: int, rows: RowSet) -> bytes:
        message = (STAMP_TAG + heads_digest + change_count.to_bytes(8, "big") + fold_version.to_bytes(4, "big")
                   + rows.nodes.to_bytes(8, "big") + rows.entries.to_bytes(8, "big") + rows.digests.to_bytes(32, "big"))
        return crypto.blake3_keyed(self._mac_key, message)

    # ------------------------------------------------------------------------------------------ loading
    def decode_tree(self, node_rows: list[tuple[bytes, bytes]],
                    entry_rows: list[tuple[bytes, bytes]]) -> tuple[tree.TreeState, RowSet]:
        """The tree from (row id, sealed row) pairs, and the row set their stamp must cover. A row that does not
        open under its own ID, or whose record names another ID, raises DecodeError."""
        rows = RowSet(len(node_rows), len(entry_rows))
        digests = 0
        mac_key = self._mac_key
        try:
            nodes = {}
            for row_id, row in node_rows:
                n = _node_decoder.decode(self._open(row, KIND_NODE, row_id))
                if n.id != row_id:
                    raise DecodeError("cached node row holds another node")
                nodes[n.id] = n
                digests ^= int.from_bytes(crypto.blake3_keyed(mac_key, KIND_NODE + row_id + row), "big")
            entries = {}
            for row_id, row in entry_rows:
                e = _entry_decoder.decode(self._open(row, KIND_ENTRY, row_id))
                if e.id != row_id:
                    raise DecodeError("cached entry row holds another entry")
                entries[e.id] = e
                digests ^= int.from_bytes(crypto.blake3_keyed(mac_key, KIND_ENTRY + row_id + row), "big")
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise DecodeError(f"cached tree row: {err}") from None
        rows.digests = digests
        return tree.TreeState.from_parts(nodes, entries, adopt=True), rows
