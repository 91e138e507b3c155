"""The server's tenants: each environment's user and cgroup, made, found and removed.

One per server (its data dir names its users and cgroups apart from any other
server's on the host). What cannot be had (no root: no users; cgroups not
writable: no limits) is said once through :meth:`Tenancy.problems`, and the
environments run as the server's own user, as a single trusted team would.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from openmwaa.runtime.tenancy import SERVER, Tenant, users
from openmwaa.runtime.tenancy.cgroups import Cgroups, Usage
from openmwaa.runtime.tenancy.limits import Limits

log = logging.getLogger(__name__)

OFF = (
    "isolation is off (--isolation off): environments run as the server's own user, "
    "without resource limits, and are not isolated from each other or from the server"
)


class Tenancy:
    """Users and cgroups of one server's environments."""

    def __init__(self, data_dir: Path, *, isolate: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.instance = users.instance_id(self.data_dir)
        self.user_problem = users.isolation_problem() if isolate else OFF
        self.cgroups = Cgroups(self.instance)
        self.limited = isolate and self.cgroups.available
        self._tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()

    @property
    def isolated(self) -> bool:
        """Whether environments get users of their own."""
        return self.user_problem is None

    def problems(self) -> list[str]:
        """What leaves environments unisolated or unlimited, in words (empty: nothing)."""
        found = []
        if self.user_problem is not None:
            found.append(self.user_problem)
        if self.user_problem == OFF:
            return found
        if not self.cgroups.available:
            found.append(
                "environments have no CPU, memory or process limits: "
                + (self.cgroups.problem or "cgroups are not available")
            )
        return found

    def provision(self, name: str, limits: Limits) -> Tenant:
        """The environment's user (made if needed) and cgroups (limits set again)."""
        user = None
        if self.isolated:
            user = users.ensure_user(self.instance, name, f"openmwaa {self.data_dir} {name}")
        procs = self.cgroups.ensure(name, limits) if self.limited else ()
        return self._remember(name, user, procs)

    def tenant(self, name: str) -> Tenant:
        """Who the environment's processes run as (what ``provision`` made; nothing is made)."""
        with self._lock:
            known = self._tenants.get(name)
        if known is not None:
            return known
        user = users.lookup_user(self.instance, name) if self.isolated else None
        if self.isolated and user is None:
            # Never run an environment's code as the server when isolation is on.
            raise LookupError(f"environment {name} has no user yet (provision it first)")
        procs = self.cgroups.procs_files(name) if self.limited else ()
        if user is None and not procs:
            return SERVER
        return self._remember(name, user, procs)

    def _remember(self, name: str, user: users.EnvUser | None, procs: tuple[Path, ...]) -> Tenant:
        tenant = Tenant(
            user.name if user else None,
            user.uid if user else None,
            user.gid if user else None,
            tuple(procs),
        )
        with self._lock:
            self._tenants[name] = tenant
        return tenant

    def usage(self, name: str) -> Usage | None:
        return self.cgroups.usage(name) if self.limited else None

    def remove(self, name: str) -> None:
        """Kill what is left of the environment, remove its cgroups and its user."""
        with self._lock:
            self._tenants.pop(name, None)
        if self.limited:
            self.cgroups.remove(name)
        if self.isolated:
            users.remove_user(self.instance, name)
