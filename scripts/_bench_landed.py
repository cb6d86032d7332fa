"""What a mount pays per landed change to know what to invalidate in the kernel (issue 11 item 4).

Builds a space of ``--files`` empty files (100 to a folder) on device A, adopts it on device B (a unit-level
``Vfs`` over B's replica, no FUSE), then lands ``--rounds`` single-rename changes from A on B one by one and times,
per landed change:

* ``ingest``: ``Replica.ingest_batch`` of the one change, with the fold noting what it takes away (``landed`` set,
  as in a mount) and without (``landed`` None, as before this change), alternately;
* ``new``: ``Vfs.take_landed`` (the changed set from what the fold noted);
* ``old``: the scan the mount made before (every node's version compared with a dict of the versions it last saw,
  the code of ``Vfs.changed_inodes`` as it was at commit 105bdcb).

Run from a directory that is not a source tree, with PYTHONPATH pointing at the tree to measure::

    PYTHONPATH=/path/to/tree python /path/to/tree/scripts/_bench_landed.py --files 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from anysyncfs.core import keys, ops
from anysyncfs.core.ids import ROOT_NODE
from anysyncfs.core.tree import TreeDelta
from anysyncfs.fs.batch import split_payloads
from anysyncfs.fs.vfs import Vfs
from anysyncfs.replica import Replica, adopt_space, create_space
from anysyncfs.replica.home import Home, Unlocked

PASSPHRASE = b"bench passphrase"
PER_DIR = 100


def home(root: Path, name: str, phrase: str) -> Unlocked:
    h = Home(root / name, scrypt_log2_n=10)
    return h.create_identity(phrase, name, PASSPHRASE)


def old_scan(replica: Replica, versions: dict[bytes, bytes], ino_of: dict[bytes, int]) -> set[int]:
    """Vfs.changed_inodes before this change: every node of the tree, one dict lookup each."""
    out: set[int] = set()
    for node_id, node in replica.tree.nodes.items():
        if versions.get(node_id) != node.version:
            versions[node_id] = node.version
            inode = ino_of.get(node_id)
            if inode is not None:
                out.add(inode)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    phrase = keys.generate_phrase()
    with tempfile.TemporaryDirectory(prefix="bench-landed-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        a = create_space(home(root, "a", phrase), "big")
        op_list: list[ops.Op] = []
        entries: list[tuple[bytes, bytes]] = []  # (entry id, parent) of every file
        parent = ROOT_NODE
        for i in range(args.files):
            if i % PER_DIR == 0:
                parent = os.urandom(16)
                op_list.append(ops.Create(parent, os.urandom(16), ROOT_NODE, b"d%05d" % (i // PER_DIR),
                                          ops.KIND_DIR, 0o755, 0, 0, 1, b""))  # fmt: skip
            entry = os.urandom(16)
            op_list.append(ops.Create(os.urandom(16), entry, parent, b"f%05d" % i, ops.KIND_FILE, 0o644, 0, 0, 1, b""))
            entries.append((entry, parent))
        for part in split_payloads(op_list):
            a.commit(part)
        b = adopt_space(home(root, "b", phrase), "big", a.header_raw, [raw for _rid, raw in a.acl_raws()])
        b.ingest_batch(a.get_changes(a.change_ids(), 1 << 30))
        vfs = Vfs(b, staging_dir=root / "staging")
        vfs.take_landed()
        print(f"space of {args.files} files: {len(b.tree.nodes)} nodes on B, built in {time.perf_counter() - t0:.1f} s")
        # The kernel has looked at everything (every node numbered), the worst case for the old scan's set.
        vfs.preload_inodes(list(b.tree.nodes))
        ino_of = dict(vfs._ino_of)  # noqa: SLF001 - a bench script
        versions = {nid: n.version for nid, n in b.tree.nodes.items()}

        timings: dict[str, list[float]] = {"ingest noted": [], "ingest plain": [], "new": [], "old": []}
        for r in range(args.rounds):
            entry, parent = entries[r * 997 % len(entries)]
            change = a.commit([ops.Rename(entry, parent, b"renamed-%d" % r)])
            raws = a.get_changes([change.id], 1 << 20)
            noted = r % 2 == 0  # alternate: the fold noting what it takes away (a mount now) or not (before)
            b.landed = TreeDelta() if noted else None
            t = time.perf_counter()
            b.ingest_batch(raws)
            timings["ingest noted" if noted else "ingest plain"].append(time.perf_counter() - t)
            if noted:
                t = time.perf_counter()
                inodes, names = vfs.take_landed()
                timings["new"].append(time.perf_counter() - t)
            t = time.perf_counter()
            scanned = old_scan(b, versions, ino_of)
            timings["old"].append(time.perf_counter() - t)
            if noted:  # the same inodes as the scan, and the one name renamed away
                assert set(inodes) == scanned and len(names) == 1, (inodes, scanned, names)
        vfs.close()
        for key, values in timings.items():
            print(f"{key:>13}: median {statistics.median(values) * 1e3:8.3f} ms  min {min(values) * 1e3:8.3f} ms"
                  f"  max {max(values) * 1e3:8.3f} ms  (n={len(values)})")


if __name__ == "__main__":
    main()
