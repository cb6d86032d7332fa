"""Test vectors (issue 16 item 8) for five formats that had none: the session transcript and Auth signatures
(protocol.md 70.5), peer addresses (70.6), sealed cached tree rows (60.3), the staging file layout (60.4) and the
node identity file (70.8).

Each vector is computed from fixed inputs by the code the program runs; ``ANYSYNCFS_WRITE_VECTORS=1`` rewrites
the JSON file instead of comparing (only after a deliberate format change). Every test also recomputes what it
can from the documented layout with the primitives alone, so the document, the JSON and the code agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from anysyncfs.core import crypto, ids, keys, ops
from anysyncfs.core.address import PeerAddress, parse_address
from anysyncfs.core.tree_state import Entry, Node
from anysyncfs.errors import AuthenticationFailed, UsageError
from anysyncfs.protocol import messages as m
from anysyncfs.protocol.frames import FrameType, encode_frame
from anysyncfs.protocol.session import AGENT, Established, Role, Session, auth_message, transcript

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def check_vector(name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    computed = compute()
    path = VECTORS / name
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        path.write_text(json.dumps(computed, indent=2) + "\n", encoding="utf-8")
    assert json.loads(path.read_text(encoding="utf-8")) == computed
    return computed


def seed(first: int) -> bytes:
    return bytes(range(first, first + 32))


# ---------------------------------------------------------------------------------------------- session transcript
D_ACCOUNT, D_DEVICE, L_ACCOUNT, L_DEVICE = seed(0), seed(32), seed(64), seed(96)
D_NONCE, L_NONCE = bytes([0xD1]) * 32, bytes([0x11]) * 32
D_TLS, L_TLS = b"dialler TLS certificate (DER)", b"listener TLS certificate (DER)"  # stand-ins: any bytes
CERT_TIME_US = 1_780_000_000_000_000


def _parties() -> tuple[tuple[crypto.SigningKey, bytes], tuple[crypto.SigningKey, bytes]]:
    out = []
    for account_seed, device_seed, name in ((D_ACCOUNT, D_DEVICE, "dialler"), (L_ACCOUNT, L_DEVICE, "listener")):
        device = crypto.SigningKey(device_seed)
        out.append((device, keys.issue_device_cert(crypto.SigningKey(account_seed), device.public, name,
                                                   CERT_TIME_US)))
    return out[0], out[1]


def _session_vector() -> dict[str, Any]:
    (d_dev, d_cert), (l_dev, l_cert) = _parties()
    v = m.PROTOCOL_VERSION
    d_hello = m.encode(m.Hello(v, v, D_NONCE, D_TLS, d_cert, AGENT))
    l_hello = m.encode(m.Hello(v, v, L_NONCE, L_TLS, l_cert, AGENT))
    t = transcript(v, d_hello, l_hello)
    d_sig = d_dev.sign(auth_message(Role.DIALLER, t))
    l_sig = l_dev.sign(auth_message(Role.LISTENER, t))
    return {
        "description": "session handshake (docs/protocol.md 70.5): both Hello bodies, the transcript T and both "
                       "Auth messages; Ed25519 is deterministic, so the signatures are fixed too. The TLS "
                       "certificates are stand-in bytes (T covers the Hello bodies as sent).",
        "inputs": {
            "version": v, "agent": AGENT, "cert_time_us": CERT_TIME_US,
            "dialler": {"account_seed_hex": D_ACCOUNT.hex(), "device_seed_hex": D_DEVICE.hex(), "name": "dialler",
                        "nonce_hex": D_NONCE.hex(), "tls_cert_hex": D_TLS.hex()},
            "listener": {"account_seed_hex": L_ACCOUNT.hex(), "device_seed_hex": L_DEVICE.hex(), "name": "listener",
                         "nonce_hex": L_NONCE.hex(), "tls_cert_hex": L_TLS.hex()},
        },
        "expected": {
            "dialler_device_cert_hex": d_cert.hex(),
            "listener_device_cert_hex": l_cert.hex(),
            "dialler_hello_body_hex": d_hello.hex(),
            "listener_hello_body_hex": l_hello.hex(),
            "transcript_hex": t.hex(),
            "dialler_auth_message_hex": auth_message(Role.DIALLER, t).hex(),
            "dialler_auth_body_hex": m.encode(m.Auth(v, d_sig)).hex(),
            "listener_auth_body_hex": m.encode(m.Auth(v, l_sig)).hex(),
        },
    }


def test_session_transcript_vector() -> None:
    vec = check_vector("session_transcript.json", _session_vector)
    exp = vec["expected"]
    d_hello, l_hello = bytes.fromhex(exp["dialler_hello_body_hex"]), bytes.fromhex(exp["listener_hello_body_hex"])
    # T from the text: BLAKE3("anysyncfs session transcript v1\0" || u16 version || BLAKE3(dialler Hello) || ...)
    t = crypto.blake3(b"anysyncfs session transcript v1\x00" + (1).to_bytes(2, "big") + crypto.blake3(d_hello)
                      + crypto.blake3(l_hello))
    assert t.hex() == exp["transcript_hex"]
    (d_dev, _), (l_dev, _) = _parties()
    for role_byte, device, body in ((1, d_dev, exp["dialler_auth_body_hex"]), (2, l_dev, exp["listener_auth_body_hex"])):
        auth = m.decode(bytes.fromhex(body), m.Auth)
        crypto.verify(device.public, b"anysyncfs session auth v1\x00" + bytes([role_byte]) + t, auth.signature)
    # Two real sessions with the vector's nonces send exactly these frames and establish.
    issued = {D_TLS: d_dev.public, L_TLS: l_dev.public}

    def verify_cert(der: bytes, device: bytes) -> None:
        if issued.get(der) != device:
            raise AuthenticationFailed("certificate not issued by that device")

    (_, d_cert), (_, l_cert) = _parties()
    dialler = Session(Role.DIALLER, d_dev, d_cert, D_TLS, verify_cert, pinned_device=l_dev.public,
                      observed_peer_cert=L_TLS, nonce=D_NONCE)
    listener = Session(Role.LISTENER, l_dev, l_cert, L_TLS, verify_cert, nonce=L_NONCE)
    assert dialler.data_to_send() == encode_frame(FrameType.HELLO, d_hello)
    assert listener.data_to_send() == encode_frame(FrameType.HELLO, l_hello)
    dialler.receive_data(encode_frame(FrameType.HELLO, l_hello))
    listener.receive_data(encode_frame(FrameType.HELLO, d_hello))
    assert dialler.next_event() is None and listener.next_event() is None
    d_auth, l_auth = dialler.data_to_send(), listener.data_to_send()
    assert d_auth == encode_frame(FrameType.AUTH, bytes.fromhex(exp["dialler_auth_body_hex"]))
    assert l_auth == encode_frame(FrameType.AUTH, bytes.fromhex(exp["listener_auth_body_hex"]))
    dialler.receive_data(l_auth)
    listener.receive_data(d_auth)
    assert isinstance(dialler.next_event(), Established) and isinstance(listener.next_event(), Established)


# ---------------------------------------------------------------------------------------------- peer addresses
ADDRESS_KEY = seed(128)


def _address_vector() -> dict[str, Any]:
    dv = ids.device_text(ADDRESS_KEY)
    good = [f"anysync://{dv}@127.0.0.1:7733", f"anysync://{dv}@node.example.org:443",
            f"anysync://{dv}@[2001:db8::1]:7733", f"  anysync://{dv}@localhost:1\n"]
    bad = ["http://x@127.0.0.1:7733", f"anysync://{dv}127.0.0.1:7733", f"anysync://{dv}@127.0.0.1",
           f"anysync://{dv}@127.0.0.1:0", f"anysync://{dv}@127.0.0.1:65536", f"anysync://{dv}@[::1:7733",
           f"anysync://{dv}@[not-ipv6]:7733", f"anysync://{dv}@bad_host:7733", f"anysync://{dv}@h:" + "9" * 300,
           f"anysync://{dv[:-1]}@127.0.0.1:7733"]
    rows = []
    for text in good:
        a = parse_address(text)
        rows.append({"text": text, "device_hex": a.device.hex(), "host": a.host, "port": a.port, "canonical": str(a)})
    return {
        "description": "peer addresses anysync://<device key text>@<host>:<port> (docs/protocol.md 70.6): parsed "
                       "fields and canonical text of valid ones; texts that must be refused",
        "inputs": {"device_key_hex": ADDRESS_KEY.hex()},
        "expected": {"device_text": dv, "valid": rows, "invalid": bad},
    }


def test_peer_address_vector() -> None:
    vec = check_vector("peer_address.json", _address_vector)
    for row in vec["expected"]["valid"]:
        a = parse_address(row["text"])
        assert a == PeerAddress(bytes.fromhex(row["device_hex"]), row["host"], row["port"])
        assert str(a) == row["canonical"] and parse_address(row["canonical"]) == a
    for text in vec["expected"]["invalid"]:
        with pytest.raises(UsageError):
            parse_address(text)


# ---------------------------------------------------------------------------------------------- cached tree rows
ROW_SEED, ROW_SPACE = seed(0), bytes(range(100, 132))
ROW_NONCES = (bytes([0xA0]) * 12, bytes([0xB0]) * 12)


def _tree_rows() -> tuple[Node, Entry]:
    node = Node(bytes.fromhex("11" * 16), ops.KIND_FILE, 0o644, 1000, 1000, ops.Content(size=5, inline=b"hello"),
                b"", 1_780_000_000_000_000_001, 1_780_000_000_000_000_002, 1_780_000_000_000_000_003,
                {b"user.k": b"v"}, bytes([0xCC]) * 32, bytes([0xDD]) * 32, bytes([0xCC]) * 32, 1_780_000_000_000_000,
                bytes([0xDD]) * 32)
    entry = Entry(bytes.fromhex("22" * 16), bytes(16), b"hello.txt", node.id, True, (3, bytes([0xCC]) * 32, 1),
                  1_780_000_000_000_000, bytes([0xDD]) * 32, None)
    return node, entry


def _tree_row_vector() -> dict[str, Any]:
    node, entry = _tree_rows()
    key = crypto.derive_key("anysyncfs 2026 local tree cache v1", ROW_SEED + ROW_SPACE)
    aead = crypto.Aead(key)
    out: dict[str, Any] = {"cache_key_hex": key.hex()}
    for (kind, record), nonce in zip(((b"N", node), (b"E", entry)), ROW_NONCES, strict=True):
        plain = msgspec.msgpack.encode(record)
        aad = ROW_SPACE + kind + record.id
        name = "node" if kind == b"N" else "entry"
        out[f"{name}_record_hex"] = plain.hex()
        out[f"{name}_aad_hex"] = aad.hex()
        out[f"{name}_row_hex"] = (b"\x02" + nonce + aead.encrypt(nonce, plain, aad)).hex()
    return {
        "description": "sealed cached tree rows (docs/protocol.md 60.3): one node row and one entry row, row version "
                       "2, with fixed nonces (the program draws a random nonce for every row it writes)",
        "inputs": {"account_seed_hex": ROW_SEED.hex(), "space_id_hex": ROW_SPACE.hex(),
                   "node_nonce_hex": ROW_NONCES[0].hex(), "entry_nonce_hex": ROW_NONCES[1].hex(),
                   "node": "file 11…11, mode 0644, uid/gid 1000, inline content b'hello', xattr user.k=v",
                   "entry": "entry 22…22: 'hello.txt' in the root (00…00) naming node 11…11, live"},
        "expected": out,
    }


def test_tree_row_vector() -> None:
    from anysyncfs.replica.treecache import TreeCodec

    vec = check_vector("tree_row.json", _tree_row_vector)
    exp = vec["expected"]
    node, entry = _tree_rows()
    codec = TreeCodec(ROW_SEED, ROW_SPACE)  # the program's codec opens the vector's rows to the same records
    state, rows = codec.decode_tree([(node.id, bytes.fromhex(exp["node_row_hex"]))],
                                    [(entry.id, bytes.fromhex(exp["entry_row_hex"]))])
    assert state.nodes[node.id] == node and state.entries[entry.id] == entry and (rows.nodes, rows.entries) == (1, 1)
    # and what it writes has the same layout (version, then a nonce, then the AEAD under the same associated data)
    fresh = codec.encode_node(node)
    aead = crypto.Aead(bytes.fromhex(exp["cache_key_hex"]))
    assert fresh[0] == 2 and aead.decrypt(fresh[1:13], fresh[13:], bytes.fromhex(exp["node_aad_hex"])) \
        == bytes.fromhex(exp["node_record_hex"])


# ---------------------------------------------------------------------------------------------- staging layout
STAGING_KEY, STAGING_NODE = seed(7), bytes.fromhex("00112233445566778899aabbccddeeff")


def _staging_layout_vector() -> dict[str, Any]:
    from anysyncfs.fs.staging import BLOCK_SIZE, BLOCKS_PER_SEGMENT, SLOT_SIZE, STAGING_SUFFIX, seal_block

    aead = crypto.Aead(STAGING_KEY)
    # write 6000 x "a" at 1000 (blocks 0, 1: counters 1, 2); write 100 x "b" at 4000 (blocks 0, 1: counters 3, 4);
    # truncate to 4000 (block 1 dropped: the file is cut to one slot); write 10 x "c" at 8192 (block 2: counter 5)
    block0 = bytes(1000) + b"a" * 3000 + b"b" * 96
    block2 = b"c" * 10 + bytes(BLOCK_SIZE - 10)
    slot0, slot2 = seal_block(aead, STAGING_NODE, 0, 3, block0), seal_block(aead, STAGING_NODE, 2, 5, block2)
    segment0 = slot0 + bytes(SLOT_SIZE) + slot2  # slot 1 is a hole: never written since the truncation
    places = []
    for index in (0, 1, BLOCKS_PER_SEGMENT - 1, BLOCKS_PER_SEGMENT, (2**63 - 1) // BLOCK_SIZE):
        segment, slot = divmod(index, BLOCKS_PER_SEGMENT)
        places.append({"block": index, "file": f"<stem>.{segment}{STAGING_SUFFIX}", "offset": slot * SLOT_SIZE})
    return {
        "description": "staging files (docs/protocol.md 60.4): where block i lives (segment file, byte offset), and "
                       "segment file 0 after the writes and the truncation listed (counters count from 1 for a "
                       "fresh key; every write reseals each block it touches under the next counter): block 0 "
                       "sealed with counter 3, slot 1 a hole (block 1 dropped by the truncation), block 2 with "
                       "counter 5",
        "inputs": {"key_hex": STAGING_KEY.hex(), "node_hex": STAGING_NODE.hex(),
                   "steps": [["write", 1000, 6000, "a"], ["write", 4000, 100, "b"], ["truncate", 4000],
                             ["write", 8192, 10, "c"]]},
        "expected": {"block_size": BLOCK_SIZE, "slot_size": SLOT_SIZE, "blocks_per_segment": BLOCKS_PER_SEGMENT,
                     "places": places, "segment_0_size": len(segment0),
                     "segment_0_blake3_hex": crypto.blake3(segment0).hex(),
                     "slot_0_head_hex": slot0[:44].hex(), "slot_2_head_hex": slot2[:44].hex(),
                     "slot_0_tag_hex": slot0[-16:].hex(), "slot_2_tag_hex": slot2[-16:].hex()},
    }


def test_staging_layout_vector(tmp_path: Path) -> None:
    from anysyncfs.fs.staging import STAGING_SUFFIX, SegmentFiles

    vec = check_vector("staging_layout.json", _staging_layout_vector)
    exp = vec["expected"]
    # from the text: block i is slot i mod 2^28 of segment file i div 2^28, at byte 4124 * (i mod 2^28)
    last = (2**28 - 1) * 4124
    assert [(p["file"], p["offset"]) for p in exp["places"]] == [
        ("<stem>.0.stage", 0), ("<stem>.0.stage", 4124), ("<stem>.0.stage", last), ("<stem>.1.stage", 0),
        (f"<stem>.{2**23 - 1}.stage", last)]
    # the mount's staging code, given the same key and starting counter, writes exactly that file
    files = SegmentFiles(tmp_path, "v", STAGING_NODE)
    files._aead, files._counter = crypto.Aead(STAGING_KEY), 0
    files.write(1000, b"a" * 6000)
    files.write(4000, b"b" * 100)
    files.truncate(4000)
    files.write(8192, b"c" * 10)
    raw = (tmp_path / f"v.0{STAGING_SUFFIX}").read_bytes()
    assert len(raw) == exp["segment_0_size"] and crypto.blake3(raw).hex() == exp["segment_0_blake3_hex"]
    # from the text: slot = nonce (96-bit counter) || AES-256-GCM(block) || tag, AAD = context || node || u64 index
    aead = crypto.Aead(STAGING_KEY)
    for index, counter in ((0, 3), (2, 5)):
        slot = raw[index * 4124: (index + 1) * 4124]
        assert slot[:12] == counter.to_bytes(12, "big")
        aad = b"anysyncfs staging block v1\x00" + STAGING_NODE + index.to_bytes(8, "big")
        assert len(aead.decrypt(slot[:12], slot[12:], aad)) == 4096
    assert raw[4124:8248] == bytes(4124)
    buf = bytearray(8202)
    files.read_into(memoryview(buf), 0)  # and reads back as the steps say (bytes past 4000 of block 0 stay)
    assert bytes(buf[:4000]) == bytes(1000) + b"a" * 3000 and bytes(buf[8192:]) == b"c" * 10
    files.close()


# ---------------------------------------------------------------------------------------------- node identity
def _node_identity_vector() -> dict[str, Any]:
    from anysyncfs.net.node import IDENTITY_VERSION, NodeIdentityFile

    account, device = crypto.SigningKey(seed(160)), crypto.SigningKey(seed(192))
    cert = keys.issue_device_cert(account, device.public, "anysyncfs node", CERT_TIME_US)
    raw = m.encode(NodeIdentityFile(IDENTITY_VERSION, account.seed, device.seed, cert, "anysyncfs node"))
    return {
        "description": "node.identity (docs/protocol.md 70.8): msgpack array [1, account seed, device seed, device "
                       "certificate, name]; the node's address names its device key",
        "inputs": {"account_seed_hex": account.seed.hex(), "device_seed_hex": device.seed.hex(),
                   "name": "anysyncfs node", "cert_time_us": CERT_TIME_US},
        "expected": {"device_cert_hex": cert.hex(), "file_hex": raw.hex(),
                     "address": str(PeerAddress(device.public, "127.0.0.1", 7733))},
    }


def test_node_identity_vector(tmp_path: Path) -> None:
    from anysyncfs.errors import KeyringCorrupt
    from anysyncfs.net.node import load_or_create_identity

    vec = check_vector("node_identity.json", _node_identity_vector)
    exp = vec["expected"]
    raw = bytes.fromhex(exp["file_hex"])
    # from the text: a msgpack array of five: fixint 1, bin8 32, bin8 32, bin (the certificate), str
    assert raw[:4] == b"\x95\x01\xc4\x20" and raw[36:38] == b"\xc4\x20"
    (tmp_path / "node.identity").write_bytes(raw)
    ident = load_or_create_identity(tmp_path)  # the node loads the vector's file as its identity
    assert str(PeerAddress(ident.device_id, "127.0.0.1", 7733)) == exp["address"]
    assert ident.device_cert.hex() == exp["device_cert_hex"]
    (tmp_path / "node.identity").write_bytes(b"\x95\x02" + raw[2:])  # an unknown version is refused
    with pytest.raises(KeyringCorrupt):
        load_or_create_identity(tmp_path)
