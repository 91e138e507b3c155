"""Owners and modes of an environment's folders, so that its user reaches its own files
and nothing else.

With a user per environment: the environment's folder is the server's (0711: passable,
not listable); ``airflow/`` (AIRFLOW_HOME) is the environment user's (0700); ``dags/``,
``plugins/`` and the startup script are the server's, readable by the environment's
group only (02750 / 0640), so the server never writes into a folder the environment
could have swapped for a link to somewhere else; logs, pid files, secrets and state
stay the server's (0700 / 0600). Without users everything is the server's, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from openmwaa.core.files import chown_tree
from openmwaa.runtime.local.layout import SERVER_FOLDERS, SHARED_FOLDERS, Layout
from openmwaa.runtime.tenancy import Tenant

SHARED_DIR_MODE = 0o2750
"""Folders the server writes for an environment: new entries get the environment's group."""
SHARED_FILE_MODE = 0o640


def prepare_folders(layout: Layout, tenant: Tenant) -> None:
    """Create the environment's folders with the owners and modes above."""
    layout.create()
    owner = tenant.owner()
    if owner is None:
        return
    uid, gid = owner
    os.chmod(layout.root, 0o711)  # noqa: S103 - passable by its user, not listable
    for sub in SERVER_FOLDERS:
        os.chmod(layout.root / sub, 0o700)
    for sub in SHARED_FOLDERS:
        share_tree(layout.root / sub, tenant)
    home = layout.home
    if os.lstat(home).st_uid != uid:
        # Made before the environment had a user of its own (or by an earlier user).
        chown_tree(home, uid, gid)
    for folder in (layout.task_logs, layout.celery_run):  # made just now, as the server
        if os.lstat(folder).st_uid != uid:
            os.chown(folder, uid, gid, follow_symlinks=False)
    os.chmod(home, 0o700)


def share_tree(top: Path, tenant: Tenant) -> None:
    """``top`` (a folder only the server writes) readable by the environment's group."""
    owner = tenant.owner()
    if owner is None or not top.exists():
        return
    gid = owner[1]
    _share(top, gid, SHARED_DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            _share(Path(dirpath, name), gid, SHARED_DIR_MODE)
        for name in filenames:
            _share(Path(dirpath, name), gid, SHARED_FILE_MODE)


def share_file(path: Path, tenant: Tenant) -> None:
    """One file the server wrote (the startup script) readable by the environment's group."""
    owner = tenant.owner()
    if owner is not None and path.exists():
        _share(path, owner[1], SHARED_FILE_MODE)


def _share(path: Path, gid: int, mode: int) -> None:
    if path.is_symlink():
        return
    os.chown(path, os.geteuid(), gid, follow_symlinks=False)
    os.chmod(path, mode)
