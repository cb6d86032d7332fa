"""Bytes a random 4 KiB read of an uncached file moves over the wire (issue 12 item 4), counted at the node.

    .venv/bin/python scripts/_bench_range_reads.py [--size 256M] [--reads 200] [--whole 8] [--keep DIR]

Setup (not timed): an in-process node on 127.0.0.1 (a real ``Node`` over TCP and TLS, whose replies are counted);
device A writes ``--size`` of random bytes as one file and uploads it; device B (same account) holds the change
but none of the blobs. Measured on B, through ``ContentReads`` and ``SpaceSync`` as the mount uses them (a missing
range is fetched by ``fetch_blob_ranges``, a missing blob by ``fetch_blob``, then the read is retried):

* ``--reads`` random 4 KiB reads at uniform offsets: the blob bytes the node answered (BlobSlice / Blob
  payloads), the bytes B's connection received (frames, after TLS), and the wall time of each cold read;
* ``--whole`` untouched chunks fetched whole (what every read of an uncached chunk cost before).

Homes use the test-only scrypt cost. Prints one line per measurement. What a read moves depends on the chunk's
blob (~1 MiB chunks), not on the file's size.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anysyncfs.core import keys  # noqa: E402
from anysyncfs.errors import BlobMissing, RangesMissing  # noqa: E402
from anysyncfs.fs.mount import parse_size  # noqa: E402
from anysyncfs.fs.reading import ContentReads  # noqa: E402
from anysyncfs.net.endpoint import Endpoint  # noqa: E402
from anysyncfs.net.node import Node  # noqa: E402
from anysyncfs.net.runner import Runner  # noqa: E402
from anysyncfs.net.sync import SpaceSync  # noqa: E402
from anysyncfs.protocol import messages as m  # noqa: E402
from anysyncfs.replica import adopt_space, create_space  # noqa: E402
from anysyncfs.replica.files import put_file, resolve  # noqa: E402
from anysyncfs.replica.home import Home  # noqa: E402

PASSPHRASE = b"bench passphrase"
LOOPBACK = "127.0.0.1"


class CountingNode(Node):
    """A real node that counts the blob bytes of its answers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blob_bytes = 0

    async def handle(self, conn: Any, body: Any) -> Any:
        reply = await super().handle(conn, body)
        if isinstance(reply, m.BlobSlice):
            self.blob_bytes += len(reply.slice)
        elif isinstance(reply, m.Blob):
            self.blob_bytes += len(reply.data)
        return reply


WHOLE = False  # --whole-blobs: fetch every missing blob whole, as reads did before (for comparison)


async def read(sync: SpaceSync, reads: ContentReads, content: Any, offset: int, size: int) -> bytes:
    for _ in range(16):
        try:
            return await trio.to_thread.run_sync(reads.read, content, offset, size)
        except RangesMissing as e:
            if WHOLE:
                await sync.fetch_blob(e.blob_id, timeout=30.0)
            else:
                await sync.fetch_blob_ranges(e.blob_id, e.ranges, timeout=30.0)
        except BlobMissing as e:
            await sync.fetch_blob(e.blob_id, timeout=30.0)
    raise SystemExit("a read did not settle")


async def main(args: argparse.Namespace, root: Path) -> None:
    phrase = keys.generate_phrase()
    homes = [Home(root / name, scrypt_log2_n=4) for name in ("a", "b")]
    ua = homes[0].create_identity(phrase, "a", PASSPHRASE)
    ub = homes[1].create_identity(phrase, "b", PASSPHRASE)
    a = create_space(ua, "bench")
    data = os.urandom(args.size)  # (random.randbytes cannot make 1 GiB at once)
    change = put_file(a, "/big.bin", data)
    b = adopt_space(ub, "bench", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    b.ingest_batch([change.raw])
    content = resolve(b.tree, "/big.bin").content
    node = CountingNode(root / "node")
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, LOOPBACK, 0)
            address = node.address(LOOPBACK, listeners[0].socket.getsockname()[1])
            a.store.add_peer(a.space_id, str(address), address.device)
            t0 = time.perf_counter()
            report = await SpaceSync(a, Endpoint(a.identity), Runner()).sync_once()  # type: ignore[arg-type]
            assert not report.errors, report.errors
            print(f"setup: {args.size / 1e6:.0f} MB uploaded in {time.perf_counter() - t0:.1f} s")
            sync = SpaceSync(b, Endpoint(b.identity), Runner())  # type: ignore[arg-type]
            nursery.start_soon(sync.hold_connection, address)
            while not sync._conns:
                await trio.sleep(0.01)
            conn = next(iter(sync._conns.values()))
            reads = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
            if content.manifest is not None:
                await sync.fetch_blob(content.manifest.blob)
            extents = reads.extents(content)
            print(f"file: {len(extents)} chunks, mean {args.size / len(extents) / 1e6:.2f} MB")
            rng = random.Random(2)
            at_node: list[int] = []
            at_conn: list[int] = []
            times: list[float] = []
            for _ in range(args.reads):
                offset = rng.randrange(0, args.size - 4096)
                node.blob_bytes, before = 0, conn.bytes_in
                t0 = time.perf_counter()
                got = await read(sync, reads, content, offset, 4096)
                times.append(time.perf_counter() - t0)
                assert got == data[offset:offset + 4096]
                at_node.append(node.blob_bytes)
                at_conn.append(conn.bytes_in - before)
            cold = [n for n in at_node if n]  # a read inside groups already fetched moves nothing
            print(f"{args.reads} random 4 KiB reads: {len(cold)} fetched; blob bytes at the node per fetching read: "
                  f"median {statistics.median(cold):,.0f}, mean {statistics.mean(cold):,.0f}, min {min(cold):,}, "
                  f"max {max(cold):,}; at the connection: median {statistics.median([c for c in at_conn if c]):,.0f}")
            cold_times = sorted(t for t, n in zip(times, at_node) if n)
            print(f"wall time of a fetching read: median {statistics.median(cold_times) * 1e3:.1f} ms, "
                  f"p90 {cold_times[int(len(cold_times) * 0.9)] * 1e3:.1f} ms")
            if args.sequential:
                # A sequential reader from a fresh start: 128 KiB reads (the kernel's pieces), every byte checked.
                b.partials.prune(0)
                node.blob_bytes = 0
                t0 = time.perf_counter()
                at, piece = 0, 128 << 10
                while at < args.size:
                    got = await read(sync, reads, content, at, piece)
                    assert got == data[at:at + piece]
                    at += len(got)
                took = time.perf_counter() - t0
                print(f"sequential read of the file in 128 KiB reads (chunks not held): {args.size / took / 1e6:.0f} "
                      f"MB/s, {node.blob_bytes / args.size:.3f} bytes moved per byte read")
                nursery.cancel_scope.cancel()
                return
            untouched = [e for e in extents if b.partials.state(e.chunk.blob) is None
                         and not b.blobs.has(e.chunk.blob)][: args.whole]
            whole: list[int] = []
            for extent in untouched:
                node.blob_bytes = 0
                await sync.fetch_blob(extent.chunk.blob)
                whole.append(node.blob_bytes)
            if whole:
                print(f"whole-blob fetch of {len(whole)} untouched chunks (the path reads took before): median "
                      f"{statistics.median(whole):,.0f} bytes each")
            nursery.cancel_scope.cancel()
    finally:
        node.close()
        for home in homes:
            home.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--whole", type=int, default=8)
    parser.add_argument("--sequential", action="store_true", help="instead: time a sequential read of the file")
    parser.add_argument("--whole-blobs", action="store_true", help="fetch missing blobs whole (the old read path)")
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it")
    args = parser.parse_args()
    WHOLE = args.whole_blobs
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-range-reads-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"git {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=REPO).stdout.strip()}; "
          f"load {Path('/proc/loadavg').read_text().split()[:3]}")
    try:
        trio.run(main, args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
