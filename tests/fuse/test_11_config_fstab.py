"""Issue 16 items 3-4 through the real mount: options from config.toml reach the kernel mount, and an /etc/fstab
line of type ``fuse.anysyncfs`` is mounted by ``mount -a`` (mount(8) runs scripts/mount.fuse.anysyncfs)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.conftest import REPO, Mount, is_mounted, mount_helper_inputs, pid_alive

HELPER = REPO / "scripts" / "mount.fuse.anysyncfs"
INSTALLED_HELPER = Path("/sbin/mount.fuse.anysyncfs")


def test_config_mount_options_reach_the_mount(fuse_space: Mount) -> None:
    m = fuse_space
    Path(m.env["ANYSYNCFS_CONFIG"]).write_text(
        '[defaults]\nmount_options = ["noexec"]\n[spaces.test]\nmount_options = "ro"\ncache_size = "1G"\n')
    m.mount()
    st = os.statvfs(m.mountpoint)
    assert st.f_flag & os.ST_RDONLY and st.f_flag & os.ST_NOEXEC
    with pytest.raises(OSError) as e:
        m.path("f").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    m.unmount()


@contextlib.contextmanager
def installed_helper() -> Iterator[None]:
    """/sbin/mount.fuse.anysyncfs for the duration (what the user guide tells root to install); any file that
    was there is put back afterwards."""
    backup = INSTALLED_HELPER.with_name(INSTALLED_HELPER.name + ".test-backup")
    had = INSTALLED_HELPER.exists()
    if had:
        shutil.copy2(INSTALLED_HELPER, backup)
    shutil.copy(HELPER, INSTALLED_HELPER)
    INSTALLED_HELPER.chmod(0o755)
    try:
        yield
    finally:
        if had:
            os.replace(backup, INSTALLED_HELPER)
        else:
            INSTALLED_HELPER.unlink(missing_ok=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mount -a needs root")
def test_fstab_line_is_mounted_by_mount_a(fuse_space: Mount, tmp_path: Path) -> None:
    m = fuse_space
    wrapper, passfile, env = mount_helper_inputs(m, tmp_path)
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a temporary fstab: only this file is read (mount -T)\n"
        f"{m.space}  {m.mountpoint}  fuse.anysyncfs  home={m.home},passphrase_file={passfile},anysyncfs={wrapper},"
        "_netdev,nofail,nodev,x-systemd.automount,listen=off,discovery=off  0 0\n"
        f"{m.space}  {tmp_path / 'never'}  fuse.anysyncfs  noauto,home={m.home}  0 0\n")
    with installed_helper():
        p = subprocess.run(["mount", "-a", "-T", str(fstab)], env=env, capture_output=True, timeout=60)
    for lock in (m.home / "locks").glob("*.lock"):  # the mount process, for the fixture's cleanup
        if lock.read_text().strip():
            m.bg_pids.append(int(json.loads(lock.read_text())["pid"]))
    assert p.returncode == 0, p.stderr.decode()
    assert os.path.ismount(m.mountpoint) and not (tmp_path / "never").exists()
    with open("/proc/self/mounts") as f:
        line = next(ln for ln in f if f" {m.mountpoint} " in ln)
    assert line.split()[2] == "fuse.anysyncfs" and "nodev" in line.split()[3]
    m.path("via-fstab").write_bytes(b"from fstab")
    subprocess.run(["umount", str(m.mountpoint)], check=True, capture_output=True, timeout=30)
    assert not is_mounted(m.mountpoint)
    deadline = time.monotonic() + 30
    while any(pid_alive(pid) for pid in m.bg_pids):  # the process commits, then exits
        assert time.monotonic() < deadline, "mount process still running after umount"
        time.sleep(0.05)
    assert m.cli("cat", m.space, "/via-fstab").stdout == b"from fstab"
