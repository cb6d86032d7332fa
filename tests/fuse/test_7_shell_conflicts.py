"""Level 7: what people do to files every day, on two devices that were offline together (issue 16).

Two devices of one account mount a space synced through a real node. While the node is down each device
rewrites the same files the way a shell (``echo x > f``, run by ``sh`` as a subprocess) and an editor (write a
temporary file, fsync, rename it over the original) do; then the node comes back. Exactly one conflict copy per
losing version must appear, named ``NAME.sync-conflict-YYYYMMDD-HHMMSS-<author8>.EXT``, never an empty one
from the truncation, never a doubled name; identical concurrent content makes no copy at all.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from .conftest import Mount, SyncNode, _check_fuse, cluster_cleanup, eventually, init_device
from .conftest import write_synced as write

SYNC_OPTS = ("-o", "sync_interval=2,fetch_timeout=20")
CONFLICT = re.compile(r"^(?P<stem>.+)\.sync-conflict-(?P<date>\d{8})-(?P<time>\d{6})-(?P<author>[a-z2-7]{8})"
                      r"(?P<ext>\.[^.]+)?$")  # fmt: skip


@dataclass
class Pair:
    node: SyncNode
    a: Mount
    b: Mount


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    _check_fuse()
    root = tmp_path_factory.mktemp("shell")
    node = SyncNode(root / "node", free_port())
    a, b = Mount(root / "a"), Mount(root / "b")
    with cluster_cleanup(node, a, b):
        address = node.start()
        phrase = init_device(a, "device-a")
        space_id = a.cli("space", "create", a.space).stdout.decode().strip()
        a.cli("space", "add-peer", a.space, address)
        a.mount(*SYNC_OPTS)
        init_device(b, "device-b", phrase)
        b.cli("space", "add-peer", space_id, address)
        b.cli("sync", space_id, "--name", b.space)
        b.mount(*SYNC_OPTS)
        yield Pair(node, a, b)


def names(m: Mount) -> list[str]:
    return sorted(n for n in os.listdir(m.mountpoint) if n != ".anysync")


def shell(m: Mount, script: str) -> None:
    """Run ``script`` with sh inside the mount, as a user would."""
    subprocess.run(["sh", "-c", script], cwd=m.mountpoint, check=True, timeout=30)


def editor_save(m: Mount, name: str, data: bytes) -> None:
    """What editors do: write a temporary file beside the original, fsync it, rename it over the original."""
    tmp = m.path(f".{name}.swp")
    write(tmp, data)
    os.rename(tmp, m.path(name))


def converged(pair: Pair, expect: dict[str, int]) -> dict[str, bytes] | None:
    """Both mounts list the same names, with ``expect[name]`` conflict copies beside each name, and every file
    reads the same on both: the listing with contents, else None."""
    listed = [names(m) for m in (pair.a, pair.b)]
    if listed[0] != listed[1]:
        return None
    copies = {base: [n for n in listed[0] if n.startswith(base.rsplit(".", 1)[0] + ".sync-conflict-")]
              for base in expect}  # fmt: skip
    if any(len(copies[base]) != count for base, count in expect.items()):
        return None
    contents = {n: pair.a.path(n).read_bytes() for n in listed[0]}
    if any(pair.b.path(n).read_bytes() != data for n, data in contents.items()):
        return None
    return contents


def test_shell_and_editor_rewrites_on_two_offline_devices(pair: Pair) -> None:
    a, b = pair.a, pair.b
    originals = {"echo.txt": b"original\n", "slow.txt": b"original\n", "edit.md": b"# original\n",
                 "same.txt": b"original\n", "same-edit.md": b"# original\n"}  # fmt: skip
    for name, data in originals.items():
        write(a.path(name), data)
    eventually(lambda: all(b.path(n).read_bytes() == d for n, d in originals.items()), "the originals on B")

    pair.node.stop()
    for m, who in ((a, "a"), (b, "b")):
        shell(m, f"echo from-{who} > echo.txt")
        # The truncating open, then a pause longer than the batch interval (200 ms), then the write.
        shell(m, f"{{ sleep 0.5; echo slow-{who}; }} > slow.txt")
        editor_save(m, "edit.md", f"# edited on {who}\n".encode())
        shell(m, "echo the same text > same.txt")
    pair.node.start()

    expect = {"echo.txt": 1, "slow.txt": 1, "edit.md": 1, "same.txt": 0}
    try:
        contents = eventually(lambda: converged(pair, expect), "the same files and conflict copies on both mounts")
    except AssertionError as e:  # say what each mount shows (and what its store holds) when they never agree
        seen = {m.space: {n: m.path(n).read_bytes() for n in names(m)} for m in (a, b)}
        stored = {m.space: m.cli("ls", m.space, "/", check=False).stdout.decode() for m in (a, b)}
        raise AssertionError(f"{e}\nthrough the mounts: {seen}\nin the stores: {stored}") from None
    for base, pair_of in (("echo.txt", (b"from-a\n", b"from-b\n")), ("slow.txt", (b"slow-a\n", b"slow-b\n")),
                          ("edit.md", (b"# edited on a\n", b"# edited on b\n"))):  # fmt: skip
        stem, ext = base.rsplit(".", 1)
        [copy] = [n for n in contents if n.startswith(stem + ".sync-conflict-")]
        m = CONFLICT.match(copy)
        assert m is not None and m["stem"] == stem and m["ext"] == "." + ext, copy
        assert {contents[base], contents[copy]} == set(pair_of), (base, contents[base], contents[copy])
    assert contents["same.txt"] == b"the same text\n"
    assert not any(n.count(".sync-conflict-") > 1 for n in contents), contents
    assert not any(data == b"" for data in contents.values()), "an empty version from a truncation"
    assert not any(n.startswith(".") and n.endswith(".swp") for n in contents)

    # Both devices now edit the same conflict copy while offline: its conflict is named from the original.
    [copy] = [n for n in contents if n.startswith("echo.sync-conflict-")]
    pair.node.stop()
    shell(a, f"echo copy-a > {copy}")
    shell(b, f"echo copy-b > {copy}")
    pair.node.start()
    contents = eventually(lambda: converged(pair, {**expect, "echo.txt": 2}), "the copy's own conflict copy")
    copies = sorted(n for n in contents if n.startswith("echo.sync-conflict-"))
    assert all(CONFLICT.match(n)["stem"] == "echo" for n in copies), copies  # type: ignore[index]
    assert {contents[n] for n in copies} == {b"copy-a\n", b"copy-b\n"}


def test_unpin_of_a_path_that_stays_pinned_exits_15(pair: Pair) -> None:
    """Exit code 15 (issue 16, item 2): the command did what it could, but the path is still pinned."""
    a = pair.a
    a.path("trip").mkdir()
    write(a.path("trip", "map.txt"), b"north\n")
    assert a.cli("pin", str(a.path("trip")), "--no-progress").returncode == 0
    p = a.cli("unpin", str(a.path("trip", "map.txt")), check=False)
    err = p.stderr.decode()
    assert p.returncode == 15, err
    assert err.splitlines()[-1] == "anysyncfs: error: 1 of 1 paths stay pinned through a pinned folder above them"
    assert "stays pinned" in p.stdout.decode()
    assert os.getxattr(a.path("trip", "map.txt"), "user.anysync.pinned") == b"1"
    assert a.cli("unpin", str(a.path("trip"))).returncode == 0
