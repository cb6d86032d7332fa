"""A small deterministic mutation fuzzer for the decoders of :mod:`.targets`.

Input ``i`` of a run with seed ``s`` depends only on (s, target, i): a failure is replayed exactly with
``scripts/fuzz --target T --seed s --replay i``. Each input is one of the target's seeds with 1–6 mutations
(bit flips, interesting byte values, insertions, deletions, duplicated or swapped ranges, truncation, splices
with another seed, msgpack-ish length bytes), or, one time in ten, random bytes.

A result is a failure when the decoder raises anything but the target's domain error (a crash), takes longer than
the per-input time limit (a hang), or raises MemoryError (an allocation without bound: the script runs under an
address-space limit).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

from .targets import Target

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC4, 0xC5, 0xC6, 0xCC, 0xCD, 0xCE, 0xCF, 0xD9, 0xDA, 0xDB,
               0xDC, 0xDD, 0xDE, 0xDF, 0x90, 0x9F, 0xA0, 0xBF)  # fmt: skip  (msgpack type bytes among them)
MAX_INPUT = 1 << 20


def _mutate_once(rng: random.Random, data: bytearray, seeds: list[bytes]) -> None:
    n = len(data)
    choice = rng.randrange(10)
    if choice == 0 and n:
        i = rng.randrange(n)
        data[i] ^= 1 << rng.randrange(8)
    elif choice == 1 and n:
        data[rng.randrange(n)] = rng.choice(INTERESTING)
    elif choice == 2:
        at = rng.randrange(n + 1)
        data[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8, rng.randrange(1, 64))))
    elif choice == 3 and n:
        a = rng.randrange(n)
        del data[a : a + rng.randrange(1, min(64, n - a) + 1)]
    elif choice == 4 and n:
        a = rng.randrange(n)
        piece = data[a : a + rng.randrange(1, 256)]
        at = rng.randrange(n + 1)
        data[at:at] = piece * rng.choice((1, 2, 16))
    elif choice == 5 and n:
        del data[rng.randrange(n + 1) :]
    elif choice == 6:
        other = rng.choice(seeds)
        if other:
            a = rng.randrange(len(other))
            at = rng.randrange(n + 1)
            data[at:] = other[a : a + rng.randrange(1, len(other) - a + 1)]
    elif choice == 7 and n:  # a big-endian length or count field set to an extreme
        i = rng.randrange(n)
        width = rng.choice((1, 2, 4))
        value = rng.choice((0, 1, (1 << (8 * width)) - 1, 1 << (8 * width - 1)))
        data[i : i + width] = value.to_bytes(width, "big")
    elif choice == 8 and n > 1:
        a, b = sorted(rng.sample(range(n), 2))
        data[a], data[b] = data[b], data[a]
    elif n:
        i = rng.randrange(n)
        data[i] = (data[i] + rng.choice((-1, 1))) & 0xFF


def generate(target: Target, seed: int, index: int) -> bytes:
    """Input ``index`` of the run ``seed`` for ``target``: a pure function of the three."""
    rng = random.Random(f"{seed}:{target.name}:{index}")
    seeds = target.seeds
    if rng.randrange(10) == 0:
        return rng.randbytes(rng.choice((0, 1, 2, 5, 16, 64, 300)))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 6)):
        _mutate_once(rng, data, seeds)
    return bytes(data[:MAX_INPUT])


@dataclass
class Failure:
    target: str
    seed: int
    index: int
    kind: str  # "crash", "hang" or "memory"
    detail: str
    data: bytes

    def __str__(self) -> str:
        return (f"{self.target}: {self.kind} on input {self.index} of seed {self.seed} ({len(self.data)} bytes): "
                f"{self.detail}")  # fmt: skip


def check(target: Target, data: bytes, seed: int = 0, index: int = -1, *, time_limit: float = 2.0
          ) -> Failure | None:
    """Run one input; a :class:`Failure` if the decoder misbehaved."""
    started = time.perf_counter()
    try:
        target.decode(data)
    except target.allowed:
        pass
    except MemoryError:
        return Failure(target.name, seed, index, "memory", "MemoryError", data)
    except Exception as e:  # noqa: BLE001 - anything but the domain error is what the fuzzer looks for
        last = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
        return Failure(target.name, seed, index, "crash", f"{type(e).__name__}: {e} (at {where})", data)
    elapsed = time.perf_counter() - started
    if elapsed > time_limit:
        return Failure(target.name, seed, index, "hang", f"{elapsed:.2f} s for one input", data)
    return None


def run(target: Target, seed: int, count: int, *, start: int = 0, time_limit: float = 2.0) -> Iterator[Failure]:
    """Inputs ``start`` .. ``start + count - 1`` of the run ``seed``; yields each failure."""
    for index in range(start, start + count):
        failure = check(target, generate(target, seed, index), seed, index, time_limit=time_limit)
        if failure is not None:
            yield failure
