"""Tests on real FUSE mounts (skipped with a reason where /dev/fuse or fusermount3 is missing)."""
