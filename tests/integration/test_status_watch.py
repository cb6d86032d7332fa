"""``anysyncfs status --watch``: a view refreshed every --interval from the store, ended by Ctrl-C with exit 0."""

from __future__ import annotations

import signal
import subprocess
import time

from tests.conftest import CLI
from tests.integration.test_cli import init, run


def test_status_watch_refreshes_until_interrupted(cli_env: dict[str, str]) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "first")
    p = subprocess.Popen([*CLI, "status", "--watch", "--interval", "0.2"], env=cli_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # several views
        run(cli_env, "space", "create", "second")
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, stderr = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, stderr
    assert stderr.strip() == b"", stderr  # no traceback, no "interrupted"
    views = stdout.decode().split("anysyncfs status at ")[1:]
    assert len(views) >= 4, stdout
    assert "  first  " in views[0] and "  second  " not in views[0]
    assert "  second  " in views[-1]  # each view reads the store afresh


def test_status_watch_json_is_one_document_per_line(cli_env: dict[str, str]) -> None:
    import json

    init(cli_env)
    run(cli_env, "space", "create", "first")
    p = subprocess.Popen([*CLI, "status", "--watch", "--json", "--interval", "0.2"], env=cli_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.2)
        p.send_signal(signal.SIGTERM)  # a service manager stopping it: the same clean end
        stdout, stderr = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, stderr
    docs = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    assert len(docs) >= 2 and all(d[0]["name"] == "first" for d in docs)
