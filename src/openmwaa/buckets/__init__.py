"""Where DAGs and environment artifacts come from: local folders or S3."""

from __future__ import annotations

from pathlib import Path

from openmwaa.buckets.base import BucketError, BucketStore, ObjectInfo, ObjectNotFound


def open_store(kind: str, data_dir: Path) -> BucketStore:
    """The bucket store named by the ``bucket_store`` setting (``local`` or ``s3``)."""
    if kind == "local":
        from openmwaa.buckets.local import LocalBucketStore

        return LocalBucketStore(data_dir / "buckets")
    if kind == "s3":
        from openmwaa.buckets.s3 import S3BucketStore

        return S3BucketStore()
    raise ValueError(f"unknown bucket store {kind!r} (expected 'local' or 's3')")


__all__ = ["BucketError", "BucketStore", "ObjectInfo", "ObjectNotFound", "open_store"]
