"""Each environment reaches its own broker messages only, with a broker account of its own.

Redis: run on a Redis of the test's own whose default user has a password (on the
machine's Redis, which has none, any task could log in as the admin anyway). Two
environments run their DAGs with their ACL users (and Redis logs no denied command of
theirs), while environment A's user is refused B's keys, channels and every admin
command. RabbitMQ: a virtual host and user per environment through the management API.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from live_server import Server, wait_for, wait_status
from private_services import private_postgres_url, private_redis_url
from scale_support import (
    BUCKET,
    FAST_RECOVERY,
    NETWORK,
    RABBITMQ,
    celery_server,
    trigger,
    unique,
    wait_dag_visible,
    wait_run,
)

from openmwaa.runtime import celery
from openmwaa.runtime.base import RuntimeFailure
from openmwaa.runtime.brokers.rabbitmq import RabbitAccounts
from openmwaa.runtime.brokers.redis_acl import RespClient, RespError
from openmwaa.runtime.supervisor import read_pidfile

__all__ = ["private_postgres_url", "private_redis_url"]  # fixtures, used by name

RABBITMQ_MANAGEMENT = "http://guest:guest@127.0.0.1:15672"
ADMIN_COMMANDS = (
    ("CONFIG", "GET", "*"),
    ("FLUSHALL",),
    ("ACL", "LIST"),
    ("CLIENT", "LIST"),
    ("MONITOR",),
    ("SHUTDOWN",),
)
A = unique("bra")
B = unique("brb")


def _request(name: str) -> dict[str, Any]:
    return {
        "Name": name,
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/airflow",
        "SourceBucketArn": f"arn:aws:s3:::{BUCKET}",
        "DagS3Path": "dags",
        "NetworkConfiguration": NETWORK,
        "EnvironmentClass": "mw1.micro",
        "MinWorkers": 1,
        "MaxWorkers": 1,
        "Schedulers": 1,
        "AirflowConfigurationOptions": FAST_RECOVERY,
    }


def _create(mwaa: Any, *names: str) -> dict[str, str]:
    """Create the environments together; name -> its queue (= its broker account)."""
    for name in names:
        mwaa.create_environment(**_request(name))
    queues = {}
    for name in names:
        env = wait_status(mwaa, name, {"AVAILABLE", "CREATE_FAILED"}, 400)
        assert env["Status"] == "AVAILABLE", env.get("LastUpdate")
        queues[name] = env["CeleryExecutorQueue"].rsplit(":", 1)[-1]
    return queues


def _delete(mwaa: Any, name: str) -> None:
    mwaa.delete_environment(Name=name)
    wait_for(lambda: name not in mwaa.list_environments()["Environments"], 180, f"{name} gone")


def _broker_url_of(server: Server, name: str) -> str:
    """The broker URL the environment's scheduler runs with."""
    entry = read_pidfile(server.data_dir / "environments" / name / "run" / "scheduler.json")
    assert entry is not None
    return str(entry[0].environ()["AIRFLOW__CELERY__BROKER_URL"])


def _password(server: Server, name: str) -> str:
    secrets = json.loads((server.data_dir / "environments" / name / "secrets.json").read_text())
    return str(secrets["broker_password"])


def _run_whoami(mwaa: Any, name: str) -> None:
    """The whoami DAG runs to success (an API server slow to answer on a loaded host is
    asked again)."""
    for attempt in range(3):
        try:
            wait_dag_visible(mwaa, name, "whoami")
            run_id = trigger(mwaa, name, "whoami", {"env": name})
            break
        except mwaa.exceptions.RestApiServerException:
            if attempt == 2:
                raise
            time.sleep(5)
    for attempt in range(3):
        try:
            assert wait_run(mwaa, name, "whoami", run_id) == "success"
            return
        except mwaa.exceptions.RestApiServerException:
            if attempt == 2:
                raise
            time.sleep(5)


def _denied(client: RespClient, *command: str) -> None:
    with pytest.raises(RespError, match="NOPERM|can't access"):
        client.call(*command)


@pytest.fixture(scope="module")
def redis_env(
    tmp_path_factory: pytest.TempPathFactory,
    airflow_runtimes: Path,
    private_redis_url: str,
    private_postgres_url: str,
) -> Iterator[tuple[Server, dict[str, str]]]:
    """A production-mode server on the private Redis and PostgreSQL, environments A, B."""
    server = celery_server(
        tmp_path_factory.mktemp("broker-isolation"),
        airflow_runtimes,
        private_redis_url,
        private_postgres_url,
    )
    try:
        queues = _create(server.client(), A, B)
        yield server, queues
        for name in (A, B):  # the logs outlive the environments, for a failure's reader
            logs = server.data_dir / "environments" / name / "logs"
            if logs.is_dir():
                shutil.copytree(logs, server.data_dir / "kept-logs" / name)
        mwaa = server.client()
        for name in (A, B):
            if name in mwaa.list_environments()["Environments"]:
                _delete(mwaa, name)
    finally:
        server.stop()


def test_environments_run_with_their_own_confined_redis_users(
    redis_env: tuple[Server, dict[str, str]], private_redis_url: str
) -> None:
    server, queues = redis_env
    mwaa = server.client()
    admin_password = urlsplit(private_redis_url).password or ""
    for name in (A, B):
        url = urlsplit(_broker_url_of(server, name))
        assert url.username == queues[name], "the components use the environment's own user"
        assert url.password == _password(server, name) and admin_password not in url.geturl()
    for name in (A, B):
        _run_whoami(mwaa, name)
    with RespClient(private_redis_url) as admin:
        # Redis logs every command it refused (since the users were made): none of theirs.
        users = set(queues.values())
        denied = [e for e in admin.call("ACL", "LOG") or [] if e[e.index("username") + 1] in users]
        assert denied == [], f"a real worker and scheduler needed a command they lack: {denied}"
        match = celery.redis_key_prefix(queues[B]) + "*"
        b_keys = admin.call("SCAN", "0", "MATCH", match, "COUNT", "100000")[1]
        assert b_keys, "B's Celery keys are in Redis"

    b_prefix = celery.redis_key_prefix(queues[B])
    own = celery.redis_key_prefix(queues[A]) + "probe"
    with RespClient(_broker_url_of(server, A)) as as_a:
        assert as_a.call("SET", own, "1") == "OK" and as_a.call("GET", own) == "1"
        for command in ("GET", "DEL", "TYPE", "LRANGE", "SMEMBERS"):
            args = ("0", "-1") if command == "LRANGE" else ()
            _denied(as_a, command, b_keys[0], *args)
        _denied(as_a, "KEYS", "*")
        _denied(as_a, "SCAN", "0")
        _denied(as_a, "SUBSCRIBE", b_prefix + "/0.celery.pidbox")
        _denied(as_a, "PSUBSCRIBE", b_prefix + "/0.celery.pidbox")
        _denied(as_a, "PSUBSCRIBE", "*")
        _denied(as_a, "EVAL", "return redis.call('GET', KEYS[1])", "1", b_keys[0])
        _denied(as_a, "EVAL", f"return redis.call('GET', '{b_keys[0]}')", "0")
        for admin_command in ADMIN_COMMANDS:
            _denied(as_a, *admin_command)
        as_a.call("DEL", own)
    with RespClient(private_redis_url) as admin:
        assert admin.call("EXISTS", b_keys[0]) == 1, "B's key is still there"


def test_a_lost_redis_user_is_made_again(
    redis_env: tuple[Server, dict[str, str]], private_redis_url: str
) -> None:
    """As after a restart of a Redis without an ACL file: health checks make it again."""
    server, queues = redis_env
    with RespClient(private_redis_url) as admin:
        assert admin.call("ACL", "DELUSER", queues[B]) == 1
        wait_for(lambda: admin.call("ACL", "GETUSER", queues[B]), 30, "B's user made again")
    _run_whoami(server.client(), B)


def test_deleting_removes_the_user_and_its_keys(
    redis_env: tuple[Server, dict[str, str]], private_redis_url: str
) -> None:
    server, queues = redis_env
    own_url = _broker_url_of(server, A)
    _delete(server.client(), A)
    with RespClient(private_redis_url) as admin:
        assert admin.call("ACL", "GETUSER", queues[A]) is None
        prefix = celery.redis_key_prefix(queues[A])
        assert admin.call("SCAN", "0", "MATCH", prefix + "*", "COUNT", "100000")[1] == []
    with pytest.raises(RespError, match="WRONGPASS"):
        RespClient(own_url).close()


def _management_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 15672), timeout=1).close()
        return True
    except OSError:
        return False


needs_management = pytest.mark.skipif(
    not _management_up(), reason="RabbitMQ's management plugin is not on 127.0.0.1:15672"
)


@needs_management
def test_rabbitmq_users_open_their_own_vhost_only() -> None:
    rabbit = RabbitAccounts(RABBITMQ, RABBITMQ_MANAGEMENT)
    rabbit.check()
    a, b = unique("vha"), unique("vhb")
    try:
        rabbit.ensure(a, "pw-a")
        rabbit.ensure(b, "pw-b")
        rabbit.ensure(a, "pw-a")  # idempotent
        celery.check_broker(rabbit.url_for(a, "pw-a"))
        a_on_b = rabbit.url_for(a, "pw-a").rsplit("/", 1)[0] + f"/{b}"
        with pytest.raises(RuntimeFailure, match="access to virtual host") as refused:
            celery.check_broker(a_on_b)
        assert refused.value.code == celery.CREDENTIALS_REFUSED
        with pytest.raises(RuntimeFailure, match="access to virtual host"):
            celery.check_broker(rabbit.url_for(a, "pw-a").rsplit("/", 1)[0] + "/%2F")
    finally:
        rabbit.remove(a)
        rabbit.remove(b)
    assert not rabbit.vhost_exists(a)
    with pytest.raises(RuntimeFailure, match="refused the URL's credentials"):
        celery.check_broker(rabbit.url_for(a, "pw-a"))


@needs_management
def test_rabbitmq_environment_runs_on_its_own_vhost(
    tmp_path: Path, airflow_runtimes: Path, private_postgres_url: str
) -> None:
    server = celery_server(
        tmp_path / "rabbit",
        airflow_runtimes,
        RABBITMQ,
        private_postgres_url,
        extra=("--rabbitmq-management-url", RABBITMQ_MANAGEMENT),
    )
    name = unique("rbi")
    try:
        mwaa = server.client()
        queue = _create(mwaa, name)[name]
        url = urlsplit(_broker_url_of(server, name))
        assert (url.username, url.path) == (queue, f"/{queue}")
        _run_whoami(mwaa, name)
        _delete(mwaa, name)
        assert not RabbitAccounts(RABBITMQ, RABBITMQ_MANAGEMENT).vhost_exists(queue)
    finally:
        server.stop()
