"""``anysyncfs status --watch``: a view refreshed every --interval from the store, ended by Ctrl-C (or SIGTERM)
with exit code 0 and nothing on stderr."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

from tests.conftest import CLI
from tests.integration.test_cli import init, run


class Watch:
    """``anysyncfs status --watch ARGS`` with its stdout collected by a thread as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([*CLI, "status", "--watch", "--interval", "0.2", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out += line

    def wait_for(self, what: str, count: int) -> None:
        deadline = time.monotonic() + 60
        while self.out.decode().count(what) < count:
            assert self.proc.poll() is None, f"watch ended: {self.proc.returncode}"
            assert time.monotonic() < deadline, f"fewer than {count} x {what!r} in 60 s: {self.out!r}"
            time.sleep(0.05)

    def stop(self, signum: int) -> tuple[int, str, bytes]:
        try:
            self.proc.send_signal(signum)
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.out.decode(), self.proc.stderr.read()


def test_status_watch_refreshes_until_interrupted(cli_env: dict[str, str]) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "first")
    w = Watch(cli_env)
    try:
        w.wait_for("anysyncfs status at ", 2)
        run(cli_env, "space", "create", "second")
        w.wait_for("  second  ", 2)  # each view reads the store afresh
    finally:
        code, out, err = w.stop(signal.SIGINT)  # what Ctrl-C sends
    assert code == 0, err
    assert err.strip() == b"", err  # no traceback, no "interrupted"
    views = out.split("anysyncfs status at ")[1:]
    assert len(views) >= 4, out
    assert "  first  " in views[0] and "  second  " not in views[0]
    assert "  second  " in views[-1] or "  second  " in views[-2]  # the last view may have been cut by Ctrl-C


def test_status_watch_json_is_one_document_per_line(cli_env: dict[str, str]) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "first")
    w = Watch(cli_env, "--json")
    try:
        w.wait_for("\n", 2)
    finally:
        code, out, err = w.stop(signal.SIGTERM)  # a service manager stopping it: the same clean end
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(docs) >= 2 and all(d[0]["name"] == "first" for d in docs)
