"""Bucket stores (local folders, S3 through moto's server) and the DAG mirror."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from openmwaa.buckets.base import BucketError, ObjectNotFound
from openmwaa.buckets.local import LocalBucketStore
from openmwaa.buckets.s3 import S3BucketStore
from openmwaa.buckets.sync import DagMirror


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket="versioned")
    client.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    yield client
    server.stop()


def test_local_store_lists_reads_and_checks_versions(tmp_path: Path) -> None:
    store = LocalBucketStore(tmp_path)
    (tmp_path / "b" / "dags" / "sub").mkdir(parents=True)
    (tmp_path / "b" / "dags" / "a.py").write_text("A")
    (tmp_path / "b" / "dags" / "sub" / "b.py").write_text("B")
    (tmp_path / "b" / "dags" / ".a.py.swp").write_text("editor")
    (tmp_path / "b" / "dags" / ".airflowignore").write_text("skipped_*")
    (tmp_path / "b" / "dagsother.py").write_text("not under dags/")
    keys = sorted(o.key for o in store.list_objects("b", "dags/"))
    assert keys == ["dags/.airflowignore", "dags/a.py", "dags/sub/b.py"]
    assert store.get_object("b", "dags/a.py") == b"A"
    digest = hashlib.sha256(b"A").hexdigest()
    assert store.version_of("b", "dags/a.py") == digest
    assert store.get_object("b", "dags/a.py", digest[:8]) == b"A"
    with pytest.raises(ObjectNotFound):
        store.get_object("b", "dags/a.py", "deadbeefdeadbeef")
    with pytest.raises(ObjectNotFound):
        store.get_object("b", "../outside")
    with pytest.raises(BucketError):
        store.list_objects("missing", "dags/")


def test_mirror_copies_subfolders_and_propagates_deletions(tmp_path: Path) -> None:
    store = LocalBucketStore(tmp_path / "buckets")
    src = tmp_path / "buckets" / "b" / "dags"
    (src / "team" / "deep").mkdir(parents=True)
    (src / "one.py").write_text("1")
    (src / "team" / "deep" / "two.py").write_text("2")
    target = tmp_path / "dags"
    mirror = DagMirror(store, "b", "dags", target, tmp_path / "manifest.json")
    assert mirror.sync_once()
    assert (target / "team" / "deep" / "two.py").read_text() == "2"
    assert not mirror.sync_once()  # nothing changed
    (target / "__pycache__").mkdir()
    (target / "__pycache__" / "one.cpython-311.pyc").write_bytes(b"x")
    (src / "one.py").write_text("1 changed")
    os.utime(src / "one.py", ns=(1, 1))  # an edit that keeps the size must still be seen
    (src / "team" / "deep" / "two.py").unlink()
    assert mirror.sync_once()
    assert (target / "one.py").read_text() == "1 changed"
    assert not (target / "team").exists()  # emptied folders go too
    assert (target / "__pycache__").exists()  # Airflow's own files are left alone
    assert not [p for p in target.rglob("*.tmp")]
    # A restarted control plane trusts the manifest instead of fetching everything.
    again = DagMirror(store, "b", "dags", target, tmp_path / "manifest.json")
    assert not again.sync_once()


def test_mirror_thread_is_alive_until_stopped_and_reports_failures(tmp_path: Path) -> None:
    """``alive`` is what health reads; a failing pass is recorded and retried, not fatal."""
    from live_server import wait_for

    store = LocalBucketStore(tmp_path / "buckets")
    target = tmp_path / "dags"
    mirror = DagMirror(store, "gone", "dags", target, tmp_path / "m.json", interval=0.05)
    assert not mirror.alive, "not started yet"
    mirror.start()
    try:
        assert mirror.alive
        wait_for(lambda: mirror.last_error, 10, "the missing bucket to be reported")
        assert "gone" in str(mirror.last_error)
        (tmp_path / "buckets" / "gone" / "dags").mkdir(parents=True)
        (tmp_path / "buckets" / "gone" / "dags" / "a.py").write_text("A")
        wait_for(lambda: (target / "a.py").is_file(), 30, "the mirror to recover")
        wait_for(lambda: mirror.last_error is None, 10, "the error to clear")
        assert mirror.alive
    finally:
        mirror.stop()
    assert not mirror.alive, "a stopped mirror is not alive"


def test_s3_store_honours_object_versions(s3: Any) -> None:
    store = S3BucketStore(client=s3)
    v1 = s3.put_object(Bucket="versioned", Key="plugins.zip", Body=b"first")["VersionId"]
    v2 = s3.put_object(Bucket="versioned", Key="plugins.zip", Body=b"second")["VersionId"]
    assert v1 != v2
    assert store.get_object("versioned", "plugins.zip") == b"second"
    assert store.get_object("versioned", "plugins.zip", v1) == b"first"
    assert store.version_of("versioned", "plugins.zip") == v2
    with pytest.raises(ObjectNotFound):
        store.get_object("versioned", "missing.txt")
    with pytest.raises(BucketError):
        store.list_objects("no-such-bucket", "dags/")


def test_mirror_from_s3(s3: Any, tmp_path: Path) -> None:
    store = S3BucketStore(client=s3)
    s3.put_object(Bucket="versioned", Key="env/dags/a.py", Body=b"a")
    s3.put_object(Bucket="versioned", Key="env/dags/nested/b.py", Body=b"b")
    s3.put_object(Bucket="versioned", Key="env/dags/nested/", Body=b"")  # console "folder"
    mirror = DagMirror(store, "versioned", "env/dags/", tmp_path / "dags", tmp_path / "m.json")
    assert mirror.sync_once()
    assert (tmp_path / "dags" / "nested" / "b.py").read_bytes() == b"b"
    s3.delete_object(Bucket="versioned", Key="env/dags/a.py")
    assert mirror.sync_once()
    assert not (tmp_path / "dags" / "a.py").exists()


def test_backend_fetches_the_pinned_s3_version(s3: Any, tmp_path: Path, install: Path) -> None:
    """The startup script's pinned (failing) version runs, not the latest (passing) one."""
    from runtime_support import make_spec

    from openmwaa.runtime.base import RuntimeFailure
    from openmwaa.runtime.local import LocalBackend

    s3.put_object(Bucket="versioned", Key="dags/.keep", Body=b"")
    pinned = s3.put_object(Bucket="versioned", Key="startup.sh", Body=b"exit 7\n")["VersionId"]
    s3.put_object(Bucket="versioned", Key="startup.sh", Body=b"exit 0\n")
    data_dir = tmp_path / "data"
    runtimes = data_dir / "runtimes"
    runtimes.mkdir(parents=True)
    (runtimes / install.name).symlink_to(install)  # share the session's install
    backend = LocalBackend(data_dir, store=S3BucketStore(client=s3))
    spec = make_spec(
        "s3env",
        bucket="versioned",
        startup_script_s3_path="startup.sh",
        startup_script_s3_object_version=pinned,
    )
    try:
        backend.provision(spec, print)
        with pytest.raises(RuntimeFailure) as failure:
            backend.start(spec, print)
        assert failure.value.code == "STARTUP_SCRIPT_FAILED"
        assert "code 7" in str(failure.value)
    finally:
        backend.destroy(spec, print)
        backend.shutdown()
