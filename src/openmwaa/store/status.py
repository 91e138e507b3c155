"""An environment's status: MWAA's values, the moves between them, and who acts on which.

One table for every layer. The store checks each status it writes against
``TRANSITIONS`` (an illegal move is a programming error and raises), and every
component that acts only on some statuses (the endpoint, the autoscaler,
worker hosts, the reconciler) asks one of the named sets below instead of
keeping a list of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Status(StrEnum):
    """MWAA's ``EnvironmentStatus`` values (a ``str``: compares equal to the stored text)."""

    CREATING = "CREATING"
    CREATE_FAILED = "CREATE_FAILED"
    AVAILABLE = "AVAILABLE"
    UPDATING = "UPDATING"
    CREATING_SNAPSHOT = "CREATING_SNAPSHOT"
    ROLLING_BACK = "ROLLING_BACK"
    UPDATE_FAILED = "UPDATE_FAILED"
    UNAVAILABLE = "UNAVAILABLE"
    DELETING = "DELETING"
    DELETED = "DELETED"
    PENDING = "PENDING"
    MAINTENANCE = "MAINTENANCE"


class IllegalTransition(RuntimeError):
    """A write would move an environment along no edge of ``TRANSITIONS``: a bug, not
    bad input (requests are checked against the named sets before anything is written)."""

    def __init__(self, name: str, current: str | None, wanted: str) -> None:
        where = current if current is not None else "(new)"
        super().__init__(f"environment {name}: illegal status transition {where} -> {wanted}")
        self.name, self.current, self.wanted = name, current, wanted


S = Status

INITIAL: frozenset[Status] = frozenset({S.CREATING, S.PENDING})
"""Statuses an environment may be created in."""

TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    S.PENDING: frozenset({S.CREATING, S.DELETING}),
    S.CREATING: frozenset({S.AVAILABLE, S.CREATE_FAILED, S.DELETING}),
    S.CREATE_FAILED: frozenset({S.DELETING}),
    S.AVAILABLE: frozenset(
        {S.UPDATING, S.UNAVAILABLE, S.DELETING, S.MAINTENANCE, S.CREATING_SNAPSHOT}
    ),
    S.CREATING_SNAPSHOT: frozenset({S.UPDATING, S.AVAILABLE, S.UPDATE_FAILED, S.DELETING}),
    S.UPDATING: frozenset({S.AVAILABLE, S.ROLLING_BACK, S.UPDATE_FAILED, S.DELETING}),
    # A rollback ends where the old configuration runs again (UPDATE_FAILED), or, when it
    # keeps failing, UNAVAILABLE (and is still retried from there).
    S.ROLLING_BACK: frozenset({S.UPDATE_FAILED, S.UNAVAILABLE, S.DELETING}),
    S.UPDATE_FAILED: frozenset(
        {S.UPDATING, S.UNAVAILABLE, S.DELETING, S.MAINTENANCE, S.CREATING_SNAPSHOT}
    ),
    S.UNAVAILABLE: frozenset({S.AVAILABLE, S.UPDATING, S.UPDATE_FAILED, S.DELETING, S.MAINTENANCE}),
    S.MAINTENANCE: frozenset({S.AVAILABLE, S.UNAVAILABLE, S.DELETING}),
    S.DELETING: frozenset({S.DELETED}),
    S.DELETED: frozenset(),
}
"""Status -> the statuses it may move to. Writing the same status again (a new detail or
LastUpdate) is always allowed and not listed."""


def allowed(current: str | None, wanted: str) -> bool:
    """Whether an environment in ``current`` (None: not created yet) may move to ``wanted``."""
    try:
        target = Status(wanted)
        if current is None:
            return target in INITIAL
        source = Status(current)
    except ValueError:
        return False
    return target == source or target in TRANSITIONS[source]


def check(name: str, current: str | None, wanted: str) -> None:
    """Raise IllegalTransition unless ``allowed(current, wanted)``."""
    if not allowed(current, wanted):
        raise IllegalTransition(name, current, wanted)


# -- who acts on which statuses -------------------------------------------------------

UPDATABLE: frozenset[Status] = frozenset({S.AVAILABLE, S.UPDATE_FAILED, S.UNAVAILABLE})
"""UpdateEnvironment is accepted (anything else is changing, failed or going away)."""

DELETABLE: frozenset[Status] = frozenset(Status) - {S.DELETING, S.DELETED}
"""DeleteEnvironment is accepted (a delete during a create stops the create)."""

SERVING: frozenset[Status] = frozenset({S.AVAILABLE, S.UPDATING, S.UPDATE_FAILED})
"""The web server is reachable: web login and CLI tokens are issued. During UPDATING the
old configuration runs until the new one replaces it; UPDATE_FAILED runs the old one."""

REST_API: frozenset[Status] = SERVING | {S.UNAVAILABLE}
"""InvokeRestApi is tried: a slow health check must not fail calls Airflow can answer."""

ENDPOINT_LISTENS: frozenset[Status] = SERVING | {S.UNAVAILABLE, S.CREATING, S.ROLLING_BACK}
"""The environment's endpoint keeps its listener (and port), so WebserverUrl stays valid
while the environment comes up, recovers or rolls back."""

WATCHED: frozenset[Status] = frozenset({S.AVAILABLE, S.UNAVAILABLE, S.UPDATE_FAILED})
"""The reconciler keeps the components running and checks their health."""

SCALED: frozenset[Status] = WATCHED
"""The autoscaler sizes the workers (while an update or rollback runs, it waits)."""

JOINABLE: frozenset[Status] = frozenset({S.AVAILABLE, S.UPDATING, S.UPDATE_FAILED, S.UNAVAILABLE})
"""Workers on other hosts may fetch the bundle and report (UPDATE_FAILED serves on the old
configuration, so its workers stay)."""

CHANGING: frozenset[Status] = frozenset(
    {S.PENDING, S.CREATING, S.UPDATING, S.CREATING_SNAPSHOT, S.ROLLING_BACK, S.DELETING}
)
"""The reconciler is moving the environment: a request for another change must wait."""


def sources(wanted: str) -> frozenset[Status]:
    """The statuses from which an environment may move to ``wanted`` (itself included)."""
    return frozenset(s for s in Status if allowed(s, wanted))
