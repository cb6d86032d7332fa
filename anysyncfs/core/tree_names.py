"""Names the file tree shows: conflict-copy names and the suffixes that keep the names in one directory unique.

Two kinds of conflict produce a conflict name, both built by :func:`conflict_name`:

* a losing concurrent write is kept as a copy beside the file, named after the file;
* when two live entries of one directory carry the same raw name, every entry but the earliest placed one is
  shown under a conflict name (its raw name is unchanged, so the collision disappears when the other goes).

The layout is ``<stem>.sync-conflict-YYYYMMDD-HHMMSS-<author>[-N][.<ext>]``: UTC time of the change that made the
conflicting version, the first 8 base32 characters of its author's account key, a counter from 2 upwards only
when the name would still collide, and the extension after the last dot. A name without a dot after its first
byte (``README``, ``.bashrc``) has no extension and keeps its whole self as the stem. The result is cut to
NAME_MAX bytes by shortening the stem (at a UTF-8 character boundary when the stem is UTF-8).

A conflict name is always built from the ORIGINAL name: a conflict of a conflict copy (both devices edited the
copy) is ``report.sync-conflict-<its time>-<its author>.txt``, never a doubled
``report.sync-conflict-….sync-conflict-….txt`` (:func:`original_name` strips what an earlier conflict added).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from typing import Protocol

from . import ids
from .ops import NAME_MAX

CONFLICT_MARK = b".sync-conflict-"
AUTHOR_LABEL_LEN = 8  # base32 characters of the author key shown in a conflict name
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# Wall times come from other devices: clamp them into what a four-digit year can show.
_MAX_WALL_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
# What conflict_name adds: the tail after the stem, and the extension (no dot in it) moved behind the tail.
_CONFLICT_TAIL = re.compile(rb"^(.+?)\.sync-conflict-[0-9]{8}-[0-9]{6}-[a-z2-7]{8}(?:-[0-9]+)?(\.[^.]+)?$", re.DOTALL)


class Placed(Protocol):
    """What naming needs to know about a live directory entry."""

    @property
    def id(self) -> bytes: ...
    @property
    def name(self) -> bytes: ...
    @property
    def order(self) -> tuple[int, bytes, int]: ...
    @property
    def wall_us(self) -> int: ...
    @property
    def author(self) -> bytes: ...


def split_name(name: bytes) -> tuple[bytes, bytes]:
    """(stem, extension without its dot). No extension when the only dot is the first or the last byte."""
    dot = name.rfind(b".")
    if dot <= 0 or dot == len(name) - 1:
        return name, b""
    return name[:dot], name[dot + 1 :]


def original_name(name: bytes) -> bytes:
    """``name`` without the conflict tails :func:`conflict_name` added (``a.sync-conflict-…-ugq2dinb-2.txt`` ->
    ``a.txt``; doubled names of older versions lose every tail). Other names are returned unchanged."""
    for _ in range(len(name)):  # each pass makes the name shorter
        m = _CONFLICT_TAIL.match(name)
        if m is None:
            return name
        name = m.group(1) + (m.group(2) or b"")
    return name


def utc_stamp(wall_us: int) -> bytes:
    """``YYYYMMDD-HHMMSS`` of a wall-clock time in microseconds since the Unix epoch, in UTC."""
    clamped = min(max(wall_us, 0), _MAX_WALL_US)
    moment = _EPOCH + datetime.timedelta(microseconds=clamped)
    return moment.strftime("%Y%m%d-%H%M%S").encode("ascii")


def _cut(stem: bytes, room: int) -> bytes:
    """The longest prefix of ``stem`` of at most ``room`` (>= 1) bytes, not splitting a UTF-8 sequence."""
    if len(stem) <= room:
        return stem
    end = room
    # A byte 0b10xxxxxx continues a UTF-8 sequence: cutting before it would split a character.
    while end > 0 and stem[end] & 0xC0 == 0x80:
        end -= 1
    return stem[:end] if end > 0 else stem[:room]


def conflict_name(name: bytes, wall_us: int, author: bytes, counter: int = 1) -> bytes:
    """The conflict name for a version of ``name`` made at ``wall_us`` by ``author``; ``counter`` > 1 adds
    ``-<counter>`` so that a colliding conflict name can be made unique. A conflict name given as ``name`` is
    named from its original (:func:`original_name`)."""
    name = original_name(name)
    stem, ext = split_name(name)
    tail = CONFLICT_MARK + utc_stamp(wall_us) + b"-" + ids.short(author, AUTHOR_LABEL_LEN).encode("ascii")
    if counter > 1:
        tail += b"-%d" % counter
    tail_ext = tail + b"." + ext if ext else tail
    if len(tail_ext) >= NAME_MAX:  # an absurdly long extension: treat the whole name as the stem
        stem, tail_ext = name, tail
    return _cut(stem, NAME_MAX - len(tail_ext)) + tail_ext


def display_names(live: Iterable[Placed]) -> dict[bytes, Placed]:
    """Unique display names for the live entries of one directory, sorted by name.

    For each raw name the entry placed first (smallest order key, then entry ID) keeps it; every other entry gets
    its conflict name (its own placement's wall time and author), with the first free counter when that name is a
    raw name in use or was given out already. Losers are named in placement order, so the result is a pure
    function of the entries.
    """
    groups: dict[bytes, list[Placed]] = {}
    for entry in live:
        groups.setdefault(entry.name, []).append(entry)
    shown: dict[bytes, Placed] = {}
    losers: list[Placed] = []
    for name, group in groups.items():
        if len(group) > 1:
            group.sort(key=lambda e: (e.order, e.id))
            losers.extend(group[1:])
        shown[name] = group[0]
    losers.sort(key=lambda e: (e.order, e.id))
    for entry in losers:
        counter = 1
        candidate = conflict_name(entry.name, entry.wall_us, entry.author)
        while candidate in shown:
            counter += 1
            candidate = conflict_name(entry.name, entry.wall_us, entry.author, counter)
        shown[candidate] = entry
    return dict(sorted(shown.items()))
