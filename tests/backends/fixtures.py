"""pytest fixtures for the node's PostgreSQL + S3 backend (registered by tests/conftest.py).

The servers start once per session (``pg_server``, ``s3_server``) and are always stopped at its end. A test that
cannot have them skips with the reason — except under CI (``CI=true``), where a missing server is a failure:
scripts/test installs both. Each test gets its own database and key prefix (``pg_s3``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .servers import PostgresServer, S3Server, Unavailable


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the PostgreSQL/S3 tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except Unavailable as e:
        _missing(str(e))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    try:
        server = S3Server(tmp_path_factory.mktemp("s3"))
    except Unavailable as e:
        _missing(str(e))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class PgS3:
    """One node deployment's database and bucket prefix on the session's servers."""

    pg: PostgresServer
    s3: S3Server
    db: str
    blobs_url: str
    _opened: list[Any] = field(default_factory=list)

    def blob_store(self) -> Any:
        from anysyncfs.store.s3blobs import S3Blobs

        env = self.s3.env()
        return S3Blobs.from_url(self.blobs_url, endpoint_url=env["AWS_ENDPOINT_URL"], region=env["AWS_REGION"],
                                access_key_id=env["AWS_ACCESS_KEY_ID"],
                                secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def node_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~anysyncfs.net.node.Node` for this deployment."""
        return {"db": self.db, "blobs": self.blob_store()}

    def serve_args(self) -> list[str]:
        """``node serve`` options for this deployment (with :meth:`env`)."""
        return ["--db", self.db, "--blobs", self.blobs_url]

    def env(self) -> dict[str, str]:
        return self.s3.env()


@pytest.fixture
def pg_s3(pg_server: PostgresServer, s3_server: S3Server) -> PgS3:
    if not pg_server.running:  # a failure test stopped it and failed before starting it again
        pg_server.start()
    if s3_server.proc is None:
        s3_server.start()
    return PgS3(pg_server, s3_server, pg_server.new_database("node"), s3_server.new_prefix())


@pytest.fixture(params=["sqlite", "pg+s3"])
def node_backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """``Node`` keyword arguments of each backend: the default (SQLite + directory), then PostgreSQL + S3."""
    if request.param == "sqlite":
        return {}
    deployment: PgS3 = request.getfixturevalue("pg_s3")
    return deployment.node_kwargs()
