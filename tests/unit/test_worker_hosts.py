"""How work is shared between the control plane's host and hosts that joined, and what a
worker host's copy of the folders looks like after each sync."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from service_support import REQUEST, FakeBackend, make_environments, make_store

from openmwaa.runtime import bundles
from openmwaa.runtime.base import EnvironmentSpec, WorkerBundle
from openmwaa.service.errors import ServiceUnavailableException, ValidationException
from openmwaa.service.identity import ADMIN_POLICY, Caller
from openmwaa.service.policies import parse_policy
from openmwaa.service.worker_hosts import MAX_HOST_WORKERS, RelayRefused, RemoteHost, WorkerHosts
from openmwaa.store.db import Store


def hosts_with(*entries: tuple[str, int, int]) -> WorkerHosts:
    """WorkerHosts for environment ``e`` with hosts (name, limit, workers up), joined in order."""
    hosts = WorkerHosts(backend=None, environments=None)  # type: ignore[arg-type]
    now = time.monotonic()
    hosts._hosts["e"] = {
        name: RemoteHost(name, limit, up, 0, joined=now + i, seen=now)
        for i, (name, limit, up) in enumerate(entries)
    }
    return hosts


def assigned(hosts: WorkerHosts) -> dict[str, int]:
    return {h.host: h.assigned for h in hosts.live("e")}


def test_without_hosts_everything_runs_here() -> None:
    assert hosts_with().assign("e", 3, local_workers=1) == 3


def test_joined_hosts_are_filled_first_in_order_up_to_their_limit() -> None:
    hosts = hosts_with(("a", 2, 2), ("b", 1, 1))
    assert hosts.assign("e", 4, local_workers=1) == 1
    assert assigned(hosts) == {"a": 2, "b": 1}
    assert hosts.assign("e", 2, local_workers=1) == 0
    assert assigned(hosts) == {"a": 2, "b": 0}


def test_local_workers_are_kept_until_the_host_taking_over_runs_its_own() -> None:
    starting = hosts_with(("a", 1, 0))
    assert starting.assign("e", 1, local_workers=1) == 1
    running = hosts_with(("a", 1, 1))
    assert running.assign("e", 1, local_workers=1) == 0


def test_a_silent_host_is_forgotten() -> None:
    hosts = hosts_with(("a", 4, 4))
    hosts._hosts["e"]["a"].seen -= 60
    assert hosts.assign("e", 2, local_workers=0) == 2
    assert hosts.live("e") == []


def test_folders_are_mirrored_file_by_file(tmp_path: Path) -> None:
    src = {"dags": tmp_path / "src" / "dags", "plugins": tmp_path / "src" / "plugins"}
    (src["dags"] / "sub").mkdir(parents=True)
    (src["dags"] / "a.py").write_text("a = 1\n")
    (src["dags"] / "sub" / "b.py").write_text("b = 1\n")
    (src["dags"] / "__pycache__").mkdir()
    (src["dags"] / "__pycache__" / "a.pyc").write_bytes(b"x")
    target = tmp_path / "home"
    bundles.unpack(bundles.pack(src), target)
    assert (target / "dags" / "sub" / "b.py").read_text() == "b = 1\n"
    assert (target / "plugins").is_dir()
    assert not (target / "dags" / "__pycache__").exists()
    before = bundles.digest(src)
    (src["dags"] / "sub" / "b.py").unlink()
    (src["dags"] / "a.py").write_text("a = 2\n")
    assert bundles.digest(src) != before
    bundles.unpack(bundles.pack(src), target)
    assert (target / "dags" / "a.py").read_text() == "a = 2\n"
    assert not (target / "dags" / "sub" / "b.py").exists()
    assert sorted(p.name for p in target.iterdir()) == ["dags", "plugins"]


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "dags/../../evil.py"])
def test_archives_reaching_outside_are_refused(tmp_path: Path, name: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info: Any = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="refusing"):
        bundles.unpack(buf.getvalue(), tmp_path / "home")
    assert not (tmp_path / "evil.py").exists()


def test_portable_settings_leave_host_paths_and_signing_keys_behind() -> None:
    env = {
        "AIRFLOW_HOME": "/x",
        "AIRFLOW__API_AUTH__JWT_SECRET": "s",
        "AIRFLOW__CELERY__BROKER_URL": "redis://h:6379/0",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:1/execution/",
    }
    portable = bundles.portable_env(env)
    relay = portable.pop(bundles.RELAY_SECRET)
    assert portable == {"AIRFLOW__CELERY__BROKER_URL": "redis://h:6379/0"}
    # Derived from the environment's own signing key: stable, and its own per key.
    assert relay == bundles.relay_secret(env) and len(relay) == 64
    other = bundles.relay_secret({**env, "AIRFLOW__API_AUTH__JWT_SECRET": "t"})
    assert other != relay


# -- against a real store: statuses and reports ------------------------------------------


def _admin() -> Caller:
    return Caller(
        "AK", "admin", "arn:aws:iam::123456789012:user/admin", "s", (parse_policy(ADMIN_POLICY),)
    )


def _hosts_of(tmp_path: Path, state: str) -> tuple[WorkerHosts, Store]:
    """WorkerHosts over a real store holding environment ``e``, run once and now ``state``."""
    store = make_store(tmp_path)
    envs = make_environments(store)
    envs.create("e", REQUEST)
    row = store.get_environment("e")
    assert row is not None
    store.update_environment("e", status="AVAILABLE", applied=row.spec)
    if state != "AVAILABLE":
        store.update_environment("e", status="UPDATING", generation=2)
        path = {"ROLLING_BACK": ["ROLLING_BACK"], "UPDATE_FAILED": ["ROLLING_BACK"]}
        for step in [*path.get(state, []), state]:
            store.update_environment("e", status=step)
    return WorkerHosts(FakeBackend(), envs), store


@pytest.mark.parametrize("state", ["AVAILABLE", "UPDATING", "UPDATE_FAILED"])
def test_hosts_of_a_serving_environment_keep_reporting(tmp_path: Path, state: str) -> None:
    """UPDATE_FAILED runs the old configuration: its worker hosts must not be dropped."""
    hosts, store = _hosts_of(tmp_path, state)
    answer = hosts.report(_admin(), "e", "h1", limit=2, workers=1, busy=0)
    assert answer["Fingerprint"] == "f1"
    assert [h.host for h in hosts.live("e")] == ["h1"]
    assert hosts.bundle(_admin(), "e")["Name"] == "e"
    store.close()


def test_hosts_of_an_environment_rolling_back_wait(tmp_path: Path) -> None:
    hosts, store = _hosts_of(tmp_path, "ROLLING_BACK")
    with pytest.raises(ValidationException, match="ROLLING_BACK"):
        hosts.report(_admin(), "e", "h1", limit=2, workers=1, busy=0)
    store.close()


def test_reported_workers_are_capped_by_the_hosts_own_limit(tmp_path: Path) -> None:
    """A host declaring --max-workers 2 and reporting 40 workers counts as 2: it cannot make
    the autoscaler believe the work is done elsewhere and stop this host's workers."""
    hosts, store = _hosts_of(tmp_path, "AVAILABLE")
    hosts.report(_admin(), "e", "h1", limit=2, workers=40, busy=40)
    (entry,) = hosts.live("e")
    assert (entry.limit, entry.workers, entry.busy) == (2, 2, 2)
    hosts.assign("e", 4, local_workers=4)
    assert hosts.assign("e", 4, local_workers=4) == 2  # the other 2 stay here
    hosts.report(_admin(), "e", "h1", limit=99, workers=99, busy=1)
    (entry,) = hosts.live("e")
    assert (entry.limit, entry.workers, entry.busy) == (MAX_HOST_WORKERS, MAX_HOST_WORKERS, 1)
    store.close()


# -- the execution relay's secret ---------------------------------------------------------


class RelayBackend(FakeBackend):
    """Celery environments whose bundles carry a relay secret of their own (as the local
    backend's, derived from each one's JWT-signing key); ``running`` as FakeBackend's."""

    def worker_bundle(self, spec: EnvironmentSpec) -> WorkerBundle | None:
        bundle = super().worker_bundle(spec)
        if bundle is None or spec.name not in self.running:
            return None
        env = {"AIRFLOW__API_AUTH__JWT_SECRET": f"jwt-of-{spec.name}", "X": "1"}
        return WorkerBundle(**{**vars(bundle), "env": bundles.portable_env(env)})


def secret_of(name: str) -> str:
    secret = bundles.relay_secret({"AIRFLOW__API_AUTH__JWT_SECRET": f"jwt-of-{name}"})
    assert secret is not None
    return secret


@pytest.fixture
def relay(tmp_path: Path) -> Any:
    store = make_store(tmp_path)
    envs = make_environments(store)
    backend = RelayBackend()
    for name in ("a", "b"):
        envs.create(name, REQUEST)
        row = store.get_environment(name)
        assert row is not None
        store.update_environment(name, status="AVAILABLE", applied=row.spec)
        backend.running.add(name)
    yield WorkerHosts(backend, envs), backend
    store.close()


def test_the_relay_needs_the_environments_own_secret(relay: Any) -> None:
    hosts, _backend = relay
    assert hosts.relay_target("b", secret_of("b")) == "http://127.0.0.1:1/execution/"
    assert secret_of("a") != secret_of("b")
    for wrong in (secret_of("a"), "", secret_of("b")[:-1], secret_of("b") + "0"):
        with pytest.raises(RelayRefused):
            hosts.relay_target("b", wrong)
    # An unknown environment is refused like a wrong secret: nothing tells it apart.
    with pytest.raises(RelayRefused):
        hosts.relay_target("nosuchenv", secret_of("b"))


def test_a_stopped_environment_keeps_its_secret(relay: Any) -> None:
    """While Airflow restarts, its tasks get a 503 (which they retry), others still a 403."""
    hosts, backend = relay
    hosts.relay_target("b", secret_of("b"))
    backend.running.discard("b")
    with pytest.raises(ServiceUnavailableException):
        hosts.relay_target("b", secret_of("b"))
    with pytest.raises(RelayRefused):
        hosts.relay_target("b", secret_of("a"))
    hosts.forget("b")  # deleted: its secret goes too
    with pytest.raises(RelayRefused):
        hosts.relay_target("b", secret_of("b"))


def test_worker_hosts_get_the_relay_secret_apart_from_the_settings(relay: Any) -> None:
    hosts, _backend = relay
    bundle = hosts.bundle(_admin(), "b")
    assert bundle["RelaySecret"] == secret_of("b")
    assert bundle["Environment"] == {"X": "1"}
