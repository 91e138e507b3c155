"""S3 store through boto3's standard configuration.

Endpoint, credentials and region come from the usual places
(``AWS_ENDPOINT_URL_S3``, ``AWS_PROFILE``, ...), so real S3 and any
S3-compatible server work the same way.
"""

from __future__ import annotations

import threading
from typing import Any

from openmwaa.buckets.base import BucketError, ObjectInfo, ObjectNotFound

_NOT_FOUND = {"NoSuchKey", "NoSuchVersion", "404", "NotFound", "InvalidArgument"}


class S3BucketStore:
    def __init__(self, client: Any | None = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.client(
                    "s3", config=Config(retries={"max_attempts": 3, "mode": "standard"})
                )
            return self._client

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        found: list[ObjectInfo] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix.lstrip("/")):
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue  # "folder" placeholder objects
                    found.append(ObjectInfo(item["Key"], item["Size"], item["ETag"].strip('"')))
        except (ClientError, BotoCoreError) as exc:
            raise BucketError(f"s3://{bucket}/{prefix}: {exc}") from exc
        return found

    def get_object(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, str] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            body: bytes = self.client.get_object(**kwargs)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _NOT_FOUND:
                what = f" version {version_id}" if version_id else ""
                raise ObjectNotFound(f"s3://{bucket}/{key}{what} does not exist") from exc
            raise BucketError(f"s3://{bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise BucketError(f"s3://{bucket}/{key}: {exc}") from exc
        return body

    def version_of(self, bucket: str, key: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise ObjectNotFound(f"s3://{bucket}/{key} does not exist") from exc
        except BotoCoreError as exc:
            raise BucketError(f"s3://{bucket}/{key}: {exc}") from exc
        version = head.get("VersionId")
        return None if version in (None, "null") else str(version)
