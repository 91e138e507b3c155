"""Failures a user can cause end in RuntimeFailure with the useful line, and leave nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_support import make_spec

from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.local import LocalBackend
from openmwaa.runtime.ports import port_is_free
from openmwaa.runtime.supervisor import marked_processes


def _nothing_left(backend: LocalBackend, name: str) -> None:
    env_dir = backend.layout(name).root
    assert marked_processes(env_dir) == []
    assert backend.supervisor.components(name) == {}
    ports = backend.ports.get(name)
    if ports:
        assert all(port_is_free(p) for p in (ports.api, ports.worker_log, ports.trigger_log))


def test_startup_script_failure(backend: LocalBackend, bucket: Path) -> None:
    (bucket / "startup").mkdir(exist_ok=True)
    (bucket / "startup" / "fail.sh").write_text('echo "cannot reach the mirror" >&2\nexit 3\n')
    spec = make_spec("badscript", startup_script_s3_path="startup/fail.sh")
    backend.provision(spec, print)
    with pytest.raises(RuntimeFailure) as failure:
        backend.start(spec, print)
    assert failure.value.code == "STARTUP_SCRIPT_FAILED"
    assert "code 3" in str(failure.value)
    assert "cannot reach the mirror" in str(failure.value)
    _nothing_left(backend, spec.name)
    backend.destroy(spec, print)


def test_bad_requirements(backend: LocalBackend, bucket: Path) -> None:
    (bucket / "requirements-bad.txt").write_text("openmwaa-no-such-package-xyz==1.0\n")
    spec = make_spec("badreqs", requirements_s3_path="requirements-bad.txt")
    with pytest.raises(RuntimeFailure) as failure:
        backend.provision(spec, print)
    assert failure.value.code == "INCORRECT_REQUIREMENTS"
    assert "openmwaa-no-such-package-xyz" in str(failure.value)
    _nothing_left(backend, spec.name)
    backend.destroy(spec, print)


def test_missing_pinned_object_version(backend: LocalBackend, bucket: Path) -> None:
    (bucket / "startup").mkdir(exist_ok=True)
    (bucket / "startup" / "ok2.sh").write_text("true\n")
    spec = make_spec(
        "badversion",
        startup_script_s3_path="startup/ok2.sh",
        startup_script_s3_object_version="0123456789abcdef",
    )
    with pytest.raises(RuntimeFailure) as failure:
        backend.provision(spec, print)
    assert failure.value.code == "S3_OBJECT_NOT_FOUND"
    backend.destroy(spec, print)


def test_component_exiting_at_start(backend: LocalBackend) -> None:
    spec = make_spec(
        "badconfig", airflow_configuration_options={"scheduler.scheduler_heartbeat_sec": "often"}
    )
    backend.provision(spec, print)
    with pytest.raises(RuntimeFailure) as failure:
        backend.start(spec, print)
    assert failure.value.code == "COMPONENT_FAILED"
    print(failure.value)
    _nothing_left(backend, spec.name)
    backend.destroy(spec, print)
    assert not backend.layout(spec.name).root.exists()
