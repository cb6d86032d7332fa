"""Sync benchmarks (run through ``scripts/bench_sync``, which installs Syncthing): everything on loopback.

Workloads (each a subcommand; all of them by default, in this order):
  reconcile   set reconciliation of 1,000,000 change IDs with 1 and with 1,000 differences (scripts/_bench_reconcile.py,
              in memory): round trips and bytes
  blob        a --blob-mib random file (real blobs, the space's default chunking) uploaded to a provider node with
              SpaceSync.sync_once, then every blob fetched by a second device of the account with SpaceSync.fetch_blob
              over one connection: MB/s each way (MB = 10^6 bytes of blob files)
  latency     a node and two FUSE mounts of one space (two devices of one account): from close() of a small file
              written on mount A until mount B shows its content (B polled every 5 ms); a new file each time, then an
              overwrite of one file each time
  first-byte  a --file-gib random file uploaded through the node; a fresh device fetches the metadata only
              (``sync --metadata-only``), mounts, drops the page cache and times open() + read(fd, 1)
  syncthing   the reference: two local Syncthing instances sharing one folder over 127.0.0.1 only, the same latency
              measurement, with the default fsWatcherDelayS (10) and with fsWatcherDelayS=1
Prints a markdown table (workload | aim | measured | notes) of medians (and p90 for latencies). Every process, mount
and directory it makes lives under one fresh directory in --dir and is stopped, unmounted and deleted at the end,
also after a failure or Ctrl-C. A workload that fails gives a row saying why; the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anysyncfs.core.address import PeerAddress

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKLOADS = ("reconcile", "blob", "latency", "first-byte", "syncthing")
PASSPHRASE = "benchmark passphrase"
ANYSYNCFS = [sys.executable, "-m", "anysyncfs"]
POLL_S = 0.005  # how often the receiving side is polled in the latency measurements
LATENCY_TIMEOUT_S = 60.0  # one sample that takes longer is recorded as lost
SYNCTHING_DELAYS = (10, 1)
INFLIGHT = 4  # blob fetches in flight in the diagnostic download row  # fsWatcherDelayS: Syncthing's default, then the shortest it accepts


class BenchError(RuntimeError):
    """A step of a workload failed; the message says which and why."""


@dataclass
class Row:
    workload: str
    aim: str
    measured: str
    notes: str


@dataclass
class Config:
    base: Path
    runs: int
    count: int
    blob_mib: int
    file_gib: float
    workloads: list[str]
    json_path: Path | None = None
    rows: list[Row] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ resources
class Scope:
    """A directory plus the processes and mounts started in it; ``close`` unmounts, stops and deletes them all
    (in that order: a mount commits on unmount and may still talk to the node)."""

    def __init__(self, parent: Path, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mounts: list[tuple[Path, Path, subprocess.Popen[bytes]]] = []  # (mountpoint, home, mount process)

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start a process in its own session (a Ctrl-C reaches only us: we stop our children in order); its
        stderr (and stdout unless piped) goes to ``<dir>/<name>.log``."""
        log = open(self.dir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout or log, stderr=log,
                                    start_new_session=True)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 3) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def unmount(self, mountpoint: Path) -> None:
        for entry in [m for m in self.mounts if m[0] == mountpoint]:
            self.mounts.remove(entry)
            _, home, proc = entry
            if proc.poll() is None and os.path.ismount(mountpoint):
                subprocess.run(ANYSYNCFS + ["--home", str(home), "unmount", str(mountpoint)], env=cli_env(),
                               capture_output=True, timeout=180)
            if os.path.ismount(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)
            stop(proc)

    def close(self) -> None:
        for mountpoint, _home, _proc in list(reversed(self.mounts)):
            try:
                self.unmount(mountpoint)
            except (OSError, subprocess.SubprocessError) as e:
                print(f"warning: unmounting {mountpoint}: {e}", file=sys.stderr)
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANYSYNCFS_PASSPHRASE"] = PASSPHRASE
    env.pop("ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N", None)  # the real key derivation, as a user has it
    return env


def cli(home: Path, *args: str, stdin: IO[bytes] | None = None, text_in: str | None = None,
        timeout: float = 1800) -> str:
    """Run ``anysyncfs --home HOME ARGS`` (stdin from a file or a string); its stdout, or BenchError with its last
    stderr line."""
    if text_in is not None:
        r = subprocess.run(ANYSYNCFS + ["--home", str(home), *args], env=cli_env(), capture_output=True,
                           input=text_in.encode(), timeout=timeout)
    else:
        r = subprocess.run(ANYSYNCFS + ["--home", str(home), *args], env=cli_env(), capture_output=True,
                           stdin=stdin if stdin is not None else subprocess.DEVNULL, timeout=timeout)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise BenchError(f"anysyncfs {' '.join(args[:2])}: {err[-1] if err else f'exit {r.returncode}'}")
    return r.stdout.decode()


def start_node(scope: Scope) -> str:
    """``anysyncfs node serve`` on a free loopback port; returns its address (the first line it prints)."""
    proc = scope.spawn("node", ANYSYNCFS + ["node", "serve", "--listen", "127.0.0.1:0", "--data",
                                            str(scope.dir / "node")], env=cli_env(), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("anysync://"):
        raise BenchError(f"the node did not start: {scope.log_tail('node') or 'no address printed'}")
    return line


def new_device(home: Path, node: str, *, phrase: str | None = None) -> str:
    """``init`` (or ``init --restore`` from ``phrase``); returns the recovery phrase."""
    if phrase is None:
        out = cli(home, "init", "--device-name", home.name)
        return out.splitlines()[1].strip()
    cli(home, "init", "--restore", "--device-name", home.name, text_in=phrase)
    return phrase


def mount(scope: Scope, home: Path, space: str, mountpoint: Path, options: str) -> None:
    """``anysyncfs mount -f`` as our child; returns once the mountpoint is mounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = scope.spawn(f"mount-{mountpoint.name}", ANYSYNCFS + ["--home", str(home), "mount", "-f", space,
                                                                str(mountpoint), "-o", options], env=cli_env())
    scope.mounts.append((mountpoint, home, proc))
    deadline = time.monotonic() + 60
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"mount of {mountpoint.name} failed: {scope.log_tail(f'mount-{mountpoint.name}')}")
        time.sleep(0.05)


def wait_connected(home: Path, space: str, timeout: float = 60.0) -> None:
    """Until the mount of ``space`` in ``home`` reports a connected peer (``anysyncfs status --json``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc = json.loads(cli(home, "status", space, "--json", timeout=60))
            if any(p["connected"] for s in doc for p in s["peers"]):
                return
        except (BenchError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise BenchError(f"the mount in {home.name} never connected to its peer")


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (needs root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def random_file(path: Path, size: int) -> None:
    piece = 16 << 20
    with open(path, "wb") as f:
        for offset in range(0, size, piece):
            f.write(os.urandom(min(piece, size - offset)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------ figures
def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def latency_text(samples: list[float], lost: int) -> str:
    if not samples:
        return "no sample arrived"
    text = f"median {ms(statistics.median(samples))}, p90 {ms(p90(samples))}"
    return text + (f" ({lost} of {len(samples) + lost} never arrived)" if lost else "")


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    return "runs: " + ", ".join(fmt(v) for v in values)


# ------------------------------------------------------------------------------------------------ reconcile
def bench_reconcile(cfg: Config) -> None:
    script = ROOT / "scripts" / "_bench_reconcile.py"
    for diff, aim in ((1, "≤ 3 round trips, ≤ 4 KiB"), (1000, "—")):
        runs: list[dict[str, str]] = []
        for seed in range(1, cfg.runs + 1):
            r = subprocess.run([sys.executable, str(script), "--n", "1000000", "--diff", str(diff), "--seed",
                                str(seed)], capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise BenchError(f"_bench_reconcile.py: {r.stderr.strip() or r.stdout.strip()}")
            runs.append({k.strip(): v.split()[0] for k, v in (ln.split(":", 1) for ln in r.stdout.splitlines())})
        trips = statistics.median(int(r["round trips"]) for r in runs)
        nbytes = statistics.median(int(r["total bytes"]) for r in runs)
        cpu = statistics.median(float(r["reconcile seconds"]) for r in runs)
        per_diff = f"; {nbytes / diff:,.0f} B per difference" if diff > 1 else ""
        cfg.rows.append(Row(f"reconcile: {diff:,} missing among 1,000,000 IDs", aim,
                            f"{trips:g} round trips, {nbytes:,.0f} B",
                            f"median of {len(runs)} seeds; in memory, {ms(cpu)} CPU for both sides{per_diff}"))


# ------------------------------------------------------------------------------------------------ blob
def bench_blob(cfg: Config) -> None:
    with Scope(cfg.base, "blob") as scope:
        node = start_node(scope)
        import trio

        ups, downs, pipelined, counts = trio.run(_blob_runs, scope.dir, node, cfg.blob_mib << 20, cfg.runs)
    note = f"{cfg.blob_mib} MiB random file = {counts[0]} blobs of {counts[1] / counts[0] / 2**20:.2f} MiB on average"
    cfg.rows.append(Row("blob upload, device → node (SpaceSync.sync_once)", "≥ 200 MB/s",
                        f"{statistics.median(ups):.0f} MB/s",
                        f"median of {len(ups)}, {spread(ups, lambda v: f'{v:.0f}')}; {note}; includes the TLS "
                        "handshake, the change reconciliation and the one change"))
    cfg.rows.append(Row("blob download, node → device (SpaceSync.fetch_blob, one connection)", "≥ 200 MB/s",
                        f"{statistics.median(downs):.0f} MB/s",
                        f"median of {len(downs)}, {spread(downs, lambda v: f'{v:.0f}')}; one blob at a time, as "
                        "`anysyncfs sync` fetches; each blob verified and stored"))
    cfg.rows.append(Row(f"blob download with {INFLIGHT} fetch_blob calls in flight (diagnostic)", "—",
                        f"{statistics.median(pipelined):.0f} MB/s",
                        f"median of {len(pipelined)}, {spread(pipelined, lambda v: f'{v:.0f}')}; same connection and "
                        "blobs: how much overlapping transfer, hashing and disk writes would give"))


async def _blob_runs(work: Path, node_text: str, size: int, runs: int
                     ) -> tuple[list[float], list[float], list[float], tuple[int, int]]:
    """Per run: a new space with one random file, uploaded, then downloaded twice (one fetch at a time, then
    INFLIGHT at a time). Returns MB/s of (uploads, downloads, pipelined downloads) and (blobs, bytes)."""
    import trio

    from anysyncfs.core import keys
    from anysyncfs.core.address import parse_address
    from anysyncfs.net.endpoint import Endpoint
    from anysyncfs.net.runner import Runner
    from anysyncfs.net.sync import SpaceSync
    from anysyncfs.replica import Home, create_space
    from anysyncfs.replica.files import put_file

    addr = parse_address(node_text)
    phrase = keys.generate_phrase()
    a = Home(work / "a", scrypt_log2_n=4).create_identity(phrase, "a", PASSPHRASE.encode())
    ups: list[float] = []
    downs: list[float] = []
    pipelined: list[float] = []
    counts = (0, 0)
    try:
        for run in range(runs):
            # A fresh space per run: its own chunk keys, so every blob is new to the node.
            replica = create_space(a, f"bench-{run}")
            data = os.urandom(size)
            await trio.to_thread.run_sync(put_file, replica, "/big.bin", data)
            store, space_id = replica.store, replica.space_id
            blob_ids = store.pending_uploads(space_id, 1 << 30)
            nbytes = sum(replica.blobs.size_of(b) for b in blob_ids)
            counts = (len(blob_ids), nbytes)
            store.add_peer(space_id, str(addr), addr.device)
            start = time.perf_counter()
            report = await SpaceSync(replica, Endpoint(a.identity), Runner()).sync_once()
            seconds = time.perf_counter() - start
            if report.errors or report.blobs_uploaded != len(blob_ids):
                raise BenchError(f"upload: {report.errors or report.blobs_uploaded}")
            ups.append(nbytes / 1e6 / seconds)

            for inflight, results in ((1, downs), (INFLIGHT, pipelined)):
                seconds = await _download(work / f"b{run}-{inflight}", phrase, addr, space_id, blob_ids, inflight,
                                          data)
                results.append(nbytes / 1e6 / seconds)
    finally:
        a.home.close()
    return ups, downs, pipelined, counts


async def _download(root: Path, phrase: str, addr: PeerAddress, space_id: bytes, blob_ids: list[bytes], inflight: int,
                    data: bytes) -> float:
    """A fresh device of the account fetches the space's metadata, then every blob over one connection with
    ``inflight`` fetch_blob calls at a time; returns the seconds of the blob fetches alone (then checks the file)."""
    import trio

    from anysyncfs.net.endpoint import Endpoint
    from anysyncfs.net.fetch_space import _sync_space
    from anysyncfs.net.runner import Runner
    from anysyncfs.net.sync import SpaceSync
    from anysyncfs.replica import Home, Replica
    from anysyncfs.replica.files import read_file, resolve

    home = Home(root, scrypt_log2_n=4)
    device = home.create_identity(phrase, root.name, PASSPHRASE.encode())
    try:
        home.store().add_peer(space_id, str(addr), addr.device)
        meta = await _sync_space(device, space_id, "bench", False, None, 600.0)  # changes only
        if meta.reached != 1:
            raise BenchError(f"metadata fetch: {meta.errors}")
        replica = Replica(device, home.store(), home.blobs(), space_id)
        sync = SpaceSync(replica, Endpoint(device.identity), Runner())
        slots = trio.Semaphore(inflight)

        async def fetch(blob_id: bytes) -> None:
            async with slots:
                await sync.fetch_blob(blob_id, timeout=60)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.hold_connection, addr)
            with trio.fail_after(60):
                while not sync._conns:  # the connection the fetches use is up: time the transfer only
                    await trio.sleep(0.01)
            start = time.perf_counter()
            async with trio.open_nursery() as fetches:
                for blob_id in blob_ids:
                    fetches.start_soon(fetch, blob_id)
            seconds = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        got = await trio.to_thread.run_sync(lambda: b"".join(read_file(replica, resolve(replica.tree, "/big.bin"))))
        if got != data:
            raise BenchError("the second device read other bytes than were written")
        return seconds
    finally:
        home.close()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ latency
def wait_for(path: Path, expected: bytes, timeout: float) -> float | None:
    """perf_counter() when ``path`` first holds ``expected`` (polled every POLL_S), None after ``timeout``."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                if f.read(len(expected) + 1) == expected:
                    return time.perf_counter()
        except OSError:
            pass
        if time.perf_counter() > deadline:
            return None
        time.sleep(POLL_S)


def measure_latency(src: Path, dst: Path, count: int, *, overwrite: bool, tag: str) -> tuple[list[float], int]:
    """``count`` times: write a small file with unique content in ``src`` (open/write/close), poll ``dst`` until it
    shows that content. The clock starts at close(). Returns (seconds of the samples that arrived, lost)."""
    samples: list[float] = []
    lost = 0
    for i in range(count + 1):  # sample 0 warms the path up and is not counted
        name = f"{tag}.txt" if overwrite else f"{tag}-{i}.txt"
        content = f"{tag} {i} {os.urandom(8).hex()}\n".encode()
        with open(src / name, "wb") as f:
            f.write(content)
            start = time.perf_counter()  # the clock starts as close() is called, on leaving the block
        arrived = wait_for(dst / name, content, LATENCY_TIMEOUT_S)
        if i == 0:
            if arrived is None:
                raise BenchError(f"the first file never arrived in {dst}")
            continue
        if arrived is None:
            lost += 1
        else:
            samples.append(arrived - start)
    return samples, lost


def two_mounts(scope: Scope, options: str) -> tuple[Path, Path]:
    """A node, device A with a space mounted at <dir>/A, device B (same account) with it mounted at <dir>/B."""
    node = start_node(scope)
    a_home, b_home = scope.dir / "home-a", scope.dir / "home-b"
    phrase = new_device(a_home, node)
    space = cli(a_home, "space", "create", "bench").strip()
    cli(a_home, "space", "add-peer", space, node)
    cli(a_home, "put", space, "/seed.txt", text_in="seed\n")
    cli(a_home, "sync", space)
    new_device(b_home, node, phrase=phrase)
    cli(b_home, "space", "add-peer", space, node)
    cli(b_home, "sync", space, "--name", "bench")
    mount(scope, a_home, space, scope.dir / "A", options)
    mount(scope, b_home, space, scope.dir / "B", options)
    wait_connected(a_home, space)
    wait_connected(b_home, space)
    return scope.dir / "A", scope.dir / "B"


def bench_latency(cfg: Config) -> None:
    with Scope(cfg.base, "latency") as scope:
        a, b = two_mounts(scope, "sync_interval=30")
        for overwrite in (False, True):
            samples, lost = measure_latency(a, b, cfg.count, overwrite=overwrite, tag="over" if overwrite else "new")
            what = "overwrite of one file" if overwrite else "new file"
            cfg.rows.append(Row(f"latency, mount A close() → mount B readable, {what}", "< 1 s",
                                latency_text(samples, lost),
                                f"{len(samples)} samples, small file (inline in its change), B polled every "
                                f"{POLL_S * 1000:g} ms; node + 2 mounts, sync_interval=30"))


# ------------------------------------------------------------------------------------------------ first byte
def bench_first_byte(cfg: Config) -> None:
    size = int(cfg.file_gib * (1 << 30))
    with Scope(cfg.base, "first-byte") as scope:
        node = start_node(scope)
        a_home = scope.dir / "home-a"
        phrase = new_device(a_home, node)
        space = cli(a_home, "space", "create", "bench").strip()
        cli(a_home, "space", "add-peer", space, node)
        source = scope.dir / "source.bin"
        random_file(source, size)
        with open(source, "rb") as f:
            start = time.perf_counter()
            cli(a_home, "put", space, "/big.bin", stdin=f)
            put_s = time.perf_counter() - start
        source.unlink()
        start = time.perf_counter()
        cli(a_home, "sync", space)
        upload_s = time.perf_counter() - start
        times: list[float] = []
        for run in range(cfg.runs):
            b_home = scope.dir / f"home-b{run}"  # a fresh device each run: nothing of the file is local
            new_device(b_home, node, phrase=phrase)
            cli(b_home, "space", "add-peer", space, node)
            cli(b_home, "sync", space, "--name", "bench", "--metadata-only")
            mountpoint = scope.dir / f"B{run}"
            mount(scope, b_home, space, mountpoint, "sync_interval=30")
            wait_connected(b_home, space)
            drop_caches()
            start = time.perf_counter()
            fd = os.open(mountpoint / "big.bin", os.O_RDONLY)
            first = os.read(fd, 1)
            times.append(time.perf_counter() - start)
            os.close(fd)
            if len(first) != 1:
                raise BenchError("read(fd, 1) returned nothing")
            scope.unmount(mountpoint)
            shutil.rmtree(b_home, ignore_errors=True)
    size_text = f"{cfg.file_gib:g} GiB"
    cfg.rows.append(Row(f"first byte of an uncached {size_text} file through the node", "≤ 50 ms",
                        ms(statistics.median(times)),
                        f"median of {len(times)} fresh devices, {spread(times, ms)}; open() + read(fd, 1) after "
                        f"`sync --metadata-only`, mount, engine connected, page cache dropped. Writer: `put` "
                        f"{size / 1e6 / put_s:.0f} MB/s, `sync` upload {size / 1e6 / upload_s:.0f} MB/s"))


# ------------------------------------------------------------------------------------------------ syncthing
@dataclass
class Syncthing:
    home: Path
    folder: Path
    device_id: str
    api_key: str
    listen: int
    gui: int
    config: ET.Element  # the root of its config.xml, edited in memory, then written back

    def api(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui}{path}", headers={"X-API-Key": self.api_key})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())


def syncthing_generate(scope: Scope, name: str) -> Syncthing:
    home = scope.dir / f"st-{name}"
    r = subprocess.run(["syncthing", "generate", "--home", str(home), "--no-default-folder", "--skip-port-probing"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"syncthing generate: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    config = ET.parse(home / "config.xml").getroot()
    device = config.find("device")
    api_key = config.findtext("gui/apikey")
    if device is None or not api_key:
        raise BenchError("syncthing generate wrote a config.xml without a device or an API key")
    folder = scope.dir / f"folder-{name}"
    folder.mkdir()
    (folder / ".stfolder").mkdir()
    return Syncthing(home, folder, device.get("id", ""), api_key, free_port(), free_port(), config)


def syncthing_configure(me: Syncthing, other: Syncthing, delay: int) -> None:
    """Loopback only: static addresses, no discovery, relays, NAT, usage or crash reporting, upgrades; one folder
    shared with the other instance. Folder and device entries are copies of the generated defaults."""
    root = me.config
    options = root.find("options")
    assert options is not None
    settings = {"listenAddress": f"tcp://127.0.0.1:{me.listen}", "globalAnnounceEnabled": "false",
                "localAnnounceEnabled": "false", "relaysEnabled": "false", "natEnabled": "false",
                "urAccepted": "-1", "startBrowser": "false", "crashReportingEnabled": "false",
                "autoUpgradeIntervalH": "0"}
    for key, value in settings.items():
        el = options.find(key)
        if el is None:
            el = ET.SubElement(options, key)
        el.text = value
    gui = root.find("gui")
    assert gui is not None
    gui.set("tls", "false")
    address = gui.find("address")
    assert address is not None
    address.text = f"127.0.0.1:{me.gui}"
    default_device, default_folder = root.find("defaults/device"), root.find("defaults/folder")
    if default_device is None or default_folder is None:
        raise BenchError("the generated config.xml has no <defaults>; this Syncthing is too old for the bench")
    peer = ET.fromstring(ET.tostring(default_device))
    peer.set("id", other.device_id)
    peer.set("name", other.home.name)
    addr = peer.find("address")
    assert addr is not None
    addr.text = f"tcp://127.0.0.1:{other.listen}"
    first_folder = next((i for i, el in enumerate(root) if el.tag != "device"), len(root))
    root.insert(first_folder, peer)
    folder = ET.fromstring(ET.tostring(default_folder))
    folder.attrib.update({"id": "bench", "label": "bench", "path": str(me.folder), "fsWatcherEnabled": "true",
                          "fsWatcherDelayS": str(delay)})
    for d in folder.findall("device"):
        folder.remove(d)
    for device_id in (me.device_id, other.device_id):
        ET.SubElement(folder, "device", {"id": device_id, "introducedBy": ""})
    root.insert(first_folder, folder)
    ET.ElementTree(root).write(me.home / "config.xml")


def syncthing_wait_ready(pair: list[Syncthing], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            conns = [st.api("/rest/system/connections") for st in pair]
            states = [st.api("/rest/db/status?folder=bench") for st in pair]
            connected = all(c["connections"].get(o.device_id, {}).get("connected")
                            for c, o in zip(conns, reversed(pair)))
            idle = all(s.get("state") == "idle" for s in states)
            if connected and idle:
                return
            last = f"connected={connected}, states={[s.get('state') for s in states]}"
        except (OSError, ValueError, KeyError) as e:
            last = str(e)
        time.sleep(0.5)
    raise BenchError(f"the two Syncthing instances did not connect ({last})")


def bench_syncthing(cfg: Config) -> None:
    if shutil.which("syncthing") is None:
        cfg.rows.append(Row("Syncthing (reference)", "—", "not run",
                            "the `syncthing` command is missing (scripts/bench_sync installs the Debian package "
                            "`syncthing`; that failed or this script was run directly)"))
        return
    version = subprocess.run(["syncthing", "--version"], capture_output=True, text=True, timeout=60).stdout.split()
    for delay in SYNCTHING_DELAYS:
        label = f"fsWatcherDelayS={delay}" + (" (Syncthing's default)" if delay == 10 else "")
        try:
            with Scope(cfg.base, f"syncthing-{delay}") as scope:
                pair = [syncthing_generate(scope, "a"), syncthing_generate(scope, "b")]
                syncthing_configure(pair[0], pair[1], delay)
                syncthing_configure(pair[1], pair[0], delay)
                env = dict(os.environ, STNOUPGRADE="1", STNODEFAULTFOLDER="1")
                for st in pair:
                    scope.spawn(st.home.name, ["syncthing", "serve", "--home", str(st.home), "--no-browser",
                                               "--no-restart", "--no-upgrade", "--logfile=-"], env=env)
                syncthing_wait_ready(pair)
                for overwrite in (False, True):
                    samples, lost = measure_latency(pair[0].folder, pair[1].folder, cfg.count, overwrite=overwrite,
                                                    tag="over" if overwrite else "new")
                    what = "overwrite of one file" if overwrite else "new file"
                    cfg.rows.append(Row(f"Syncthing {' '.join(version[1:2])}, {label}: latency, {what}",
                                        "(reference)", latency_text(samples, lost),
                                        f"{len(samples)} samples; two instances on 127.0.0.1, folder watcher on, "
                                        "discovery, relays and NAT off"))
        except (BenchError, OSError, subprocess.SubprocessError, ET.ParseError) as e:
            cfg.rows.append(Row(f"Syncthing, {label}", "(reference)", "failed", str(e)))


# ------------------------------------------------------------------------------------------------ report
def machine_notes() -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    return [f"date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            f"machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}",
            f"python {platform.python_version()}; anysyncfs git {rev.stdout.strip() or '?'}"
            + (" + uncommitted changes" if dirty.stdout.strip() else "")
            + f"; 1-minute load average at the start: {os.getloadavg()[0]:.1f}"]


def table(rows: list[Row]) -> str:
    lines = ["| workload | aim | measured | notes |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.workload} | {r.aim} | {r.measured} | {r.notes} |" for r in rows]
    return "\n".join(lines)


BENCHES: dict[str, Callable[[Config], None]] = {
    "reconcile": bench_reconcile, "blob": bench_blob, "latency": bench_latency, "first-byte": bench_first_byte,
    "syncthing": bench_syncthing}


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM (or SIGHUP) unwinds like Ctrl-C, so every scope is cleaned up."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def is_interrupt(e: BaseException) -> bool:
    if isinstance(e, KeyboardInterrupt):
        return True
    return isinstance(e, BaseExceptionGroup) and e.subgroup(KeyboardInterrupt) is not None


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=f"any of {', '.join(WORKLOADS)} (default all)")
    parser.add_argument("--runs", type=int, default=3, help="runs of reconcile, blob and first-byte (default 3)")
    parser.add_argument("--count", type=int, default=20, help="latency samples per row (default 20)")
    parser.add_argument("--blob-mib", type=int, default=256, help="size of the blob workload's file (default 256)")
    parser.add_argument("--file-gib", type=float, default=1.0, help="size of the first-byte file (default 1)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the work directory goes")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 run, 5 samples, 32 MiB and 64 MiB files")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r} (choose from {', '.join(WORKLOADS)})")
    if args.quick:
        args.runs, args.count, args.blob_mib, args.file_gib = 1, 5, 32, 1 / 16
    if args.runs < 1 or args.count < 1 or args.blob_mib < 1 or args.file_gib <= 0:
        parser.error("--runs, --count, --blob-mib and --file-gib must be positive")
    return Config(args.dir, args.runs, args.count, args.blob_mib, args.file_gib, args.workloads or list(WORKLOADS),
                  args.json)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    notes = machine_notes()
    print("\n".join(notes), file=sys.stderr)
    cfg.base.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="anysyncfs-bench-sync-", dir=cfg.base))
    cfg.base = base
    interrupted = False
    try:
        with sigterm_as_interrupt():
            for name in cfg.workloads:
                print(f"== {name}", file=sys.stderr, flush=True)
                before = len(cfg.rows)
                started = time.monotonic()
                load_before = os.getloadavg()[0]
                try:
                    BENCHES[name](cfg)
                except (BenchError, OSError, subprocess.SubprocessError) as e:
                    cfg.rows.append(Row(name, "", "failed", re.sub(r"\s+", " ", str(e))[:300]))
                for row in cfg.rows[before:]:
                    print(f"   {row.workload}: {row.measured}", file=sys.stderr, flush=True)
                print(f"   ({time.monotonic() - started:.0f} s; load average {load_before:.1f} before, "
                      f"{os.getloadavg()[0]:.1f} after)", file=sys.stderr, flush=True)
    except BaseException as e:  # noqa: BLE001 - Ctrl-C may arrive wrapped in trio's exception group
        if not is_interrupt(e):
            raise
        interrupted = True
        print("interrupted: cleaned up", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\n".join(notes))
    print()
    print(table(cfg.rows))
    if cfg.json_path is not None:
        cfg.json_path.write_text(json.dumps({"notes": notes, "rows": [vars(r) for r in cfg.rows]}, indent=1))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
