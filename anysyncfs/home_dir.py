"""Where the home directory is when ``--home`` is not given (no other import: the light commands use it too)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def default_home() -> Path:
    env = os.environ.get("ANYSYNCFS_HOME")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("anysyncfs", appauthor=False))
