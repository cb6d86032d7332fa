"""Blocking work (SQLite, hashing, signature checks) off the trio thread, one call at a time per store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class Runner:
    """Runs blocking calls in worker threads under one lock (the store and the replica are not thread-safe).

    A mount passes its FUSE adapter's lock so that sync and file-system calls never overlap."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock or threading.Lock()

    def _locked(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.lock:
            return fn(*args)

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(self._locked, fn, args)
