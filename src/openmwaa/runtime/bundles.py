"""What a worker on another host receives: portable settings and a copy of the folders.

The control plane packs an environment's DAG and plugin folders into one
tar.gz; ``openmwaa worker`` unpacks it and mirrors it into its own folders
file by file, so a task starting meanwhile never sees a folder half-replaced.
A digest of names, sizes and modification times tells the worker when to
fetch again without sending the files each time.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from openmwaa.runtime.supervisor import MARKER

HOST_KEYS = frozenset(
    {
        MARKER,
        "PATH",
        "HOME",
        "TMPDIR",
        "USER",
        "LOGNAME",
        "AIRFLOW_HOME",
        "AIRFLOW__CORE__DAGS_FOLDER",
        "AIRFLOW__CORE__PLUGINS_FOLDER",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
        # The execution role's credentials are served on the control plane's loopback
        # only (botocore refuses plain HTTP elsewhere): not for other hosts (README).
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
        "AIRFLOW__API__HOST",
        "AIRFLOW__API__PORT",
        "AIRFLOW__API__BASE_URL",
    }
)
"""Settings that name this host's paths and ports: a worker host sets its own."""
SERVER_SECRETS = frozenset(
    {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"}
)
"""Keys only the control plane's components use: the ones that sign tokens (tasks get
their own short-lived token from the scheduler) and the one that encrypts connections and
variables in the database (tasks read them, decrypted, through the execution API). A
worker host never gets them."""
_SKIPPED_DIRS = frozenset({"__pycache__"})


RELAY_SECRET = "OPENMWAA_RELAY_SECRET"
"""Not an Airflow setting: the bundle's place for the environment's execution-relay secret,
which worker hosts put in the relay URL of their tasks (service/worker_hosts.py hands it
over as the bundle's ``RelaySecret`` and checks it on every relayed call)."""
_RELAY_LABEL = b"openmwaa execution relay v1"


def relay_secret(env: Mapping[str, str]) -> str | None:
    """The environment's relay secret: an HMAC of its JWT-signing key, so it is made once
    with the environment, kept with its other secrets, and tells nothing about that key."""
    key = env.get("AIRFLOW__API_AUTH__JWT_SECRET")
    if not key:
        return None
    return hmac.new(key.encode(), _RELAY_LABEL, hashlib.sha256).hexdigest()


def portable_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of a component environment a worker on another host can use as it is,
    and the environment's relay secret (``RELAY_SECRET``)."""
    portable = {k: v for k, v in env.items() if k not in HOST_KEYS and k not in SERVER_SECRETS}
    secret = relay_secret(env)
    if secret is not None:
        portable[RELAY_SECRET] = secret
    return portable


def _files(folders: Mapping[str, Path]) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of every regular file, in a stable order."""
    for name in sorted(folders):
        root = folders[name]
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if path.is_file():
                    yield f"{name}/{path.relative_to(root).as_posix()}", path


def digest(folders: Mapping[str, Path]) -> str:
    h = hashlib.sha256()
    for arcname, path in _files(folders):
        st = path.stat()
        h.update(f"{arcname}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def pack(folders: Mapping[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for name in sorted(folders):
            tar.addfile(_dir_entry(name))
        for arcname, path in _files(folders):
            tar.add(path, arcname=arcname, recursive=False)
    return buf.getvalue()


def _dir_entry(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def unpack(data: bytes, target: Path) -> None:
    """Mirror the archive's folders into ``target``: changed files are replaced
    atomically, files no longer in the archive removed. Only plain files and
    folders inside ``target`` are accepted (ValueError naming the member otherwise),
    and they are extracted with tarfile's ``data`` filter besides: no setuid bits,
    no group/other write, no owner or device from the archive."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".incoming-", dir=target) as tmp:
        incoming = Path(tmp)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                parts = PurePosixPath(member.name).parts
                if (
                    member.name.startswith("/")
                    or ".." in parts
                    or not (member.isfile() or member.isdir())
                ):
                    raise ValueError(f"refusing archive member {member.name!r}")
            try:
                tar.extractall(incoming, members=members, filter="data")
            except tarfile.FilterError as exc:
                raise ValueError(f"refusing archive: {exc}") from None
        for folder in sorted(p for p in incoming.iterdir() if p.is_dir()):
            _mirror(folder, target / folder.name)


def _mirror(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        wanted.add(rel)
        out = dest / rel
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif not out.is_file() or out.read_bytes() != path.read_bytes():
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, out)
    for path in sorted(dest.rglob("*"), reverse=True):
        rel = path.relative_to(dest)
        if rel in wanted or any(p in _SKIPPED_DIRS for p in rel.parts):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
