"""Node memory and HasBlobs cost per backend (run through ``scripts/bench_node_backends --memory``).

Memory: one ``anysyncfs node serve`` process (SQLite + directory, or PostgreSQL + S3 on a juicefs gateway); one
device pushes its space, then ``--clients`` connections each PutBlob a ``--mib`` MiB blob at once, then each
GetBlob it back (bytes compared). Reported: the node's peak RSS (VmHWM of /proc/PID/status) after start-up and
after the load, and the growth per concurrent blob.

HasBlobs (``--has``, PostgreSQL + S3 only): ``S3Blobs.has_many`` of ``--has`` IDs (half stored) against one HEAD
after another (the node's answer before batching), median of ``--runs`` timings each.

``--tree DIR`` runs the node from another source tree (an older commit, for a before/after pair).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from anysyncfs.core import crypto, keys  # noqa: E402
from anysyncfs.core.address import parse_address  # noqa: E402
from anysyncfs.net.endpoint import Endpoint  # noqa: E402
from anysyncfs.net.runner import Runner  # noqa: E402
from anysyncfs.net.sync import SpaceSync  # noqa: E402
from anysyncfs.protocol import messages as m  # noqa: E402
from anysyncfs.replica import create_space  # noqa: E402
from anysyncfs.replica.files import put_file  # noqa: E402
from anysyncfs.replica.home import Home  # noqa: E402
from tests.backends.servers import PostgresServer, S3Server  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def start_node(tree: Path, data: Path, extra: list[str], env: dict[str, str], log: Path
               ) -> tuple[subprocess.Popen[bytes], str]:
    env = dict(env, PYTHONPATH=str(tree))
    proc = subprocess.Popen([sys.executable, "-m", "anysyncfs", "node", "serve", "--listen", "127.0.0.1:0",
                             "--data", str(data), "--gc-interval", "0", *extra],
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), env=env, start_new_session=True, cwd=tree)
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    if not line or not line[0].strip():
        proc.kill()
        raise RuntimeError(f"node did not start: {log.read_text()[-1000:]}")
    return proc, line[0].decode().strip()


async def push_space(replica, address: str) -> None:
    addr = parse_address(address)
    replica.store.add_peer(replica.space_id, address, addr.device)
    report = await SpaceSync(replica, Endpoint(replica.identity), Runner()).sync_once()
    assert report.reached == 1 and not report.errors, report.errors


async def load(replica, address: str, blobs: list[bytes], put: bool) -> None:
    """Every blob at once over its own connection: PutBlob (``put``) or GetBlob."""
    addr = parse_address(address)

    async def one(data: bytes, put: bool) -> None:
        conn = await Endpoint(replica.identity).dial(addr)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            blob_id = crypto.blake3(data)
            if put:
                assert isinstance(await conn.request(m.PutBlob(replica.space_id, blob_id, data), timeout=120), m.Ok)
            else:
                reply = await conn.request(m.GetBlob(replica.space_id, blob_id), timeout=120)
                assert isinstance(reply, m.Blob) and reply.data == data
            await conn.abort("done")
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for data in blobs:
            nursery.start_soon(one, data, put)


def memory(name: str, root: Path, args: argparse.Namespace, pg: PostgresServer | None, s3: S3Server | None
           ) -> tuple[str, float, float, float]:
    work = root / name
    work.mkdir()
    home = Home(work / "dev", scrypt_log2_n=10)
    unlocked = home.create_identity(keys.generate_phrase(), "dev", b"bench passphrase")
    replica = create_space(unlocked, "docs")
    put_file(replica, "/f.txt", b"x")
    env = dict(os.environ)
    extra: list[str] = []
    if name != "sqlite":
        assert pg is not None and s3 is not None
        env.update(s3.env())
        extra = ["--db", pg.new_database("mem"), "--blobs", s3.new_prefix()]
    proc, address = start_node(args.tree, work / "node", extra, env, work / "node.log")
    try:
        time.sleep(0.5)
        trio.run(push_space, replica, address)
        base = peak_rss_mib(proc.pid)
        blobs = [os.urandom(args.mib << 20) for _ in range(args.clients)]
        trio.run(load, replica, address, blobs, True)
        after_put = peak_rss_mib(proc.pid)
        trio.run(load, replica, address, blobs, False)
        after_get = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return name, base, after_put, after_get


def has_many_timing(root: Path, args: argparse.Namespace, s3: S3Server) -> tuple[float, float]:
    from anysyncfs.store.s3blobs import S3Blobs

    env = s3.env()
    blobs = S3Blobs.from_url(s3.new_prefix(), endpoint_url=env["AWS_ENDPOINT_URL"], region=env["AWS_REGION"],
                             access_key_id=env["AWS_ACCESS_KEY_ID"], secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    stored = [os.urandom(64) + n.to_bytes(4, "big") for n in range(args.has // 2)]
    for data in stored:
        blobs.put(crypto.blake3(data), data)
    asked = [crypto.blake3(d) for d in stored] + [crypto.blake3(b"absent %d" % n) for n in range(args.has // 2)]
    one_by_one, batched = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        a = {b for b in asked if blobs.has(b)}
        one_by_one.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = blobs.has_many(asked)
        batched.append(time.perf_counter() - t)
        assert a == b and len(a) == len(stored)
    return statistics.median(one_by_one), statistics.median(batched)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4, help="connections putting then getting a blob at once")
    ap.add_argument("--mib", type=int, default=16, help="MiB per blob (at most the 16 MiB blob limit)")
    ap.add_argument("--only", nargs="*", default=["sqlite", "pg-s3"])
    ap.add_argument("--has", type=int, default=0, help="also time HasBlobs on S3 for this many IDs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tree", type=Path, default=ROOT, help="source tree the node runs from")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anysyncfs-bench-mem-"))
    pg = s3 = None
    rows = []
    timing = None
    try:
        if any(c != "sqlite" for c in args.only) or args.has:
            pg = PostgresServer()
            s3 = S3Server(root / "s3")
        for name in args.only:
            rows.append(memory(name, root, args, pg, s3))
        if args.has:
            assert s3 is not None
            timing = has_many_timing(root, args, s3)
    finally:
        if pg is not None:
            pg.close()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"node from {args.tree}; {args.clients} connections × PutBlob then GetBlob of {args.mib} MiB at once")
    print("| backend | peak RSS before | after the PutBlobs | after the GetBlobs | growth per concurrent blob |")
    print("|---|---|---|---|---|")
    for name, base, put, get in rows:
        print(f"| {name} | {base:.0f} MiB | {put:.0f} MiB | {get:.0f} MiB | "
              f"{(put - base) / args.clients / args.mib:.2f} × (put), {(get - base) / args.clients / args.mib:.2f} × "
              f"(put, then get) |")
    if timing is not None:
        print(f"HasBlobs on S3, {args.has} IDs (half stored), median of {args.runs}: one HEAD after another "
              f"{timing[0] * 1000:.0f} ms, has_many {timing[1] * 1000:.0f} ms ({timing[0] / timing[1]:.1f}×)")


if __name__ == "__main__":
    main()
