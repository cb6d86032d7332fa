"""Progress bars for long CLI work (join, restore, sync, pin, the first sync of a foreground mount).

One library (tqdm) draws them; a bar turns itself off when stderr is not a terminal or when the user asked for
none, so scripts and logs never see carriage returns.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from typing import Any

from tqdm import tqdm

Progress = Callable[[str, int, int], None]  # (what, done, total): the same shape as net.sync.Progress


class ProgressBars:
    """A callable ``(what, done, total)`` matching ``net.sync.Progress``: one bar per kind of work."""

    def __init__(self, *, enabled: bool | None = None, byte_counts: Collection[str] = ()) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.byte_counts = frozenset(byte_counts)  # kinds of work counted in bytes (shown as KiB, MiB, ...)
        self._bars: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(what)
        if bar is None:
            units: dict[str, Any] = (dict(unit="B", unit_scale=True, unit_divisor=1024) if what in self.byte_counts
                                     else {})
            bar = self._bars[what] = tqdm(total=total, desc=f"{what:8}", file=sys.stderr, leave=True,
                                          dynamic_ncols=True, mininterval=0.1, **units)
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
