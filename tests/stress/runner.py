"""Run seeded random operations on a mounted file system and check it against the model after every operation.

After every operation: its result (bytes read, errno of a refused call) and the whole namespace (every path, its
kind, mode, size, link count, symlink target, which names share an inode, mtime where the model knows it); after
every data operation the bytes around what it changed; every ``full_every`` operations and after every remount
or kill, the content of every file (all of it up to 8 MiB; past that, every block the model holds data in plus
sampled holes and the last block). A clean remount must change nothing. After a kill -9, see :mod:`.model`: the
tree must be one the model passed through since the last whole-tree durable point, and each file's content and
mode one it had since its own last fsync.

A failure raises :class:`StressFailure` naming the seed and the operation's index: ``scripts/soak --seed S --ops
N ...`` (with the rates and mount options it prints) replays it, exactly up to the first kill; after a kill,
what the mount recovered steers the generator.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import shlex
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .model import BLOCK, DIR, FILE, SYMLINK, Content, Inode, Model, ModelError, Snapshot, digest
from .ops import Generator, Op, Slot

FULL_READ_MAX = 8 << 20  # files up to this size are compared whole
FLAGS = {"O_RDONLY": os.O_RDONLY, "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR, "O_CREAT": os.O_CREAT,
         "O_EXCL": os.O_EXCL, "O_TRUNC": os.O_TRUNC, "O_APPEND": os.O_APPEND}


class MountControl(Protocol):
    """What the runner needs from whoever mounted the file system."""

    def remount(self) -> None:
        """Clean unmount (every descriptor is closed), then mount again."""

    def kill(self) -> None:
        """kill -9 the mount process and wait for it to exit."""

    def restart(self) -> None:
        """After :meth:`kill` (and the runner closed its descriptors): clean up the dead mount, mount again."""


def utime_ns(path: str, atime_ns: int, mtime_ns: int) -> None:
    os.utime(path, ns=(atime_ns, mtime_ns))


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class StressFailure(AssertionError):
    pass


@dataclass
class Stats:
    ops: int = 0
    kills: int = 0
    remounts: int = 0
    refused: int = 0  # operations that failed with the errno the model expected
    fsyncs: int = 0
    bytes_written: int = 0
    big_files: int = 0  # writes and truncations past 4 GiB
    recovered_back: list[int] = field(default_factory=list)  # per kill: how many namespace states were lost
    seconds: float = 0.0

    def add(self, other: Stats) -> None:
        for name in ("ops", "kills", "remounts", "refused", "fsyncs", "bytes_written", "big_files", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.recovered_back += other.recovered_back


@dataclass
class Real:
    """A real descriptor beside its model slot."""

    fd: int
    slot: Slot


class Runner:
    def __init__(self, mountpoint: Path, seed: int, control: MountControl | None = None, *,
                 kill_rate: float = 0.0, remount_rate: float = 0.0, full_every: int = 200, names_every: int = 20,
                 big_rate: float = 0.004, options: str = "") -> None:
        self.root = mountpoint
        self.seed = seed
        self.control = control
        self.kill_rate = kill_rate if control is not None else 0.0
        self.remount_rate = remount_rate if control is not None else 0.0
        self.full_every = full_every
        self.names_every = names_every
        rate = lambda r: f"{1 / r:g}" if r else "0"  # noqa: E731
        self.replay = (f"--kill-every {rate(self.kill_rate)} --remount-every {rate(self.remount_rate)} "
                       f"--options {shlex.quote(options)}" + (f" --big-every {1 / big_rate:g}" if big_rate != 0.004
                                                              else ""))
        self.model = Model()
        self.gen = Generator(seed, big_rate)
        self.rng = random.Random(seed ^ 0x5EED)  # kills and remounts: not drawn from the generator's stream
        self.sampler = random.Random(seed ^ 0xB10C)  # which holes of a large file are read
        self.umask = current_umask()
        self.fds: list[Real] = []
        self.inos: dict[int, int] = {}  # model inode -> st_ino
        self.stats = Stats()
        self.index = -1
        self.total = 0
        self.op: Op | str = ""

    # ------------------------------------------------------------------------------------------ driver
    def run(self, count: int) -> Stats:
        start = time.monotonic()
        self.total = count
        try:
            for self.index in range(count):
                r = self.rng.random()
                if r < self.kill_rate:
                    self.op = "kill -9 and remount"
                    self.kill()
                elif r < self.kill_rate + self.remount_rate:
                    self.op = "unmount and remount"
                    self.remount()
                else:
                    self.op = self.gen.next(self.model, [f.slot for f in self.fds])
                    self.execute(self.op)
                    self.model.snapshot(self.index)
                    if self.names_every and self.index % self.names_every == 0:
                        self.check_names()
                    else:
                        self.check_touched(self.op)
                    if self.full_every and self.index % self.full_every == self.full_every - 1:
                        self.check_contents()
                self.stats.ops += 1
            self.index = count
            self.op = "final check (all descriptors closed)"
            self.close_all()
            self.check_names()
            self.check_contents()
        except StressFailure:
            raise
        except Exception as e:
            self.fail(f"{type(e).__name__}: {e}")
        finally:
            for f in self.fds:
                try:
                    os.close(f.fd)
                except OSError:
                    pass
            self.fds = []
            self.stats.seconds = time.monotonic() - start
        return self.stats

    def fail(self, message: str) -> None:
        raise StressFailure(
            f"stress seed {self.seed}, operation {self.index} ({self.op}): {message}\n"
            f"replay: scripts/soak --seed {self.seed} --ops {min(self.index + 1, self.total)} {self.replay}")

    def expect(self, cond: bool, message: str) -> None:
        if not cond:
            self.fail(message)

    def p(self, path: str) -> str:
        return os.path.join(self.root, path) if path else str(self.root)

    # ------------------------------------------------------------------------------------------ operations
    def execute(self, op: Op) -> None:
        """The model's step (which may say the call must fail, with which errno), then the real call."""
        try:
            getattr(self, "_" + op.kind)(op)
        except ModelError as e:
            got: int | None = None
            try:
                getattr(self, "_real_" + op.kind)(op)
            except OSError as oe:
                got = oe.errno
            self.expect(got == e.errno, f"expected {errno.errorcode[e.errno]}, got "
                        f"{errno.errorcode.get(got, got) if got is not None else 'success'}")
            self.stats.refused += 1

    def _real_call(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except OSError as e:
            self.fail(f"{fn.__name__}{args[:2]!r} failed: {e}; the model expected success")

    def _open(self, op: Op) -> None:
        want = {f for f in op.flags}
        write = "O_RDONLY" not in want
        ino = self.model.open(op.path, "O_CREAT" in want, "O_EXCL" in want, "O_TRUNC" in want, write,
                              op.mode & ~self.umask)
        fd = self._real_call(os.open, self.p(op.path), self._flags(op), op.mode)
        self.fds.append(Real(fd, Slot(ino.id, "O_WRONLY" not in want, write, "O_APPEND" in want)))
        self.check_stat_fd(fd, ino)

    def _flags(self, op: Op) -> int:
        flags = 0
        for f in op.flags:
            flags |= FLAGS[f]
        return flags

    def _real_open(self, op: Op) -> None:
        fd = os.open(self.p(op.path), self._flags(op), op.mode)
        os.close(fd)
        self.fail("open succeeded")

    def _close(self, op: Op) -> None:
        real = self.fds.pop(op.slot)
        self._real_call(os.close, real.fd)
        self.model.close(self.model.get(real.slot.ino))

    def _write(self, op: Op) -> None:
        real = self.fds[op.slot]
        ino = self.model.get(real.slot.ino)
        data = op.data()
        offset = ino.content.size if real.slot.append else op.offset
        self.model.write(ino, offset, data)
        n = self._real_call(os.write, real.fd, data) if real.slot.append else \
            self._real_call(os.pwrite, real.fd, data, offset)
        self.expect(n == len(data), f"wrote {n} of {len(data)} bytes")
        self.stats.bytes_written += len(data)
        self.stats.big_files += offset + len(data) > 1 << 32
        self.check_region(ino, offset - 100, len(data) + 200, real)

    def _read(self, op: Op) -> None:
        real = self.fds[op.slot]
        ino = self.model.get(real.slot.ino)
        want = ino.content.read(op.offset, op.length)
        got = self._real_call(os.pread, real.fd, op.length, op.offset)
        self._compare(ino, op.offset, got, want, "read")

    def _compare(self, ino: Inode, offset: int, got: bytes, want: bytes, what: str) -> None:
        if got != want:
            diff = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            self.fail(f"{what} of inode {ino.id} at {offset}: {len(got)} bytes, want {len(want)} (size "
                      f"{ino.content.size}); first difference at byte {offset + diff}")

    def _truncate(self, op: Op) -> None:
        ino = self.model.lookup(op.path)
        assert ino is not None
        self.model.truncate(ino, op.length)
        self._real_call(os.truncate, self.p(op.path), op.length)
        self.stats.big_files += op.length > 1 << 32
        self.check_region(ino, op.length - 5000, 10_000, None)

    def _real_truncate(self, op: Op) -> None:
        os.truncate(self.p(op.path), op.length)

    def _ftruncate(self, op: Op) -> None:
        real = self.fds[op.slot]
        ino = self.model.get(real.slot.ino)
        self.model.truncate(ino, op.length)
        self._real_call(os.ftruncate, real.fd, op.length)
        self.stats.big_files += op.length > 1 << 32
        self.check_region(ino, op.length - 5000, 10_000, real)

    def _map(self, real: Real, op: Op) -> tuple[mmap.mmap, int]:
        start = op.offset - op.offset % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(real.fd, op.offset + op.length - start, offset=start)
        return mm, op.offset - start

    def _mmap_read(self, op: Op) -> None:
        real = self.fds[op.slot]
        ino = self.model.get(real.slot.ino)
        mm, at = self._map(real, op)
        try:
            got = mm[at : at + op.length]
        finally:
            mm.close()
        self._compare(ino, op.offset, got, ino.content.read(op.offset, op.length), "mmap read")

    def _mmap_write(self, op: Op) -> None:
        real = self.fds[op.slot]
        ino = self.model.get(real.slot.ino)
        data = op.data()
        self.model.write(ino, op.offset, data)
        mm, at = self._map(real, op)
        try:
            mm[at : at + op.length] = data
            mm.flush()  # msync(MS_SYNC): written back and fsync'd
        finally:
            mm.close()
        self.model.durable_file(ino)
        self.model.durable_all(self.index)
        self.stats.bytes_written += len(data)
        self.check_region(ino, op.offset - 100, op.length + 200, real)

    def _pause(self, op: Op) -> None:
        time.sleep(op.length / 1e6)

    def _fsync(self, op: Op) -> None:
        real = self.fds[op.slot]
        self._real_call(os.fsync if op.kind == "fsync" else os.fdatasync, real.fd)
        self.model.durable_file(self.model.get(real.slot.ino))
        self.model.durable_all(self.index)
        self.stats.fsyncs += 1

    _fdatasync = _fsync

    def _fsyncdir(self, op: Op) -> None:
        fd = self._real_call(os.open, self.p(op.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._real_call(os.fsync, fd)
        finally:
            os.close(fd)
        for ino in self.model.inodes.values():
            ino.held = False  # a forced commit: files being written go too, as they are
        self.model.durable_all(self.index)
        self.stats.fsyncs += 1

    def _rename(self, op: Op) -> None:
        self.model.rename(op.path, op.path2)
        self._real_call(os.rename, self.p(op.path), self.p(op.path2))

    def _real_rename(self, op: Op) -> None:
        os.rename(self.p(op.path), self.p(op.path2))

    def _link(self, op: Op) -> None:
        self.model.link(op.path, op.path2)
        self._real_call(os.link, self.p(op.path), self.p(op.path2))

    def _real_link(self, op: Op) -> None:
        os.link(self.p(op.path), self.p(op.path2))

    def _unlink(self, op: Op) -> None:
        self.model.unlink(op.path)
        self._real_call(os.unlink, self.p(op.path))

    def _real_unlink(self, op: Op) -> None:
        os.unlink(self.p(op.path))

    def _symlink(self, op: Op) -> None:
        self.model.symlink(op.path2, op.path)
        self._real_call(os.symlink, op.path2, self.p(op.path))

    def _real_symlink(self, op: Op) -> None:
        os.symlink(op.path2, self.p(op.path))

    def _mkdir(self, op: Op) -> None:
        self.model.mkdir(op.path, op.mode & ~self.umask)
        self._real_call(os.mkdir, self.p(op.path), op.mode)

    def _real_mkdir(self, op: Op) -> None:
        os.mkdir(self.p(op.path), op.mode)

    def _rmdir(self, op: Op) -> None:
        self.model.rmdir(op.path)
        self._real_call(os.rmdir, self.p(op.path))

    def _real_rmdir(self, op: Op) -> None:
        os.rmdir(self.p(op.path))

    def _chmod(self, op: Op) -> None:
        ino = self.model.lookup(op.path)
        assert ino is not None
        self.model.chmod(ino, op.mode)
        self._real_call(os.chmod, self.p(op.path), op.mode)

    def _utimens(self, op: Op) -> None:
        ino = self.model.lookup(op.path)
        assert ino is not None
        self.model.utimens(ino, op.offset)
        self._real_call(utime_ns, self.p(op.path), op.offset - 10**9, op.offset)

    # ------------------------------------------------------------------------------------------ remount, kill
    def close_all(self) -> None:
        while self.fds:
            real = self.fds.pop()
            self._real_call(os.close, real.fd)
            self.model.close(self.model.get(real.slot.ino))

    def remount(self) -> None:
        assert self.control is not None
        self.close_all()
        self.model.snapshot(self.index)
        self.check_names()
        self.control.remount()
        self.stats.remounts += 1
        self.model.durable_everything(self.index)
        self.inos = {}
        self.check_names()
        self.check_contents()

    def kill(self) -> None:
        assert self.control is not None
        self.control.kill()
        for real in self.fds:
            try:
                os.close(real.fd)
            except OSError:
                pass
        self.fds = []
        self.control.restart()
        self.stats.kills += 1
        self.recover()

    # ------------------------------------------------------------------------------------------ checks
    def _ino_map(self, ino: Inode, st_ino: int, path: str) -> None:
        known = self.inos.get(ino.id)
        if known is None:
            other = next((k for k, v in self.inos.items() if v == st_ino), None)
            self.expect(other is None or other not in self.model.inodes,
                        f"{path}: st_ino {st_ino} is also model inode {other}'s")
            self.inos[ino.id] = st_ino
        else:
            self.expect(known == st_ino, f"{path}: st_ino {st_ino}, was {known} (a hard link split or an inode "
                        f"number changed)")

    def check_stat(self, path: str, st: os.stat_result, ino: Inode) -> None:
        kind = DIR if stat.S_ISDIR(st.st_mode) else FILE if stat.S_ISREG(st.st_mode) else \
            SYMLINK if stat.S_ISLNK(st.st_mode) else "other"
        self.expect(kind == ino.kind, f"{path}: a {kind}, the model has a {ino.kind}")
        self._ino_map(ino, st.st_ino, path)
        if ino.kind == SYMLINK:
            target = os.readlink(self.p(path))
            self.expect(target == ino.target, f"{path}: symlink to {target!r}, want {ino.target!r}")
            return
        self.expect(st.st_mode & 0o7777 == ino.mode, f"{path}: mode {oct(st.st_mode & 0o7777)}, want {oct(ino.mode)}")
        if ino.kind == FILE:
            self.expect(st.st_size == ino.content.size, f"{path}: size {st.st_size}, want {ino.content.size}")
            self.expect(st.st_nlink == self.model.nlink(ino), f"{path}: {st.st_nlink} links, want "
                        f"{self.model.nlink(ino)}")
        if ino.mtime_ns is not None:
            self.expect(st.st_mtime_ns == ino.mtime_ns, f"{path}: mtime {st.st_mtime_ns}, want {ino.mtime_ns}")

    def check_touched(self, op: Op) -> None:
        """What one operation changed: the listing of the directories it named, and every name it touched (with
        the kind, mode, size, links, target and mtime of each); the descriptors' sizes."""
        dirs = {p.rsplit("/", 1)[0] if "/" in p else "" for p in (op.path, op.path2) if p and op.kind != "symlink"}
        if op.kind == "symlink":
            dirs = {op.path.rsplit("/", 1)[0] if "/" in op.path else ""}
        paths = {p for p in (op.path, op.path2 if op.kind != "symlink" else "") if p}
        for d in dirs:
            node = self.model.lookup(d)
            if node is None or node.kind != DIR:
                continue
            try:
                got = sorted(os.listdir(self.p(d)))
            except OSError as e:
                self.fail(f"listdir {d!r}: {e}")
            self.expect(got == sorted(node.children), f"directory {d!r} lists {got}, want {sorted(node.children)}")
            paths.add(d)
        for f in self.fds:
            if f.slot.ino in self.model.inodes:
                self.check_stat_fd(f.fd, self.model.inodes[f.slot.ino])
                if op.slot >= 0 and f is self.fds[min(op.slot, len(self.fds) - 1)]:
                    paths.update(p for p, n in self.model.walk() if n.id == f.slot.ino)
        for path in paths:
            node = self.model.lookup(path)
            if node is None:
                self.expect(not os.path.lexists(self.p(path)), f"{path} exists, the model has no such name")
            elif path:
                self.check_stat(path, os.lstat(self.p(path)), node)

    def check_stat_fd(self, fd: int, ino: Inode) -> None:
        st = os.fstat(fd)
        self.expect(st.st_size == ino.content.size, f"fstat of inode {ino.id}: size {st.st_size}, want "
                    f"{ino.content.size}")

    def scan(self) -> dict[str, tuple[str, os.stat_result]]:
        """Every path under the mount (readdir, then lstat): path -> (kind, stat)."""
        out: dict[str, tuple[str, os.stat_result]] = {}

        def visit(rel: str) -> None:
            with os.scandir(self.p(rel)) as it:
                entries = sorted(it, key=lambda e: e.name)
            for e in entries:
                path = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                kind = DIR if stat.S_ISDIR(st.st_mode) else FILE if stat.S_ISREG(st.st_mode) else \
                    SYMLINK if stat.S_ISLNK(st.st_mode) else "other"
                out[path] = (kind, st)
                if kind == DIR:
                    visit(path)

        visit("")
        return out

    def check_names(self) -> None:
        real = self.scan()
        model = dict(self.model.walk())
        missing, extra = sorted(set(model) - set(real)), sorted(set(real) - set(model))
        self.expect(not missing and not extra, f"names differ: missing {missing[:5]}, unexpected {extra[:5]}")
        for path, (_, st) in real.items():
            self.check_stat(path, st, model[path])
        for f in self.fds:
            if f.slot.ino in self.model.inodes:
                self.check_stat_fd(f.fd, self.model.inodes[f.slot.ino])

    def _reader(self, ino: Inode, real: Real | None) -> tuple[int, bool]:
        """A descriptor to read ``ino`` with: a readable open one, else one opened by one of its names."""
        if real is not None and real.slot.readable:
            return real.fd, False
        for f in self.fds:
            if f.slot.ino == ino.id and f.slot.readable:
                return f.fd, False
        path = next((p for p, n in self.model.walk() if n.id == ino.id), None)
        if path is None:
            return -1, False
        return self._real_call(os.open, self.p(path), os.O_RDONLY), True

    def check_region(self, ino: Inode, offset: int, length: int, real: Real | None) -> None:
        offset = max(0, offset)
        fd, close = self._reader(ino, real)
        if fd < 0:
            return
        try:
            got = self._real_call(os.pread, fd, length, offset)
        finally:
            if close:
                os.close(fd)
        self._compare(ino, offset, got, ino.content.read(offset, length), "read back")

    def _blocks_to_read(self, size: int, wanted: set[int]) -> list[int]:
        count = (size + BLOCK - 1) // BLOCK
        if size <= FULL_READ_MAX:
            return list(range(count))
        sample = {self.sampler.randrange(count) for _ in range(4)} | {count - 1}
        return sorted({i for i in wanted if i < count} | sample)

    def _read_blocks(self, fd: int, size: int, idxs: list[int]) -> dict[int, bytes]:
        out = {}
        for idx in idxs:
            want = min(BLOCK, size - idx * BLOCK)
            data = os.pread(fd, want, idx * BLOCK)
            self.expect(len(data) == want, f"short read: {len(data)} of {want} bytes at {idx * BLOCK} (size {size})")
            out[idx] = data
        return out

    def check_contents(self) -> None:
        for ino in list(self.model.files()):
            fd, close = self._reader(ino, None)
            if fd < 0:
                continue
            try:
                size = ino.content.size
                got = self._read_blocks(fd, size, self._blocks_to_read(size, set(ino.content.blocks)))
            finally:
                if close:
                    os.close(fd)
            for idx, data in got.items():
                want = ino.content.read(idx * BLOCK, len(data))
                self._compare(ino, idx * BLOCK, data, want, "content")

    # ------------------------------------------------------------------------------------------ after a kill
    def recover(self) -> None:
        """The mount came back after kill -9: find the state it recovered among those the model allows, check it
        exactly, and continue from it."""
        m = self.model
        real = self.scan()
        matches = [s for s in reversed(m.snapshots) if self._names_match(s, real)]
        if not matches:
            newest, oldest = m.snapshots[-1], m.snapshots[0]
            self.fail(f"after kill -9 the tree is none of the {len(m.snapshots)} the model allows (since operation "
                      f"{oldest.index}): {sorted(real)[:20]} vs newest {[n[0] for n in newest.names][:20]} and "
                      f"oldest {[n[0] for n in oldest.names][:20]}")
        snap = matches[0]
        self.stats.recovered_back.append(len(m.snapshots) - 1 - m.snapshots.index(snap))
        names = {n[0]: n for n in snap.names}
        contents: dict[int, Content] = {}
        modes: dict[int, int] = {}
        for path, (kind, st) in real.items():
            _, _, ino_id, _ = names[path]
            ino = m.get(ino_id)
            if kind == SYMLINK:
                continue
            mode = st.st_mode & 0o7777
            self.expect(mode in ino.modes, f"after kill -9: {path} has mode {oct(mode)}, none of "
                        f"{[oct(x) for x in ino.modes]} (its modes since its last fsync)")
            modes[ino_id] = mode
            if kind == FILE and ino_id not in contents:
                contents[ino_id] = self._recovered_content(path, st.st_size, ino)
        # Continue from the recovered state.
        for ino in list(m.inodes.values()) + list(m.dead.values()):
            ino.children = {}
            ino.opens = 0
            ino.held = False
        keep: dict[int, Inode] = {0: m.get(0)}
        for path, (kind, st) in real.items():
            _, _, ino_id, _ = names[path]
            ino = m.get(ino_id)
            parent = keep[0] if "/" not in path else keep[names[path.rsplit("/", 1)[0]][2]]
            parent.children[path.rsplit("/", 1)[-1]] = ino_id
            keep[ino_id] = ino
            if ino_id in modes:
                ino.mode = modes[ino_id]
            if ino_id in contents:
                ino.content = contents[ino_id]
            ino.mtime_ns = None
        m.inodes = keep
        m.durable_everything(self.index)
        self.inos = {}
        self.check_names()

    def _names_match(self, snap: Snapshot, real: dict[str, tuple[str, os.stat_result]]) -> bool:
        names = {n[0]: n for n in snap.names}
        if not set(real) <= set(names):
            return False
        for path in set(names) - set(real):
            if names[path][2] not in snap.held:
                return False
        st_of: dict[int, int] = {}
        seen: dict[int, int] = {}
        for path, (kind, st) in real.items():
            _, mkind, ino_id, target = names[path]
            if kind != mkind:
                return False
            if kind == SYMLINK and os.readlink(self.p(path)) != target:
                return False
            if st_of.setdefault(ino_id, st.st_ino) != st.st_ino or seen.setdefault(st.st_ino, ino_id) != ino_id:
                return False
        return True

    def _recovered_content(self, path: str, size: int, ino: Inode) -> Content:
        candidates = [(s, dict(d)) for s, d in ino.history if s == size]
        self.expect(bool(candidates), f"after kill -9: {path} has {size} bytes; its contents since its last fsync "
                    f"had sizes {sorted({s for s, _ in ino.history})}")
        wanted = set().union(*(set(d) for _, d in candidates))
        fd = self._real_call(os.open, self.p(path), os.O_RDONLY)
        try:
            got = self._read_blocks(fd, size, self._blocks_to_read(size, wanted))
        finally:
            os.close(fd)
        seen = {idx: digest(b.ljust(BLOCK, b"\0")) for idx, b in got.items() if b.count(0) != len(b)}
        for _, d in candidates:
            if all(d.get(idx) == seen.get(idx) for idx in got) and set(d) <= set(got):
                return Content.from_blocks(size, {idx: b for idx, b in got.items() if idx in seen})
        self.fail(f"after kill -9: {path} ({size} bytes) is torn: its content is none of the {len(ino.history)} it "
                  f"had since its last fsync")
        raise AssertionError  # unreachable
