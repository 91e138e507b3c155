"""The server's last resort when stopping hangs: a hard deadline started by the signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import uvicorn

from openmwaa.server import DEADLINE_EXIT_CODE, ShutdownDeadline, _Server


def test_a_stop_that_hangs_ends_at_the_deadline() -> None:
    code = (
        "import threading, time\n"
        "from openmwaa.server import ShutdownDeadline\n"
        "ShutdownDeadline(1.0).start()\n"
        "threading.Event().wait(60)  # a stop step that never returns\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == DEADLINE_EXIT_CODE, done.stderr
    assert time.monotonic() - started < 15
    assert "stopping took more than 1 s" in done.stderr


def test_a_stop_that_finishes_in_time_cancels_the_deadline() -> None:
    code = (
        "import time\n"
        "from openmwaa.server import ShutdownDeadline\n"
        "d = ShutdownDeadline(0.5)\n"
        "d.start(); d.cancel(); time.sleep(1.0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.returncode == 0


def test_the_stop_signal_starts_the_deadline() -> None:
    started: list[bool] = []

    class Recording(ShutdownDeadline):
        def start(self) -> None:
            started.append(True)

    server = _Server(uvicorn.Config(app=None))  # type: ignore[arg-type]
    server.deadline = Recording()
    server.handle_exit(signal.SIGTERM, None)
    assert started and server.should_exit
