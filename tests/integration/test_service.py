"""systemd units (cli/service.py): the unit files pass ``systemd-analyze verify``; ``service install`` writes the
template and the instance's settings and, with no systemd to talk to, says so in one line and exits 16;
``service remove`` undoes it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_cli import init, one_line_error, run

ANALYZE = shutil.which("systemd-analyze")


def verify(unit: Path) -> None:
    """``systemd-analyze verify``: exit 0 AND no complaint (it only warns, exit 0, about unknown keys)."""
    if ANALYZE is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd; scripts/_setup.sh installs it)")
    p = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), (unit.name, p.stdout, p.stderr)


def no_systemd(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """An environment whose user manager cannot be reached (as in a container), config files under tmp_path."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return dict(env, XDG_CONFIG_HOME=str(tmp_path / "xdg"), XDG_RUNTIME_DIR=str(runtime),
                DBUS_SESSION_BUS_ADDRESS=f"unix:path={runtime}/no-bus")


def test_unit_files_pass_systemd_analyze_verify(cli_env: dict[str, str], tmp_path: Path) -> None:
    template = tmp_path / "anysyncfs@.service"
    template.write_bytes(run(cli_env, "service", "unit").stdout)
    verify(template)
    node = tmp_path / "anysyncfs-node.service"
    node.write_bytes(run(cli_env, "service", "unit", "--node", "--listen", "0.0.0.0:7733").stdout)
    verify(node)
    text = node.read_text()
    for rule in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
                 "SystemCallFilter=@system-service", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
        assert rule in text
    # systemd's own rating of the sandbox, 0 (locked down) .. 10 (exposed): at most 2.0 ("OK")
    p = subprocess.run([ANALYZE or "systemd-analyze", "security", "--offline=true", "--threshold=20", str(node)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    # another data directory is named writable (ProtectSystem=strict leaves only the StateDirectory so)
    other = tmp_path / "other" / "anysyncfs-node.service"
    other.parent.mkdir()
    other.write_bytes(run(cli_env, "service", "unit", "--node", "--data", "/srv/anysync node").stdout)
    verify(other)
    assert "ReadWritePaths='/srv/anysync node'\n" in other.read_text() and "ReadWritePaths" not in text
    # the check can fail: a misspelt key is reported
    bad = tmp_path / "bad.service"
    bad.write_text(text.replace("ProtectSystem=", "ProtectSystm="))
    p = subprocess.run([ANALYZE or "systemd-analyze", "verify", str(bad)], capture_output=True, text=True)
    assert "ProtectSystm" in p.stderr


def test_service_install_without_systemd_then_remove(cli_env: dict[str, str], tmp_path: Path) -> None:
    init(cli_env)
    space = run(cli_env, "space", "create", "notes").stdout.decode().strip()
    env = no_systemd(cli_env, tmp_path)
    passfile = tmp_path / "pass"
    passfile.write_text(cli_env["ANYSYNCFS_PASSPHRASE"] + "\n")
    mnt = tmp_path / "mnt"
    p = run(env, "service", "install", "notes", "--mountpoint", str(mnt), "--passphrase-file", str(passfile),
            check=False)
    assert p.returncode == 16, p.stderr
    assert "could not enable" in one_line_error(p) and f"anysyncfs@{space}.service" in p.stderr.decode()
    template = tmp_path / "xdg/systemd/user/anysyncfs@.service"
    env_file = tmp_path / f"xdg/anysyncfs/service/{space}.env"
    verify(template)
    assert env_file.stat().st_mode & 0o077 == 0
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert values["MOUNTPOINT"] == f'"{mnt}"' and values["PASSPHRASE_FILE"] == f'"{passfile}"'
    assert values["ANYSYNCFS_HOME"] == f'"{Path(cli_env["ANYSYNCFS_HOME"]).resolve()}"'
    # a wrong passphrase in the file is refused before anything is written
    other = tmp_path / "other-xdg"
    passfile.write_text("wrong\n")
    p = run(dict(env, XDG_CONFIG_HOME=str(other)), "service", "install", "notes", "--mountpoint", str(mnt),
            "--passphrase-file", str(passfile), check=False)
    assert p.returncode == 4 and not other.exists(), p.stderr
    # remove: the instance's files go (and the template with its last instance); systemd unreachable: exit 16
    p = run(env, "service", "remove", "notes", check=False)
    assert p.returncode == 16 and "could not disable" in one_line_error(p)
    assert not env_file.exists() and not template.exists()
    assert run(env, "service", "remove", "notes", check=False).returncode == 2  # nothing installed any more
