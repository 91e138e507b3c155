"""Who is calling: access keys, the users who hold them, and what their policies allow."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from openmwaa.service.errors import AccessDeniedException
from openmwaa.service.policies import Decision, Policy, denied_message, evaluate, parse_policy
from openmwaa.store.db import Store, secure_file
from openmwaa.store.models import AccessKeyRow

ADMIN_USER = "admin"
ADMIN_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "airflow:*", "Resource": "*"}],
}
_KEY_ALPHABET = string.ascii_uppercase + string.digits
MAX_KEY_ID = 128
"""AWS's limit for an access key id; a longer one is unknown without a store read."""


@dataclass(frozen=True)
class Caller:
    access_key_id: str
    user_name: str
    arn: str
    secret_access_key: str
    policies: tuple[Policy, ...]

    def authorize(self, action: str, resource: str) -> None:
        """Raise AccessDeniedException unless the caller's policy allows ``airflow:action``."""
        full = f"airflow:{action}"
        decision = evaluate(self.policies, full, resource)
        if decision is not Decision.ALLOW:
            raise AccessDeniedException(denied_message(self.arn, full, resource, decision))

    def allowed(self, action: str, resource: str) -> bool:
        return evaluate(self.policies, f"airflow:{action}", resource) is Decision.ALLOW


class Identities:
    def __init__(self, store: Store, account_id: str) -> None:
        self._store = store
        self._account_id = account_id

    def user_arn(self, user_name: str) -> str:
        return f"arn:aws:iam::{self._account_id}:user/{user_name}"

    def create_key(self, user_name: str, policy: str | dict[str, Any]) -> tuple[str, str]:
        """Make a key for ``user_name``; returns (access key id, secret), the secret only now."""
        if not user_name or not all(c.isalnum() or c in "+=,.@_-" for c in user_name):
            raise ValueError(
                f"Invalid user name {user_name!r}: use letters, digits and +=,.@_- only."
            )
        document = json.loads(policy) if isinstance(policy, str) else policy
        parse_policy(document)  # refuses an invalid document before anything is stored
        key_id = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        secret = secrets.token_urlsafe(30)[:40]
        self._store.add_key(
            AccessKeyRow(
                access_key_id=key_id,
                secret_access_key=secret,
                user_name=user_name,
                policy=document,
                created_at=datetime.now(UTC),
            )
        )
        return key_id, secret

    def ensure_admin_key(self, path: Path) -> tuple[str, str]:
        """The admin key, made at first start and kept in a 0600 file beside the data."""
        if path.exists():
            saved = json.loads(path.read_text())
            if self._store.get_key(saved["AccessKeyId"]) is not None:
                return saved["AccessKeyId"], saved["SecretAccessKey"]
        key_id, secret = self.create_key(ADMIN_USER, ADMIN_POLICY)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        secure_file(tmp)
        tmp.write_text(json.dumps({"AccessKeyId": key_id, "SecretAccessKey": secret}))
        tmp.replace(path)
        return key_id, secret

    def list_keys(self) -> list[dict[str, Any]]:
        """Keys without their secrets."""
        return [
            {
                "AccessKeyId": row.access_key_id,
                "UserName": row.user_name,
                "Arn": self.user_arn(row.user_name),
                "CreatedAt": row.created_at.isoformat(),
                "Policy": row.policy,
            }
            for row in self._store.access_keys()
        ]

    def delete_key(self, access_key_id: str) -> bool:
        return self._store.delete_key(access_key_id)

    def caller(self, access_key_id: str) -> Caller | None:
        """The holder of a key, or None for an unknown key.

        Read from the store on every call, never cached: a key deleted by
        ``openmwaa keys delete`` (another process) stops working at once. A blocking
        read: the API calls it in a worker thread, never on the event loop.
        """
        if not access_key_id or len(access_key_id) > MAX_KEY_ID:
            return None
        row = self._store.get_key(access_key_id)
        if row is None:
            return None
        return Caller(
            access_key_id=row.access_key_id,
            user_name=row.user_name,
            arn=self.user_arn(row.user_name),
            secret_access_key=row.secret_access_key,
            policies=(_policy(json.dumps(row.policy, sort_keys=True)),),
        )


@lru_cache(maxsize=1024)
def _policy(document: str) -> Policy:
    """Parsed once per distinct document: keys are read on every request."""
    return parse_policy(document)
