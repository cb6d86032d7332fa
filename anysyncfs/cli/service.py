"""systemd units: a user unit template that mounts a space at login, and a hardened system unit for a node.

``anysyncfs service install SPACE --mountpoint DIR --passphrase-file FILE`` writes

* ``~/.config/systemd/user/anysyncfs@.service`` — the template: ``anysyncfs mount SPACE DIR -f`` as a user
  service (SIGTERM commits and unmounts, as for any foreground mount), restarted on failure;
* ``~/.config/anysyncfs/service/<sp-…>.env`` — what one instance needs: the mountpoint, the passphrase file, the
  home and configuration file of the installing command (systemd's ``EnvironmentFile`` syntax, values quoted);

then runs ``systemctl --user daemon-reload`` and ``enable --now anysyncfs@<sp-…>.service``. The instance is the
space's ID, so no name ever needs systemd's escaping. Without a running systemd (a container, a chroot) the
files are still written and the command says in one line that the unit could not be enabled (exit code of
:class:`ServiceError`). ``service remove SPACE`` disables the instance and deletes its environment file (the
template stays while another instance uses it).

``anysyncfs service unit [--node]`` prints the template, or the system unit of ``anysyncfs node serve``: a dynamic
user, its data in ``StateDirectory`` and the usual sandboxing (read-only system, no home, private /tmp and
devices, no new privileges, no capabilities, system-service syscalls only, IP sockets only).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from ..core import ids
from ..errors import ServiceError, UsageError
from . import config

if TYPE_CHECKING:
    from .context import Context

TEMPLATE_NAME = "anysyncfs@.service"
NODE_UNIT_NAME = "anysyncfs-node.service"
SYSTEMCTL_TIMEOUT = 60.0
STOP_TIMEOUT_S = 150  # the mount commits staged writes on SIGTERM (anysyncfs unmount waits up to 120 s)


def command_line() -> list[str]:
    """How the installing process runs anysyncfs: its interpreter with ``-m anysyncfs``, so a unit runs the same
    installation (a virtual environment included) whatever the service manager's PATH is."""
    return [os.path.realpath(sys.executable), "-m", "anysyncfs"]


def _exec(words: list[str]) -> str:
    """A command line for ``ExecStart=`` (systemd's quoting is close enough to the shell's for paths; a ``%`` is
    doubled so it is not read as a specifier)."""
    return " ".join(shlex.quote(w).replace("%", "%%") for w in words)


def mount_template() -> str:
    exe = _exec(command_line())
    return f"""\
# anysyncfs: mount the space %I (its sp-… ID) at login. Written by `anysyncfs service install`;
# the instance's settings are in %E/anysyncfs/service/%i.env.
[Unit]
Description=anysyncfs: mount space %I
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
EnvironmentFile=%E/anysyncfs/service/%i.env
ExecStartPre=/bin/mkdir -p ${{MOUNTPOINT}}
ExecStart={exe} --passphrase-file ${{PASSPHRASE_FILE}} mount %I ${{MOUNTPOINT}} -f
# SIGTERM makes the mount commit every staged write, then unmount and exit.
KillMode=mixed
TimeoutStopSec={STOP_TIMEOUT_S}
Restart=on-failure
RestartSec=10

[Install]
WantedBy=default.target
"""


NODE_STATE_DIR = "/var/lib/anysyncfs-node"  # StateDirectory=anysyncfs-node: made and owned for the dynamic user


def node_unit(listen: str, data: str = NODE_STATE_DIR) -> str:
    words = [*command_line(), "node", "serve", "--listen", listen, "--data", data]
    # ProtectSystem=strict leaves only the StateDirectory writable: another data directory must be listed (and be
    # writable by the service's user).
    extra_rw = "" if data == NODE_STATE_DIR else f"ReadWritePaths={_exec([data])}\n"

    # A node run from an interpreter under /home or /root still needs to read it there.
    home_rule = "read-only" if command_line()[0].startswith(("/home/", "/root/")) else "yes"
    return f"""\
# anysyncfs provider node (`anysyncfs node serve`), sandboxed. Install as
# /etc/systemd/system/{NODE_UNIT_NAME}, then: systemctl enable --now {NODE_UNIT_NAME}
[Unit]
Description=anysyncfs provider node
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={_exec(words)}
DynamicUser=yes
StateDirectory=anysyncfs-node
StateDirectoryMode=0700
{extra_rw}UMask=0077
Restart=on-failure
RestartSec=5
TimeoutStopSec=30
LimitNOFILE=65536
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome={home_rule}
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# No MemoryDenyWriteExecute: libffi closures (cffi callbacks of the crypto libraries) may need W+X pages.
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


# ---------------------------------------------------------------------------------------------- paths
def user_unit_dir() -> Path:
    """Where systemd looks for a user's own units: ``$XDG_CONFIG_HOME/systemd/user``."""
    return Path(platformdirs.user_config_dir()) / "systemd" / "user"


def env_dir() -> Path:
    """``%E/anysyncfs/service`` of the template (``%E`` is ``$XDG_CONFIG_HOME`` for a user manager)."""
    return Path(platformdirs.user_config_dir()) / "anysyncfs" / "service"


def instance_name(space_id: bytes) -> str:
    return f"anysyncfs@{ids.space_text(space_id)}.service"


def _env_value(value: str) -> str:
    """A value for systemd's EnvironmentFile: double-quoted, backslash and quote escaped; no newline possible."""
    if "\n" in value or "\r" in value:
        raise UsageError(f"a path with a line break cannot go into a unit: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def instance_env(mountpoint: Path, passphrase_file: Path, home: Path, config_file: Path) -> str:
    rows = {"MOUNTPOINT": mountpoint, "PASSPHRASE_FILE": passphrase_file, "ANYSYNCFS_HOME": home,
            config.CONFIG_ENV: config_file}
    return "".join(f"{k}={_env_value(str(v))}\n" for k, v in rows.items())


# ---------------------------------------------------------------------------------------------- systemctl
def systemctl_user(*args: str) -> str | None:
    """Run ``systemctl --user ARGS``; None on success, else one line saying why not."""
    exe = shutil.which("systemctl")
    if exe is None:
        return "systemctl is not installed"
    try:
        p = subprocess.run([exe, "--user", *args], capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"systemctl --user {' '.join(args)} timed out"
    if p.returncode == 0:
        return None
    lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
    return lines[0] if lines else f"systemctl --user {' '.join(args)} exited {p.returncode}"


# ---------------------------------------------------------------------------------------------- commands
def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    svc = sub.add_parser("service", help="systemd units: mount a space at login, run a node")
    ssub = svc.add_subparsers(dest="service_cmd", required=True)
    s = ssub.add_parser("install", help="write and enable a user unit that mounts SPACE at login")
    s.add_argument("space", help="space name or ID (sp-…)")
    s.add_argument("--mountpoint", type=Path, required=True, help="where to mount it (made if missing)")
    s.add_argument("--passphrase-file", dest="service_passphrase_file", type=Path, metavar="FILE",
                   help="file holding the keyring passphrase for the unit (default: the global --passphrase-file)")
    s.set_defaults(func=cmd_service_install)
    s = ssub.add_parser("remove", help="disable and delete the unit of SPACE (the mount stops)")
    s.add_argument("space", help="space name or ID (sp-…)")
    s.set_defaults(func=cmd_service_remove)
    s = ssub.add_parser("unit", help="print the user unit template, or the system unit of a node (--node)")
    s.add_argument("--node", action="store_true", help=f"print {NODE_UNIT_NAME} (a sandboxed `node serve`)")
    s.add_argument("--listen", metavar="HOST:PORT", help="the node's address (default: config.toml, else "
                                                          "0.0.0.0:7733)")
    s.add_argument("--data", default=NODE_STATE_DIR, help=f"the node's data directory (default {NODE_STATE_DIR}, "
                                                          "its StateDirectory)")
    s.set_defaults(func=cmd_service_unit)


def _space(ctx: Context, text: str) -> bytes:
    space_id, _ = config.space_names(ctx, text)
    if space_id is None:
        from ..errors import NotFound

        raise NotFound(f"unknown space {text!r}")
    return space_id


def cmd_service_install(ctx: Context) -> int:
    a = ctx.args
    space_id = _space(ctx, a.space)
    passfile = a.service_passphrase_file or a.passphrase_file
    if passfile is None:
        raise UsageError("a service has no terminal to ask for the passphrase: give --passphrase-file FILE")
    passfile = passfile.resolve()
    if not passfile.is_file():
        raise UsageError(f"{passfile} is not a file")
    from .context import read_passphrase

    # The unit would fail at every login with a wrong passphrase: check the file's now.
    ctx.home.unlock(read_passphrase(passfile, new=False))
    mountpoint = a.mountpoint.expanduser().resolve()
    units, envs = user_unit_dir(), env_dir()
    units.mkdir(parents=True, exist_ok=True)
    envs.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(units / TEMPLATE_NAME, mount_template(), 0o644)
    env_file = envs / f"{ids.space_text(space_id)}.env"
    _write(env_file, instance_env(mountpoint, passfile, ctx.home.root.resolve(), config.config_path().resolve()),
           0o600)
    unit = instance_name(space_id)
    print(f"wrote {units / TEMPLATE_NAME} and {env_file}")
    why = systemctl_user("daemon-reload") or systemctl_user("enable", "--now", unit)
    if why is not None:
        raise ServiceError(f"wrote {unit} but could not enable it: {why}")
    print(f"enabled {unit}: {a.space} is mounted at {mountpoint} now and at every login")
    return 0


def cmd_service_remove(ctx: Context) -> int:
    space_id = _space(ctx, ctx.args.space)
    unit = instance_name(space_id)
    env_file = env_dir() / f"{ids.space_text(space_id)}.env"
    if not env_file.exists():
        raise UsageError(f"no unit is installed for {ctx.args.space} ({env_file} is missing)")
    why = systemctl_user("disable", "--now", unit)
    env_file.unlink()
    # What `enable` made, in case systemd could not be asked to undo it (not running now).
    user_unit_dir().joinpath("default.target.wants", unit).unlink(missing_ok=True)
    template = user_unit_dir() / TEMPLATE_NAME
    if template.exists() and not any(env_dir().glob("*.env")):
        template.unlink()  # the last instance is gone
    print(f"removed {unit}")
    if why is not None:
        raise ServiceError(f"removed the files of {unit} but could not disable it: {why}")
    systemctl_user("daemon-reload")
    return 0


def cmd_service_unit(ctx: Context) -> int:
    if ctx.args.node:
        listen = ctx.args.listen
        if listen is None:
            setting = config.load().listen
            listen = setting.value if setting.source != config.DEFAULT else "0.0.0.0:7733"
        sys.stdout.write(node_unit(listen, ctx.args.data))
    else:
        sys.stdout.write(mount_template())
    return 0


def _write(path: Path, text: str, mode: int) -> None:
    from ..store.files import atomic_write

    atomic_write(path, text.encode(), mode)
