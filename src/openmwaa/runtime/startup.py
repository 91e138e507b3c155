"""The environment's startup script, run with bash before the components start.

As on MWAA the script is run for each kind of component (``scheduler``,
``webserver``) with ``MWAA_AIRFLOW_COMPONENT`` telling which; the variables it
exports are handed to those components. It is sourced and the environment
printed with ``env -0`` afterwards, so the difference is exactly its exports.

The script is the user's code: it runs with the component environment it is given
(built from an allow-list, never the server's own), ``HOME`` set to its folder unless
given, umask 077, in its own process group (killed whole on timeout), and as a helper
that a stopping server ends at once (``installs.cancel_all``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.children import HELPERS, child_env
from openmwaa.runtime.tenancy import SERVER, Tenant

STARTUP_TIMEOUT = 300.0
_SHELL_NOISE = {"_", "SHLVL", "PWD", "OLDPWD", "OPENMWAA_ENV_OUT"}
_WRAPPER = 'source "$0"; rc=$?; [ "$rc" -eq 0 ] || exit "$rc"; env -0 > "$OPENMWAA_ENV_OUT"'


def run_startup_script(
    script: Path,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    protected: set[str],
    timeout: float = STARTUP_TIMEOUT,
    tenant: Tenant = SERVER,
) -> dict[str, str]:
    """Run ``script`` (as ``tenant``, the environment's user, in ``cwd``, a folder of
    its own); return the variables it set (minus ``protected`` ones).

    Raises RuntimeFailure("STARTUP_SCRIPT_FAILED", ...) on a non-zero exit or timeout,
    Interrupted when the server stops meanwhile.
    """
    with tempfile.NamedTemporaryFile(prefix="startup-env-", dir=cwd, delete=False) as out:
        out_path = Path(out.name)
        owner = tenant.owner()
        if owner is not None:
            os.fchown(out.fileno(), *owner)
    given = child_env(env, cwd)
    component = env.get("MWAA_AIRFLOW_COMPONENT", "")
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            os.fchmod(log.fileno(), 0o600)
            try:
                returncode, _out, _err = HELPERS.run(
                    ["bash", "-c", _WRAPPER, str(script)],
                    env={**given, "OPENMWAA_ENV_OUT": str(out_path)},
                    cwd=cwd,
                    keep={"OPENMWAA_ENV_OUT"},
                    timeout=timeout,
                    tenant=tenant,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeFailure(
                    "STARTUP_SCRIPT_FAILED",
                    f"startup script ({component}) did not finish within {timeout:.0f}s",
                ) from None
        if returncode != 0:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
            last = f": {lines[-1].strip()[:300]}" if lines else ""
            raise RuntimeFailure(
                "STARTUP_SCRIPT_FAILED",
                f"startup script ({component}) exited with code {returncode}{last}",
            )
        after = _parse_env0(_read_own(out_path))
    finally:
        out_path.unlink(missing_ok=True)
    return {
        k: v
        for k, v in after.items()
        if given.get(k) != v and k not in _SHELL_NOISE and k not in protected
    }


def _read_own(path: Path) -> bytes:
    """The script's output file, never through a link the script may have put in its
    place (the server would read, and hand the environment, whatever it points to)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb") as fh:
        return fh.read(16 << 20)


def _parse_env0(data: bytes) -> dict[str, str]:
    result = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            key, _, value = item.partition(b"=")
            result[os.fsdecode(key)] = os.fsdecode(value)
    return result
