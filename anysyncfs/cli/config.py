"""The configuration file ``config.toml``: defaults for every space and per space, below the command line.

Where: ``$ANYSYNCFS_CONFIG`` if set, else ``config.toml`` in the XDG config directory of anysyncfs
(``~/.config/anysyncfs/config.toml``, from platformdirs, so ``$XDG_CONFIG_HOME`` moves it). A missing file is the
same as an empty one. Example::

    [defaults]                       # every space
    mount_options = ["noatime"]      # or one string "noatime,fetch_timeout=60"
    cache_size = "20G"
    sync_interval = 60               # seconds
    peers = ["anysync://dv-…@node.example:7733"]
    listen = "0.0.0.0:7733"          # `anysyncfs node serve` (global only)

    [spaces.notes]                   # one space, by its local name or its sp-… ID
    cache_size = "5G"
    mount_options = "ro"

Precedence: the command line, then ``[spaces.X]``, then ``[defaults]``, then the built-in default. Scalars of a
space replace the global ones; ``mount_options`` and ``peers`` accumulate (global first), and since later mount
options win, a space's options override global ones and the command line's ``-o`` overrides both.

Mount settings become ``-o`` items (``cache_size=…``, ``sync_interval=…``, then ``mount_options``) handed to the
mount's own option parser before the command line's, so the file accepts exactly the options ``-o`` accepts and
refuses the same unknown ones. Peers of the file are recorded for the space (as ``space add-peer`` does) when
``mount``, ``sync`` or ``space invite`` starts; removing one from the file does not forget it (``space remove-peer`` does).

Errors are one line naming the file: tomllib's own message for malformed TOML carries the line and column.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from ..core import ids
from ..core.address import parse_address
from ..errors import AnysyncError, NotFound, UsageError

if TYPE_CHECKING:
    from .context import Context

CONFIG_ENV = "ANYSYNCFS_CONFIG"
CONFIG_MAX_BYTES = 1 << 20  # a configuration file is small; a huge one is a mistake
DEFAULT_LISTEN = "127.0.0.1:7733"
SPACE_KEYS = ("mount_options", "cache_size", "sync_interval", "peers")
GLOBAL_KEYS = SPACE_KEYS + ("listen",)
GLOBAL_SECTION = "defaults"
SPACES_SECTION = "spaces"

DEFAULT = "default"
COMMAND_LINE = "command line"


def config_path() -> Path:
    """The file in use: ``$ANYSYNCFS_CONFIG``, else ``<XDG config dir>/anysyncfs/config.toml``."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return platformdirs.user_config_path("anysyncfs") / "config.toml"


@dataclass(frozen=True)
class Setting:
    """One value in force and where it came from (``default``, ``<file> [section]``, ``command line``)."""

    value: Any
    source: str


@dataclass
class Config:
    path: Path
    exists: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    spaces: dict[str, dict[str, Any]] = field(default_factory=dict)  # section name (space name or sp-…) -> keys

    def source(self, section: str) -> str:
        return f"{self.path} [{section}]"

    def space_section(self, names: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
        """The ``[spaces.X]`` table for a space known by any of ``names`` (its ID text first, then its name)."""
        for name in names:
            if name in self.spaces:
                return f"{SPACES_SECTION}.{name}", self.spaces[name]
        return None

    def settings(self, names: tuple[str, ...] = ()) -> dict[str, list[Setting]]:
        """Every key -> the values in force for a space known by ``names`` (none: the global view), lowest
        precedence first. A scalar has one value; ``mount_options`` and ``peers`` may have several."""
        from ..fs.mount import MountOptions

        builtin = MountOptions()
        out: dict[str, list[Setting]] = {
            "mount_options": [],
            "cache_size": [Setting(None, DEFAULT)],
            "sync_interval": [Setting(builtin.sync_interval, DEFAULT)],
            "peers": [],
            "listen": [Setting(DEFAULT_LISTEN, DEFAULT)],
        }
        layers = [(GLOBAL_SECTION, self.defaults)]
        found = self.space_section(names)
        if found is not None:
            layers.append(found)
        for section, table in layers:
            for key, value in table.items():
                src = self.source(section)
                if key in ("mount_options", "peers"):
                    out[key].extend(Setting(v, src) for v in value)
                else:
                    out[key] = [Setting(value, src)]
        return out

    def mount_items(self, names: tuple[str, ...]) -> list[str]:
        """The ``-o`` items this file gives a mount of the space known by ``names`` (checked: a bad value is a
        one-line error naming the file and section)."""
        from ..fs.mount import parse_options

        items: list[str] = []
        s = self.settings(names)
        for key in ("cache_size", "sync_interval"):
            setting = s[key][-1]
            if setting.source != DEFAULT and setting.value is not None:
                item = f"{key}={setting.value}"
                _check(lambda: parse_options([item]), setting.source)
                items.append(item)
        for setting in s["mount_options"]:
            _check(lambda: parse_options([setting.value]), setting.source)
            items.append(setting.value)
        return items

    def peers(self, names: tuple[str, ...]) -> list[Setting]:
        return self.settings(names)["peers"]

    @property
    def listen(self) -> Setting:
        return self.settings()["listen"][-1]


def _check(parse: Any, source: str) -> None:
    try:
        parse()
    except UsageError as e:
        raise UsageError(f"{source}: {e}") from None


def load(path: Path | None = None) -> Config:
    """Read and check the file (missing: an empty configuration). Every error is one line naming the file."""
    path = config_path() if path is None else path
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_MAX_BYTES + 1)
    except FileNotFoundError:
        return Config(path)
    except OSError as e:
        raise UsageError(f"cannot read the configuration file {path}: {e.strerror}") from None
    if len(data) > CONFIG_MAX_BYTES:
        raise UsageError(f"{path}: larger than {CONFIG_MAX_BYTES} bytes: not a configuration file")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(f"{path}: not UTF-8 text (at line {line})") from None
    except tomllib.TOMLDecodeError as e:  # its message ends with "(at line L, column C)"
        raise UsageError(f"{path}: {e}") from None
    cfg = Config(path, exists=True)
    for top, value in doc.items():
        if top == GLOBAL_SECTION:
            cfg.defaults = _table(value, GLOBAL_KEYS, f"{path} [{top}]")
        elif top == SPACES_SECTION:
            if not isinstance(value, dict):
                raise UsageError(f"{path}: [{top}] must be a table of [{top}.NAME] tables")
            for name, table in value.items():
                cfg.spaces[name] = _table(table, SPACE_KEYS, f"{path} [{top}.{name}]")
        else:
            raise UsageError(f"{path}: unknown section or key {top!r} (known: [{GLOBAL_SECTION}], "
                             f"[{SPACES_SECTION}.NAME])")
    return cfg


def _table(value: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key not in allowed:
            raise UsageError(f"{where}: unknown key {key!r} (known: {', '.join(allowed)})")
        out[key] = _value(key, v, where)
    return out


def _value(key: str, v: Any, where: str) -> Any:
    if key == "mount_options":
        if isinstance(v, str):
            return [v] if v.strip() else []
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        raise UsageError(f"{where}: mount_options must be a string (\"a,b=1\") or a list of strings")
    if key == "peers":
        if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise UsageError(f"{where}: peers must be a list of addresses (\"anysync://dv-…@host:port\")")
        for address in v:
            try:
                parse_address(address)
            except AnysyncError as e:
                raise UsageError(f"{where}: peers: {e}") from None
        return list(v)
    if key == "cache_size":
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise UsageError(f"{where}: cache_size must be a size such as \"20G\" or a number of bytes")
        return str(v)
    if key == "sync_interval":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UsageError(f"{where}: sync_interval must be a number of seconds")
        return v
    if key == "listen":
        if not isinstance(v, str) or ":" not in v:
            raise UsageError(f"{where}: listen must be \"HOST:PORT\"")
        return v
    raise UsageError(f"{where}: unknown key {key!r}")  # pragma: no cover - _table checked the key


# ---------------------------------------------------------------------------------------------- commands
def space_names(ctx: Context, text: str) -> tuple[bytes | None, tuple[str, ...]]:
    """A space given on the command line -> (its ID if known, the names a ``[spaces.X]`` table may use)."""
    from ..replica.replica import resolve_space

    try:
        space_id = resolve_space(ctx.home.store(), text)
    except NotFound:
        if text.startswith(ids.PREFIX_SPACE + "-"):
            return ids.from_text(ids.PREFIX_SPACE, text), (text,)
        return None, (text,)
    names = [ids.space_text(space_id)]
    names += [r.name for r in ctx.home.store().spaces() if r.id == space_id and r.name]
    return space_id, tuple(names)


def record_peers(ctx: Context, cfg: Config, space_id: bytes, names: tuple[str, ...]) -> None:
    """Record the file's peers for the space (idempotent), so every part of the sync layer sees them."""
    store = ctx.home.store()
    known = {row.address for row in store.peers(space_id)}
    for setting in cfg.peers(names):
        addr = parse_address(setting.value)
        if str(addr) not in known:
            store.add_peer(space_id, str(addr), addr.device)


def with_command_line(settings: dict[str, list[Setting]], option_args: list[str]) -> None:
    """Add a command line's ``-o`` items to ``settings`` as a mount would apply them: ``cache_size`` and
    ``sync_interval`` replace the file's value, every other option joins ``mount_options`` (checked by the mount's
    own parser, so an unknown option is the same error as in ``anysyncfs mount``)."""
    from ..fs.mount import parse_options

    parse_options(option_args)
    for arg in option_args:
        for item in filter(None, (s.strip() for s in arg.split(","))):
            key, eq, value = item.partition("=")
            if eq and key in ("cache_size", "sync_interval"):
                settings[key] = [Setting(value, COMMAND_LINE)]
            else:
                settings["mount_options"].append(Setting(item, COMMAND_LINE))


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cfg = sub.add_parser("config", help="the configuration file").add_subparsers(dest="config_cmd", required=True)
    s = cfg.add_parser("show", help="print the settings in force (for a space, or global) and where each comes from")
    s.add_argument("space", nargs="?", help="a space name or ID: show what a mount of it would use")
    s.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT…]",
                   help="mount options as given to `anysyncfs mount -o`: shown as coming from the command line")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_config_show)


def cmd_config_show(ctx: Context) -> int:
    cfg = load()
    names: tuple[str, ...] = ()
    if ctx.args.space:
        _, names = space_names(ctx, ctx.args.space)
        cfg.mount_items(names)  # the same checks a mount makes
    settings = cfg.settings(names)
    with_command_line(settings, ctx.args.options)
    if ctx.args.json:
        doc = {"file": str(cfg.path), "exists": cfg.exists, "space": ctx.args.space,
               "settings": {k: [{"value": s.value, "source": s.source} for s in v] for k, v in settings.items()}}
        print(json.dumps(doc, indent=1))
        return 0
    print(f"# {cfg.path}{'' if cfg.exists else ' (not present: built-in defaults)'}")
    if ctx.args.space:
        print(f"# for space {ctx.args.space}" + ("" if ctx.args.options else
                                                 "; options given on the command line override these"))
    width = max(len(k) for k in settings)
    for key, values in settings.items():
        if not values:
            print(f"{key:<{width}} = (none)  # {DEFAULT}")
        for s in values:
            shown = "(none)" if s.value is None else s.value
            print(f"{key:<{width}} = {shown}  # {s.source}")
    return 0
