"""A SIGKILLed control plane: its successor adopts the running components, none duplicated."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from live_server import wait_for
from runtime_support import make_spec, simple_dag

from openmwaa.runtime.local import COMPONENTS, LocalBackend
from openmwaa.runtime.supervisor import marked_processes, recorded_sessions

CONTROL_PLANE = """
import json, sys, time
from pathlib import Path
from openmwaa.runtime.base import EnvironmentSpec
from openmwaa.runtime.local import LocalBackend
backend = LocalBackend(Path(sys.argv[1]))
spec = EnvironmentSpec(**json.loads(sys.argv[2]))
backend.provision(spec, print)
backend.start(spec, print)
print("READY", flush=True)
time.sleep(600)
"""


def test_restarted_control_plane_adopts_components(
    backend: LocalBackend, data_dir: Path, bucket: Path
) -> None:
    (bucket / "adopt").mkdir(exist_ok=True)
    (bucket / "adopt" / "before.py").write_text(simple_dag("before"))
    spec = make_spec("adopt", dag_s3_path="adopt")
    child = subprocess.Popen(
        [sys.executable, "-c", CONTROL_PLANE, str(data_dir), json.dumps(dataclasses.asdict(spec))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == "READY":
                break
        else:
            raise AssertionError("the first control plane did not start the environment")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        env_dir = data_dir / "environments" / spec.name
        sessions = recorded_sessions(env_dir / "run")
        assert len(sessions) == len(COMPONENTS)
        count = len(marked_processes(env_dir, sessions))

        started = time.monotonic()
        backend.start(spec, print)  # the new control plane
        assert time.monotonic() - started < 5, "adoption must not restart anything"
        comps = backend.supervisor.components(spec.name)
        assert {c.pid for c in comps.values()} == sessions
        assert len(marked_processes(env_dir, sessions)) == count
        wait_for(lambda: backend.health(spec).healthy, 30, "health of the adopted environment")
        # The DAG mirror runs again in the new control plane.
        (bucket / "adopt" / "after.py").write_text(simple_dag("after"))
        dags = backend.layout(spec.name).dags
        wait_for(lambda: (dags / "after.py").exists(), 10, "the mirror to copy a new DAG")
    finally:
        if child.poll() is None:
            child.kill()
        backend.destroy(spec, print)
    assert marked_processes(env_dir, sessions) == []
    assert not env_dir.exists()
