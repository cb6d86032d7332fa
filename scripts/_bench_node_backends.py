"""Node throughput per backend (run through ``scripts/bench_node_backends``).

Four devices (four accounts, one space each) first commit their files locally: ``--changes`` small files (one
change and one blob each) and ``--mib`` MiB more in 1 MiB files. Then, timed, all four push at once
(``SpaceSync.sync_once``: blobs, then changes) to the node, each device over its own TLS connection:

  sqlite     one ``anysyncfs node serve`` process, SQLite + blob directory (the default)
  pg-s3-1    one process on PostgreSQL 15 + S3 (juicefs gateway over a local directory)
  pg-s3-2    two processes on one database and one bucket; devices 1-2 on process 1, devices 3-4 on process 2

Reported: changes/s (changes accepted by the node over the wall time of the push) and MB/s (blob bytes, 10^6).
The devices run in this process (one trio loop), the nodes in their own processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from anysyncfs.core import keys  # noqa: E402
from anysyncfs.core.address import parse_address  # noqa: E402
from anysyncfs.net.endpoint import Endpoint  # noqa: E402
from anysyncfs.net.runner import Runner  # noqa: E402
from anysyncfs.net.sync import SpaceSync  # noqa: E402
from anysyncfs.replica import create_space  # noqa: E402
from anysyncfs.replica.files import put_file  # noqa: E402
from anysyncfs.replica.home import Home  # noqa: E402
from tests.backends.servers import PostgresServer, S3Server  # noqa: E402

DEVICES = 4


def start_node(data: Path, extra: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "anysyncfs", "node", "serve", "--listen", "127.0.0.1:0",
                             "--data", str(data), "--gc-interval", "0", *extra],
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), env=env, start_new_session=True)
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    if not line or not line[0].strip():
        proc.kill()
        raise RuntimeError(f"node did not start: {log.read_text()[-1000:]}")
    return proc, line[0].decode().strip()


def prepare_devices(root: Path, changes: int, mib: int) -> list:
    replicas = []
    for d in range(DEVICES):
        home = Home(root / f"dev{d}", scrypt_log2_n=4)
        unlocked = home.create_identity(keys.generate_phrase(), f"dev{d}", b"bench")
        replica = create_space(unlocked, "bench")
        for i in range(changes):
            put_file(replica, f"/small/{i:05}.txt", os.urandom(2000))
        for i in range(mib):
            put_file(replica, f"/big/{i:03}.bin", os.urandom(1 << 20))
        replicas.append(replica)
    return replicas


def blob_bytes(replica) -> int:
    store = replica.store
    return sum(store.blob_size(b) or 0 for b in store.pending_uploads(replica.space_id, 1_000_000))


async def push_all(replicas: list, addresses: list[str]) -> float:
    engines = []
    for d, replica in enumerate(replicas):
        addr = parse_address(addresses[d * len(addresses) // DEVICES])
        replica.store.add_peer(replica.space_id, str(addr), addr.device)
        engines.append(SpaceSync(replica, Endpoint(replica.identity), Runner()))
    reports: list = []

    async def one(engine: SpaceSync) -> None:
        reports.append(await engine.sync_once(per_peer_timeout=600))

    start = time.monotonic()
    async with trio.open_nursery() as nursery:
        for engine in engines:
            nursery.start_soon(one, engine)
    elapsed = time.monotonic() - start
    bad = [r.errors for r in reports if r.errors]
    if bad:
        raise RuntimeError(f"a push failed: {bad[0]}")
    return elapsed


def run_config(name: str, root: Path, args: argparse.Namespace, pg: PostgresServer | None,
               s3: S3Server | None) -> tuple[str, float, float, float]:
    work = root / name
    work.mkdir()
    replicas = prepare_devices(work, args.changes, args.mib)
    total_changes = sum(len(r.change_ids()) for r in replicas)
    total_bytes = sum(blob_bytes(r) for r in replicas)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    extra: list[str] = []
    processes = 1
    if name != "sqlite":
        assert pg is not None and s3 is not None
        env.update(s3.env())
        extra = ["--db", pg.new_database("bench"), "--blobs", s3.new_prefix()]
        processes = 2 if name == "pg-s3-2" else 1
    nodes = []
    try:
        for n in range(processes):
            nodes.append(start_node(work / "node", extra, env, work / f"node{n}.log"))
        elapsed = trio.run(push_all, replicas, [address for _proc, address in nodes])
    finally:
        for proc, _address in nodes:
            proc.terminate()
            proc.wait(30)
        for r in replicas:
            r.store.close() if hasattr(r.store, "close") else None
    return name, elapsed, total_changes / elapsed, total_bytes / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=300, help="small files (one change each) per device")
    ap.add_argument("--mib", type=int, default=8, help="MiB of 1 MiB files per device")
    ap.add_argument("--only", nargs="*", default=["sqlite", "pg-s3-1", "pg-s3-2"])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anysyncfs-bench-nodes-"))
    pg = s3 = None
    rows = []
    try:
        if any(c != "sqlite" for c in args.only):
            pg = PostgresServer()
            s3 = S3Server(root / "s3")
        for name in args.only:
            rows.append(run_config(name, root, args, pg, s3))
            print(f"{name}: {rows[-1][1]:.2f} s", file=sys.stderr, flush=True)
    finally:
        if pg is not None:
            pg.close()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(root, ignore_errors=True)
    per = f"{DEVICES} devices × ({args.changes} changes of 2 kB + {args.mib} × 1 MiB)"
    print(f"| backend | node processes | push time | changes/s | MB/s | workload |\n|---|---|---|---|---|---|")
    for name, elapsed, cps, mbs in rows:
        label = {"sqlite": "SQLite + directory (default)", "pg-s3-1": "PostgreSQL + S3",
                 "pg-s3-2": "PostgreSQL + S3"}[name]
        procs = 2 if name == "pg-s3-2" else 1
        print(f"| {label} | {procs} | {elapsed:.2f} s | {cps:,.0f} | {mbs:.1f} | {per} |")


if __name__ == "__main__":
    main()
