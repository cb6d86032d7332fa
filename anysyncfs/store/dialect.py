"""The one place where the store's SQL depends on the database: SQLite (a device, the default node) or
PostgreSQL (a node shared by several processes, ``node serve --db postgresql://…``).

Everything else in :mod:`anysyncfs.store` is dialect-neutral SQLAlchemy Core. What differs is gathered here:

- ``INSERT … ON CONFLICT``: SQLAlchemy offers it per dialect (:func:`upsert_insert` picks the construct);
- the connection URL and engine options (:func:`engine_url`; SQLite's PRAGMAs stay in db.py);
- the lock that serialises a provider's writes across processes (:func:`lock_writes_sql`): PostgreSQL's
  transaction-scoped advisory lock; nothing on SQLite, whose single writer is the one node process holding the
  data directory's lock file;
- the change notification that crosses processes (:func:`notify_sql`): PostgreSQL ``NOTIFY``, sent at commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import LargeBinary, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
NOTIFY_CHANNEL = "anysyncfs_space_changed"  # payload: "<space ID hex>:<writer process token>"
# Key of the advisory lock every provider write takes (any constant; "anysyncfs" in ASCII, folded to 63 bits).
WRITE_LOCK_KEY = int.from_bytes(b"anysyncf", "big") & 0x7FFF_FFFF_FFFF_FFFF


class EmptyBytes(ColumnElement[bytes]):
    """The empty byte string as a column default in DDL: ``x''`` in SQLite (the DDL SQLite stores is the same as
    with ``text("x''")``), ``''::bytea`` in PostgreSQL (where ``x''`` is a bit string)."""

    type = LargeBinary()
    inherit_cache = True


@compiles(EmptyBytes)
def _empty_bytes_sqlite(_element: EmptyBytes, _compiler: Any, **_kw: Any) -> str:
    return "x''"


@compiles(EmptyBytes, "postgresql")
def _empty_bytes_postgres(_element: EmptyBytes, _compiler: Any, **_kw: Any) -> str:
    return "''::bytea"


def is_postgres_url(target: str) -> bool:
    return target.startswith(POSTGRES_SCHEMES)


def engine_url(target: str) -> str:
    """A SQLAlchemy URL: PostgreSQL URLs get the psycopg 3 driver; anything else is a SQLite file path."""
    if is_postgres_url(target):
        _scheme, rest = target.split("://", 1)
        return f"postgresql+psycopg://{rest}"
    return f"sqlite:///{target}"


def upsert_insert(dialect_name: str) -> Callable[[Table], Any]:
    """The ``insert`` construct with ``on_conflict_do_update`` / ``on_conflict_do_nothing`` for a dialect (both
    take the same arguments: ``index_elements``, ``set_``, ``where``)."""
    if dialect_name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def lock_writes_sql(dialect_name: str) -> str | None:
    """SQL that takes the provider write lock until the transaction ends (None: nothing to take)."""
    if dialect_name == "postgresql":
        return f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"
    return None


def notify_sql(dialect_name: str) -> str | None:
    """SQL (one bound parameter ``payload``) that tells the other processes a space changed, at commit."""
    if dialect_name == "postgresql":
        return f"SELECT pg_notify('{NOTIFY_CHANNEL}', %(payload)s)"
    return None
