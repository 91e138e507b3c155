"""Execution roles through STS: the server's own AWS credentials assume each environment's
role, as MWAA does for its environments.

The server's credentials are whatever botocore's usual chain finds (environment,
shared files, profiles, SSO, a container's credentials); the instance metadata service
is asked only on EC2, so a server elsewhere never probes 169.254.169.254. Endpoints
follow the standard variables (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_STS``,
``AWS_ENDPOINT_URL_S3``). Temporary credentials are cached per (environment, role) and
renewed ``REFRESH_BEFORE`` their expiry; secrets never reach a log or a ``repr``.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from openmwaa.buckets.base import BucketError
from openmwaa.buckets.s3 import S3BucketStore

log = logging.getLogger(__name__)

DURATION = 3600
"""Seconds each assumed-role session lasts (the default maximum of a role)."""
REFRESH_BEFORE = timedelta(minutes=20)
"""Cached credentials are renewed this long before they expire: before botocore's own
advisory refresh (15 minutes), so a client that asks for new credentials gets them."""
_SESSION_NAME = re.compile(r"[^\w+=,.@-]")
_DMI = ("/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/board_vendor")
_EC2_UUID = ("/sys/hypervisor/uuid", "/sys/class/dmi/id/product_uuid")


class RoleRefused(BucketError):
    """STS did not give the role's credentials (refused, unknown role, unreachable); the
    message is STS's own, naming the role."""


@dataclass(frozen=True)
class RoleCredentials:
    """One assumed-role session's temporary credentials."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime

    def fresh(self, now: datetime | None = None) -> bool:
        """Whether these are still good for more than ``REFRESH_BEFORE``."""
        return self.expiration - (now or datetime.now(UTC)) > REFRESH_BEFORE

    def container_document(self) -> dict[str, str]:
        """The JSON botocore's container provider reads (ECS/Fargate's credential endpoint)."""
        return {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": self.expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def session_name(environment: str) -> str:
    """A valid RoleSessionName (2-64 of ``[\\w+=,.@-]``) after the environment's name, so
    the role's CloudTrail entries name the environment that acted."""
    name = _SESSION_NAME.sub("-", environment)
    if len(name) > 64:
        name = name[:64]
    return name if len(name) >= 2 else f"{name}--"[:2]


def on_ec2() -> bool:
    """Whether this host is an EC2 instance (from the firmware's tables, no network)."""
    for path in _DMI:
        try:
            if "amazon ec2" in Path(path).read_text().lower():
                return True
        except OSError:
            pass
    for path in _EC2_UUID:
        try:
            if Path(path).read_text().strip().lower().startswith("ec2"):
                return True
        except OSError:
            pass
    return False


def server_session() -> Any | None:
    """A botocore session holding the server's own AWS credentials; None without any."""
    import botocore.session
    from botocore.exceptions import BotoCoreError

    session = botocore.session.get_session()
    if not on_ec2():
        session.get_component("credential_provider").remove("iam-role")
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # a named profile that is missing, a broken config file
        log.warning("the server's AWS configuration is unusable (%s): no execution roles", exc)
        return None
    if credentials is None:
        return None
    log.info("AWS credentials of the server found (%s)", credentials.method)
    return session


class RoleSessions:
    """Assumes roles with the server's credentials and keeps each session until near its
    expiry. Thread-safe: one STS call at a time per (environment, role)."""

    def __init__(self, session: Any, region: str) -> None:
        from botocore.config import Config

        self._session = session
        self.region = session.get_config_variable("region") or region
        self._config = Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=20
        )
        self._sts: Any = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], RoleCredentials] = {}
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}

    def client(self, service: str, credentials: RoleCredentials | None = None) -> Any:
        """A client of ``service``, acting with ``credentials`` (the server's if None)."""
        keys: dict[str, str] = {}
        if credentials is not None:
            keys = {
                "aws_access_key_id": credentials.access_key_id,
                "aws_secret_access_key": credentials.secret_access_key,
                "aws_session_token": credentials.session_token,
            }
        with self._lock:  # a botocore session is not safe to create clients concurrently
            return self._session.create_client(
                service, region_name=self.region, config=self._config, **keys
            )

    def credentials(self, environment: str, role_arn: str) -> RoleCredentials:
        """The role's credentials for the environment (cached); RoleRefused if STS says no."""
        key = (environment, role_arn)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached.fresh():
                return cached
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None and cached.fresh():
                return cached
            fresh = self._assume(environment, role_arn)
            with self._lock:
                now = datetime.now(UTC)
                for old in [k for k, v in self._cache.items() if v.expiration <= now]:
                    del self._cache[old]
                    self._key_locks.pop(old, None)
                self._cache[key] = fresh
            return fresh

    def _assume(self, environment: str, role_arn: str) -> RoleCredentials:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._sts is None:
            self._sts = self.client("sts")
        try:
            answer = self._sts.assume_role(
                RoleArn=role_arn,
                RoleSessionName=session_name(environment),
                DurationSeconds=DURATION,
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Error")
            raise RoleRefused(f"{code}: {error.get('Message') or exc}") from None
        except BotoCoreError as exc:
            raise RoleRefused(f"STS did not answer: {exc}") from None
        raw = answer["Credentials"]
        expiration = raw["Expiration"]
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        log.info("environment %s: assumed %s until %s", environment, role_arn, expiration)
        return RoleCredentials(
            raw["AccessKeyId"], raw["SecretAccessKey"], raw["SessionToken"], expiration
        )

    def bucket_store(self, environment: str, role_arn: str) -> RoleBucketStore:
        """An S3 store that reads with the role's credentials, renewed as they age."""
        return RoleBucketStore(self, environment, role_arn)


class RoleBucketStore(S3BucketStore):
    """``S3BucketStore`` acting with an environment's role: a new client whenever the
    cached credentials were renewed."""

    def __init__(self, sessions: RoleSessions, environment: str, role_arn: str) -> None:
        super().__init__()
        self.sessions = sessions
        self.environment = environment
        self.role_arn = role_arn
        self._made_with: RoleCredentials | None = None

    @property
    def client(self) -> Any:
        credentials = self.sessions.credentials(self.environment, self.role_arn)
        with self._lock:
            if self._client is None or self._made_with is not credentials:
                self._client = self.sessions.client("s3", credentials)
                self._made_with = credentials
            return self._client
