"""Where one environment's files live, so every module names them the same way.

Layout of one environment, ``<data-dir>/environments/<name>/`` (the server's, 0711
when environments have users of their own, 0700 otherwise)::

    airflow/        AIRFLOW_HOME, the environment user's own (0700): logs/ (task
                    logs), airflow.db (SQLite metadata DB), run/ (Celery pid files),
                    simple_auth_manager_passwords.json
    dags/           mirrored from the bucket; plugins/: plugins.zip unpacked. The
                    server's, readable by the environment's group only (02750), so
                    the environment cannot change what the server writes there
    logs/           one log per component, one per startup-script run (the server's)
    run/            pid files (pid + create time + configuration fingerprint)
    secrets.json    keys and passwords (0600), never logged
    state.json      what was provisioned (install, migrated version, artifacts)
    startup-exports.json  what the startup script exported, for a successor to adopt
    startup.sh      the startup script, when there is one (readable by the group)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVER_FOLDERS = ("logs", "run")
"""The server's own folders of an environment."""
SHARED_FOLDERS = ("dags", "plugins")
"""Written by the server, read by the environment's processes."""


@dataclass(frozen=True)
class Layout:
    """The paths of one environment's folder."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path, name: str) -> Layout:
        return cls(Path(data_dir) / "environments" / name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def home(self) -> Path:
        """AIRFLOW_HOME."""
        return self.root / "airflow"

    @property
    def dags(self) -> Path:
        return self.root / "dags"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def task_logs(self) -> Path:
        return self.home / "logs"

    @property
    def celery_run(self) -> Path:
        """Celery's pid files (written by the workers, as the environment's user)."""
        return self.home / "run"

    @property
    def sqlite_db(self) -> Path:
        return self.home / "airflow.db"

    @property
    def passwords(self) -> Path:
        """SimpleAuthManager's passwords file (Airflow reads it)."""
        return self.home / "simple_auth_manager_passwords.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def exports(self) -> Path:
        return self.root / "startup-exports.json"

    @property
    def startup_script(self) -> Path:
        return self.root / "startup.sh"

    @property
    def dags_manifest(self) -> Path:
        return self.root / "dags-manifest.json"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def create(self) -> None:
        """Make the folders every later step writes into (owners and modes: see
        :mod:`openmwaa.runtime.local.folders`)."""
        for sub in (*SERVER_FOLDERS, *SHARED_FOLDERS):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for path in (self.home, self.task_logs, self.celery_run):
            path.mkdir(parents=True, exist_ok=True)
