"""The stress tester's model (tests/stress/, issue 18 item 1) checked against the kernel's own file system: the
runner on a local directory must find nothing, and must report what it should find (a lost or torn file after a
"kill"), with the seed and operation that replay it. The mount itself is tested in tests/fuse/test_13_stress.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.stress.model import BLOCK, Content
from tests.stress.runner import Runner, StressFailure


def test_sparse_content_matches_a_bytearray() -> None:
    rnd = random.Random(5)
    c, ref = Content(), bytearray()
    for _ in range(400):
        if rnd.random() < 0.7:
            off, data = rnd.randrange(3 * BLOCK), rnd.randbytes(rnd.randrange(1, 2 * BLOCK))
            if rnd.random() < 0.2:
                data = bytes(len(data))  # zeros written over data: equal to a hole
            c = c.write(off, data)
            ref.extend(bytes(max(0, off + len(data) - len(ref))))
            ref[off : off + len(data)] = data
        else:
            size = rnd.randrange(4 * BLOCK)
            c = c.truncate(size)
            del ref[size:]
            ref.extend(bytes(size - len(ref)))
        assert c.size == len(ref)
        assert c.read(0, len(ref) + 10) == bytes(ref)
        assert c.sig() == Content.from_blocks(len(ref), {i: bytes(ref[i * BLOCK : (i + 1) * BLOCK])
                                                          for i in range((len(ref) + BLOCK - 1) // BLOCK)}).sig()


@pytest.mark.parametrize("seed", [1, 2])
def test_the_model_agrees_with_the_local_file_system(tmp_path: Path, seed: int) -> None:
    stats = Runner(tmp_path, seed, full_every=50, names_every=5).run(1500)
    assert stats.ops == 1500 and stats.refused > 0 and stats.fsyncs > 0


class LocalControl:
    """Remount and kill of a local directory: nothing is lost (the newest state is one a kill may leave), unless
    ``damage`` breaks the tree at the kill."""

    def __init__(self, root: Path, damage: str = "") -> None:
        self.root, self.damage = root, damage

    def remount(self) -> None:
        pass

    def kill(self) -> None:
        pass

    def restart(self) -> None:
        files = sorted(p for p in self.root.rglob("*") if not p.is_symlink() and p.is_file() and p.stat().st_size)
        if self.damage == "lose" and files:
            files[0].unlink()
        if self.damage == "tear" and files:
            with open(files[0], "r+b") as f:
                f.seek(files[0].stat().st_size // 2)
                f.write(b"\xa5")  # one byte no state had


def test_kill_and_remount_paths_of_the_runner(tmp_path: Path) -> None:
    stats = Runner(tmp_path, 7, LocalControl(tmp_path), kill_rate=0.01, remount_rate=0.01).run(1000)
    assert stats.kills > 0 and stats.remounts > 0
    assert stats.recovered_back == [0] * stats.kills


@pytest.mark.parametrize("damage, found", [("lose", "after kill -9 the tree is none"), ("tear", "torn|mode")])
def test_a_lost_or_torn_file_after_a_kill_is_reported_with_its_seed(tmp_path: Path, damage: str, found: str) -> None:
    with pytest.raises(StressFailure) as e:
        Runner(tmp_path, 7, LocalControl(tmp_path, damage), kill_rate=0.01).run(1000)
    text = str(e.value)
    assert "stress seed 7, operation " in text and "replay: scripts/soak --seed 7 --ops " in text
    assert any(f in text for f in found.split("|")), text
    for fd in os.listdir("/proc/self/fd"):  # the runner closed every descriptor it opened
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        assert not target.startswith(str(tmp_path)), target
