"""Where one environment's files live, so every module names them the same way.

Layout of one environment, ``<data-dir>/environments/<name>/``::

    airflow/        AIRFLOW_HOME: dags/ (mirrored from the bucket), plugins/,
                    logs/ (task logs), airflow.db (SQLite metadata DB),
                    simple_auth_manager_passwords.json
    logs/           one log per component, one per startup-script run
    run/            pid files (pid + create time + configuration fingerprint)
    secrets.json    keys and passwords (0600), never logged
    state.json      what was provisioned (install, migrated version, artifacts)
    startup-exports.json  what the startup script exported, for a successor to adopt
    startup.sh      the startup script, when there is one
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FOLDERS = ("airflow/dags", "airflow/plugins", "airflow/logs", "logs", "run")


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
        return self.home / "dags"

    @property
    def plugins(self) -> Path:
        return self.home / "plugins"

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
        """Make the folders every later step writes into."""
        for sub in FOLDERS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
