"""What every process the server starts gets: an allow-listed environment, umask 077,
its own process group, and (for helpers such as uv and startup scripts) a way to be
killed at once when the server stops.

The server's own environment holds its AWS credentials, database and broker admin
URLs and ``OPENMWAA_*`` settings; none of that may reach Airflow, a user's startup
script or a requirement's build step. So a child's environment is built from an
allow-list (:data:`INHERITED`, :func:`inherited_env`) plus what the caller sets on
purpose, and :func:`child_env` removes, as a second line of defence, any sensitive
variable that was copied verbatim from the server's environment anyway.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import IO, Any

from openmwaa.runtime.base import Interrupted
from openmwaa.runtime.tenancy import SERVER, Tenant

UMASK = 0o077
"""Files made by anything the server starts are readable by its user alone."""

INHERITED = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME"})
"""The server variables a child may inherit: where programs are, the locale, time zone,
temp folder and user name. ``LC_*`` too (:data:`INHERITED_PREFIXES`). ``HOME`` is not
inherited: each child gets a home of its own (the environment's folder), so tools that
look in ``~`` (boto3's ``~/.aws``, pip, git) never find the server user's files."""
INHERITED_PREFIXES = ("LC_",)

_SENSITIVE_PREFIXES = ("AWS_", "OPENMWAA_", "UV_", "PIP_", "PG", "REDIS", "CELERY")
_SENSITIVE_NAME = re.compile(
    r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|_URL$|_URI$|DSN|CONN|PROXY",
    re.IGNORECASE,
)
MARKER = "OPENMWAA_ENV_DIR"
"""Environment variable naming the environment folder a process belongs to."""


def is_inherited(name: str) -> bool:
    return name in INHERITED or name.startswith(INHERITED_PREFIXES)


def inherited_env(home: Path | None = None) -> dict[str, str]:
    """The allow-listed variables of the server's environment, plus ``HOME=home`` if
    given (otherwise the process starting the child sets it, see :func:`child_env`)."""
    env = {k: v for k, v in os.environ.items() if is_inherited(k)}
    if home is not None:
        env["HOME"] = str(home)
    return env


NOT_SECRET = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION"})
"""Set on purpose for environments with an execution role; equal to the server's often."""


def server_secret(name: str, value: str) -> bool:
    """Whether ``name=value`` is a sensitive variable copied from the server's environment."""
    if is_inherited(name) or name == MARKER or name in NOT_SECRET or os.environ.get(name) != value:
        return False
    sensitive = name.startswith(_SENSITIVE_PREFIXES) or _SENSITIVE_NAME.search(name)
    return name == "HOME" or bool(sensitive)


def child_env(env: Mapping[str, str], home: Path, keep: Collection[str] = ()) -> dict[str, str]:
    """``env`` as a child gets it: sensitive variables that were copied from the server's
    own environment removed (except those named in ``keep``, passed on on purpose), and
    ``HOME`` set to ``home`` unless the caller chose one."""
    clean = {k: v for k, v in env.items() if k in keep or not server_secret(k, v)}
    clean.setdefault("HOME", str(home))
    return clean


def popen(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    tenant: Tenant = SERVER,
    **kwargs: Any,
) -> Any:
    """``subprocess.Popen`` in a session of its own, with umask 077 and no inherited fds,
    as ``tenant`` (its cgroups joined, its user's ids) when the environment has one."""
    return subprocess.Popen(
        tenant.wrap(argv),
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        umask=UMASK,
        close_fds=True,
        **kwargs,
    )


def kill_group(process: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal the process and everything it started (it leads its own process group)."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, sig)


class Helpers:
    """Short-lived helper processes (uv, startup scripts) that a stopping server ends.

    ``cancel_all`` kills the process group of each running helper; that run and every
    later one raise :class:`Interrupted` until ``resume`` (a new server in the same
    interpreter, or a test).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[Any]] = set()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise Interrupted when the server is stopping."""
        if self._cancelled.is_set():
            raise Interrupted("the control plane is stopping")

    def wait(self, seconds: float) -> None:
        """Sleep, but raise Interrupted as soon as the server stops."""
        if self._cancelled.wait(seconds):
            self.check()

    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        timeout: float | None = None,
        keep: Collection[str] = (),
        stdout: int | IO[Any] = subprocess.PIPE,
        stderr: int | IO[Any] = subprocess.PIPE,
        tenant: Tenant = SERVER,
    ) -> tuple[int, str, str]:
        """Run a helper to completion: (exit code, stdout, stderr) as text.

        ``subprocess.TimeoutExpired`` after ``timeout`` (its whole process group is
        killed first); Interrupted when ``cancel_all`` ended it. ``keep``: see child_env.
        ``tenant``: the environment the helper works for (a startup script, a requirement's
        build) runs as that environment's user, inside its limits.
        """
        with self._lock:
            self.check()
            process = popen(
                argv,
                env=child_env(env, cwd, keep),
                cwd=cwd,
                tenant=tenant,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                text=True,
                errors="replace",
            )
            self._running.add(process)
        try:
            try:
                out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(process)
                process.communicate()
                raise
        finally:
            kill_group(process)  # whatever it left behind in its group
            with self._lock:
                self._running.discard(process)
        self.check()
        return process.returncode, out or "", err or ""

    def cancel_all(self) -> None:
        """Kill every running helper's process group; later runs raise Interrupted."""
        with self._lock:
            self._cancelled.set()
            running = list(self._running)
        for process in running:
            kill_group(process)

    def resume(self) -> None:
        self._cancelled.clear()


HELPERS = Helpers()
"""The server's helpers: one set per process, cancelled as a whole on shutdown."""
