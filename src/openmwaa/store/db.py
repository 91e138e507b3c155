"""The store: engine, migrations and the few queries the domain needs.

SQLite in the data dir by default, PostgreSQL by URL; both run the same alembic
migrations at open. Every write commits before the API answers, so a SIGKILL
loses nothing that was acknowledged.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, bindparam, create_engine, delete, event, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from openmwaa.store import status as statuses
from openmwaa.store.models import AccessKeyRow, EnvironmentRow, TokenRow

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
_ENVIRONMENTS = EnvironmentRow.__table__
_STATE_QUERY = select(
    _ENVIRONMENTS.c.status, _ENVIRONMENTS.c.generation, _ENVIRONMENTS.c.applied
).where(_ENVIRONMENTS.c.name == bindparam("name"))


@dataclass(frozen=True)
class EnvironmentState:
    """The part of an environment's row a request to its Airflow needs."""

    name: str
    status: str
    generation: int
    applied: dict[str, Any] | None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def normalize_url(url: str) -> str:
    """Let users write postgresql:// and still get the psycopg 3 driver we ship."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


class Store:
    def __init__(self, url: str) -> None:
        url = normalize_url(url)
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = make_url(url).database
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                if not Path(path).exists():
                    Path(path).touch(mode=0o600)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._tags_lock = threading.Lock()
        """SQLite has no FOR UPDATE: tag changes of this process take turns."""
        self._writes = itertools.count(1)
        self._written = 0
        """Bumped after every environment write of this process has committed."""
        self._states: dict[str, tuple[float, int, EnvironmentState]] = {}

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # -- environments -------------------------------------------------------

    def get_environment(self, name: str) -> EnvironmentRow | None:
        with self.session() as s:
            return s.get(EnvironmentRow, name)

    def _environment_written(self) -> None:
        # next() on a count is atomic: writers in several threads each get their own value.
        self._written = next(self._writes)

    def environment_state(self, name: str, *, max_age: float = 0.0) -> EnvironmentState | None:
        """Status, generation and running configuration of one environment.

        A lean read for InvokeRestApi, answered on the event loop: one indexed row, three
        columns, no ORM session (a quarter of ``get_environment``'s cost). With ``max_age``
        a state read at most that many seconds ago is reused, unless an environment write
        of this process has committed since that read began (so this process never sees
        its own changes late; another process sharing the database, up to ``max_age``).
        """
        now = time.monotonic()
        if max_age > 0:
            hit = self._states.get(name)
            if hit is not None and hit[1] == self._written and now - hit[0] < max_age:
                return hit[2]
        written = self._written  # before the read: a write committed during it drops it
        with self.engine.connect() as connection:
            found = connection.execute(_STATE_QUERY, {"name": name}).first()
        if found is None:
            self._states.pop(name, None)
            return None
        state = EnvironmentState(name, found.status, found.generation, found.applied)
        if max_age > 0:
            if len(self._states) > 1000:
                self._states.clear()
            self._states[name] = (now, written, state)
        return state

    def get_environment_by_arn(self, arn: str) -> EnvironmentRow | None:
        with self.session() as s:
            return s.scalar(select(EnvironmentRow).where(EnvironmentRow.arn == arn))

    def list_environment_names(self, after: str | None, limit: int) -> list[str]:
        query = select(EnvironmentRow.name).order_by(EnvironmentRow.name).limit(limit)
        if after is not None:
            query = query.where(EnvironmentRow.name > after)
        with self.session() as s:
            return list(s.scalars(query))

    def environments(self) -> list[EnvironmentRow]:
        with self.session() as s:
            return list(s.scalars(select(EnvironmentRow).order_by(EnvironmentRow.name)))

    def insert_environment(self, row: EnvironmentRow) -> bool:
        """Insert unless the name is taken; False when it is (checked in one transaction).

        Raises IllegalTransition unless ``row.status`` is one an environment starts in.
        """
        _checked(row.name, None, row.status)
        row.status = str(row.status)
        try:
            with self.session() as s:
                if s.get(EnvironmentRow, row.name, with_for_update=not self.is_sqlite) is not None:
                    return False
                s.add(row)
        except IntegrityError:  # a concurrent insert of the same name committed first
            return False
        finally:
            self._environment_written()
        return True

    def update_environment(
        self, name: str, *, expect_generation: int | None = None, **values: Any
    ) -> bool:
        """Compare-and-set: applies only while the generation is the one expected.

        A new ``status`` must be reachable from the current one (``status.TRANSITIONS``):
        the check and the write are one UPDATE, and a refused move raises IllegalTransition
        (logged) rather than being written. False when the row is gone or newer.
        """
        query = update(EnvironmentRow).where(EnvironmentRow.name == name)
        if expect_generation is not None:
            query = query.where(EnvironmentRow.generation == expect_generation)
        wanted = values.get("status")
        if wanted is not None:
            wanted = values["status"] = str(wanted)  # the text, not the enum, to any driver
            query = query.where(EnvironmentRow.status.in_(_texts(statuses.sources(wanted))))
        try:
            for _attempt in range(3):
                with self.session() as s:
                    if s.execute(query.values(**values)).rowcount:  # type: ignore[attr-defined]
                        return True
                if wanted is None:
                    return False
                found = self.environment_state(name)
                if found is None or (
                    expect_generation is not None and found.generation != expect_generation
                ):
                    return False
                if not statuses.allowed(found.status, wanted):
                    _checked(name, found.status, wanted)
                # the status changed between the write and this read: try again
            return False
        finally:
            self._environment_written()

    def change_tags(self, arn: str, change: Callable[[dict[str, str]], dict[str, str]]) -> bool:
        """Replace the tags of the environment ``arn`` with ``change(tags)`` in one
        transaction, so concurrent changes never lose each other; False if none."""
        with self._tags_lock, self.session() as s:
            row = s.scalar(
                select(EnvironmentRow).where(EnvironmentRow.arn == arn).with_for_update()
            )
            if row is None:
                return False
            tags = change(dict(row.tags))
            s.execute(
                update(EnvironmentRow).where(EnvironmentRow.name == row.name).values(tags=tags)
            )
        self._environment_written()
        return True

    def delete_environment(self, name: str) -> None:
        """Remove a DELETING environment's row (it is DELETED); IllegalTransition otherwise."""
        deleted = statuses.Status.DELETED
        try:
            with self.session() as s:
                gone = s.execute(
                    delete(EnvironmentRow).where(
                        EnvironmentRow.name == name,
                        EnvironmentRow.status.in_(_texts(statuses.sources(deleted))),
                    )
                ).rowcount  # type: ignore[attr-defined]
                if gone:
                    s.execute(delete(TokenRow).where(TokenRow.environment == name))
            if not gone:
                found = self.environment_state(name)
                if found is not None:
                    _checked(name, found.status, deleted)
        finally:
            self._environment_written()

    # -- access keys ----------------------------------------------------------

    def add_key(self, row: AccessKeyRow) -> None:
        with self.session() as s:
            s.add(row)

    def get_key(self, access_key_id: str) -> AccessKeyRow | None:
        with self.session() as s:
            return s.get(AccessKeyRow, access_key_id)

    def access_keys(self) -> list[AccessKeyRow]:
        with self.session() as s:
            return list(s.scalars(select(AccessKeyRow).order_by(AccessKeyRow.created_at)))

    def delete_key(self, access_key_id: str) -> bool:
        with self.session() as s:
            result = s.execute(
                delete(AccessKeyRow).where(AccessKeyRow.access_key_id == access_key_id)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- tokens -------------------------------------------------------------

    def add_token(self, row: TokenRow) -> None:
        with self.session() as s:
            s.add(row)

    def redeem_token(self, digest: str, kind: str, now: datetime) -> TokenRow | None:
        """Mark a token used and return it, once; None if unknown, used or expired."""
        with self.session() as s:
            result = s.execute(
                update(TokenRow)
                .where(TokenRow.digest == digest, TokenRow.kind == kind, TokenRow.used == 0)
                .where(TokenRow.expires_at > now)
                .values(used=1)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return None
            return s.get(TokenRow, digest)

    def purge_tokens(self, now: datetime) -> None:
        with self.session() as s:
            s.execute(delete(TokenRow).where(TokenRow.expires_at <= now))


def _texts(found: frozenset[statuses.Status]) -> list[str]:
    return sorted(s.value for s in found)


def _checked(name: str, current: str | None, wanted: str) -> None:
    """Refuse an illegal status move loudly: it is a bug in the caller, never user input."""
    try:
        statuses.check(name, current, wanted)
    except statuses.IllegalTransition:
        log.error("refused to write: %s", statuses.IllegalTransition(name, current, wanted))
        raise


def secure_file(path: Path) -> None:
    """Keep a secrets file readable by its owner only."""
    os.chmod(path, 0o600)
