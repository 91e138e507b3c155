"""One-way mirror of ``<bucket>/<prefix>/`` into a local folder (an environment's dags).

The control plane runs one mirror thread per environment. Each pass lists the
prefix, downloads what is new or changed (temp file + rename, so Airflow's DAG
processor never parses half a file) and deletes local files that left the
bucket. What was downloaded is remembered in a manifest next to the folder, so
a restarted control plane does not fetch everything again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

from openmwaa.buckets.base import BucketStore, ObjectNotFound
from openmwaa.core.files import write_atomic
from openmwaa.core.loops import PeriodicLoop

log = logging.getLogger(__name__)

_IGNORED_DIRS = {"__pycache__"}


class DagMirror:
    """Keeps ``target`` equal to ``bucket/prefix/``; ``sync_once`` is one pass."""

    def __init__(
        self,
        store: BucketStore,
        bucket: str,
        prefix: str,
        target: Path,
        manifest: Path,
        interval: float = 1.0,
        *,
        shared: bool = False,
    ) -> None:
        """``shared``: files are written readable by the folder's group (0640, folders
        02750), for an environment whose processes run as a user of its own."""
        self.store = store
        self.shared = shared
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.target = target
        self.manifest_path = manifest
        self.interval = interval
        self.last_error: str | None = None
        """Why the last pass failed (None after a good one); passes back off meanwhile."""
        self._loop = PeriodicLoop(
            f"dag-mirror:{target}", self._pass, interval, max_backoff=30.0, on_error=self._failed
        )
        self._lock = threading.Lock()
        self._manifest: dict[str, str] = self._load_manifest()

    def _load_manifest(self) -> dict[str, str]:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}
        if data.get("source") != [self.bucket, self.prefix]:
            return {}  # re-pointed: trust nothing recorded for the old source
        return dict(data.get("files", {}))

    def _save_manifest(self) -> None:
        payload = {"source": [self.bucket, self.prefix], "files": self._manifest}
        write_atomic(self.manifest_path, json.dumps(payload).encode())

    def sync_once(self) -> bool:
        """One pass; returns True when something changed locally."""
        with self._lock:
            objects = self.store.list_objects(self.bucket, self.prefix)
            wanted: dict[str, str] = {}
            for obj in objects:
                rel = obj.key[len(self.prefix) :]
                parts = rel.split("/")
                if not rel or any(p in ("", ".", "..") for p in parts):
                    continue
                wanted[rel] = obj.etag
            changed = False
            for rel, etag in wanted.items():
                dest = self.target / rel
                if self._manifest.get(rel) == etag and dest.is_file():
                    continue
                try:
                    data = self.store.get_object(self.bucket, self.prefix + rel)
                except ObjectNotFound:
                    continue  # deleted between list and get: next pass sees it
                if dest.is_dir():
                    _remove_tree(dest)
                if self.shared:
                    self._make_dirs(dest.parent)
                write_atomic(dest, data, 0o640 if self.shared else None, durable=False)
                self._manifest[rel] = etag
                changed = True
            changed |= self._delete_extra(set(wanted))
            for rel in list(self._manifest):
                if rel not in wanted:
                    del self._manifest[rel]
            if changed or not self.manifest_path.exists():
                self._save_manifest()
            self.last_error = None
            return changed

    def _make_dirs(self, folder: Path) -> None:
        """Sub-folders of the target, group-readable (the target's set-group-id bit gives
        them its group)."""
        missing = []
        while folder != self.target and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            os.chmod(path, 0o2750)  # noqa: S103 - the environment group reads its DAGs

    def _delete_extra(self, wanted: set[str]) -> bool:
        changed = False
        if not self.target.is_dir():
            return False
        for dirpath, _dirs, filenames in os.walk(self.target, topdown=False):
            base = Path(dirpath)
            if _IGNORED_DIRS & set(base.relative_to(self.target).parts):
                continue
            for filename in filenames:
                rel = (base / filename).relative_to(self.target).as_posix()
                if rel not in wanted:
                    (base / filename).unlink(missing_ok=True)
                    changed = True
            if base != self.target:
                rest = [n for n in os.listdir(base) if n not in _IGNORED_DIRS]
                if not rest:
                    _remove_tree(base)
        return changed

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=10)

    @property
    def alive(self) -> bool:
        """Whether the mirror thread runs and was not stopped: False when it was never
        started, was stopped, or died (health reports the DAG mirror as stopped then)."""
        return self._loop.running and not self._loop.stopping

    def _pass(self) -> None:
        self.sync_once()

    def _failed(self, exc: Exception | None) -> None:
        self.last_error = None if exc is None else str(exc) or type(exc).__name__


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
