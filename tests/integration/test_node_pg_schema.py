"""The store's schema and its upgrades on a real PostgreSQL 15 (the same schema version and upgrade steps as
SQLite: tests/unit/test_ledger.py covers those on SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from anysyncfs.errors import StoreError
from anysyncfs.store import schema as S
from anysyncfs.store.db import Store
from anysyncfs.store.dialect import engine_url


def _columns(url: str) -> dict[str, list[tuple[str, str]]]:
    engine = create_engine(engine_url(url))
    try:
        found = inspect(engine)
        return {t: sorted((c["name"], str(c["type"])) for c in found.get_columns(t)) for t in found.get_table_names()}
    finally:
        engine.dispose()


def _execute(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def test_schema_1_is_upgraded_in_place_to_the_same_shape_as_a_new_database(pg_server) -> None:
    fresh, old = pg_server.new_database("fresh"), pg_server.new_database("old")
    Store(fresh).close()
    Store(old).close()
    # Make `old` a version 1 database: without what versions 2 to 5 added.
    _execute(old, "ALTER TABLE peers DROP COLUMN device_key, DROP COLUMN last_attempt_us, DROP COLUMN last_error",
             "ALTER TABLE blobs DROP COLUMN remote_confirmed", "ALTER TABLE changes DROP COLUMN unreadable",
             "DROP TABLE node_spaces", "DROP TABLE vaults", "DROP TABLE peers_seen",
             "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = Store(old)
    try:
        store.add_peer(b"s" * 32, "127.0.0.1:1", b"k" * 32)  # the upgraded columns work
        assert store.peers(b"s" * 32)[0].device_key == b"k" * 32
    finally:
        store.close()
    assert _columns(old) == _columns(fresh)
    assert set(_columns(fresh)) == set(S.metadata.tables)


@pytest.mark.parametrize("version", [str(S.SCHEMA_VERSION + 1), "0", "x"])
def test_unknown_schema_versions_are_refused(pg_server, version: str) -> None:
    url = pg_server.new_database("v")
    Store(url).close()
    _execute(url, f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=f"schema version {version}"):
        Store(url)


def test_the_password_of_a_database_url_stays_out_of_messages(pg_server) -> None:
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{pg_server.port}/no_such_database"
    with pytest.raises(StoreError) as caught:
        Store(url)
    assert "s3cret-pw" not in str(caught.value) and "no_such_database" in str(caught.value)


def test_processes_opening_a_new_database_at_once_agree_on_its_schema(pg_server) -> None:
    import threading

    url = pg_server.new_database("race")
    failures: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(url).close()
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert set(_columns(url)) == set(S.metadata.tables)
