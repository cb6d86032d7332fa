"""The BLAKE3 tree helper (core/bao.py): C extension and pure Python reference against the official bao and BLAKE3
vectors (1 KiB granularity), against each other (hypothesis), and our own 16 KiB-group vectors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import bao, crypto

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
BAO = json.loads((VECTORS_DIR / "bao_test_vectors.json").read_text())
BLAKE3 = json.loads((VECTORS_DIR / "blake3_test_vectors.json").read_text())
OURS = VECTORS_DIR / "bao_groups.json"

assert bao.NATIVE is not None, "the C extension anysyncfs._bao_native is not built (pip install -e . builds it)"
BACKENDS = [bao.NATIVE, bao.PYTHON]
IDS = ["native", "python"]


def bao_input(n: int) -> bytes:
    """The bao vectors' input: 4-byte little-endian integers counting up from 1, cut to n bytes."""
    return b"".join(i.to_bytes(4, "little") for i in range(1, n // 4 + 2))[:n]


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_production_uses_the_c_extension() -> None:
    assert bao.DEFAULT is bao.NATIVE


# ------------------------------------------------------------------------------------------ official vectors
@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("case", BLAKE3["cases"], ids=lambda c: str(c["input_len"]))
def test_blake3_vectors(backend: bao.Backend, case: dict) -> None:
    n = int(case["input_len"])
    data = bytes(i % 251 for i in range(n))
    assert bao.root_hash(data, backend=backend).hex() == case["hash"][:64]
    root, _ = bao.outboard_nodes(data, backend=backend)
    assert root.hex() == case["hash"][:64]


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_bao_hash_and_outboard_vectors(backend: bao.Backend) -> None:
    for case in BAO["hash"]:
        assert bao.root_hash(bao_input(case["input_len"]), backend=backend).hex() == case["bao_hash"]
    for case in BAO["outboard"]:
        data = bao_input(case["input_len"])
        root = bytes.fromhex(case["bao_hash"])
        ob = bao.outboard(data, 1024, backend=backend)
        assert len(ob) == case["output_len"] and crypto.blake3(ob).hex() == case["encoded_blake3"]
        bao.verify_outboard(root, len(data), ob[8:], 1024, backend=backend)
        bao.verify_blob(root, ob[8:], data, 1024, backend=backend)
        for at in case["outboard_corruptions"]:  # the length prefix or a parent node
            bad = flip(ob, at)
            with pytest.raises(bao.BaoError):
                if int.from_bytes(bad[:8], "little") != len(data):
                    raise bao.WrongLength("the outboard is for another length")  # what a reader of a file sees
                bao.verify_blob(root, bad[8:], data, 1024, backend=backend)
            if at >= 8:  # a damaged node is also found without the data
                with pytest.raises(bao.WrongProof):
                    bao.verify_outboard(root, len(data), bad[8:], 1024, backend=backend)
        for at in case["input_corruptions"]:  # the data checked against a good outboard
            with pytest.raises(bao.WrongGroup):
                bao.verify_blob(root, ob[8:], flip(data, at), 1024, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_bao_encode_vectors_decode_and_corruptions(backend: bao.Backend) -> None:
    for case in BAO["encode"]:
        data = bao_input(case["input_len"])
        root = bytes.fromhex(case["bao_hash"])
        _, nodes = bao.outboard_nodes(data, 1024, backend=backend)
        everything = bao.wanted(len(data), [(0, len(data))], strict=False)
        encoded = bao.encode_slice(lambda o, n: data[o : o + n], nodes, len(data), everything, 1024)
        assert len(encoded) == case["output_len"] and crypto.blake3(encoded).hex() == case["encoded_blake3"]
        opts = {"group_len": 1024, "strict": False, "backend": backend}
        assert bao.decode_slice(root, encoded, [(0, len(data))], **opts) == data
        # Fed one byte at a time, it yields the same verified groups (incremental verification).
        decoder = bao.SliceDecoder(root, [(0, len(data))], **opts)
        pieces = [p for i in range(len(encoded)) for p in decoder.feed(encoded[i : i + 1])]
        decoder.finish()
        assert bao.extract([p for p in pieces if isinstance(p, bao.VerifiedGroup)], [(0, len(data))]) == data
        for at in case["corruptions"]:
            with pytest.raises(bao.BaoError):
                bao.decode_slice(root, flip(encoded, at), [(0, len(data))], **opts)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_bao_seek_and_slice_vectors(backend: bao.Backend) -> None:
    for case in BAO["seek"]:  # every seek offset decodes to the bytes from there (bao: past the end → nothing)
        data = bao_input(case["input_len"])
        root, nodes = bao.outboard_nodes(data, 1024, backend=backend)
        for offset in case["seek_offsets"]:
            want = bao.wanted(len(data), [(offset, len(data))], strict=False, include_last=False)
            sl = bao.encode_slice(lambda o, n: data[o : o + n], nodes, len(data), want, 1024)
            decoder = bao.SliceDecoder(root, [(offset, len(data))], group_len=1024, strict=False,
                                       include_last=False, backend=backend)
            groups = [g for g in decoder.feed(sl) if isinstance(g, bao.VerifiedGroup)]
            decoder.finish()
            assert bao.extract(groups, [(offset, len(data))]) == data[offset:]
    for case in BAO["slice"]:
        data = bao_input(case["input_len"])
        root = bytes.fromhex(case["bao_hash"])
        _, nodes = bao.outboard_nodes(data, 1024, backend=backend)
        for s in case["slices"]:
            ranges = [(s["start"], s["len"])]
            want = bao.wanted(len(data), ranges, strict=False, include_last=False)
            sl = bao.encode_slice(lambda o, n: data[o : o + n], nodes, len(data), want, 1024)
            assert len(sl) == s["output_len"] and crypto.blake3(sl).hex() == s["output_blake3"]
            opts = {"group_len": 1024, "strict": False, "include_last": False, "backend": backend}
            decoder = bao.SliceDecoder(root, ranges, **opts)
            groups = [g for g in decoder.feed(sl) if isinstance(g, bao.VerifiedGroup)]
            decoder.finish()
            assert bao.extract(groups, [(s["start"], s["start"] + s["len"])]) == data[s["start"] : s["start"] + s["len"]]
            for at in s["corruptions"]:
                with pytest.raises(bao.BaoError):
                    d = bao.SliceDecoder(root, ranges, **opts)
                    d.feed(flip(sl, at))
                    d.finish()


# ------------------------------------------------------------------------------------------ C against Python
@settings(max_examples=40)
@given(data=st.binary(min_size=0, max_size=5000), counter=st.integers(0, 2**40), root=st.booleans())
def test_subtree_cv_c_equals_python(data: bytes, counter: int, root: bool) -> None:
    # Any subtree at any chunk offset (the counter need not be aligned for the function itself).
    assert bao.NATIVE.subtree_cv(data, counter, root) == bao.PYTHON.subtree_cv(data, counter, root)


@settings(max_examples=40)
@given(left=st.binary(min_size=32, max_size=32), right=st.binary(min_size=32, max_size=32), root=st.booleans())
def test_parent_cv_c_equals_python(left: bytes, right: bytes, root: bool) -> None:
    assert bao.NATIVE.parent_cv(left, right, root) == bao.PYTHON.parent_cv(left, right, root)


@settings(max_examples=15)
@given(length=st.integers(0, 70_000), seed=st.integers(0, 255), group_log=st.sampled_from([10, 12, 14]))
def test_outboard_c_equals_python(length: int, seed: int, group_log: int) -> None:
    data = bytes((i * 7 + seed) & 0xFF for i in range(length))
    native = bao.outboard(data, 1 << group_log, backend=bao.NATIVE)
    assert native == bao.outboard(data, 1 << group_log, backend=bao.PYTHON)
    assert bao.outboard_nodes(data, 1 << group_log)[0] == crypto.blake3(data)


@settings(max_examples=30)
@given(length=st.integers(1, 300_000), ranges=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1,
                                                       max_size=4))
def test_slices_of_any_ranges_round_trip_at_16k(length: int, ranges: list[tuple[float, float]]) -> None:
    data = os.urandom(length)
    root, nodes = bao.outboard_nodes(data)
    asked = []
    for a, b in ranges:
        offset = min(int(a * length), length - 1)
        asked.append((offset, max(1, int(b * (length - offset)))))
    want = bao.wanted(length, asked)
    sl = bao.encode_slice(lambda o, n: data[o : o + n], nodes, length, want)
    decoder = bao.SliceDecoder(root, asked, expected_length=length)
    got = decoder.feed(sl)
    decoder.finish()
    groups = [g for g in got if isinstance(g, bao.VerifiedGroup)]
    assert [g.offset // bao.GROUP_LEN for g in groups] == bao.groups_of(want)
    for offset, size in asked:
        assert bao.extract(groups, [(offset, offset + size)]) == data[offset : offset + size]
    # The proof nodes a slice carries are those of the outboard, at their pre-order index.
    for node in (x for x in got if isinstance(x, bao.VerifiedNode)):
        assert nodes[node.index * 64 : node.index * 64 + 64] == node.node


def test_group_cvs_from_a_trusted_outboard() -> None:
    data = os.urandom(5 * bao.GROUP_LEN + 77)
    root, nodes = bao.outboard_nodes(data)
    cvs = bao.group_cvs(root, len(data), nodes)
    assert len(cvs) == 6
    for i, cv in enumerate(cvs):
        group = data[i * bao.GROUP_LEN : (i + 1) * bao.GROUP_LEN]
        assert bao.verify_group(cv, i, group, is_root=False)
        assert not bao.verify_group(cv, i, flip(group, 0), is_root=False)
    small = b"x" * 100
    assert bao.group_cvs(crypto.blake3(small), 100, b"") == [crypto.blake3(small)]
    assert bao.verify_group(crypto.blake3(small), 0, small, is_root=True)


# ------------------------------------------------------------------------------------------ bad slices
def _slice(length: int = 4 * bao.GROUP_LEN + 500, ranges: list[tuple[int, int]] | None = None):
    data = os.urandom(length)
    root, nodes = bao.outboard_nodes(data)
    ranges = ranges or [(bao.GROUP_LEN + 10, 100)]
    sl = bao.encode_slice(lambda o, n: data[o : o + n], nodes, length, bao.wanted(length, ranges))
    return data, root, ranges, sl


def test_a_wrong_group_is_caught_before_any_byte_of_it_is_handed_out() -> None:
    data, root, ranges, sl = _slice()
    # Layout: prefix, root node, left node, group 0? no: group 1 is wanted; find its bytes and damage one.
    at = sl.index(data[bao.GROUP_LEN : bao.GROUP_LEN + 64])
    decoder = bao.SliceDecoder(root, ranges, expected_length=len(data))
    handed = decoder.feed(sl[:at])  # nodes so far verify
    assert all(isinstance(x, bao.VerifiedNode) for x in handed)
    with pytest.raises(bao.WrongGroup):
        decoder.feed(flip(sl, at + 5)[at:])
    with pytest.raises(bao.BaoError):
        decoder.feed(b"")


def test_a_wrong_proof_node_a_wrong_length_truncation_and_trailing_bytes() -> None:
    data, root, ranges, sl = _slice()
    with pytest.raises(bao.WrongProof):
        bao.SliceDecoder(root, ranges).feed(flip(sl, 8 + 40))
    with pytest.raises(bao.WrongLength):
        bao.SliceDecoder(root, ranges, expected_length=len(data) + 1).feed(sl)
    lying = (len(data) + bao.GROUP_LEN).to_bytes(8, "little") + sl[8:]
    with pytest.raises(bao.BaoError):  # a length the tree does not have: the root node no longer matches
        bao.SliceDecoder(root, ranges).feed(lying)
    with pytest.raises(bao.WrongLength):
        bao.SliceDecoder(root, ranges, max_length=1000).feed(sl)
    decoder = bao.SliceDecoder(root, ranges)
    decoder.feed(sl[:-1])
    with pytest.raises(bao.Truncated):
        decoder.finish()
    with pytest.raises(bao.Truncated):
        bao.SliceDecoder(root, ranges).feed(sl + b"\0")
    with pytest.raises(bao.RangeOutside):
        bao.SliceDecoder(root, [(len(data), 1)]).feed(sl[:8])
    assert bao.wanted(len(data), [(len(data) - 10, 11)]).intervals[0] == (len(data) - 10, len(data))  # cut
    with pytest.raises(bao.RangeOutside):
        bao.wanted(100, [(5, 0)])


# ------------------------------------------------------------------------------------------ our 16 KiB vectors
def _our_vectors() -> dict:
    cases = []
    for length, slices in ((0, [(0, 1)]), (1, [(0, 1)]), (16384, [(0, 16384)]), (16385, [(16384, 1), (0, 1)]),
                           (50000, [(20000, 4096)]), (300000, [(100000, 4096), (250000, 10)])):
        data = bao_input(length)
        root, nodes = bao.outboard_nodes(data)
        ob = bao.outboard(data)
        out = {"input_len": length, "root": root.hex(), "outboard_len": len(ob), "outboard_blake3":
               crypto.blake3(ob).hex(), "slices": []}
        if len(ob) <= 300:
            out["outboard_hex"] = ob.hex()
        for offset, size in slices:
            if length == 0:
                want = bao.wanted(0, [], strict=False)
            else:
                want = bao.wanted(length, [(offset, size)])
            sl = bao.encode_slice(lambda o, n: data[o : o + n], nodes, length, want)
            item = {"start": offset, "len": size, "groups": bao.groups_of(want), "slice_len": len(sl),
                    "slice_blake3": crypto.blake3(sl).hex()}
            if len(sl) <= 200:
                item["slice_hex"] = sl.hex()
            out["slices"].append(item)
        cases.append(out)
    return {"_comment": "16 KiB-group outboards and slices (docs/protocol.md 50.8). Input as in "
                        "bao_test_vectors.json: 4-byte LE integers from 1. Slices always cover the last group.",
            "group_len": bao.GROUP_LEN, "cases": cases}


def test_our_16k_group_vectors() -> None:
    computed = _our_vectors()
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        OURS.write_text(json.dumps(computed, indent=2) + "\n")
        return
    assert json.loads(OURS.read_text()) == computed
    # The Python reference gives the same outboards.
    for case in computed["cases"]:
        if case["input_len"] <= 50000:
            data = bao_input(case["input_len"])
            assert crypto.blake3(bao.outboard(data, backend=bao.PYTHON)).hex() == case["outboard_blake3"]


def test_outboard_is_at_most_1_256_of_the_blob() -> None:
    for length in (1, 16384, 16385, 16384 * 2 + 1, 1 << 20, (16 << 20) + (512 << 10) + 23):
        assert bao.parent_count(length) * bao.NODE_LEN <= length / 256
