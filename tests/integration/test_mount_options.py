"""``anysyncfs mount -o``: the help lists every option of the one table with its default, and unknown or malformed
options are refused with one line before anything happens — typed on the command line or handed over by mount(8)
through the ``mount.fuse.anysyncfs`` helper (issue 16, item 6)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from anysyncfs.errors import UsageError
from anysyncfs.fs import mount
from anysyncfs.fs.mount_options import OPTIONS
from tests.conftest import CLI

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "scripts" / "mount.fuse.anysyncfs"
EXAMPLES = {"cache_size": "512M", "batch_interval": "50ms", "commit_interval": "2", "sync_interval": "7",
            "fetch_timeout": "9", "listen": "127.0.0.1:7001", "discovery": "off", "cache_timeout": "60"}  # fmt: skip


def test_help_lists_every_option_with_its_default(cli_env: dict[str, str]) -> None:
    p = subprocess.run([*CLI, "mount", "--help"], env=cli_env, capture_output=True, timeout=60, check=True)
    text = p.stdout.decode()
    defaults = mount.MountOptions()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^  ([a-z_]+)(?:=\S+)?\s+(\S+(?: \S+)*?)\s{2,}",
                                                         text, re.MULTILINE)}  # fmt: skip
    assert set(OPTIONS) <= set(rows), text
    assert {"sync_interval", "fetch_timeout", "offline", "commit_interval", "batch_interval"} <= set(rows)
    assert rows["sync_interval"] == f"{defaults.sync_interval:g}" == "30"
    assert rows["fetch_timeout"] == "30" and rows["batch_interval"] == "200" and rows["commit_interval"] == "5"
    assert rows["offline"] == "off" and rows["ro"] == "off" and rows["cache_size"] == "unlimited"
    assert rows["cache_timeout"] == f"{defaults.cache_timeout:g}" == "10"
    for kernel in mount.KERNEL_OPTIONS:
        assert re.search(rf"\b{kernel}\b", text), kernel


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_option_of_the_table_is_accepted(name: str) -> None:
    option = OPTIONS[name]
    given = f"{name}={EXAMPLES[name]}" if option.metavar else name
    parsed = mount.parse_options([given])
    assert parsed != mount.MountOptions()  # each option changes what the mount does


def test_values_are_parsed_and_checked() -> None:
    opts = mount.parse_options(["ro,cache_size=1G", "batch_interval=50ms,sync_interval=7", "offline,nosuid",
                                "defaults,_netdev,x-systemd.automount,comment=x"])  # fmt: skip
    assert (opts.read_only, opts.cache_size, opts.batch_interval, opts.sync_interval, opts.offline, opts.kernel) == (
        True, 1 << 30, 0.05, 7.0, True, ["nosuid"])
    for bad, says in (("bogus", "unknown mount option 'bogus'"), ("cache_size", "needs a value"),
                      ("ro=1", "takes no value"), ("sync_interval=soon", "must be a number of seconds"),
                      ("fetch_timeout=0", "between"), ("nosuid=1", "unknown mount option")):  # fmt: skip
        with pytest.raises(UsageError, match=says):
            mount.parse_options([bad])


def _one_line_error(p: subprocess.CompletedProcess[bytes]) -> str:
    err = p.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unknown_option_is_refused_on_the_command_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    p = subprocess.run([*CLI, "mount", "notes", str(tmp_path), "-o", "ro,bogus=1"], env=cli_env,
                       capture_output=True, timeout=60)  # fmt: skip
    assert p.returncode == 2
    assert "unknown mount option 'bogus=1'" in _one_line_error(p)
    assert not os.path.ismount(tmp_path)


def test_unknown_option_is_refused_through_the_mount_helper(cli_env: dict[str, str], tmp_path: Path) -> None:
    """mount(8) and fstab run /sbin/mount.fuse.anysyncfs SPACE DIR -o OPTIONS: its own options are taken out,
    the generic ones dropped, and an unknown one refused by `anysyncfs mount` with the same single line."""
    exe = tmp_path / "anysyncfs"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m anysyncfs \"$@\"\n")
    exe.chmod(0o755)
    target = tmp_path / "mnt"
    target.mkdir()
    home = tmp_path / "home"
    options = f"home={home},anysyncfs={exe},_netdev,nofail,defaults,x-systemd.automount,frobnicate"
    p = subprocess.run(["sh", str(HELPER), "notes", str(target), "-o", options], env=cli_env,
                       capture_output=True, timeout=60)  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert _one_line_error(p) == "anysyncfs: error: unknown mount option 'frobnicate' " \
                                 "(`anysyncfs mount --help` lists them)\n"  # fmt: skip
    assert not os.path.ismount(target)
