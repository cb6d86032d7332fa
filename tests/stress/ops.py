"""The operation generator of the stress runner: seeded, and driven by the model's state only, so a seed replays the
same operations (up to the first kill -9, after which what the mount recovered steers the rest)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .model import DIR, FILE, SYMLINK, Model

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DIR_NAMES = ("d0", "d1", "d2")
NAMES = ("a", "b", "c", "d", "e", "f", "d0", "d1")  # shared with directory names: renames collide with them
MAX_OPEN = 6
FILE_MODES = (0o600, 0o644, 0o640, 0o700, 0o755, 0o664)
DIR_MODES = (0o700, 0o755, 0o750)

# Relative weights of the operations (kill and remount come from the runner's own rates).
WEIGHTS: dict[str, int] = {
    "open": 10, "close": 8, "write": 24, "read": 12, "truncate": 5, "ftruncate": 4, "mmap_read": 3,
    "mmap_write": 3, "fsync": 3, "fdatasync": 2, "fsyncdir": 1, "rename": 7, "link": 3, "unlink": 5,
    "symlink": 2, "mkdir": 2, "rmdir": 2, "chmod": 3, "utimens": 3, "pause": 1,
}


@dataclass(frozen=True)
class Slot:
    """An open descriptor as the model sees it."""

    ino: int
    readable: bool
    writable: bool
    append: bool


@dataclass(frozen=True)
class Op:
    kind: str
    path: str = ""
    path2: str = ""
    slot: int = -1
    offset: int = 0
    length: int = 0
    flags: tuple[str, ...] = ()
    mode: int = 0
    seed: int = 0  # of the bytes written

    def data(self) -> bytes:
        return random.Random(self.seed).randbytes(self.length)

    def __str__(self) -> str:
        fields = [self.kind]
        for name in ("path", "path2"):
            if getattr(self, name):
                fields.append(f"{name}={getattr(self, name)!r}")
        if self.slot >= 0:
            fields.append(f"slot={self.slot}")
        if self.offset or self.length:
            fields.append(f"offset={self.offset} length={self.length}")
        if self.flags:
            fields.append("flags=" + "|".join(self.flags))
        if self.mode:
            fields.append(f"mode={oct(self.mode)}")
        return " ".join(fields)


class Generator:
    def __init__(self, seed: int, big_rate: float = 0.004) -> None:
        self.rng = random.Random(seed)
        self.big_rate = big_rate  # share of writes and truncations past 4 GiB

    def next(self, model: Model, slots: list[Slot]) -> Op:
        while True:
            kind = self.rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
            op = getattr(self, "_" + kind)(model, slots)
            if op is not None:
                return op

    # ------------------------------------------------------------------------------------------ choices
    def _dirs(self, model: Model) -> list[str]:
        return [""] + [p for p, n in model.walk() if n.kind == DIR]

    def _new_path(self, model: Model) -> str:
        """A name in an existing directory (it may exist already: errors are tested too)."""
        d = self.rng.choice(self._dirs(model))
        depth = d.count("/") + 1 if d else 0
        names = NAMES if depth < 2 else NAMES[:6]
        return f"{d}/{self.rng.choice(names)}" if d else self.rng.choice(names)

    def _existing(self, model: Model, *kinds: str) -> str | None:
        paths = [p for p, n in model.walk() if n.kind in kinds]
        return self.rng.choice(paths) if paths else None

    def _slot(self, slots: list[Slot], *, readable: bool = False, writable: bool = False) -> int | None:
        ok = [i for i, s in enumerate(slots) if (s.readable or not readable) and (s.writable or not writable)]
        return self.rng.choice(ok) if ok else None

    def _size(self) -> int:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.randint(1, 100)
        if r < 0.7:
            return self.rng.randint(1, 8 * KiB)
        if r < 0.9:
            return self.rng.randint(1, 128 * KiB)
        return self.rng.randint(1, 512 * KiB)

    def _offset(self, size: int) -> int:
        r = self.rng.random()
        if r < self.big_rate:
            return 4 * GiB + self.rng.randrange(2 * GiB)  # past 4 GiB: a sparse file
        if r < 0.3:
            return size
        if r < 0.7:
            return self.rng.randrange(size) if size else 0
        if r < 0.85:
            return size + self.rng.randint(1, 256 * KiB)  # a hole
        return self.rng.randrange(min(size, 64 * KiB) + 1)

    # ------------------------------------------------------------------------------------------ operations
    def _open(self, model: Model, slots: list[Slot]) -> Op | None:
        if len(slots) >= MAX_OPEN:
            return None
        flags: list[str] = [self.rng.choice(("O_RDWR", "O_RDWR", "O_RDONLY", "O_WRONLY"))]
        existing = self._existing(model, FILE)
        if existing is None or self.rng.random() < 0.4:
            path = self._new_path(model)
            node = model.lookup(path)
            if node is not None and node.kind == SYMLINK:
                return None  # opening follows symlinks: the model does not
            flags.append("O_CREAT")
            if self.rng.random() < 0.2:
                flags.append("O_EXCL")
        else:
            path = existing
        if flags[0] != "O_RDONLY":
            if self.rng.random() < 0.1:
                flags.append("O_TRUNC")
            if self.rng.random() < 0.1:
                flags.append("O_APPEND")
        return Op("open", path=path, flags=tuple(flags), mode=self.rng.choice(FILE_MODES))

    def _close(self, model: Model, slots: list[Slot]) -> Op | None:
        return Op("close", slot=self.rng.randrange(len(slots))) if slots else None

    def _write(self, model: Model, slots: list[Slot]) -> Op | None:
        i = self._slot(slots, writable=True)
        if i is None:
            return None
        size = model.get(slots[i].ino).content.size
        return Op("write", slot=i, offset=self._offset(size), length=self._size(), seed=self.rng.getrandbits(64))

    def _read(self, model: Model, slots: list[Slot]) -> Op | None:
        i = self._slot(slots, readable=True)
        if i is None:
            return None
        size = model.get(slots[i].ino).content.size
        offset = self.rng.randrange(size + 10 * KiB) if self.rng.random() < 0.9 or not size else size - 1
        return Op("read", slot=i, offset=offset, length=self._size())

    def _new_size(self, size: int) -> int:
        r = self.rng.random()
        if r < self.big_rate:
            return 4 * GiB + self.rng.randrange(2 * GiB)
        if r < 0.5:
            return self.rng.randrange(size + 1)
        if r < 0.6:
            return 0
        return size + self.rng.randint(1, 300 * KiB)

    def _truncate(self, model: Model, slots: list[Slot]) -> Op | None:
        path = self._existing(model, FILE, DIR) if self.rng.random() < 0.05 else self._existing(model, FILE)
        if path is None:
            return None
        node = model.lookup(path)
        assert node is not None
        return Op("truncate", path=path, length=self._new_size(node.content.size))

    def _ftruncate(self, model: Model, slots: list[Slot]) -> Op | None:
        i = self._slot(slots, writable=True)
        if i is None:
            return None
        return Op("ftruncate", slot=i, length=self._new_size(model.get(slots[i].ino).content.size))

    def _mmap(self, kind: str, model: Model, slots: list[Slot]) -> Op | None:
        ok = [i for i, s in enumerate(slots) if s.readable and s.writable and not s.append
              and model.get(s.ino).content.size > 0]
        if not ok:
            return None
        i = self.rng.choice(ok)
        size = model.get(slots[i].ino).content.size
        offset = self.rng.randrange(size)
        length = self.rng.randint(1, min(size - offset, 128 * KiB))
        return Op(kind, slot=i, offset=offset, length=length, seed=self.rng.getrandbits(64))

    def _mmap_read(self, model: Model, slots: list[Slot]) -> Op | None:
        return self._mmap("mmap_read", model, slots)

    def _mmap_write(self, model: Model, slots: list[Slot]) -> Op | None:
        return self._mmap("mmap_write", model, slots)

    def _fsync(self, model: Model, slots: list[Slot]) -> Op | None:
        return Op("fsync", slot=self.rng.randrange(len(slots))) if slots else None

    def _fdatasync(self, model: Model, slots: list[Slot]) -> Op | None:
        return Op("fdatasync", slot=self.rng.randrange(len(slots))) if slots else None

    def _fsyncdir(self, model: Model, slots: list[Slot]) -> Op | None:
        return Op("fsyncdir", path=self.rng.choice(self._dirs(model)))

    def _rename(self, model: Model, slots: list[Slot]) -> Op | None:
        src = self._existing(model, FILE, FILE, FILE, DIR, SYMLINK)
        if src is None:
            return None
        if self.rng.random() < 0.3:
            dst = self._existing(model, FILE, DIR, SYMLINK) or self._new_path(model)  # over an existing name
        else:
            dst = self._new_path(model)
        return Op("rename", path=src, path2=dst)

    def _link(self, model: Model, slots: list[Slot]) -> Op | None:
        src = self._existing(model, FILE)
        return Op("link", path=src, path2=self._new_path(model)) if src is not None else None

    def _unlink(self, model: Model, slots: list[Slot]) -> Op | None:
        path = self._existing(model, FILE, SYMLINK) if self.rng.random() < 0.9 else self._new_path(model)
        return Op("unlink", path=path) if path is not None else None

    def _symlink(self, model: Model, slots: list[Slot]) -> Op | None:
        target = self.rng.choice(("a", "../b", "/tmp/nowhere", "d0/c", "x" * self.rng.randint(1, 300)))
        return Op("symlink", path=self._new_path(model), path2=target)

    def _mkdir(self, model: Model, slots: list[Slot]) -> Op | None:
        d = self.rng.choice([p for p in self._dirs(model) if p.count("/") < 1])
        name = self.rng.choice(DIR_NAMES + NAMES[:2])
        return Op("mkdir", path=f"{d}/{name}" if d else name, mode=self.rng.choice(DIR_MODES))

    def _rmdir(self, model: Model, slots: list[Slot]) -> Op | None:
        path = self._existing(model, DIR)
        return Op("rmdir", path=path) if path is not None else None

    def _chmod(self, model: Model, slots: list[Slot]) -> Op | None:
        path = self._existing(model, FILE, FILE, DIR)
        if path is None:
            return None
        node = model.lookup(path)
        assert node is not None
        return Op("chmod", path=path, mode=self.rng.choice(DIR_MODES if node.kind == DIR else FILE_MODES))

    def _pause(self, model: Model, slots: list[Slot]) -> Op | None:
        """Nothing for up to 30 ms (length: microseconds): the batch timer commits in the background meanwhile,
        so a kill that follows finds less pending."""
        return Op("pause", length=self.rng.randrange(30_000))

    def _utimens(self, model: Model, slots: list[Slot]) -> Op | None:
        path = self._existing(model, FILE, FILE, DIR)
        if path is None:
            return None
        return Op("utimens", path=path, offset=self.rng.randrange(1_000_000_000, 2_000_000_000) * 10**9
                  + self.rng.randrange(10**9))
