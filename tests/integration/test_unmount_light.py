"""``anysyncfs unmount`` is half of every remount: it must not import the Vfs, pyfuse3, trio or SQLAlchemy (the
~0.4 s of imports every other command pays), and it must still parse and fail exactly as the full CLI does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from anysyncfs.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY_TOP}
                                                or m.startswith(("anysyncfs.fs", "anysyncfs.replica", "anysyncfs.store")))}))
"""


def _probe(tmp_path: Path, *args: str) -> tuple[dict[str, object], str]:
    src = PROBE.replace("{HEAVY_TOP}", repr({"sqlalchemy", "pyfuse3", "trio"}))
    done = subprocess.run([sys.executable, "-c", src, *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_unmount_imports_nothing_heavy_and_reports_like_the_full_cli(tmp_path: Path) -> None:
    for word in ("unmount", "umount"):
        out, err = _probe(tmp_path, "--home", str(tmp_path / "home"), word, str(tmp_path))
        assert out["code"] == 6  # NotFound: the exit code of the error table
        assert err.strip() == f"anysyncfs: error: {tmp_path} is not mounted"
        assert out["heavy"] == []


def test_other_commands_still_get_the_full_parser(tmp_path: Path) -> None:
    out, err = _probe(tmp_path, "--home", str(tmp_path / "home"), "whoami")
    assert out["code"] != 0 and "passphrase" in err  # whoami needs the keyring: the full CLI ran the command
    assert any(m.startswith("anysyncfs.replica") for m in out["heavy"])  # it is the probe that can see imports
