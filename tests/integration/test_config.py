"""config.toml (cli/config.py) through the CLI as a user runs it: what is in force and from where, one-line
errors with the line number, peers recorded for a space, the node's listen address; the command line wins."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
from pathlib import Path

from anysyncfs.cli.config import load
from anysyncfs.core import ids
from anysyncfs.fs.mount import parse_options
from tests.conftest import CLI
from tests.integration.test_cli import init, one_line_error, run


def write_config(env: dict[str, str], text: str) -> Path:
    path = Path(env["ANYSYNCFS_CONFIG"])
    path.write_text(text)
    return path


def test_config_show_prints_values_in_force_and_their_source(cli_env: dict[str, str]) -> None:
    init(cli_env)
    space = run(cli_env, "space", "create", "notes").stdout.decode().strip()
    path = write_config(cli_env, '[defaults]\nsync_interval = 60\nmount_options = ["noatime"]\ncache_size = "20G"\n'
                                 f'[spaces."{space}"]\ncache_size = "5G"\nmount_options = "fetch_timeout=10"\n')
    doc = json.loads(run(cli_env, "config", "show", "notes", "--json").stdout)  # by name: the ID's table applies
    s = {k: [(v["value"], v["source"]) for v in vals] for k, vals in doc["settings"].items()}
    assert s["cache_size"] == [("5G", f'{path} [spaces.{space}]')]
    assert s["sync_interval"] == [(60, f"{path} [defaults]")]
    assert s["mount_options"] == [("noatime", f"{path} [defaults]"), ("fetch_timeout=10", f"{path} [spaces.{space}]")]
    assert s["listen"] == [("127.0.0.1:7733", "default")]
    glob = run(cli_env, "config", "show").stdout.decode()  # no space: the global view, as text
    assert f"cache_size    = 20G  # {path} [defaults]" in glob
    assert "listen        = 127.0.0.1:7733  # default" in glob
    # what a mount with these -o options would use: the command line over the space's table
    doc = json.loads(run(cli_env, "config", "show", "notes", "-o", "sync_interval=5,noexec", "--json").stdout)
    s = {k: [(v["value"], v["source"]) for v in vals] for k, vals in doc["settings"].items()}
    assert s["sync_interval"] == [("5", "command line")] and s["cache_size"] == [("5G", f'{path} [spaces.{space}]')]
    assert s["mount_options"][-1] == ("noexec", "command line")


def test_malformed_config_is_one_line_with_the_line_number(cli_env: dict[str, str], tmp_path: Path) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "notes")
    path = write_config(cli_env, "[defaults]\nsync_interval = 60\ncache_size = 20G\n")  # unquoted: not TOML
    (tmp_path / "mnt").mkdir()
    for args in (["config", "show"], ["mount", "notes", str(tmp_path / "mnt")], ["sync", "notes"]):
        p = run(cli_env, *args, check=False)
        assert p.returncode == 2, (args, p.stderr)
        err = one_line_error(p)
        assert str(path) in err and "line 3" in err, err
    write_config(cli_env, "[defaults]\nmount_options = \"noatime,bogus\"\n")  # valid TOML, unknown mount option
    err = one_line_error(run(cli_env, "mount", "notes", str(tmp_path / "mnt"), check=False))
    assert "[defaults]" in err and "bogus" in err, err
    write_config(cli_env, "[defaults]\ncache_sise = \"1G\"\n")  # a typo is refused, not ignored
    assert "cache_sise" in one_line_error(run(cli_env, "config", "show", check=False))


def test_config_peers_are_recorded_for_the_space_a_command_syncs(cli_env: dict[str, str]) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "notes")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    peer = f"anysync://{ids.device_text(os.urandom(32))}@127.0.0.1:{port}"
    write_config(cli_env, f'[spaces.notes]\npeers = ["{peer}"]\n')
    p = run(cli_env, "sync", "notes", "--timeout", "5", check=False)
    assert p.returncode == 14, p.stderr  # the config's peer was dialled (and is unreachable)
    assert peer in run(cli_env, "space", "peers", "notes").stdout.decode()
    # a peer in [defaults] serves every space: an invite (which needs one to name in the ticket) finds it
    run(cli_env, "space", "create", "other")
    assert run(cli_env, "space", "invite", "other", check=False).returncode == 2  # no peer anywhere yet
    write_config(cli_env, f'[defaults]\npeers = ["{peer}"]\n')
    p = run(cli_env, "space", "invite", "other", "--role", "reader", check=False)
    assert b"anysync:" in p.stdout, p.stderr
    assert peer in run(cli_env, "space", "peers", "other").stdout.decode()


def _node_address(env: dict[str, str], tmp_path: Path, *extra: str) -> str:
    proc = subprocess.Popen([*CLI, "node", "serve", "--data", str(tmp_path / "node"), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "node printed no address"
        return proc.stdout.readline().decode().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_node_listen_address_from_config_and_command_line_wins(cli_env: dict[str, str], tmp_path: Path) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    write_config(cli_env, f'[defaults]\nlisten = "127.0.0.1:{ports[0]}"\n')
    assert _node_address(cli_env, tmp_path).endswith(f"@127.0.0.1:{ports[0]}")
    assert _node_address(cli_env, tmp_path, "--listen", f"127.0.0.1:{ports[1]}").endswith(f"@127.0.0.1:{ports[1]}")


def test_precedence_command_line_over_space_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[defaults]\nsync_interval = 60\ncache_size = "20G"\nmount_options = ["ro", "fetch_timeout=7"]\n'
                    '[spaces.notes]\nsync_interval = 90\nmount_options = "fetch_timeout=9"\n')
    cfg = load(path)
    items = cfg.mount_items(("sp-unused", "notes"))
    opts = parse_options(items)
    assert (opts.sync_interval, opts.cache_size, opts.fetch_timeout, opts.read_only) == (90, 20 << 30, 9, True)
    opts = parse_options(items + ["sync_interval=5,cache_size=1G"])  # the command line's -o comes last
    assert (opts.sync_interval, opts.cache_size, opts.fetch_timeout) == (5, 1 << 30, 9)
    other = parse_options(cfg.mount_items(("elsewhere",)))  # another space: the defaults only
    assert (other.sync_interval, other.fetch_timeout) == (60, 7)
