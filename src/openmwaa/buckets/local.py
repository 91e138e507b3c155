"""Local folder store: bucket NAME is the folder ``<data-dir>/buckets/NAME/``.

Object versions: a folder keeps only the latest content, so the version id of
a local object is the hex SHA-256 of its content. ``get_object`` with a version
id accepts the full digest or any prefix of at least 8 hex digits and raises
ObjectNotFound when the current content does not match (the pinned version is
gone), exactly as S3 would for a deleted version.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from openmwaa.buckets.base import BucketError, ObjectInfo, ObjectNotFound

MIN_VERSION_PREFIX = 8
_SKIPPED_SUFFIXES = (".tmp", ".swp", ".swx", "~")
"""Files never listed: an object is whatever else a folder holds (``.airflowignore`` too)."""


class LocalBucketStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _bucket(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise BucketError(f"invalid bucket name {bucket!r}")
        return self.root / bucket

    def _path(self, bucket: str, key: str) -> Path:
        base = self._bucket(bucket).resolve()
        path = (base / key.lstrip("/")).resolve()
        if base not in path.parents:
            raise ObjectNotFound(f"s3://{bucket}/{key}: invalid key")
        return path

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        base = self._bucket(bucket)
        if not base.is_dir():
            raise BucketError(f"bucket {bucket!r} does not exist (no folder {base})")
        prefix = prefix.lstrip("/")
        # Walk only the folder that holds the prefix, not the whole bucket.
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for filename in filenames:
                if filename.endswith(_SKIPPED_SUFFIXES):
                    continue  # editors' swap files, half-written temp files
                path = Path(dirpath) / filename
                key = path.relative_to(base).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(key, st.st_size, f"{st.st_size}-{st.st_mtime_ns}"))
        return found

    def get_object(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        path = self._path(bucket, key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"s3://{bucket}/{key} does not exist") from None
        if version_id:
            digest = hashlib.sha256(data).hexdigest()
            wanted = version_id.lower()
            if len(wanted) < MIN_VERSION_PREFIX or not digest.startswith(wanted):
                raise ObjectNotFound(
                    f"s3://{bucket}/{key} version {version_id} not found "
                    f"(the local store keeps only the latest version, {digest})"
                )
        return data

    def version_of(self, bucket: str, key: str) -> str | None:
        return hashlib.sha256(self.get_object(bucket, key)).hexdigest()
