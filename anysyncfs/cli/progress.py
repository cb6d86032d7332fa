"""Progress bars for long CLI work (join, restore, sync, pin, the first sync of a foreground mount).

One library (tqdm) draws them; a bar turns itself off when stderr is not a terminal or when the user asked for
none, so scripts and logs never see carriage returns.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class ProgressBars:
    """A callable ``(what, done, total)`` matching ``net.sync.Progress``: one bar per kind of work."""

    def __init__(self, *, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(what)
        if bar is None:
            bar = self._bars[what] = tqdm(total=total, desc=f"{what:8}", file=sys.stderr, leave=True,
                                          dynamic_ncols=True, mininterval=0.1)
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
