"""What the runtime needs from a bucket: list a prefix, read an object (by version).

Two stores implement it: local folders (the embedded default) and S3 through
boto3. Keeping the interface this small lets the DAG mirror and the artifact
fetches (plugins.zip, requirements.txt, startup script) ignore which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    """Changes whenever the content changes (S3 ETag; size+mtime for local files)."""


class BucketError(Exception):
    """The store could not answer (missing bucket, access denied, network)."""


class ObjectNotFound(BucketError):
    """No object (or no such version of it) under that key."""


class BucketStore(Protocol):
    def list_objects(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively)."""
        ...

    def get_object(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        """The object's content; ``version_id`` None means the latest version."""
        ...

    def version_of(self, bucket: str, key: str) -> str | None:
        """The latest version id of an object (None when the store has no versions)."""
        ...
