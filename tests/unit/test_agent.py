"""``openmwaa worker``: its report loop backs off while the control plane is away and stops
cleanly, and it sends its credentials over plain HTTP only to loopback or when told."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from live_server import free_port, wait_for

from openmwaa.agent import ControlPlane, InsecureServer, WorkerAgent, check_server_url
from openmwaa.runtime import installs


def test_report_loop_backs_off_and_stops_at_once(tmp_path: Path) -> None:
    nobody = ControlPlane(f"http://127.0.0.1:{free_port()}", "AKIDEXAMPLE", "secret", "us-east-1")
    agent = WorkerAgent(nobody, "etl", "host-a", 2, tmp_path, lambda _line: None)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: agent.loop.failures >= 2, 30, "two failed reports")
        assert agent.loop.next_delay() > agent.loop.interval, "retries back off"
        assert agent.loop.last_error and "ConnectError" in agent.loop.last_error
    finally:
        started = time.monotonic()
        stop.set()
        runner.join(30)
        installs.resume()  # run() cancels helpers process-wide on its way out
    assert not runner.is_alive()
    assert time.monotonic() - started < 10
    assert not agent.loop.running


@pytest.mark.parametrize(
    "url",
    [
        "https://cp.example.com:8787",
        "https://10.0.0.5",
        "http://127.0.0.1:8787",
        "http://127.5.6.7:1",
        "http://localhost:8787/",
        "http://[::1]:8787",
    ],
)
def test_tls_or_loopback_servers_are_accepted(url: str) -> None:
    check_server_url(url)


@pytest.mark.parametrize(
    "url", ["http://cp.example.com:8787", "http://10.231.0.1:8787", "http://[fe80::1]:1"]
)
def test_plain_http_to_another_host_needs_insecure(url: str) -> None:
    with pytest.raises(InsecureServer, match="--insecure") as refused:
        check_server_url(url)
    assert "TLS" in str(refused.value) and "credentials" in str(refused.value)
    check_server_url(url, insecure=True)


@pytest.mark.parametrize("url", ["cp.example.com:8787", "ftp://cp/", "http://"])
def test_what_is_no_server_url_is_refused(url: str) -> None:
    for insecure in (False, True):
        with pytest.raises(InsecureServer, match="https://"):
            check_server_url(url, insecure=insecure)


def _worker_command(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"})
    argv = [sys.executable, "-m", "openmwaa", "worker", "--environment", "etl"]
    argv += ["--data-dir", str(tmp_path), "--server", *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def test_the_worker_command_refuses_plain_http_to_another_host(tmp_path: Path) -> None:
    refused = _worker_command(tmp_path, "http://10.231.0.1:1")
    assert refused.returncode == 2
    assert "--insecure" in refused.stderr and "TLS" in refused.stderr
    assert not (tmp_path / "workers").exists()  # refused before anything was done


def test_insecure_lets_the_worker_command_use_plain_http(tmp_path: Path) -> None:
    # 10.231.0.1 is a private address nobody here answers: the agent starts and retries.
    output = tmp_path / "output"
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openmwaa", "worker", "--environment", "etl", "--insecure",
             "--data-dir", str(tmp_path), "--server", "http://10.231.0.1:1"],
            env={**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s"},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: proc.poll() is not None or "worker host" in output.read_text(), 30, "start"
        )
        assert proc.poll() is None, output.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    assert "Not connecting" not in output.read_text()
