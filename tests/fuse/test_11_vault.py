"""Issue 15: the recovery phrase brings back every space (docs/protocol.md 25).

Account A creates three spaces on two providers and joins a fourth that account B shares with it. A new device of
A restores from the phrase with ONE provider's address: it lists all four spaces by name, and each mounts with the
right files (fetched from whichever provider holds the space).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port
from .conftest import Mount, SyncNode, _check_fuse, cluster_cleanup, init_device


def test_the_phrase_brings_back_every_space(tmp_path: Path) -> None:
    _check_fuse()
    n1, n2 = SyncNode(tmp_path / "n1", free_port()), SyncNode(tmp_path / "n2", free_port())
    a, b, restored = Mount(tmp_path / "a"), Mount(tmp_path / "b"), Mount(tmp_path / "restored")
    with cluster_cleanup(n1, a, b, restored):
        try:
            a1, a2 = n1.start(), n2.start()
            phrase = init_device(a, "laptop")
            files = {"notes": (a1, b"my notes\n"), "photos": (a1, b"\x89PNG" + bytes(range(256)) * 300),
                     "taxes": (a2, b"2026 return\n")}
            for name, (address, data) in files.items():
                a.cli("space", "create", name)
                a.cli("space", "add-peer", name, address)
                a.cli("put", name, f"/{name}.dat", input=data)
                a.cli("sync", name)

            init_device(b, "b")
            b.cli("space", "create", "team")
            b.cli("space", "add-peer", "team", a2)
            b.cli("put", "team", "/plan.txt", input=b"the team plan\n")
            b.cli("sync", "team")
            ticket = next(w for w in b.cli("space", "invite", "team", "--role", "writer").stdout.decode().split()
                          if w.startswith("anysync:"))
            a.cli("join", ticket, "--name", "shared by b")
            files["shared by b"] = (a2, b"the team plan\n")

            p = restored.cli("init", "--restore", "--device-name", "new laptop", "--peer", a1,
                             input=phrase.encode() + b"\n")
            assert p.stdout.decode().count("restored sp-") == 4, p.stdout.decode()
            listing = restored.cli("space", "list").stdout.decode().splitlines()
            assert sorted(line.split(None, 1)[1] for line in listing) == sorted(files)

            for name, (_address, data) in files.items():
                restored.space = name
                restored.mount("-o", "sync_interval=2,fetch_timeout=20")
                path = "plan.txt" if name == "shared by b" else f"{name}.dat"
                assert sorted(p.name for p in restored.mountpoint.iterdir()) == [path]
                assert restored.path(path).read_bytes() == data
                restored.unmount()
        finally:
            n2.kill()
    problems = n2.log_problems()
    assert not problems, "\n".join(problems)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
