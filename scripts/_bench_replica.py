"""bench_core sections that need the replica layer: fold of N changes, reopening a store of N files, RSS.

Changes are built directly with the core (one file per change, 100 directories), so the fold measures exactly
"verify + decrypt + decode + apply" per change; the store is then filled in one transaction and the cached tree
persisted, and a fresh process measures the reopen (time and peak RSS) of that store.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anysyncfs.core import change, keys, ops, tree
from anysyncfs.core.dag import Dag
from anysyncfs.replica.home import Home
from anysyncfs.replica.replica import create_space, open_replica
from anysyncfs.store import schema

PASSPHRASE = b"bench"
DIRS = 100


def build_space(root: Path, n: int) -> tuple[Home, bytes, list[change.Change]]:
    """A home with one space and n signed changes (not yet stored): 100 directories, then one file each."""
    home = Home(root, scrypt_log2_n=4)
    unlocked = home.create_identity(keys.generate_phrase(), "bench", PASSPHRASE)
    replica = create_space(unlocked, "bench")
    epoch, key = replica.current_epoch_key()
    author, device = unlocked.identity.account, unlocked.identity.device_id
    head, lamport, out = (), 0, []
    dirs = [os.urandom(16) for _ in range(DIRS)]
    now = time.time_ns()
    for i in range(n):
        if i < DIRS:
            op: list[ops.Op] = [ops.Create(dirs[i], os.urandom(16), bytes(16), b"d%03d" % i, ops.KIND_DIR,
                                           0o755, 0, 0, now)]
        else:
            node = os.urandom(16)
            op = [ops.Create(node, os.urandom(16), dirs[i % DIRS], b"file-%07d.txt" % i, ops.KIND_FILE, 0o644,
                             0, 0, now),
                  ops.Write(node, ops.Content(size=12, inline=b"hello %06d" % (i % 10**6)), now)]
        lamport += 1
        c = change.make_change(author, device, replica.space_id, head, lamport, now // 1000 + i,
                               replica.acl.head, epoch, key, ops.encode_payload(op))
        out.append(c)
        head = (c.id,)
    return home, replica.space_id, out


def section_fold(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        home, space_id, changes = build_space(Path(tmp) / "home", n)
        print(f"  built {n:,} signed changes in {time.perf_counter() - t0:.1f} s")
        raws = [(c.id, c.raw) for c in changes]
        unlocked = home.unlock(PASSPHRASE)
        key = unlocked.epoch_keys(space_id)[0]

        start = time.perf_counter()
        dag = Dag()
        state = tree.TreeState()
        for cid, raw in raws:
            c = change.parse_change(raw, cid)  # decode + ID + signature
            dag.add(c.id, c.header.parents, c.header.lamport)
            payload = ops.decode_payload(change.open_payload(c, key))
            info = tree.ChangeInfo(c.id, c.header.lamport, c.header.author, c.header.wall_us)
            state.apply(info, payload, dag.is_ancestor)
        fold_s = time.perf_counter() - start
        files = sum(1 for nd in state.nodes.values() if nd.kind == ops.KIND_FILE)
        print(f"  verify + decrypt + fold of {n:,} changes: {fold_s:.2f} s ({n / fold_s:,.0f} changes/s), "
              f"{files:,} files")

        store = home.store()
        start = time.perf_counter()
        with store.transaction():
            for c in changes:
                h = c.header
                store.add_change(space_id, c.id, c.raw, h.parents, h.lamport, h.author, h.wall_us,
                                 schema.CHANGE_ACCEPTED)
            store.set_heads(space_id, (changes[-1].id,))
        replica = open_replica(unlocked, "bench")  # stale cache stamp -> refold + persist
        print(f"  store {n:,} changes + refold + persist the tree: {time.perf_counter() - start:.1f} s")
        assert len(replica.tree.nodes) == len(state.nodes)
        home.close()
        probe = subprocess.run(
            [sys.executable, __file__, "reopen", str(Path(tmp) / "home")], capture_output=True, text=True,
            check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        print(probe.stdout.rstrip())


def peak_rss_kib() -> int:
    """Peak resident set of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reopen_probe(home_dir: str) -> None:
    """Run in a fresh process: open the store and the replica, report time and peak RSS."""
    base = peak_rss_kib()
    start = time.perf_counter()
    home = Home(Path(home_dir), scrypt_log2_n=4)
    unlocked = home.unlock(PASSPHRASE)
    t_unlock = time.perf_counter() - start
    replica = open_replica(unlocked, "bench")
    total = time.perf_counter() - start
    rss = peak_rss_kib()
    nodes = len(replica.tree.nodes)
    print(f"  reopen of a store with {nodes:,} nodes: {total:.2f} s (keyring unlock {t_unlock:.2f} s), "
          f"peak RSS {rss / 1024:.0f} MiB (interpreter + imports before opening: {base / 1024:.0f} MiB)")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "reopen":
    reopen_probe(sys.argv[2])
