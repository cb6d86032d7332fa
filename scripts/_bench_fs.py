"""Side-by-side benchmark of mounted filesystems (run through ``scripts/bench``, which installs the tools).

The same workloads run on anysyncfs, gocryptfs, rclone crypt (``--vfs-cache-mode full``), JuiceFS and tmpfs, in one
process, interleaved: each run creates a FRESH instance of every filesystem in turn (the order rotates from run to
run, so no filesystem always goes first after a quiet spell), runs every workload on it, then destroys it. The table
gives the median of the runs for each workload and filesystem, then anysyncfs's ratio to tmpfs and to the best peer.

Workloads, in the order they run on one instance (each "cold" one starts with ``Mount.make_cold``):
  write      sequential write of --size-mib of random data, 1 MiB blocks, fsync before the clock stops (dd)
  read-cold  sequential read of that file, cold
  read-warm  the same read again at once
  randread   4 KiB random reads of that file, cold (fio, psync, a fixed seed: the same offsets everywhere)
  untar      extract a tarball of --files small files (64 B–64 KiB, text-like) in nested directories
  find       find + lstat of every entry of that tree, cold
  tar        tar of the tree to a pipe (every byte read), cold
  rm         rm -rf of the tree
Each result is kept per run in a JSON file (``--json``); the mount processes' peak RSS is reported too.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_mounts import (  # noqa: E402 - a script beside its helper, not a package
    ALL, PEERS, Anysyncfs, BenchError, Gocryptfs, Juicefs, Mount, Rclone, Tmpfs, drop_caches)

WORKLOADS = ("write", "read-cold", "read-warm", "randread", "untar", "find", "tar", "rm")
NEEDS_FILE = {"write", "read-cold", "read-warm", "randread"}
NEEDS_TREE = {"untar", "find", "tar", "rm"}
# unit, and whether a higher value is better
UNITS = {"write": ("MB/s", True), "read-cold": ("MB/s", True), "read-warm": ("MB/s", True),
         "randread": ("IOPS", True), "untar": ("s", False), "find": ("s", False), "tar": ("s", False),
         "rm": ("s", False), "remount": ("s", False), "rss": ("MiB", False)}
LABELS = {"write": "sequential write {size} + fsync", "read-cold": "sequential read {size}, cold",
          "read-warm": "sequential read {size}, warm", "randread": "4 KiB random reads ({ios}), cold",
          "untar": "untar {files} files", "find": "find + stat {files} files, cold",
          "tar": "tar of the tree, cold", "rm": "rm -rf of the tree",
          "remount": "unmount + mount after untar (not in the rows above)", "rss": "peak RSS of the mount process"}


@dataclass
class Config:
    size_mib: int
    files: int
    runs: int
    only: list[str]
    workloads: list[str]
    rand_ios: int
    step_timeout: float
    base_dir: Path
    tools: dict[str, str]
    json_path: Path | None
    results: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # fs -> workload -> values
    failures: list[str] = field(default_factory=list)
    loads: dict[str, list[float]] = field(default_factory=dict)  # fs -> 1-minute load average as each run began


class StepFailed(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ inputs
def make_inputs(data_dir: Path, cfg: Config) -> tuple[Path, Path]:
    """The random source file and the tree's tarball, both in /dev/shm so that reading them costs no disk I/O."""
    src = data_dir / "src.bin"
    with open(src, "wb") as f:
        for _ in range(cfg.size_mib):
            f.write(os.urandom(1 << 20))  # random: nothing compresses or deduplicates
    rng = random.Random(20261122)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10))) for _ in range(2000)]
    lines, size = [], 0
    while size < 2 << 20:  # a 2 MiB text-like pool; each file is a slice of it plus a unique first line
        line = b" ".join(rng.choices(words, k=rng.randint(3, 14))) + b"\n"
        lines.append(line)
        size += len(line)
    pool = b"".join(lines)
    tarball = data_dir / "tree.tar"
    per_dir = 30
    with tarfile.open(tarball, "w", format=tarfile.GNU_FORMAT) as tar:
        made_dirs: set[str] = set()
        for i in range(cfg.files):
            d = i // per_dir
            dirname = f"tree/d{d // 10:03d}/s{d % 10}"
            for part in (f"tree/d{d // 10:03d}", dirname):
                if part not in made_dirs:
                    info = tarfile.TarInfo(part)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_790_000_000
                    tar.addfile(info)
                    made_dirs.add(part)
            length = int(64 * (1024 ** rng.random()))  # log-uniform, 64 B .. 64 KiB
            start = rng.randrange(0, len(pool) - length)
            body = (f"file {i}\n".encode() + pool[start:start + length])[:max(length, 8)]
            info = tarfile.TarInfo(f"{dirname}/f{i:05d}.txt")
            info.size, info.mode, info.mtime = len(body), 0o644, 1_790_000_000 + i
            tar.addfile(info, io.BytesIO(body))
    return src, tarball


# --------------------------------------------------------------------------------------------- workloads
def timed(cmd: list[str], cfg: Config) -> float:
    """Run one measured command; its wall time, or StepFailed (non-zero exit or the step timeout)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.step_timeout)
    except subprocess.TimeoutExpired as e:
        raise StepFailed(f"timed out after {cfg.step_timeout:.0f} s") from e
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise StepFailed(f"exit {done.returncode}: {done.stderr.strip()[-400:]}")
    return took


def fio_randread(path: Path, cfg: Config) -> float:
    """IOPS of ``cfg.rand_ios`` 4 KiB reads at seeded random offsets (fio's own clock, without its start-up)."""
    cmd = ["fio", "--name=randread", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
           "--ioengine=psync", "--randrepeat=1", "--norandommap", f"--size={cfg.size_mib}M",
           f"--number_ios={cfg.rand_ios}", "--output-format=json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.step_timeout)
    except subprocess.TimeoutExpired as e:
        raise StepFailed(f"fio timed out after {cfg.step_timeout:.0f} s") from e
    if done.returncode != 0:
        raise StepFailed(f"fio exit {done.returncode}: {done.stderr.strip()[-400:]}")
    job = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]["read"]
    if job["total_ios"] < cfg.rand_ios:
        raise StepFailed(f"fio did only {job['total_ios']} reads")
    return float(job["iops"])


def bench_one(m: Mount, src: Path, tarball: Path, cfg: Config, record: Callable[[str, float], None]) -> None:
    """Every selected workload on one freshly mounted instance."""
    want = set(cfg.workloads)
    big = m.mnt / "big.bin"
    tree = m.mnt / "tree"
    size = cfg.size_mib * (1 << 20)
    if want & NEEDS_FILE:
        t = timed(["dd", f"if={src}", f"of={big}", "bs=1M", "conv=fsync"], cfg)
        record("write", size / t / 1e6)
        if want & {"read-cold", "read-warm"}:
            m.make_cold()
            t = timed(["dd", f"if={big}", "of=/dev/null", "bs=1M"], cfg)
            record("read-cold", size / t / 1e6)
            t = timed(["dd", f"if={big}", "of=/dev/null", "bs=1M"], cfg)
            record("read-warm", size / t / 1e6)
        if "randread" in want:
            m.make_cold()
            record("randread", fio_randread(big, cfg))
        os.unlink(big)  # keeps the tree workloads alone on the filesystem
    if want & NEEDS_TREE:
        record("untar", timed(["tar", "--no-same-owner", "-xf", str(tarball), "-C", str(m.mnt)], cfg))
        if want & {"find", "tar"}:
            took = m.make_cold()
            if m.has_process:
                record("remount", took)
            if "find" in want:
                record("find", timed(["find", str(tree), "-printf", "%s %m %T@\n"], cfg))
        if "tar" in want:
            m.make_cold()
            # to a pipe: GNU tar skips reading file contents when the archive is /dev/null itself
            pipe = f"tar -cf - -C '{m.mnt}' tree | cat > /dev/null"
            record("tar", timed(["bash", "-o", "pipefail", "-c", pipe], cfg))
        record("rm", timed(["rm", "-rf", str(tree)], cfg))
    m.settle()


# ----------------------------------------------------------------------------------------------- runner
def make_mount(name: str, work: Path, cfg: Config) -> Mount:
    if name == "tmpfs":
        return Tmpfs(work, cfg.tools, cfg.size_mib * (1 << 20) + (1 << 30))
    return {"anysyncfs": Anysyncfs, "gocryptfs": Gocryptfs, "rclone": Rclone, "juicefs": Juicefs}[name](
        work, cfg.tools)


ACTIVE: list[Mount] = []  # instances to tear down if the benchmark is interrupted


def run_all(cfg: Config, src: Path, tarball: Path) -> None:
    for r in range(cfg.runs):
        order = cfg.only[r % len(cfg.only):] + cfg.only[:r % len(cfg.only)]
        for name in order:
            work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cfg.base_dir))
            m = make_mount(name, work, cfg)
            ACTIVE.append(m)
            per_fs = cfg.results.setdefault(name, {})

            def record(workload: str, value: float, name: str = name) -> None:
                cfg.results[name].setdefault(workload, []).append(value)
                unit = UNITS[workload][0]
                log(f"  run {r + 1} {name:9} {workload:9} {value:10.2f} {unit}")

            load = float(Path("/proc/loadavg").read_text().split()[0])
            cfg.loads.setdefault(name, []).append(load)  # other work on the machine: shown under the table
            log(f"run {r + 1}/{cfg.runs}: {name} (load average {load:.2f})")
            try:
                m.setup()
                drop_caches()
                bench_one(m, src, tarball, cfg, record)
            except (BenchError, StepFailed, OSError) as e:
                msg = f"run {r + 1} {name}: {e}"
                cfg.failures.append(msg)
                log("  FAILED " + msg)
            finally:
                m.record_rss()
                if m.has_process and m.peak_rss_kib:
                    per_fs.setdefault("rss", []).append(m.peak_rss_kib / 1024)
                m.teardown()
                ACTIVE.remove(m)
            if cfg.json_path:
                cfg.json_path.write_text(json.dumps({"results": cfg.results, "loads": cfg.loads,
                                                        "failures": cfg.failures}, indent=1))


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ table
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"
    if unit == "IOPS":
        return f"{value:,.0f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def cost_ratio(ours: float | None, other: float | None, higher_better: bool) -> float | None:
    """anysyncfs's cost over the other's: time (or memory) ratio, so 1.00 is parity and 2.00 is twice as slow."""
    if ours is None or other is None or ours <= 0 or other <= 0:
        return None
    return other / ours if higher_better else ours / other


def table(cfg: Config) -> str:
    med: dict[str, dict[str, float]] = {
        fs: {w: statistics.median(v) for w, v in per.items() if v} for fs, per in cfg.results.items()}
    names = [n for n in ALL if n in cfg.only]
    size = f"{cfg.size_mib} MiB" if cfg.size_mib < 1024 else f"{cfg.size_mib / 1024:g} GiB"
    rows = [w for w in WORKLOADS if w in cfg.workloads]
    if "untar" in rows and any("remount" in per for per in med.values()):
        rows.append("remount")
    rows.append("rss")
    head = ["workload", "unit"] + names
    if "anysyncfs" in names:
        head += ["anysyncfs ÷ tmpfs"] if "tmpfs" in names else []
        head += ["anysyncfs ÷ best peer"] if any(p in names for p in PEERS) else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in rows:
        unit, higher = UNITS[w]
        label = LABELS[w].format(size=size, files=f"{cfg.files:,}", ios=f"{cfg.rand_ios:,}")
        cells = [label, unit] + [fmt(med.get(n, {}).get(w), unit) for n in names]
        ours = med.get("anysyncfs", {}).get(w)
        if "anysyncfs" in names and "tmpfs" in names:
            r = cost_ratio(ours, med.get("tmpfs", {}).get(w), higher)
            cells.append("—" if r is None else f"{r:.2f}×")
        if "anysyncfs" in names and any(p in names for p in PEERS):
            peers = [(p, med[p][w]) for p in PEERS if p in names and w in med.get(p, {})]
            if peers:
                best = (max if higher else min)(peers, key=lambda pv: pv[1])
                r = cost_ratio(ours, best[1], higher)
                cells.append("—" if r is None else f"{r:.2f}× ({best[0]})")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=None, help="size of the sequential file (default 1024)")
    p.add_argument("--files", type=int, default=None, help="files in the tree (default 3000)")
    p.add_argument("--runs", type=int, default=None, help="runs; the table gives medians (default 3)")
    p.add_argument("--rand-ios", type=int, default=None, help="4 KiB random reads per run (default 5000)")
    p.add_argument("--only", default=",".join(ALL), help=f"filesystems, comma-separated ({','.join(ALL)})")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated ({','.join(WORKLOADS)})")
    p.add_argument("--quick", action="store_true", help="smoke test: 64 MiB, 500 files, 1000 reads, 1 run")
    p.add_argument("--step-timeout", type=float, default=900.0, help="seconds for any one measured step")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the filesystems' data goes (a disk)")
    p.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    a = p.parse_args(argv)
    quick = {"size_mib": 64, "files": 500, "runs": 1, "rand_ios": 1000}
    full = {"size_mib": 1024, "files": 3000, "runs": 3, "rand_ios": 5000}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    only = [n.strip() for n in a.only.split(",") if n.strip()]
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    bad = [n for n in only if n not in ALL] + [w for w in workloads if w not in WORKLOADS]
    if bad or not only or not workloads or a.runs < 1 or a.size_mib < 1 or a.files < 1:
        print(f"scripts/bench: bad arguments {bad or ''}; see --help", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("scripts/bench: needs root (mount, drop_caches)", file=sys.stderr)
        return 2
    tools = {"anysyncfs": os.environ.get("BENCH_ANYSYNCFS", "anysyncfs"),
             "python": os.environ.get("BENCH_PYTHON", sys.executable),
             "gocryptfs": "gocryptfs", "rclone": "rclone", "juicefs": os.environ.get("BENCH_JUICEFS", "juicefs")}
    for name in only:
        if name != "tmpfs" and shutil.which(tools[name]) is None:
            print(f"scripts/bench: {tools[name]} not found (scripts/bench installs it)", file=sys.stderr)
            return 2
    base = Path(tempfile.mkdtemp(prefix="anysyncfs-bench-", dir=a.dir))
    data = Path(tempfile.mkdtemp(prefix="anysyncfs-bench-", dir="/dev/shm"))
    cfg = Config(a.size_mib, a.files, a.runs, only, workloads, a.rand_ios, a.step_timeout, base, tools, a.json)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job inherits it ignored
        signal.signal(signum, stop)
    try:
        log(f"inputs: {a.size_mib} MiB random file, tarball of {a.files} files (in {data})")
        src, tarball = make_inputs(data, cfg)
        versions = {}
        for name in only:
            try:
                versions[name] = make_mount(name, base / "v", cfg).version()
            except BenchError as e:
                versions[name] = f"? ({e})"
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        started = datetime.datetime.now()
        run_all(cfg, src, tarball)
        load_after = Path("/proc/loadavg").read_text().split()[:3]
        minutes = (datetime.datetime.now() - started).total_seconds() / 60
        print(table(cfg))
        print()
        print(f"{cfg.runs} run(s), medians; {a.size_mib} MiB file, {a.files} files, {a.rand_ios} random reads; "
              f"{os.cpu_count()} CPUs; load average {' '.join(load_before)} before, {' '.join(load_after)} after; "
              f"{minutes:.1f} min.")
        loads = "; ".join(f"{n} {' '.join(f'{x:.1f}' for x in v)}" for n, v in cfg.loads.items())
        print(f"1-minute load average as each filesystem's runs began: {loads}.")
        for name, v in versions.items():
            print(f"- {name}: {v}")
        for f in cfg.failures:
            print(f"- FAILED: {f}")
        return 1 if cfg.failures else 0
    except KeyboardInterrupt:
        log("interrupted: unmounting and cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for m in list(ACTIVE):
            m.teardown()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
