"""fs/mount.py pieces of issue 18 item 6 that need no mount: the mount source and the flags of ``-o remount``
(the real remount and mount(8) are tested in tests/fuse/test_2_posix_gaps.py)."""

from __future__ import annotations

import os

import pytest

from anysyncfs.errors import UsageError
from anysyncfs.fs import mount


def test_mount_source_is_the_space_name_when_libfuse_can_carry_it() -> None:
    assert mount.mount_source("notes", "sp-abc") == "notes"
    assert mount.mount_source("My Notes 2026", "sp-abc") == "My Notes 2026"
    for awkward in ("a,b", "back\\slash", "Grüße", "tab\there", ""):
        assert mount.mount_source(awkward, "sp-abc") == "sp-abc", awkward


def test_remount_keeps_the_flags_it_is_not_told_to_change() -> None:
    current = os.ST_NOSUID | os.ST_NODEV | os.ST_RELATIME
    flags = mount.remount_flags(current, ["remount,ro"])
    assert flags & mount.MS_REMOUNT and flags & mount.MS_RDONLY
    assert flags & mount.MS_NOSUID and flags & mount.MS_NODEV and flags & mount.MS_RELATIME  # not cleared
    flags = mount.remount_flags(current | os.ST_RDONLY, ["remount", "rw,suid"])
    assert not flags & mount.MS_RDONLY and not flags & mount.MS_NOSUID and flags & mount.MS_NODEV
    assert mount.remount_flags(current, ["remount,ro,rw"]) & mount.MS_RDONLY == 0  # the last one wins
    # what mount(8) adds from mountinfo is passed over; our own options are checked but change nothing now
    same = mount.remount_flags(current, ["remount,ro,user_id=0,group_id=0,default_permissions,allow_other"])
    assert same == mount.remount_flags(current, ["remount,ro,cache_size=1G"]) == flags_ro(current)
    with pytest.raises(UsageError):
        mount.remount_flags(current, ["remount,bogus"])
    assert mount.is_remount(["ro", "x-a,remount"]) and not mount.is_remount(["ro"])


def flags_ro(current: int) -> int:
    return mount.remount_flags(current, ["ro"])
