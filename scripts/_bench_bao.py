"""BLAKE3 tree helper figures (docs/benchmarks.md, issue 12): C vs Python tree speed, outboard size, slice sizes.

    PYTHONPATH=. .venv/bin/python scripts/_bench_bao.py [--runs 5]

In process, one thread: outboard of a 16 MiB blob in C (anysyncfs._bao_native) and of 1 MiB in the pure Python
reference, the `blake3` package (SIMD) for scale; the outboard's size against the blob's; the bytes of a slice
carrying a 4 KiB range of a 16 MiB blob (what a node answers to GetBlobRanges) and the time to verify it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import blake3

from anysyncfs.core import bao


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    big = os.urandom(16 << 20)
    small = big[: 1 << 20]
    c = best(lambda: bao.outboard_nodes(big, backend=bao.NATIVE), runs)
    py = best(lambda: bao.outboard_nodes(small, backend=bao.PYTHON), max(1, runs // 2))
    simd = best(lambda: blake3.blake3(big).digest(), runs)
    root, nodes = bao.outboard_nodes(big)
    ranges = [(5_000_000, 4096)]
    sl = bao.encode_slice(lambda o, n: big[o : o + n], nodes, len(big), bao.wanted(len(big), ranges))
    verify = best(lambda: bao.decode_slice(root, sl, ranges, expected_length=len(big)), runs)
    mb = 1e6
    print("| measure | figure |")
    print("|---|---|")
    print(f"| outboard of 16 MiB, C (portable, 1 thread) | {c * 1e3:.1f} ms = {len(big) / c / mb:.0f} MB/s |")
    print(f"| outboard of 1 MiB, Python reference | {py * 1e3:.0f} ms = {len(small) / py / mb:.2f} MB/s "
          f"(C is {len(small) / py and (len(big) / c) / (len(small) / py):.0f}× faster) |")
    print(f"| plain BLAKE3 of 16 MiB, `blake3` package (SIMD, 1 thread) | {simd * 1e3:.1f} ms = "
          f"{len(big) / simd / mb:.0f} MB/s |")
    print(f"| outboard size, 16 MiB blob | {len(nodes)} B on disk (+8 B length on the wire) = "
          f"1/{len(big) / len(nodes):.0f} of the blob |")
    print(f"| slice for a 4 KiB range of a 16 MiB blob | {len(sl)} B (2 groups: the range's and the last; "
          f"{(len(sl) - 8 - 2 * bao.GROUP_LEN) // 64} proof nodes) |")
    print(f"| verifying that slice (SliceDecoder) | {verify * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
