"""The blobs a change references, listed in clear in its header (``ChangeHeader.blob_refs``).

A provider holds no keys, so it cannot read the file contents inside a change's payload; the header's sorted list
of blob IDs tells it which of a space's blobs an accepted change references, and it collects the others after a
grace period (:mod:`anysyncfs.replica.blob_gc`). History is never pruned, so a blob once listed by an accepted
change is kept for as long as the space is.

The writer lists every distinct blob its ``Write`` ops' contents depend on: each manifest blob, the chunks that
manifest lists, and the chunks of inline extent lists (:func:`writer_refs`). A receiver that can open the payload
checks the list against it (:func:`check_refs`) and does not apply a change whose list lies. The check uses the
payload only, never blobs a device may or may not hold, so every device decides alike:

- every blob the payload names directly (manifest blobs, chunks of inline extents) must be listed;
- without a manifest in the payload, nothing else may be listed;
- with a manifest, the chunks it lists are in a blob the receiver may not hold yet, so further IDs are accepted
  unchecked. A writer can thereby keep blobs of its choice alive, within the space's quota — as it could by
  writing a file made of them. Leaving a manifest's chunks out only lets the provider drop the writer's own
  new content, as a Write naming blobs never uploaded would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import TooLarge
from . import content as content_mod
from .change import MAX_BLOB_REFS
from .ops import Content, Op, Write


def _contents(payload_ops: Iterable[Op]) -> Iterable[Content]:
    return (op.content for op in payload_ops if isinstance(op, Write))


def direct_refs(payload_ops: Sequence[Op]) -> set[bytes]:
    """The blobs the payload itself names: every manifest blob and every chunk of an inline extent list."""
    out: set[bytes] = set()
    for c in _contents(payload_ops):
        if c.manifest is not None:
            out.add(c.manifest.blob)
        out.update(e.chunk.blob for e in c.extents)
    return out


def uses_manifest(payload_ops: Sequence[Op]) -> bool:
    return any(c.manifest is not None for c in _contents(payload_ops))


def check_refs(listed: Sequence[bytes], payload_ops: Sequence[Op]) -> str | None:
    """Why the header's blob list does not match the decrypted payload (see the module doc), or None."""
    listed_set = set(listed)
    direct = direct_refs(payload_ops)
    unlisted = direct - listed_set
    if unlisted:
        return f"its payload references {len(unlisted)} blob(s) its header does not list"
    if not uses_manifest(payload_ops) and listed_set != direct:
        return f"its header lists {len(listed_set - direct)} blob(s) its payload does not reference"
    return None


def writer_refs(payload_ops: Sequence[Op], get_blob: content_mod.GetBlob) -> list[bytes]:
    """Every distinct blob the ``Write`` contents depend on, sorted (manifests are opened through ``get_blob``).

    :class:`TooLarge` when they are more than one change may list."""
    refs: set[bytes] = set()
    for c in _contents(payload_ops):
        refs.update(r.blob for r in content_mod.blob_refs(c, get_blob))
    if len(refs) > MAX_BLOB_REFS:
        raise TooLarge(f"file too large: {len(refs)} distinct chunks exceed {MAX_BLOB_REFS}")
    return sorted(refs)


__all__ = ["check_refs", "direct_refs", "uses_manifest", "writer_refs"]
