"""Environments act in AWS with their ExecutionRoleArn: the server's own credentials assume
it through STS, the environment's bucket is read with it, and its processes fetch its
credentials from the API port as ECS containers do, so boto3 needs no configuration.

Against moto's server as IAM, STS and S3 with IAM enforced (aws_roles_support): the role
``reader-x`` may read bucket X and not Y, while the server's own key reads both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aws_roles_support import ALLOWED, BUCKET_X, BUCKET_Y, OTHER, FakeAws, start_moto
from live_server import free_port
from service_support import REQUEST, make_environments, make_store

from openmwaa.api.app import MwaaApi
from openmwaa.api.credentials import CredentialRoutes
from openmwaa.api.provider import MwaaProvider
from openmwaa.api.serving import uvicorn_config
from openmwaa.buckets import BucketError, BucketStore
from openmwaa.buckets import roles as sts_roles
from openmwaa.buckets.local import LocalBucketStore
from openmwaa.buckets.s3 import S3BucketStore
from openmwaa.runtime.base import EnvironmentSpec, RuntimeFailure
from openmwaa.runtime.local import LocalBackend
from openmwaa.runtime.local.mirror import mirror_for
from openmwaa.runtime.roles import CODE, KEY_FILE, ExecutionRoles, execution_roles
from openmwaa.service.identity import Identities

_SPEC = EnvironmentSpec(
    name="alpha",
    arn="arn:aws:airflow:us-east-1:123456789012:environment/alpha",
    airflow_version="3.3.2",
    environment_class="mw1.small",
    tasks_per_worker=5,
    min_workers=1,
    max_workers=1,
    schedulers=1,
    min_webservers=1,
    max_webservers=1,
    source_bucket=BUCKET_X,
    dag_s3_path="dags",
)


@pytest.fixture(scope="module")
def aws() -> Iterator[FakeAws]:
    fake = start_moto()
    yield fake
    fake.stop()


def _only_aws(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The process's AWS configuration is ``env`` and nothing else."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def roles(aws: FakeAws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExecutionRoles:
    """Roles as ``openmwaa serve`` makes them with moto's key in its environment."""
    _only_aws(monkeypatch, aws.server_env())
    found = execution_roles(tmp_path, "0.0.0.0", 8787, "us-east-1")
    assert found is not None
    return found


def spec(aws: FakeAws, role: str = "reader-x", **changes: Any) -> EnvironmentSpec:
    return replace(_SPEC, execution_role_arn=aws.role(role), **changes)


def test_without_aws_credentials_of_its_own_the_server_has_no_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only_aws(
        monkeypatch, {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    )
    assert execution_roles(tmp_path, "127.0.0.1", 8787, "us-east-1") is None
    assert not (tmp_path / KEY_FILE).exists()


def test_the_bucket_is_read_with_the_role(aws: FakeAws, roles: ExecutionRoles) -> None:
    server_store = S3BucketStore()
    store = roles.store_for(spec(aws), server_store)
    assert store is not server_store
    assert [o.key for o in store.list_objects(BUCKET_X, "data/")] == ["data/allowed.txt"]
    assert store.get_object(BUCKET_X, "data/allowed.txt") == ALLOWED
    with pytest.raises(BucketError, match="AccessDenied"):
        store.get_object(BUCKET_Y, "data/other.txt")
    with pytest.raises(BucketError, match="AccessDenied"):
        store.list_objects(BUCKET_Y, "")
    # The role makes the difference: the server's own key reads Y.
    assert server_store.get_object(BUCKET_Y, "data/other.txt") == OTHER
    # The same store while the role stays (the DAG mirror is kept), another for another.
    assert roles.store_for(spec(aws), server_store) is store
    assert roles.store_for(spec(aws, name="beta"), server_store) is not store


def test_the_dag_mirror_reads_with_the_role_and_follows_it(
    aws: FakeAws, roles: ExecutionRoles, tmp_path: Path
) -> None:
    backend = LocalBackend(tmp_path / "data", store=S3BucketStore(), roles=roles, isolate=False)
    reader = spec(aws, dag_s3_path="data")
    mirror = mirror_for(backend.ctx, reader)
    assert mirror.store is roles.store_for(reader, backend.store)
    assert mirror.sync_once()
    assert (backend.layout("alpha").dags / "allowed.txt").read_bytes() == ALLOWED
    assert mirror_for(backend.ctx, reader) is mirror
    # Another role: another mirror, reading with it.
    twin = spec(aws, "reader-x-too", dag_s3_path="data")
    moved = mirror_for(backend.ctx, twin)
    assert moved is not mirror and moved.store is roles.store_for(twin, backend.store)
    # A role that cannot be assumed fails the step that wanted the mirror.
    with pytest.raises(RuntimeFailure) as failed:
        mirror_for(backend.ctx, spec(aws, "untrusting"))
    assert failed.value.code == CODE


def test_the_local_folder_store_has_no_roles(
    aws: FakeAws, roles: ExecutionRoles, tmp_path: Path
) -> None:
    local: BucketStore = LocalBucketStore(tmp_path / "buckets")
    assert roles.store_for(spec(aws), local) is local
    # An environment without a role (none to assume) reads with the server's credentials.
    server_store = S3BucketStore()
    assert roles.store_for(_SPEC, server_store) is server_store
    assert roles.environment(_SPEC) == {}


def test_a_role_that_cannot_be_assumed_fails_with_sts_words(
    aws: FakeAws, roles: ExecutionRoles
) -> None:
    untrusting = spec(aws, "untrusting")
    for call in (
        lambda: roles.environment(untrusting),
        lambda: roles.store_for(untrusting, S3BucketStore()),
    ):
        with pytest.raises(RuntimeFailure) as failed:
            call()
        assert failed.value.code == CODE
        assert aws.role("untrusting") in str(failed.value)
        assert "AccessDenied" in str(failed.value) and "not authorized" in str(failed.value)


def test_sessions_are_named_after_the_environment_cached_and_renewed(
    aws: FakeAws, roles: ExecutionRoles, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = roles.sessions.credentials("alpha", aws.role("reader-x"))
    assert roles.sessions.credentials("alpha", aws.role("reader-x")) is first
    assert "SecretAccessKey" not in repr(first) and first.secret_access_key not in repr(first)
    sts = roles.sessions.client("sts", first)
    assert sts.get_caller_identity()["Arn"].endswith(":assumed-role/reader-x/alpha")
    # Another environment has a session of its own; credentials near expiry are renewed.
    assert roles.sessions.credentials("beta", aws.role("reader-x")) is not first
    monkeypatch.setattr(sts_roles, "REFRESH_BEFORE", sts_roles.REFRESH_BEFORE * 4)
    renewed = roles.sessions.credentials("alpha", aws.role("reader-x"))
    assert renewed.access_key_id != first.access_key_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [("alpha", "alpha"), ("a", "a-"), ("x" * 80, "x" * 64), ("my_env-2", "my_env-2")],
)
def test_session_names_are_valid(name: str, expected: str) -> None:
    assert sts_roles.session_name(name) == expected


def test_the_credentials_url_is_on_loopback() -> None:
    from openmwaa.runtime.roles import loopback_base

    assert loopback_base("0.0.0.0", 1) == "http://127.0.0.1:1"
    assert loopback_base("::", 1) == "http://[::1]:1"
    assert loopback_base("127.0.0.5", 1) == "http://127.0.0.5:1"
    assert loopback_base("10.1.2.3", 1) is None


# -- the credential endpoint, on an API port in this process --------------------------------


class Api:
    def __init__(self, app: Any, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Api:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def api(
    aws: FakeAws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Api, ExecutionRoles]]:
    """The MWAA API with the credential route, environments ``alpha`` and ``beta`` (both
    with ``reader-x``) and ``gamma`` (another role)."""
    _only_aws(monkeypatch, aws.server_env())
    port = free_port()
    found = execution_roles(tmp_path, "127.0.0.1", port, "us-east-1")
    assert found is not None
    store = make_store(tmp_path)
    envs = make_environments(store)
    for name, role in (("alpha", "reader-x"), ("beta", "reader-x"), ("gamma", "other")):
        envs.create(name, {**REQUEST, "ExecutionRoleArn": aws.role(role)})
    # What a backend is given carries the role.
    assert envs.spec_of("alpha", envs.row("alpha").spec).execution_role_arn == aws.role("reader-x")
    app = MwaaApi(
        MwaaProvider(envs, None),  # type: ignore[arg-type]
        Identities(store, "123456789012"),
        "us-east-1",
        credential_routes=CredentialRoutes(envs, found),
    )
    with Api(app, port) as served:
        yield served, found
    store.close()


def _task_env(variables: dict[str, str], aws: FakeAws) -> dict[str, str]:
    """A process environment as a task's: no AWS key or config, only what the environment
    gives and (standing in for AWS's real endpoints) moto's URL."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": aws.url,
        **variables,
    }


_PROBE = """
import boto3, botocore.exceptions, json, sys
s3 = boto3.client("s3")
out = {"x": s3.get_object(Bucket=sys.argv[1], Key="data/allowed.txt")["Body"].read().decode()}
try:
    s3.get_object(Bucket=sys.argv[2], Key="data/other.txt")
    out["y"] = "read"
except botocore.exceptions.ClientError as exc:
    out["y"] = exc.response["Error"]["Code"]
out["arn"] = boto3.client("sts").get_caller_identity()["Arn"]
out["region"] = boto3.session.Session().region_name
print(json.dumps(out))
"""


def test_boto3_without_configuration_acts_with_the_role(
    aws: FakeAws, api: tuple[Api, ExecutionRoles]
) -> None:
    served, roles = api
    variables = dict(roles.environment(spec(aws)))
    assert variables["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == (
        f"{served.url}/openmwaa/credentials/alpha"
    )
    assert variables["AWS_DEFAULT_REGION"] == "us-east-1"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, BUCKET_X, BUCKET_Y],
        env=_task_env(variables, aws),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "x": ALLOWED.decode(),
        "y": "AccessDenied",
        "arn": "arn:aws:sts::123456789012:assumed-role/reader-x/alpha",
        "region": "us-east-1",
    }


def test_the_endpoint_answers_only_the_environments_own_token(
    aws: FakeAws, api: tuple[Api, ExecutionRoles]
) -> None:
    served, roles = api
    alpha = roles.environment(spec(aws))
    beta = roles.environment(spec(aws, name="beta"))
    url = alpha["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    token = alpha["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    assert beta["AWS_CONTAINER_AUTHORIZATION_TOKEN"] != token  # same role, other environment
    # The token stays across restarts (made from the data dir's key) and changes with the role.
    assert roles.token("alpha", aws.role("reader-x")) == token
    assert roles.token("alpha", aws.role("other")) != token

    good = httpx.get(url, headers={"Authorization": token})
    assert good.status_code == 200
    document = good.json()
    assert set(document) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert document["Expiration"].endswith("Z")
    assert good.headers["cache-control"] == "no-store"

    refused = [
        httpx.get(url),
        httpx.get(url, headers={"Authorization": "wrong"}),
        httpx.get(url, headers={"Authorization": beta["AWS_CONTAINER_AUTHORIZATION_TOKEN"]}),
        httpx.get(url.replace("alpha", "nosuchenv"), headers={"Authorization": token}),
        httpx.get(url.replace("alpha", "beta"), headers={"Authorization": token}),
        httpx.get(url + "/x", headers={"Authorization": token}),
        # gamma's token for its own role is refused once it names another role
        httpx.get(
            url.replace("alpha", "gamma"),
            headers={"Authorization": roles.token("gamma", aws.role("reader-x"))},
        ),
    ]
    for resp in refused:
        assert (resp.status_code, resp.json()) == (403, {"message": "Forbidden"})
        assert "alpha" not in resp.text and "nosuchenv" not in resp.text
    assert httpx.post(url, headers={"Authorization": token}).status_code == 405
