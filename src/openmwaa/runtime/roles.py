"""Environments act in AWS with their ExecutionRoleArn, as MWAA's do.

When the server has AWS credentials of its own, each environment's role is assumed
through STS (buckets/roles.py) and used twice:

- the environment's bucket is read with it (S3 store only: the local folder store has
  no roles), so naming a bucket in CreateEnvironment mirrors nothing the role cannot read;
- its processes get the role's temporary credentials the way ECS and Fargate hand them
  out: ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (the server's API port, over loopback,
  since botocore takes plain HTTP only there) with ``AWS_CONTAINER_AUTHORIZATION_TOKEN``,
  so boto3 in a task needs no configuration.

The token is an HMAC of the environment's name and role under a key kept in the data dir
(0600): it survives restarts, differs per environment and per role (a new role restarts
the components with a new token), and opens nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from openmwaa.buckets import BucketStore
from openmwaa.buckets.roles import RoleCredentials, RoleRefused, RoleSessions, server_session
from openmwaa.buckets.s3 import S3BucketStore
from openmwaa.core.files import write_atomic
from openmwaa.runtime.base import EnvironmentSpec, RuntimeFailure

log = logging.getLogger(__name__)

CODE = "EXECUTION_ROLE"
"""RuntimeFailure code (LastUpdate.Error.ErrorCode) of a role that cannot be assumed."""
PATH = "/openmwaa/credentials/"
"""Where the API port serves each environment's credentials (``PATH + name``)."""
KEY_FILE = "execution-roles.key"
_LABEL = b"openmwaa execution role v1"
_NAME = re.compile(r"^[a-zA-Z][0-9a-zA-Z_-]{0,79}$")
"""MWAA's environment names: nothing else is ever looked up."""


def loopback_base(host: str, port: int) -> str | None:
    """``http://LOOPBACK:PORT`` on which the API listening on ``host`` is reached from this
    host; None when it listens on one other address only (botocore would refuse it)."""
    if host in ("", "0.0.0.0", "localhost"):
        return f"http://127.0.0.1:{port}"
    if host == "::":
        return f"http://[::1]:{port}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_loopback:
        return None
    return f"http://[{host}]:{port}" if address.version == 6 else f"http://{host}:{port}"


class ExecutionRoles:
    """``runtime.local.context.ExecutionRoles`` with STS; also checks the credential
    endpoint's callers (``credentials``)."""

    def __init__(self, sessions: RoleSessions, key: bytes, base_url: str | None) -> None:
        self.sessions = sessions
        self._key = key
        self._base_url = base_url
        self._stores: dict[tuple[str, str], S3BucketStore] = {}
        self._lock = threading.Lock()

    # -- what the backend asks -------------------------------------------------------------

    def store_for(self, spec: EnvironmentSpec, default: BucketStore) -> BucketStore:
        """The S3 store acting with the environment's role (the same object while the role
        stays, so a mirror can tell); ``default`` for the local folder store."""
        role = spec.execution_role_arn
        if not role or not isinstance(default, S3BucketStore):
            return default
        self.assume(spec.name, role)
        with self._lock:
            store = self._stores.get((spec.name, role))
            if store is None:
                for key in [k for k in self._stores if k[0] == spec.name]:
                    del self._stores[key]  # the environment's previous role
                store = self._stores[(spec.name, role)] = self.sessions.bucket_store(
                    spec.name, role
                )
            return store

    def environment(self, spec: EnvironmentSpec) -> Mapping[str, str]:
        """The variables through which the environment's processes fetch its role's
        credentials; RuntimeFailure when the role cannot be assumed."""
        role = spec.execution_role_arn
        if not role:
            return {}
        if self._base_url is None:
            raise RuntimeFailure(
                CODE,
                "the server listens on no loopback address, and tasks fetch their execution "
                "role's credentials from it over loopback: serve on 0.0.0.0 or 127.0.0.1",
            )
        self.assume(spec.name, role)
        return {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{self._base_url}{PATH}{spec.name}",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.token(spec.name, role),
            "AWS_REGION": self.sessions.region,
            "AWS_DEFAULT_REGION": self.sessions.region,
        }

    def assume(self, name: str, role: str) -> RoleCredentials:
        """The role's credentials for the environment, or RuntimeFailure with STS's words."""
        try:
            return self.sessions.credentials(name, role)
        except RoleRefused as exc:
            raise RuntimeFailure(
                CODE, f"the execution role {role} could not be assumed: {exc}"
            ) from None

    # -- what the credential endpoint asks -------------------------------------------------

    def token(self, name: str, role: str) -> str:
        message = b"\0".join((_LABEL, name.encode(), role.encode()))
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def credentials(self, name: str, roles: Iterable[str], token: str) -> RoleCredentials | None:
        """The credentials of whichever of the environment's ``roles`` (the one it runs
        with, the one an update is applying) ``token`` was made for; None when it was made
        for none of them. RoleRefused when STS no longer gives that role."""
        if not _NAME.match(name):
            return None
        given = token.encode()
        for role in dict.fromkeys(r for r in roles if r):
            if hmac.compare_digest(self.token(name, role).encode(), given):
                return self.sessions.credentials(name, role)
        return None


def load_key(data_dir: Path) -> bytes:
    """The key tokens are made with: made once, kept 0600 in the data dir."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) < 32:
        key = secrets.token_bytes(32)
        write_atomic(path, key, mode=0o600)
    return key


def execution_roles(data_dir: Path, host: str, port: int, region: str) -> ExecutionRoles | None:
    """Execution roles in effect when the server has AWS credentials of its own; None
    (ExecutionRoleArn has no effect) otherwise. ``region``: where tasks act when the
    server's AWS configuration names none."""
    session = server_session()
    if session is None:
        log.info("no AWS credentials of the server: environments' execution roles are unused")
        return None
    base = loopback_base(host, port)
    if base is None:
        log.warning(
            "the server listens on %s only: tasks cannot fetch their execution role's "
            "credentials over loopback, so environments fail to start",
            host,
        )
    log.info("environments act in AWS with their execution roles (assumed through STS)")
    return ExecutionRoles(RoleSessions(session, region), load_key(data_dir), base)
