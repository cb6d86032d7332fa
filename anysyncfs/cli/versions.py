"""``history`` and ``revert``: by space and path, or by a path inside a mounted space.

A mounted path is resolved to its space through the mount's lock file in the home (the mount records its
mountpoint there). Reading history from the store while the mount runs is safe (SQLite WAL readers never block
the writer). A revert of a mounted file writes the old bytes *through the mount*, so the running mount makes the
change like any other write — from the mountpoint down, never following a symbolic link (another member may have
made the path one: see :mod:`.mounted_write`); a revert without a mount commits the change directly.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..clock import format_time_us
from ..core import ids, ops
from ..errors import NotFound, UsageError
from ..replica import files
from ..replica.home import Unlocked
from ..replica.replica import Replica, open_replica, resolve_space
from .mounted_write import write_in_mount

if TYPE_CHECKING:
    from .context import Context


def locate_mounted(home_root: Path, path: str) -> tuple[str, Path, str]:
    """(space text, mountpoint, path inside the space) of a path inside a mount served from this home."""
    from ..mounts import find_holder

    target = Path(os.path.abspath(path))
    candidate = target
    while True:
        if os.path.ismount(candidate):
            holder = find_holder(home_root, candidate)
            if holder is not None:
                rel = "/" + str(target.relative_to(candidate)).lstrip(".")
                return holder.stem, candidate, rel
        if candidate.parent == candidate:
            raise NotFound(f"{path} is not inside a space mounted from {home_root}")
        candidate = candidate.parent


def _open(ctx: "Context") -> tuple[Replica, str, Path | None]:
    """The replica, the path inside the space, and the mountpoint serving it (None without a mount)."""
    unlocked = ctx.home.unlock(ctx.passphrase())
    if ctx.args.path is None:
        space, mountpoint, rel = locate_mounted(ctx.home.root, ctx.args.target)
        return _read_only(unlocked, space), rel, mountpoint
    return open_replica(unlocked, ctx.args.target), ctx.args.path, None


def _read_only(unlocked: Unlocked, space: str) -> Replica:
    """A replica that never writes: the mount process owns the space's writes while it runs."""
    store = unlocked.home.store()
    return Replica(unlocked, store, unlocked.home.blobs(), resolve_space(store, space), read_only=True)


def cmd_history(ctx: "Context") -> int:
    replica, rel, _ = _open(ctx)
    for v in files.history(replica, rel):
        print(f"{format_time_us(v.wall_us)}  {ids.change_text(v.change)}  {ids.account_text(v.author)[:11]}  "
              f"{v.what}")
    return 0


def parse_when(replica: Replica, text: str) -> bytes:
    """A change ID (``ch-…``, from history) or a UTC time: the last change made at or before that time."""
    if text.startswith(ids.PREFIX_CHANGE + "-"):
        return ids.from_text(ids.PREFIX_CHANGE, text)
    try:
        when = _dt.datetime.fromisoformat(text.rstrip("Z").replace("Z", ""))
    except ValueError:
        raise UsageError(f"--at takes a change ID (ch-…) or a UTC time like 2026-11-22T05:35:35, not {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    limit_us = int(when.timestamp() * 1_000_000)
    best = None
    for row in replica.store.change_rows(replica.space_id):
        if row.wall_us <= limit_us:
            best = row.id
    if best is None:
        raise NotFound(f"the space has no change at or before {text}")
    return best


def cmd_revert(ctx: "Context") -> int:
    replica, rel, mountpoint = _open(ctx)
    at = parse_when(replica, ctx.args.at)
    old_state = replica.materialise([at])
    try:
        old = files.resolve(old_state, rel)
    except NotFound:
        raise NotFound(f"{rel} did not exist at {ctx.args.at}") from None
    if old.kind != ops.KIND_FILE:
        raise UsageError(f"{rel} was not a regular file at {ctx.args.at}; revert restores files")
    data = b"".join(files.read_file(replica, old))
    if mountpoint is not None:  # through the mount (the running mount commits it), never following a link
        write_in_mount(mountpoint, rel, data, old.mode)
    else:
        files.put_file(replica, rel, data, mode=old.mode)
        node = files.resolve(replica.tree, rel)
        if node.mode != old.mode:
            replica.commit([ops.SetAttr(node.id, mode=old.mode)])
        replica.sync()
    print(f"{rel}: restored {len(data)} bytes as of {ids.change_text(at)}")
    return 0

