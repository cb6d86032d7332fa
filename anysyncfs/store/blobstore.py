"""Where a provider keeps its blob bytes: the small interface the node uses, and the choice between backends.

Two backends implement :class:`BlobStore`:

- :class:`~anysyncfs.store.blobfiles.BlobFiles`, content-addressed files in a directory (the default; a device
  always uses it);
- :class:`~anysyncfs.store.s3blobs.S3Blobs`, objects under a prefix of an S3 bucket
  (``node serve --blobs s3://bucket/prefix``), which several node processes can share.

The contract both keep: :meth:`put` returns only once the blob is durable (a crash or restart of the provider
keeps it), so the node links the blob to a space and acknowledges it only afterwards; :meth:`get` verifies the
bytes against the ID; a failing backend raises :class:`BlobStoreUnavailable` (a :class:`StoreError`), which the
node answers with a retryable error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..core import bao
from ..errors import StoreError


class BlobStoreUnavailable(StoreError):
    """The blob backend did not answer, or failed (network, server error): nothing was stored; retry later."""


@runtime_checkable
class BlobStore(Protocol):
    def put(self, blob_id: bytes, data: bytes | bytearray | memoryview, *, verified: bool = False,
            durable: bool = True, nodes: bytes | None = None) -> None:
        """Store ``data`` under ``blob_id`` (checked against it unless ``verified``), durably, with its outboard
        (``nodes`` when given and they check out, else computed); idempotent."""
        ...

    def outboard(self, blob_id: bytes) -> tuple[int, bytes]:
        """(blob size, outboard nodes verified against the ID), rebuilt when missing or damaged."""
        ...

    def read_slice(self, blob_id: bytes, ranges: Sequence[bao.Range]) -> bytes:
        """The verified-streaming slice (docs/protocol.md 50.8) of ``ranges``; never a damaged byte."""
        ...

    def get(self, blob_id: bytes) -> bytes:
        """The verified bytes (:class:`NotFound` when absent, :class:`IdMismatch` when damaged)."""
        ...

    def has(self, blob_id: bytes) -> bool: ...

    def has_many(self, blob_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``blob_ids`` stored here (an object store asks in few requests, not one per ID)."""
        ...

    def size_of(self, blob_id: bytes) -> int:
        """Stored size (:class:`NotFound` when absent)."""
        ...

    def delete(self, blob_id: bytes) -> bool:
        """Remove the blob; False if it was not there."""
        ...

    def ids_modified_before(self, modified_before_us: int) -> list[bytes]:
        """IDs of the blobs last written before ``modified_before_us`` (µs since the epoch)."""
        ...


def open_blob_store(location: str, *, s3_options: Mapping[str, str | None] | None = None) -> BlobStore:
    """``s3://bucket/prefix`` -> :class:`S3Blobs` (endpoint, region and credentials from ``s3_options``, else the
    standard AWS_* environment variables); anything else is a directory -> :class:`BlobFiles`."""
    if location.startswith("s3://"):
        from .s3blobs import S3Blobs

        return S3Blobs.from_url(location, **dict(s3_options or {}))
    from .blobfiles import BlobFiles

    return BlobFiles(Path(location))


__all__ = ["BlobStore", "BlobStoreUnavailable", "open_blob_store"]
