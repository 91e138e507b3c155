"""Tenants kept apart: who an environment's processes run as, and inside which limits.

When the server runs as root, each environment has an OS user and group of its own
(:mod:`.users`) and a cgroup with its class's CPU, memory and pids limits
(:mod:`.cgroups`); every process of the environment is started through
:meth:`Tenant.wrap`, which joins the cgroups as root and then drops to the user.
Without root (or where cgroups cannot be written) the server says so at start and
in ``openmwaa status``, and environments run as the server's own user.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"

_ENTER = (
    'n="$1"; shift; while [ "$n" -gt 0 ]; do '
    'echo $$ > "$1" || { echo "openmwaa: cannot join cgroup $1" >&2; exit 126; }; '
    'shift; n=$((n - 1)); done; exec "$@"'
)
"""sh: write its own pid into each cgroup.procs file given, then exec the command (the
pid stays the same through the exec, so the supervisor's pid is the component's)."""


@dataclass(frozen=True)
class Tenant:
    """Who one environment's processes run as (``uid`` None: the server's own user) and
    which cgroup.procs files they join before the command runs."""

    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    cgroups: tuple[Path, ...] = field(default=())

    @property
    def isolated(self) -> bool:
        return self.uid is not None

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) that files made for the environment belong to, None when not isolated."""
        if self.uid is None or self.gid is None:
            return None
        return self.uid, self.gid

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as started for this tenant: cgroups joined, then the user's ids with no
        supplementary groups, no capabilities and no way to regain privileges (setuid
        programs do nothing)."""
        command = list(argv)
        if self.uid is not None and self.gid is not None:
            command = [
                SETPRIV,
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
                *command,
            ]
        if self.cgroups:
            command = [
                "/bin/sh",
                "-c",
                _ENTER,
                "openmwaa-enter",
                str(len(self.cgroups)),
                *map(str, self.cgroups),
                *command,
            ]
        return command


SERVER = Tenant()
"""The server's own user and cgroup: what environments run as when not isolated."""
