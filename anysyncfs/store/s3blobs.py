"""Blob bytes as objects in an S3-compatible bucket, through boto3 (see docs/architecture.md for the choice).

A blob with ID ``abcdef…`` is the object ``<prefix>/ab/cdef…`` (the same fan-out as the blob directory, which
also spreads keys over an object store's partitions). An object is written with one PUT (a multipart upload only
above :data:`PART_SIZE`, which no blob within the blob limit reaches); S3 makes it visible and durable when the
request returns, which is what :class:`~.blobstore.BlobStore` promises. Reads go in :data:`READ_PIECE` pieces into one
buffer bounded by the blob size limit before any byte is read (the object's length comes first), hashed as they
arrive; the bytes are verified against the ID before they are returned.

Every failure of the service or the network becomes :class:`~.blobstore.BlobStoreUnavailable`; a missing object
:class:`NotFound`. boto3 retries a failed request a few times itself (standard retry mode) within short
timeouts, so a node answers a device quickly either way.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from collections.abc import Sequence

from ..core import bao, crypto
from ..core.blob import MAX_BLOB_LEN
from ..errors import AnysyncError, IdMismatch, NotFound, StoreError
from .blobstore import BlobStoreUnavailable

BLOB_ID_LEN = crypto.HASH_LEN
# Multipart upload above this, in parts of this size. Above every blob within the 16.5 MiB limit: the node holds
# the blob anyway, and one PUT of it costs about 2 MiB more, parts (8 MiB, copied for their file object and read
# again for their checksum) about 16 MiB more (measured; docs/benchmarks.md "Node memory"). Parts remain for a
# store opened with a larger ``max_blob_len``.
PART_SIZE = 32 << 20
READ_PIECE = 1 << 20
HEAD_CONCURRENCY = 16  # requests in flight for one has_many (within the client's 32 pooled connections)
LIST_MIN = 2  # has_many reads a directory with one LIST page when asked about this many of its IDs
LIST_PAGE = 1000  # keys in that page (S3's most)
_HEX = frozenset("0123456789abcdef")
OUTBOARD_SUFFIX = ".ob"  # the blob's outboard object sits beside it


class S3Blobs:
    """Blobs under ``s3://bucket/prefix``. Thread-safe (boto3 clients are)."""

    def __init__(self, bucket: str, prefix: str, client: Any, *, max_blob_len: int = MAX_BLOB_LEN) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.max_blob_len = max_blob_len
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None) -> S3Blobs:
        """``s3://bucket/prefix``; options left None come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and
        AWS_SECRET_ACCESS_KEY (boto3 reads them, and its other usual sources)."""
        rest = url[len("s3://"):]
        bucket, _slash, prefix = rest.partition("/")
        if not bucket:
            raise StoreError(f"--blobs needs s3://BUCKET/PREFIX, got {url!r}")
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StoreError("S3 blobs need boto3 (pip install boto3)") from None
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30,
                        s3={"addressing_style": "path"}, max_pool_connections=32)
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, config=config)
        return cls(bucket, prefix, client)

    # ------------------------------------------------------------------------------------------ keys
    def key_of(self, blob_id: bytes) -> str:
        if len(blob_id) != BLOB_ID_LEN:
            raise ValueError("a blob ID is 32 bytes")
        text = blob_id.hex()
        return f"{self.prefix}/{text[:2]}/{text[2:]}" if self.prefix else f"{text[:2]}/{text[2:]}"

    def _id_of(self, key: str) -> bytes | None:
        tail = key[len(self.prefix) + 1:] if self.prefix else key
        top, _slash, name = tail.partition("/")
        text = top + name
        if len(top) != 2 or len(text) != 2 * BLOB_ID_LEN or not set(text) <= _HEX:
            return None
        return bytes.fromhex(text)

    # ------------------------------------------------------------------------------------------ BlobStore
    def put(self, blob_id: bytes, data: bytes | bytearray | memoryview, *, verified: bool = False,
            durable: bool = True, nodes: bytes | None = None) -> None:
        """Store the blob, then its outboard (50.8) as the object ``<key>.ob``: ``nodes`` when the uploader sent
        them and they check out, else computed. The outboard is checked on every use and rebuilt from the blob
        when missing or damaged, so it is written after the blob and its loss costs only time."""
        if len(data) > self.max_blob_len:
            raise StoreError(f"blob of {len(data)} bytes exceeds the limit of {self.max_blob_len}")
        if not verified and crypto.blake3(data) != blob_id:
            raise IdMismatch("blob does not hash to the ID it is stored under")
        key = self.key_of(blob_id)
        try:
            if len(data) <= PART_SIZE:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data))
            else:
                self._multipart(key, memoryview(data))
        except Exception as e:  # noqa: BLE001 - botocore's many exception types: all mean "not stored"
            raise _unavailable("store", key, e) from None
        self._put_outboard(blob_id, data, nodes)

    def _put_outboard(self, blob_id: bytes, data: bytes | bytearray | memoryview, nodes: bytes | None) -> bytes:
        if nodes is not None:
            try:
                bao.verify_outboard(blob_id, len(data), nodes)
            except AnysyncError:
                nodes = None  # the uploader's nodes do not check out: compute our own
        if nodes is None:
            root, nodes = bao.outboard_nodes(bytes(data))
            if root != blob_id:
                raise IdMismatch("blob does not hash to the ID it is stored under")
        if nodes:
            key = self.key_of(blob_id) + OUTBOARD_SUFFIX
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=nodes)
            except Exception as e:  # noqa: BLE001
                raise _unavailable("store", key, e) from None
        return nodes

    def outboard(self, blob_id: bytes) -> tuple[int, bytes]:
        """(blob size, outboard nodes verified against the ID); a missing or damaged outboard object is rebuilt."""
        size = self.size_of(blob_id)
        want = bao.parent_count(size) * bao.NODE_LEN
        if want == 0:
            return size, b""
        key = self.key_of(blob_id) + OUTBOARD_SUFFIX
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
            body = reply["Body"]
            try:
                nodes = body.read(want + 1) if int(reply.get("ContentLength", 0)) == want else b""
            finally:
                body.close()
            bao.verify_outboard(blob_id, size, nodes)
            return size, nodes
        except Exception as e:  # noqa: BLE001 - missing, damaged or unreadable: rebuild from the verified blob
            if not _is_missing(e) and not isinstance(e, AnysyncError):
                raise _unavailable("read", key, e) from None
        return size, self._put_outboard(blob_id, self.get(blob_id), None)

    def read_slice(self, blob_id: bytes, ranges: Sequence[bao.Range]) -> bytes:
        """The verified-streaming slice (50.8) of ``ranges``. A slice of most of the blob reads the object whole
        and checks it against its ID; a smaller one reads only its groups, one ranged GET per run of adjacent
        groups, each group checked against its chaining value from the verified outboard before it is served —
        so a request for a few ranges of a 16 MiB blob costs the node the slice, not the blob."""
        size, nodes = self.outboard(blob_id)
        want = bao.wanted(size, ranges)
        groups = bao.groups_of(want)
        if len(groups) * 2 > bao.group_count(size):
            view = memoryview(self.get(blob_id))
            if len(view) != size:
                raise IdMismatch(f"blob object {blob_id.hex()} changed size while read")
            return bao.encode_slice(lambda o, n: view[o : o + n], nodes, size, want)
        cvs = bao.group_cvs(blob_id, size, nodes)
        by_offset: dict[int, bytes] = {}
        for first, last in _runs(groups):
            start, end = first * bao.GROUP_LEN, min(size, (last + 1) * bao.GROUP_LEN)
            run = self._read_range(blob_id, start, end)
            for g in range(first, last + 1):
                offset = g * bao.GROUP_LEN
                piece = run[offset - start : min(size, offset + bao.GROUP_LEN) - start]
                if not bao.verify_group(cvs[g], g, piece, is_root=len(cvs) == 1):
                    raise IdMismatch(f"blob object {blob_id.hex()} is corrupted (group {g})")
                by_offset[offset] = piece
        return bao.encode_slice(lambda o, _n: by_offset[o], nodes, size, want)

    def _read_range(self, blob_id: bytes, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` (exclusive) of the object, exactly that many (:class:`IdMismatch` if the object
        is shorter: it does not match the outboard's size); checked by the caller."""
        key = self.key_of(blob_id)
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            body = reply["Body"]
            try:
                data = body.read(end - start + 1)  # one byte more than asked: a server ignoring Range shows
            finally:
                body.close()
        except Exception as e:  # noqa: BLE001
            if _is_missing(e):
                raise NotFound(f"blob {blob_id.hex()} is not stored here") from None
            raise _unavailable("read", key, e) from None
        if len(data) != end - start:
            raise IdMismatch(f"blob object {blob_id.hex()} gave {len(data)} bytes for a range of {end - start}")
        return data

    def _multipart(self, key: str, view: memoryview) -> None:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(view), PART_SIZE), start=1):
                piece = io.BytesIO(view[start:start + PART_SIZE])  # one part in flight, not a second full copy
                etag = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number,
                                               Body=piece)["ETag"]
                parts.append({"ETag": etag, "PartNumber": number})
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            except Exception:  # noqa: BLE001 - the service's own cleanup of stale uploads covers this
                pass
            raise

    def get(self, blob_id: bytes) -> bytes:
        key = self.key_of(blob_id)
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as e:  # noqa: BLE001
            if _is_missing(e):
                raise NotFound(f"blob {blob_id.hex()} is not stored here") from None
            raise _unavailable("read", key, e) from None
        size = int(reply.get("ContentLength", 0))
        body = reply["Body"]
        try:
            if size > self.max_blob_len:
                raise StoreError(f"object {key} is {size} bytes, more than the limit of {self.max_blob_len}")
            buffer = bytearray(size)
            view = memoryview(buffer)
            hasher = crypto.Hasher()
            at = 0
            try:
                while at < size:  # straight into the buffer, hashed piece by piece as it arrives
                    n = body.readinto(view[at : at + min(READ_PIECE, size - at)])
                    if not n:
                        break
                    hasher.update(view[at : at + n])
                    at += n
            except Exception as e:  # noqa: BLE001
                raise _unavailable("read", key, e) from None
            finally:
                view.release()
        finally:
            body.close()
        if at != size or hasher.digest() != blob_id:
            raise IdMismatch(f"blob object {blob_id.hex()} is corrupted")
        # The buffer itself (bytes-like), not a bytes copy of it: a copy would hold the blob twice at once.
        return buffer  # type: ignore[return-value]

    def _head(self, blob_id: bytes) -> dict[str, Any] | None:
        key = self.key_of(blob_id)
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except Exception as e:  # noqa: BLE001
            if _is_missing(e):
                return None
            raise _unavailable("look up", key, e) from None

    def has(self, blob_id: bytes) -> bool:
        return self._head(blob_id) is not None

    def has_many(self, blob_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``blob_ids`` stored here, in few requests: S3 has no multi-key existence check, so the IDs are
        grouped by their ``ab/`` directory; a directory asked about :data:`LIST_MIN` or more IDs is read with one
        LIST page from just before its smallest asked key (up to :data:`LIST_PAGE` keys: it answers every asked
        key up to the last one listed), and the rest — lone IDs, and those past a page that ended early in a
        crowded directory — with HEAD requests. Both kinds run :data:`HEAD_CONCURRENCY` at once. So a batch costs
        at most one LIST per directory plus HEADs, whatever the bucket holds. :class:`BlobStoreUnavailable` if
        any request fails."""
        unique = sorted(set(blob_ids))
        if len(unique) <= 1:
            return {b for b in unique if self.has(b)}
        by_dir: dict[int, list[bytes]] = {}
        for b in unique:
            by_dir.setdefault(b[0], []).append(b)
        listed = [ids for ids in by_dir.values() if len(ids) >= LIST_MIN]
        heads = [b for ids in by_dir.values() if len(ids) < LIST_MIN for b in ids]
        pool = self._workers()
        found: set[bytes] = set()
        for present, unresolved in pool.map(self._list_among, listed):
            found |= present
            heads.extend(unresolved)
        found.update(b for b, here in zip(heads, pool.map(self.has, heads), strict=True) if here)
        return found

    def _list_among(self, ids: list[bytes]) -> tuple[set[bytes], list[bytes]]:
        """One LIST page over the keys of ``ids`` (sorted, one directory): (those present, those it did not reach)."""
        keys = [self.key_of(b) for b in ids]
        directory = keys[0][: keys[0].rindex("/") + 1]
        try:
            # Every key >= keys[0] sorts after keys[0] without its last character.
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=directory, StartAfter=keys[0][:-1],
                                               MaxKeys=LIST_PAGE)
        except Exception as e:  # noqa: BLE001
            raise _unavailable("list", directory, e) from None
        items = [item["Key"] for item in page.get("Contents", ())]
        reached = items[-1] if page.get("IsTruncated") and items else None  # None: the page reached the end
        present = set(items)
        here = {b for b, k in zip(ids, keys, strict=True) if k in present}
        unresolved = [b for b, k in zip(ids, keys, strict=True) if reached is not None and k > reached]
        return here, unresolved

    def _workers(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:  # made on first use, kept: threads are not started per request
                self._pool = ThreadPoolExecutor(HEAD_CONCURRENCY, thread_name_prefix="s3-has")
            return self._pool

    def size_of(self, blob_id: bytes) -> int:
        head = self._head(blob_id)
        if head is None:
            raise NotFound(f"blob {blob_id.hex()} is not stored here")
        return int(head["ContentLength"])

    def delete(self, blob_id: bytes) -> bool:
        if not self.has(blob_id):
            return False
        key = self.key_of(blob_id)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
            self.client.delete_object(Bucket=self.bucket, Key=key + OUTBOARD_SUFFIX)  # absent: S3 says fine
        except Exception as e:  # noqa: BLE001
            raise _unavailable("delete", key, e) from None
        return True

    def ids_modified_before(self, modified_before_us: int) -> list[bytes]:
        out: list[bytes] = []
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    blob_id = self._id_of(item["Key"])
                    if blob_id is not None and item["LastModified"].timestamp() * 1e6 < modified_before_us:
                        out.append(blob_id)
        except Exception as e:  # noqa: BLE001
            raise _unavailable("list", prefix, e) from None
        return out


def _runs(groups: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted group indices as (first, last) runs of adjacent groups."""
    out: list[tuple[int, int]] = []
    for g in groups:
        if out and g == out[-1][1] + 1:
            out[-1] = (out[-1][0], g)
        else:
            out.append((g, g))
    return out


def _is_missing(e: BaseException) -> bool:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _unavailable(action: str, key: str, e: BaseException) -> BlobStoreUnavailable:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return BlobStoreUnavailable(f"S3: cannot {action} {key}: {text[:300]}")


__all__ = ["S3Blobs"]
