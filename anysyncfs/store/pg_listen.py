"""Change notices between node processes on one PostgreSQL database (LISTEN side; the NOTIFY is sent by
``Store.save_space_state`` inside each write transaction, so it is delivered exactly when the write commits).

A notice's payload is ``<space ID hex>:<writer's process token>``; a node ignores its own. PostgreSQL does not
queue notices for a listener that is not connected: after a reconnection :meth:`SpaceChangeListener.wait`
reports ``reconnected`` and the node treats every space it serves as changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError
from .dialect import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


@dataclass
class Notices:
    changed: list[tuple[bytes, str]] = field(default_factory=list)  # (space ID, writer token)
    reconnected: bool = False  # notices may have been missed: every space may have changed


class SpaceChangeListener:
    """One dedicated connection LISTENing on the channel. :meth:`wait` blocks (run it in a worker thread)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None
        self._ever_connected = False

    def _connect(self) -> bool:
        """Connect and LISTEN; True when this is a reconnection."""
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error as e:
            raise StoreError(f"cannot listen for changes of other node processes: {str(e).splitlines()[0]}") from None
        self._conn = conn
        again = self._ever_connected
        self._ever_connected = True
        return again

    def wait(self, timeout: float) -> Notices:
        """The notices that arrive within ``timeout`` seconds (returns as soon as one came, with any that follow
        at once). :class:`StoreError` when the database is unreachable (call again later)."""
        import psycopg

        out = Notices()
        if self._conn is None or self._conn.closed:
            out.reconnected = self._connect()
        try:
            for notice in self._conn.notifies(timeout=timeout, stop_after=1):
                out.changed.append(_parse(notice.payload))
            if out.changed:
                for notice in self._conn.notifies(timeout=0.01):
                    out.changed.append(_parse(notice.payload))
        except psycopg.Error as e:
            self.close()
            raise StoreError(f"lost the change notices of other node processes: {str(e).splitlines()[0]}") from None
        out.changed = [c for c in out.changed if c[0]]
        return out

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None


def _parse(payload: str) -> tuple[bytes, str]:
    space_hex, _colon, token = payload.partition(":")
    try:
        space_id = bytes.fromhex(space_hex)
    except ValueError:
        return b"", token
    return (space_id, token) if len(space_id) == 32 else (b"", token)


__all__ = ["Notices", "SpaceChangeListener"]
