"""Store.tree_rows reads one space's cached tree rows, whichever way it reads them (the table in order when the
space is most of it, the indexes when another space is bigger), inside and outside a transaction."""

from __future__ import annotations

from pathlib import Path

from anysyncfs.store.db import Store


def _space(store: Store, space_id: bytes, count: int, tag: bytes) -> None:
    store.add_space(space_id, space_id.hex()[:8], b"header")
    nodes = [(bytes([i % 256, i // 256]) + tag * 14, 1, i, None, tag + b"node%d" % i) for i in range(count)]
    entries = [(bytes([i % 256, i // 256]) + tag * 14, b"\0" * 16, n[0], True, tag + b"entry%d" % i)
               for i, n in enumerate(nodes)]
    store.upsert_nodes(space_id, nodes)
    store.upsert_entries(space_id, entries)


def _expected(count: int, tag: bytes) -> tuple[set[tuple[bytes, bytes]], set[tuple[bytes, bytes]]]:
    ids = [bytes([i % 256, i // 256]) + tag * 14 for i in range(count)]
    return ({(ids[i], tag + b"node%d" % i) for i in range(count)},
            {(ids[i], tag + b"entry%d" % i) for i in range(count)})


def test_each_space_gets_only_its_rows_by_scan_or_by_index(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store.db"))
    try:
        big, small = b"B" * 32, b"S" * 32
        _space(store, big, 300, b"b")
        _space(store, small, 20, b"s")
        assert store._holds_most_rows(big) and not store._holds_most_rows(small)  # both read paths are taken
        for space_id, count, tag in ((big, 300, b"b"), (small, 20, b"s")):
            want_nodes, want_entries = _expected(count, tag)
            for in_transaction in (False, True):
                if in_transaction:
                    with store.transaction():
                        nodes, entries = store.tree_rows(space_id)
                else:
                    nodes, entries = store.tree_rows(space_id)
                assert {(node, state) for _inode, node, state in nodes} == want_nodes
                assert set(entries) == want_entries
                assert all(type(state) is bytes for _i, _n, state in nodes)
                assert len({inode for inode, _n, _s in nodes}) == count
    finally:
        store.close()
