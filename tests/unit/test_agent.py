"""``openmwaa worker``'s report loop: backs off while the control plane is away, stops cleanly."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from live_server import free_port, wait_for

from openmwaa.agent import ControlPlane, WorkerAgent
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
