"""Level 3: ordinary Unix tools on a real mount — cp -a, tar, rsync, git, sqlite3 and an editor's save-by-rename.

The copy tests move a generated tree of a few thousand small files (nested directories, a few MiB-sized files,
symlinks, a hard link, varied modes) into the mount and back out again, and compare everything that matters
(type, mode, size, sha256, symlink target, hard-link grouping, mtime) with the source. Tests that need a remount
use their own mount (``mounted``); the others share one mount per module and work in their own directory.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from .conftest import Mount

SQLITE3 = shutil.which("sqlite3")
RSYNC = shutil.which("rsync")
GIT = shutil.which("git")
TAR = shutil.which("tar")
N_DIRS, N_SUBDIRS, N_FILES = 10, 5, 40  # 10 * 5 * 40 = 2,000 small files
LARGE_SIZES = (1 << 20, 3 << 20, (5 << 20) - 12345)
FILE_MODES = (0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o664)
DIR_MODES = (0o755, 0o750, 0o700, 0o775)
ROWS = 10_000

Snapshot = dict[str, tuple[object, ...]]


def need(tool: str | None, name: str) -> str:
    if tool is None:
        pytest.skip(f"{name} is not installed")
    return tool


def run(*args: str | Path, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    """Run a tool; a non-zero exit fails the test with the tool's stderr."""
    p = subprocess.run([str(a) for a in args], cwd=cwd, input=input, capture_output=True, timeout=120)
    assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr.decode(errors='replace')}"
    return p.stdout


# ---------------------------------------------------------------------------------------------- the test tree
def make_tree(root: Path, seed: int = 3) -> None:
    """2,000 small files in nested directories, 3 files of 1-5 MiB, symlinks, a hard link, varied modes."""
    rnd = random.Random(seed)
    root.mkdir()
    for d in range(N_DIRS):
        for s in range(N_SUBDIRS):
            sub = root / f"dir{d:02d}" / f"sub{s}"
            sub.mkdir(parents=True)
            for f in range(N_FILES):
                size = rnd.choice((0, 1, 17, 100, 511, 1024, 4000, 4096, 9000))
                # Half text (compressible), half random: both paths of the chunk encoder get used.
                body = (f"{d}/{s}/{f} " * (size // 6 + 1)).encode()[:size] if f % 2 else rnd.randbytes(size)
                p = sub / f"file{f:03d}{'.txt' if f % 2 else '.bin'}"
                p.write_bytes(body)
                p.chmod(FILE_MODES[(d + s + f) % len(FILE_MODES)])
    big = root / "big"
    big.mkdir()
    for i, size in enumerate(LARGE_SIZES):
        # One of them partly repetitive, so content-defined chunks repeat inside the file.
        data = rnd.randbytes(size) if i != 1 else (rnd.randbytes(256 << 10) * (size // (256 << 10) + 1))[:size]
        (big / f"large{i}.dat").write_bytes(data)
    (root / "empty-dir").mkdir()
    (root / "name with spaces & ünïcödé.txt").write_bytes("ünïcödé\n".encode())
    os.symlink("dir00/sub0/file001.txt", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling-link")
    os.symlink("dir01", root / "dir-link")
    os.link(root / "dir02" / "sub1" / "file003.txt", root / "big" / "hard-link.txt")
    (root / "big" / "setgid-exec").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "big" / "setgid-exec").chmod(0o2755)
    for d in range(N_DIRS):  # directory modes last: 0o700 and friends must not block our own writes above
        (root / f"dir{d:02d}").chmod(DIR_MODES[d % len(DIR_MODES)])


def snapshot(root: Path, *, mtimes: bool = True) -> Snapshot:
    """path -> (type+mode, size, sha256 or link target, hard-link group, mtime in s) for everything under root."""
    out: Snapshot = {}
    groups: dict[tuple[int, int], str] = {}  # (dev, ino) -> first path seen: hard links name the same group
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = hashlib.file_digest(f, "sha256").hexdigest()
            else:
                body = None
            group = groups.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 and stat.S_ISREG(
                st.st_mode) else None
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None  # directory sizes are fs-specific
            # Symlink times are not restored by every tool (tar and cp do, it depends on the version): skip them.
            mtime = st.st_mtime_ns // 10**9 if mtimes and not stat.S_ISLNK(st.st_mode) else None
            out[rel] = (st.st_mode, size, body, group, mtime)
    return out


def diff(want: Snapshot, got: Snapshot) -> str:
    lines = [f"missing: {k}" for k in sorted(want.keys() - got.keys())]
    lines += [f"extra: {k}" for k in sorted(got.keys() - want.keys())]
    lines += [f"differs: {k}: want {want[k]} got {got[k]}" for k in sorted(want.keys() & got.keys())
              if want[k] != got[k]]
    return "\n".join(lines[:40]) + (f"\n... {len(lines) - 40} more" if len(lines) > 40 else "")


def assert_same(want: Snapshot, got: Snapshot) -> None:
    assert got == want, "trees differ:\n" + diff(want, got)


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Snapshot]:
    root = tmp_path_factory.mktemp("src") / "tree"
    make_tree(root)
    snap = snapshot(root)
    assert len(snap) > 2_000
    return root, snap


# ---------------------------------------------------------------------------------------------- copies
def test_cp_a_round_trip(workdir: Path, source_tree: tuple[Path, Snapshot], tmp_path: Path) -> None:
    src, want = source_tree
    run("cp", "-a", src, workdir / "tree")
    assert_same(want, snapshot(workdir / "tree"))
    run("cp", "-a", workdir / "tree", tmp_path / "back")
    assert_same(want, snapshot(tmp_path / "back"))


def test_tar_round_trip(workdir: Path, source_tree: tuple[Path, Snapshot], tmp_path: Path) -> None:
    tar = need(TAR, "tar")
    src, want = source_tree
    # tar -x into the mount, of an archive that itself lives in the mount (large sequential write, then read).
    run(tar, "-C", src, "-cf", workdir / "in.tar", ".")
    (workdir / "x").mkdir()
    run(tar, "-C", workdir / "x", "-xpf", workdir / "in.tar")
    assert_same(want, snapshot(workdir / "x"))
    # tar -c of the tree in the mount, extracted outside it.
    run(tar, "-C", workdir / "x", "-cf", tmp_path / "out.tar", ".")
    (tmp_path / "back").mkdir()
    run(tar, "-C", tmp_path / "back", "-xpf", tmp_path / "out.tar")
    assert_same(want, snapshot(tmp_path / "back"))


def test_rsync_round_trip(workdir: Path, source_tree: tuple[Path, Snapshot], tmp_path: Path) -> None:
    rsync = need(RSYNC, "rsync")
    src, want = source_tree
    run(rsync, "-aH", f"{src}/", f"{workdir / 'r'}/")
    assert_same(want, snapshot(workdir / "r"))
    # Sizes and mtimes survived exactly: a second run finds nothing to transfer (rsync's quick check).
    again = run(rsync, "-aHi", "--dry-run", f"{src}/", f"{workdir / 'r'}/")
    assert again.strip() == b"", again.decode(errors="replace")[:2000]
    run(rsync, "-aH", f"{workdir / 'r'}/", f"{tmp_path / 'back'}/")
    assert_same(want, snapshot(tmp_path / "back"))
    # ... and the full-content comparison agrees (rsync reads every byte back through the mount).
    again = run(rsync, "-aHic", "--dry-run", f"{workdir / 'r'}/", f"{tmp_path / 'back'}/")
    assert again.strip() == b"", again.decode(errors="replace")[:2000]


def test_copies_of_the_root_skip_anysync(mounted: Mount, tmp_path: Path) -> None:
    root = mounted.mountpoint
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"content\n")
    os.symlink("d/f.txt", root / "l")
    # The virtual folder exists and opens by path; it is only hidden from readdir.
    assert (root / ".anysync").is_dir()
    assert ".anysync" not in os.listdir(root)
    want = {"d", "d/f.txt", "l"}

    run("cp", "-a", f"{root}/.", tmp_path / "cp")
    rsync = need(RSYNC, "rsync")
    run(rsync, "-a", f"{root}/", f"{tmp_path / 'rs'}/")
    tar = need(TAR, "tar")
    run(tar, "-C", root, "-cf", tmp_path / "root.tar", ".")
    listing = run(tar, "-tf", tmp_path / "root.tar")
    names = {n.removeprefix("./").rstrip("/") for n in listing.decode().split("\n")} - {"", "."}
    assert names == want
    for copy in (tmp_path / "cp", tmp_path / "rs"):
        got = {str(p.relative_to(copy)) for p in copy.rglob("*")}
        assert got == want, (copy.name, sorted(got))


# ---------------------------------------------------------------------------------------------- git
def git(repo: Path, *args: str) -> str:
    tool = need(GIT, "git")
    return run(tool, "-c", "user.name=Test User", "-c", "user.email=test@example.invalid", "-c",
               "init.defaultBranch=main", "-c", "gc.auto=0", *args, cwd=repo).decode()


def test_git_workflow(workdir: Path) -> None:
    repo = workdir / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "src").mkdir()
    v1 = {f"src/m{i}.py": f"def f{i}():\n    return {i}\n" * (i + 1) for i in range(30)}
    v1["README"] = "first version\n"
    v1["blob.bin"] = random.Random(1).randbytes(300_000).hex()
    for name, text in v1.items():
        (repo / name).write_text(text)
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    assert git(repo, "status", "--porcelain") == ""
    first = git(repo, "rev-parse", "HEAD").strip()

    (repo / "README").write_text("second version\n")
    (repo / "src" / "m3.py").unlink()
    (repo / "src" / "new.py").write_text("print('new')\n")
    os.rename(repo / "src" / "m4.py", repo / "src" / "m4_renamed.py")
    assert git(repo, "status", "--porcelain") != ""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    assert git(repo, "status", "--porcelain") == ""

    git(repo, "checkout", "-q", first)
    assert {n: (repo / n).read_text() for n in v1} == v1
    assert not (repo / "src" / "new.py").exists()
    assert git(repo, "status", "--porcelain") == ""
    git(repo, "checkout", "-q", "main")
    assert (repo / "README").read_text() == "second version\n"
    assert not (repo / "src" / "m3.py").exists()
    assert os.stat(repo / "run.sh").st_mode & 0o111

    git(repo, "gc", "-q", "--prune=now")
    git(repo, "fsck", "--full", "--strict")
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "log", "--format=%s").split() == ["second", "first"]
    assert list((repo / ".git" / "objects" / "pack").glob("*.pack")), "gc wrote no pack"


# ---------------------------------------------------------------------------------------------- sqlite
def fill_python(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB)")
        con.execute("CREATE INDEX t_name ON t (name)")
        with con:
            con.executemany("INSERT INTO t (id, name, payload) VALUES (?, ?, ?)",
                            ((i, f"row {i}", random.Random(i).randbytes(i % 300)) for i in range(ROWS)))
        with con:  # an update and a delete in place: pages rewritten in the middle of the file
            con.execute("UPDATE t SET name = name || ' updated' WHERE id % 7 = 0")
            con.execute("DELETE FROM t WHERE id % 10 = 9")
    finally:
        con.close()


def check_python(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*) FROM t").fetchone() == (ROWS - ROWS // 10,)
        assert con.execute("SELECT name, payload FROM t WHERE id = 7").fetchone() == (
            "row 7 updated", random.Random(7).randbytes(7))
    finally:
        con.close()


def sqlite_cli(db: Path, sql: str) -> str:
    return run(need(SQLITE3, "sqlite3"), "-batch", "-bail", db, input=sql.encode()).decode()


CLI_FILL = """
PRAGMA journal_mode=WAL;
CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999)
INSERT INTO kv SELECT i, printf('value %d %s', i, hex(randomblob(20))) FROM n;
CREATE INDEX kv_v ON kv (v);
PRAGMA wal_checkpoint(TRUNCATE);
"""
CLI_CHECK = "PRAGMA integrity_check; SELECT count(*) FROM kv; SELECT count(*) FROM kv WHERE v LIKE 'value 5%';"


def test_sqlite_databases_survive_remount(mounted: Mount) -> None:
    db = mounted.path("py.db")
    fill_python(db)  # default rollback journal
    check_python(db)
    have_cli = SQLITE3 is not None
    if have_cli:
        wal = mounted.path("cli.db")
        assert sqlite_cli(wal, CLI_FILL).split()[0] == "wal"
        assert sqlite_cli(wal, CLI_CHECK).split() == ["ok", str(ROWS), "1111"]
        # The WAL database through python as well (shared-memory index: mmap of the -shm file in the mount).
        con = sqlite3.connect(wal)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            with con:
                con.execute("INSERT INTO kv VALUES (?, ?)", (ROWS, "after"))
        finally:
            con.close()
    mounted.remount()
    check_python(db)
    if have_cli:
        assert sqlite_cli(mounted.path("cli.db"), CLI_CHECK).split() == ["ok", str(ROWS + 1), "1111"]
    mounted.unmount()
    mounted.cli("fsck")
    if not have_cli:
        pytest.skip("sqlite3 CLI is not installed (the python sqlite3 module part passed)")


# ---------------------------------------------------------------------------------------------- editors
def test_editor_save_by_rename_survives_remount(mounted: Mount) -> None:
    d = mounted.path("notes")
    d.mkdir()
    target = d / "todo.txt"
    target.write_text("old content\n")
    target.chmod(0o640)
    os.setxattr(target, "user.tag", b"kept by the editor")
    # Vim / gedit style: write a temp file beside it, fsync, copy mode + xattrs, rename over the original,
    # fsync the directory.
    new = "new content\n" * 1000
    tmp = d / ".todo.txt.swp"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, new.encode())
        os.fchmod(fd, 0o640)
        os.setxattr(fd, "user.tag", os.getxattr(target, "user.tag"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, target)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    # Emacs style on a second file: the original is renamed to a backup, the new content written under the name.
    other = d / "plan.md"
    other.write_text("plan v1\n")
    os.rename(other, d / "plan.md~")
    other.write_text("plan v2\n")

    def check() -> None:
        assert target.read_text() == new
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
        assert os.getxattr(target, "user.tag") == b"kept by the editor"
        assert sorted(os.listdir(d)) == ["plan.md", "plan.md~", "todo.txt"]
        assert other.read_text() == "plan v2\n"
        assert (d / "plan.md~").read_text() == "plan v1\n"

    check()
    mounted.remount()
    check()
    mounted.unmount()
    mounted.cli("fsck")
