"""The ``-o`` options of ``anysyncfs mount``: ONE table that both parses them and writes ``mount --help``.

Each option of our own is a row: its name, the form of its value (none for a flag), what it means, how it sets
:class:`~.mount.MountOptions`, and its default as read from a fresh ``MountOptions()``; so an option cannot be
accepted without being documented in the help, and the defaults the help shows are the ones in force. Kernel flags
(``nosuid``…) and the generic options mount(8)/fstab hand to every helper (``defaults``, ``_netdev``…) are listed
in :mod:`.mount` and shown from there. Anything else is refused with one line naming the option.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .mount import MountOptions

HELP_WIDTH = 100
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"512M"``, ``"10G"``, ``"1.5GiB"``, ``"4096"`` -> bytes (powers of 1024)."""
    m = _SIZE.match(text.strip())
    if m is None:
        raise UsageError(f"not a size: {text!r} (use e.g. 512M or 10G)")
    scale = 1024 ** " kmgtp".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * scale)


def _number(key: str, value: str, unit: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{key} must be a number of {unit}, not {value!r}") from None
    if not low <= number <= high:
        raise UsageError(f"{key} must be between {low:g} and {high:g} {unit}")
    return number


def _seconds_setter(key: str, low: float, high: float) -> Callable[[MountOptions, str], None]:
    def apply(opts: MountOptions, value: str) -> None:
        setattr(opts, key, _number(key, value, "seconds", low, high))

    return apply


def _batch_interval(opts: MountOptions, value: str) -> None:
    opts.batch_interval = _number("batch_interval", value.removesuffix("ms"), "milliseconds", 1, 3_600_000) / 1000


def _cache_size(opts: MountOptions, value: str) -> None:
    opts.cache_size = parse_size(value)


def _flag(field: str, to: bool) -> Callable[[MountOptions, str], None]:
    def apply(opts: MountOptions, _value: str) -> None:
        setattr(opts, field, to)

    return apply


def _listen(opts: MountOptions, value: str) -> None:
    from ..net.device_server import parse_listen  # a UsageError with a one-line reason for a bad address

    opts.listen = parse_listen(value)


def _discovery(opts: MountOptions, value: str) -> None:
    if value not in ("on", "off"):
        raise UsageError(f"discovery must be on or off, not {value!r}")
    opts.discovery = value == "on"


def _listen_default(d: MountOptions) -> str:
    return "off" if d.listen is None else f"{d.listen.host or '0.0.0.0'}:{d.listen.port} (a free port when taken)"


def _on_off(value: object) -> str:
    return "on" if value else "off"


@dataclass(frozen=True)
class MountOption:
    name: str
    metavar: str | None  # the form of its value; None: a flag, which takes none
    meaning: str
    apply: Callable[[MountOptions, str], None]
    default: Callable[[MountOptions], str]  # shown by --help, read from a fresh MountOptions()

    def parse(self, opts: MountOptions, value: str | None) -> None:
        """``value`` None: the option was given without ``=``."""
        if self.metavar is None and value is not None:
            raise UsageError(f"mount option {self.name} takes no value (given {self.name}={value})")
        if self.metavar is not None and not value:
            raise UsageError(f"mount option {self.name} needs a value: {self.name}={self.metavar}")
        self.apply(opts, value or "")


OPTIONS: dict[str, MountOption] = {o.name: o for o in (
    MountOption("ro", None, "read-only mount: writes fail with EROFS (same as --read-only)",
                _flag("read_only", True), lambda d: _on_off(d.read_only)),
    MountOption("cache_size", "SIZE", "keep at most SIZE (512M, 20G) of content here; beyond it, content a "
                "provider holds and nobody pinned is evicted, least recently read first (same as --cache-size)",
                _cache_size, lambda d: "unlimited" if d.cache_size is None else str(d.cache_size)),
    MountOption("batch_interval", "MS", "group commit: how long the open batch may wait before it is committed "
                "as one change (200ms also works)", _batch_interval, lambda d: f"{d.batch_interval * 1000:g}"),
    MountOption("commit_interval", "SECONDS", "how often staged writes of files that stay open are committed",
                _seconds_setter("commit_interval", 0.05, 3600), lambda d: f"{d.commit_interval:g}"),
    MountOption("cache_timeout", "SECONDS", "how long the kernel may cache names and attributes (changes from "
                "other devices and processes are invalidated as they land, whatever this is)",
                _seconds_setter("cache_timeout", 0, 86400), lambda d: f"{d.cache_timeout:g}"),
    MountOption("sync_interval", "SECONDS", "full reconciliation with each peer this often (own changes are "
                "pushed at once)", _seconds_setter("sync_interval", 0.1, 86400), lambda d: f"{d.sync_interval:g}"),
    MountOption("fetch_timeout", "SECONDS", "how long a read waits for content this device lacks before EIO",
                _seconds_setter("fetch_timeout", 0.1, 86400), lambda d: f"{d.fetch_timeout:g}"),
    MountOption("listen", "HOST:PORT|off", "accept sessions from the space's members' devices here (off: none)",
                _listen, _listen_default),
    MountOption("discovery", "on|off", "announce this device to members on the LAN and find theirs (mDNS)",
                _discovery, lambda d: _on_off(d.discovery)),
    MountOption("offline", None, "no network at all for this mount", _flag("offline", True),
                lambda d: _on_off(d.offline)),
    MountOption("list_virtual_xattrs", None, "listxattr also names the user.anysync.* attributes (by default they "
                "are readable by name only, so cp -a and rsync -X do not copy them)", _flag("list_virtual_xattrs", True),
                lambda d: _on_off(d.list_virtual_xattrs)),
    MountOption("allow_other", None, "let other users use the mount (needs user_allow_other in /etc/fuse.conf "
                "unless root)", _flag("allow_other", True), lambda d: "on as root, else off"),
    MountOption("noallow_other", None, "only the mounting user may use the mount (root included)",
                _flag("allow_other", False), lambda d: "off"),
)}  # fmt: skip


def help_text(defaults: MountOptions, kernel: Collection[str], ignored: Collection[str]) -> str:
    """The ``-o`` table of ``anysyncfs mount --help``."""
    rows = [(o.name + (f"={o.metavar}" if o.metavar else ""), o.default(defaults), o.meaning)
            for o in OPTIONS.values()]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    dwidth = max(len(r[1]) for r in rows)
    lines = ["mount options (-o a,b=c,...; repeatable):", f"  {'option':<{width}}  {'default':<{dwidth}}  meaning"]
    indent = " " * (2 + width + 2 + dwidth + 2)
    for name, default, meaning in rows:
        wrapped = textwrap.wrap(meaning, max(40, HELP_WIDTH - len(indent)))
        lines.append(f"  {name:<{width}}  {default:<{dwidth}}  {wrapped[0]}")
        lines += [indent + more for more in wrapped[1:]]
    lines.append("")
    for text in ("passed to the kernel as for any mount: " + ", ".join(sorted(kernel)),
                 "accepted and ignored (from mount(8) and /etc/fstab): " + ", ".join(sorted(ignored)) +
                 ", x-*, comment=*", "any other option is refused."):  # fmt: skip
        lines += textwrap.wrap(text, HELP_WIDTH, subsequent_indent="  ")
    return "\n".join(lines)
