"""The local backend: real Airflow environments as supervised processes on this host.

One module per job; ``LocalBackend`` (backend.py) is the facade the control plane uses.

- layout.py      where one environment's files live
- context.py     what the modules share (settings, supervisor, ports, per-environment memory)
- state.py       secrets.json, state.json, startup-exports.json, the passwords file
- prepare.py     fetch from the bucket, build the install, unpack plugins, write the files
- metadb.py      the metadata database: create, migrate, snapshot, restore
- components.py  component names, environment variables, specs, fingerprint
- lifecycle.py   adopt, launch, startup script, orphans, wait until healthy
- mirror.py      the DAG mirror (bucket -> dags folder)
- health.py      what a health check reads
- access.py      Airflow REST API tokens and the Airflow CLI
"""

from __future__ import annotations

from openmwaa.runtime.local.backend import LocalBackend
from openmwaa.runtime.local.components import COMPONENTS

__all__ = ["COMPONENTS", "LocalBackend"]
