"""``node serve`` options for where a node keeps its data: ``--db`` (SQLite by default, or PostgreSQL) and
``--blobs`` (a directory by default, or S3), with the S3 endpoint, region and credentials."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..store.blobstore import BlobStore, open_blob_store
from ..store.dialect import is_postgres_url


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL",
                        help="metadata in PostgreSQL: postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (default: "
                             "SQLite in DATA/node.db). Several node processes may share one database")
    parser.add_argument("--blobs", metavar="LOCATION",
                        help="blob bytes in S3: s3://BUCKET/PREFIX, or a directory (default: DATA/blobs)")
    parser.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--s3-region", metavar="REGION", help="S3 region (default: $AWS_REGION, else us-east-1)")
    parser.add_argument("--s3-access-key-id", metavar="ID", help="S3 access key (default: $AWS_ACCESS_KEY_ID)")
    parser.add_argument("--s3-secret-access-key", metavar="SECRET",
                        help="S3 secret key (default: $AWS_SECRET_ACCESS_KEY; prefer the variable: options show "
                             "in the process list)")


def open_backends(args: argparse.Namespace) -> tuple[str | None, BlobStore | None]:
    """(database URL or None for the SQLite default, blob store or None for the directory default)."""
    db = args.db
    if db is not None and not is_postgres_url(db):
        raise UsageError(f"--db needs a postgresql:// URL, got {db.split('://')[0]!r}")
    s3_given = [args.s3_endpoint, args.s3_region, args.s3_access_key_id, args.s3_secret_access_key]
    if args.blobs is None:
        if any(s3_given):
            raise UsageError("the --s3-… options need --blobs s3://BUCKET/PREFIX")
        return db, None
    if not args.blobs.startswith("s3://") and any(s3_given):
        raise UsageError("the --s3-… options need --blobs s3://BUCKET/PREFIX")
    blobs = open_blob_store(args.blobs, s3_options={
        "endpoint_url": args.s3_endpoint, "region": args.s3_region, "access_key_id": args.s3_access_key_id,
        "secret_access_key": args.s3_secret_access_key})
    return db, blobs
