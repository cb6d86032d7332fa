"""Level 10: a provider that keeps a change back is caught by a real mount (docs/protocol.md 70.9).

Device A pushes a change through a node that hides it from everyone else (reconciliation and ``GetChanges``), but
honestly serves A's signed heads, which name it. Device B, mounted with its sync engine running, must log a WARNING,
put the finding in its status file, and ``anysyncfs status`` must show it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from anysyncfs.core import ids
from tests.integration.hostile import NodeThread
from tests.integration.test_withholding import WithholdingNode

from .conftest import Mount, _check_fuse, assert_clean_log, eventually, init_device

# Sync through the provider only: no listener, so no direct device-to-device path (tests/fuse/test_11_p2p.py).
SYNC_OPTS = ("-o", "sync_interval=2,fetch_timeout=20,listen=off")


class WithholdingNodeThread(NodeThread):
    """:class:`NodeThread` serving a :class:`WithholdingNode`."""

    def make_node(self) -> WithholdingNode:
        return WithholdingNode(self.path)


def status_file(m: Mount, space_id: str) -> dict[str, object] | None:
    try:
        return json.loads((m.home / "run" / f"{space_id}.status.json").read_text())
    except (OSError, ValueError):
        return None


def test_a_mount_warns_when_its_provider_withholds_a_change(tmp_path: Path) -> None:
    _check_fuse()
    a, b = Mount(tmp_path / "a"), Mount(tmp_path / "b")
    thread = WithholdingNodeThread(tmp_path / "node")
    with thread as address:
        try:
            phrase = init_device(a, "device-a")
            space_id = a.cli("space", "create", a.space).stdout.decode().strip()
            a.cli("space", "add-peer", a.space, str(address))
            a.cli("put", a.space, "/first.txt", input=b"one")
            a.cli("sync", a.space)
            init_device(b, "device-b", phrase)
            b.cli("space", "add-peer", space_id, str(address))
            b.cli("sync", space_id, "--name", b.space)
            b.expect_log(r"provider dv-\S+ withholds changes that device dv-\S+ signed at counter \d+")
            b.mount(*SYNC_OPTS)

            assert thread.node is not None
            thread.node.withhold_new = True
            a.cli("put", a.space, "/plan.txt", input=b"kept from b")
            a.cli("sync", a.space)  # the node gets the change and A's signed heads that name it

            doc = eventually(lambda: (s := status_file(b, space_id)) is not None and bool(s.get("warnings")) and s,
                             "the warning in B's status file")
            (warning,) = doc["warnings"]  # type: ignore[index]
            assert warning["kind"] == "withholds" and "withholds changes that device" in warning["message"]
            (space,) = json.loads(b.cli("status", "--json").stdout)
            assert [w["kind"] for w in space["warnings"]] == ["withholds"]
            assert space["warnings"][0]["provider"] == ids.device_text(address.device)
            assert "WARNING: provider dv-" in b.cli("status").stdout.decode()
            assert any("WARNING" in line and "withholds changes" in line for line in b.log_text().splitlines())
            assert not b.path("plan.txt").exists()  # kept back indeed: B was told, not fooled
        finally:
            b.stop()
            a.stop()
    assert thread.failure is None or isinstance(thread.failure, trio.Cancelled)
    assert_clean_log(b)
