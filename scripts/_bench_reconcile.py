"""Benchmark of set reconciliation (anysyncfs.core.reconcile), in one process, no network.

    python scripts/_bench_reconcile.py [--n 1000000] [--diff 1] [--seed 1]

Builds n random 32-byte IDs; the responder holds all of them plus ``diff`` more, the initiator holds the n (it
lacks the extras, as a device that missed some changes does). Runs the exchange to the end, checks that the
initiator found exactly the extras, and prints: n, differences, messages, round trips, total bytes, and the
seconds taken to build both sets and to reconcile (the messages are passed in memory, so the seconds are CPU only).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anysyncfs.core.reconcile import ID_LEN, IdSet, Reconciler  # noqa: E402


def random_ids(rnd: random.Random, count: int) -> list[bytes]:
    raw = rnd.randbytes(ID_LEN * count)
    return [raw[i : i + ID_LEN] for i in range(0, len(raw), ID_LEN)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="IDs both sides hold (default 1000000)")
    parser.add_argument("--diff", type=int, default=1, help="extra IDs only the responder holds (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the IDs (default 1)")
    args = parser.parse_args(argv)
    if args.n < 0 or args.diff < 0:
        parser.error("--n and --diff must not be negative")

    rnd = random.Random(args.seed)
    common = random_ids(rnd, args.n)
    extras = random_ids(rnd, args.diff)
    start = time.perf_counter()
    initiator_set, responder_set = IdSet(common), IdSet(common + extras)
    build_seconds = time.perf_counter() - start

    start = time.perf_counter()
    initiator = Reconciler(initiator_set, initiator=True)
    responder = Reconciler(responder_set, initiator=False)
    message: bytes | None = initiator.initiate()
    messages, total_bytes = 0, 0
    while message is not None:
        messages += 1
        total_bytes += len(message)
        reply = responder.reconcile(message)
        if reply is None:
            break
        messages += 1
        total_bytes += len(reply)
        message = initiator.reconcile(reply)
    seconds = time.perf_counter() - start

    if initiator.need != set(extras) - set(common) or initiator.have:
        print("error: the reconciliation did not find exactly the extra IDs", file=sys.stderr)
        return 1
    print(f"n:                 {args.n}")
    print(f"differences:       {len(initiator.need)}")
    print(f"messages:          {messages}")
    print(f"round trips:       {(messages + 1) // 2}")
    print(f"total bytes:       {total_bytes}")
    print(f"build seconds:     {build_seconds:.3f}  (both sets)")
    print(f"reconcile seconds: {seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
