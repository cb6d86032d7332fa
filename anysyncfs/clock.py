"""The wall clock, in the one unit the project stores (microseconds since the Unix epoch), and its two text forms.

Changes, upload records, invites and caches all stamp times with :func:`now_us`. A shared module below every layer
(like :mod:`anysyncfs.errors`); modules import the function by name, so a test can replace one module's clock.
"""

from __future__ import annotations

import datetime as _dt
import time


def now_us() -> int:
    return time.time_ns() // 1000


def format_time_us(us: int) -> str:
    """Exact and sortable, for listings (``2026-12-05T03:20:01.123456Z``)."""
    t = _dt.datetime.fromtimestamp(us / 1e6, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_minute_utc(us: int) -> str:
    """To the minute, for messages (``2026-12-05 03:20 UTC``): when an invite expires."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(us / 1e6))
