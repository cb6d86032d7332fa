"""Leaving a space on this device (``anysyncfs space leave``): every row of the space, the blob files no other
space of the home uses, and its keys in the keyring. The space's providers and other members are not told; the
account's vault records the departure (cli/vault_cmd.py)."""

from __future__ import annotations

import msgspec

from ..core.change import parse_change
from .home import Unlocked


def _refs(unlocked: Unlocked, space_id: bytes) -> set[bytes]:
    """Blobs the stored changes of a space list in their headers (every content blob they depend on)."""
    store = unlocked.home.store()
    out: set[bytes] = set()
    for _id, raw in store.iter_change_raws(space_id, status=None):
        out.update(parse_change(raw).header.blob_refs)
    return out


def leave_space(unlocked: Unlocked, space_id: bytes) -> int:
    """(blocking) Forget a space here; returns how many blob files were deleted. The caller makes sure it is not
    mounted. Blobs another space of this home lists stay (the blob folder is shared)."""
    store = unlocked.home.store()
    others: set[bytes] = set()
    for row in store.spaces():
        if row.id != space_id:
            others |= _refs(unlocked, row.id)
    only_here = _refs(unlocked, space_id) - others
    store.forget_space(space_id, blobs=sorted(only_here))
    blobs = unlocked.home.blobs()
    deleted = sum(blobs.delete(b) for b in only_here)
    if space_id in unlocked.contents.spaces:
        spaces = {k: v for k, v in unlocked.contents.spaces.items() if k != space_id}
        unlocked.contents = msgspec.structs.replace(unlocked.contents, spaces=spaces)
        unlocked.home.write_keyring(unlocked.contents, unlocked.passphrase)
    return deleted



