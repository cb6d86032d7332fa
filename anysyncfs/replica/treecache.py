"""Serialisation of the cached folded tree rows, encrypted at rest.

The ``state`` column of ``nodes``/``entries`` holds one row's full folded record. It contains names, attributes
and small files' bytes, so it is sealed with AES-256-GCM under a device-local cache key derived from the account
secret and the space ID (never synced; a lost cache is rebuilt from the DAG):

    offset  size  field
    0       1     CACHE_ROW_VERSION
    1       12    random nonce
    13      n+16  AES-256-GCM(msgpack of the record), associated data = space id || row kind (b"N" or b"E")
"""

from __future__ import annotations

import msgspec

from ..core import crypto, tree
from ..errors import DecodeError, IntegrityError

CACHE_ROW_VERSION = 1
CACHE_KEY_CONTEXT = "anysyncfs 2026 local tree cache v1"
KIND_NODE = b"N"
KIND_ENTRY = b"E"

_encoder = msgspec.msgpack.Encoder()
_node_decoder = msgspec.msgpack.Decoder(tree.Node)
_entry_decoder = msgspec.msgpack.Decoder(tree.Entry)


class TreeCodec:
    """Seals and opens cached tree rows of one space."""

    def __init__(self, account_seed: bytes, space_id: bytes) -> None:
        self._aead = crypto.Aead(crypto.derive_key(CACHE_KEY_CONTEXT, account_seed + space_id))
        self._ad_node = space_id + KIND_NODE
        self._ad_entry = space_id + KIND_ENTRY

    def _seal(self, plain: bytes, ad: bytes) -> bytes:
        nonce = crypto.random_bytes(crypto.NONCE_LEN)
        return bytes([CACHE_ROW_VERSION]) + nonce + self._aead.encrypt(nonce, plain, ad)

    def _open(self, row: bytes, ad: bytes) -> bytes:
        if len(row) < 1 + crypto.NONCE_LEN + crypto.TAG_LEN or row[0] != CACHE_ROW_VERSION:
            raise DecodeError("cached tree row has an unknown layout")
        try:
            return self._aead.decrypt(row[1:13], row[13:], ad)
        except IntegrityError:
            raise DecodeError("cached tree row does not authenticate") from None

    def encode_node(self, node: tree.Node) -> bytes:
        return self._seal(_encoder.encode(node), self._ad_node)

    def encode_entry(self, entry: tree.Entry) -> bytes:
        return self._seal(_encoder.encode(entry), self._ad_entry)

    def decode_tree(self, node_rows: list[bytes], entry_rows: list[bytes]) -> tree.TreeState:
        try:
            nodes = {}
            for row in node_rows:
                n = _node_decoder.decode(self._open(row, self._ad_node))
                nodes[n.id] = n
            entries = {}
            for row in entry_rows:
                e = _entry_decoder.decode(self._open(row, self._ad_entry))
                entries[e.id] = e
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise DecodeError(f"cached tree row: {err}") from None
        return tree.TreeState.from_parts(nodes, entries, adopt=True)
