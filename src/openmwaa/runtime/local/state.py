"""An environment's state files: secrets, what was provisioned, startup-script exports.

Each is written atomically and durably (file and folder fsynced) and read strictly:
a file that exists but cannot be read fails the step with a message naming it,
never a silent start-over. Secrets above all: new keys would make every stored
connection and variable unreadable, so they are created once, when the file is
absent, and a field added by a later release is added alone.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any

from openmwaa.core.files import StateFileError, read_json, write_json
from openmwaa.runtime.base import EnvironmentSpec, RuntimeFailure
from openmwaa.runtime.config import ROLES, Secrets
from openmwaa.runtime.local.layout import Layout

log = logging.getLogger(__name__)

UNREADABLE = "STATE_FILE_UNREADABLE"
"""RuntimeFailure code of a state file that exists but cannot be used."""

_KEYS: dict[str, Callable[[], str]] = {
    "jwt_secret": lambda: secrets.token_urlsafe(48),
    "api_secret_key": lambda: secrets.token_urlsafe(48),
    "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "db_password": lambda: secrets.token_urlsafe(24),
    # The environment's own broker account (runtime/brokers): not in ``Secrets``, which
    # only the components' Airflow settings read; see ``load_broker_password``.
    "broker_password": lambda: secrets.token_urlsafe(24),
}
_secrets_lock = threading.Lock()
"""Two first readers at once must not create two different sets of secrets."""


def read_strict(path: Any) -> Any:
    """``read_json`` whose StateFileError becomes a RuntimeFailure naming the file."""
    try:
        return read_json(path)
    except StateFileError as exc:
        raise RuntimeFailure(UNREADABLE, str(exc)) from exc


def load_secrets(layout: Layout) -> Secrets:
    """The environment's secrets, created when ``secrets.json`` is absent.

    A missing field (one a later release added) is generated and added alone; the
    others are kept. An unreadable file or a field of the wrong type is a
    RuntimeFailure naming the file, and the file is left as it is.
    """
    data = _secret_fields(layout)
    names = {f.name for f in dataclasses.fields(Secrets)}
    return Secrets(**{k: v for k, v in data.items() if k in names})


def load_broker_password(layout: Layout) -> str:
    """The password of the environment's own broker account, made once with (or, for an
    environment made by an older release, added to) its other secrets."""
    return str(_secret_fields(layout)["broker_password"])


def _secret_fields(layout: Layout) -> dict[str, Any]:
    """``secrets.json`` as data, missing fields generated and saved (see load_secrets)."""
    path = layout.secrets
    with _secrets_lock:
        found = read_strict(path)
        data: dict[str, Any] = dict(found or {})
        added = [key for key in _KEYS if key not in data]
        for key in added:
            data[key] = _KEYS[key]()
        passwords = data.setdefault("passwords", {})
        if not isinstance(passwords, dict):
            raise RuntimeFailure(UNREADABLE, f"{path}: field passwords is not an object")
        for user in ROLES.values():
            if user not in passwords:
                passwords[user] = secrets.token_urlsafe(24)
                added.append(f"passwords.{user}")
        for key in (*_KEYS, *(f"passwords.{u}" for u in passwords)):
            value = passwords[key[10:]] if key.startswith("passwords.") else data[key]
            if not isinstance(value, str) or not value:
                raise RuntimeFailure(UNREADABLE, f"{path}: field {key} is not a non-empty string")
        if added:
            layout.root.mkdir(parents=True, exist_ok=True)
            write_json(path, data, mode=0o600)
            if found is not None:
                log.warning("%s: added %s (kept every other secret)", path, ", ".join(added))
    return data


def write_passwords(layout: Layout, value: Secrets, owner: tuple[int, int] | None = None) -> None:
    """SimpleAuthManager's passwords file, from the secrets (Airflow reads it, as the
    environment's user: ``owner``)."""
    write_json(layout.passwords, value.passwords, mode=0o600, owner=owner)


def load_state(layout: Layout) -> dict[str, object]:
    """What was provisioned (empty before the first provision)."""
    return dict(read_strict(layout.state) or {})


def load_state_lenient(layout: Layout) -> dict[str, object]:
    """``load_state`` for deleting: an unreadable file must not keep an environment alive."""
    try:
        return load_state(layout)
    except RuntimeFailure as exc:
        log.warning("%s", exc)
        return {}


def save_state(layout: Layout, **changes: object) -> None:
    state = load_state(layout)
    state.update(changes)
    write_json(layout.state, state)


def load_exports(layout: Layout) -> dict[str, dict[str, str]] | None:
    """What the last startup-script run exported, per MWAA component kind; None if absent."""
    found = read_strict(layout.exports)
    if found is None:
        return None
    if not all(isinstance(env, dict) for env in found.values()):
        raise RuntimeFailure(UNREADABLE, f"{layout.exports}: not an object of objects")
    return {str(kind): {str(k): str(v) for k, v in env.items()} for kind, env in found.items()}


def save_exports(layout: Layout, exports: dict[str, dict[str, str]]) -> None:
    """Kept for a successor control plane, which adopts without re-running the script."""
    write_json(layout.exports, exports, mode=0o600)


def spec_dict(spec: EnvironmentSpec) -> dict[str, object]:
    """The spec as JSON-ready data (state.json records what was applied)."""
    data = dict(spec.__dict__)
    data["airflow_configuration_options"] = dict(spec.airflow_configuration_options)
    data["logging"] = {k: dict(v) for k, v in spec.logging.items()}
    return data
