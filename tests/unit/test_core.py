"""core/files.py (durable, atomic state files that are never silently replaced) and
core/loops.py (the periodic loop: interval, backoff, wake, clean stop)."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from openmwaa.core import files
from openmwaa.core.files import StateFileError, read_json, write_atomic, write_json
from openmwaa.core.loops import PeriodicLoop

# -- files ------------------------------------------------------------------------------------


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on, in order."""
    calls: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(files.os, "fsync", record)
    return calls


def test_durable_write_syncs_the_file_then_its_folder(tmp_path: Path, fsynced: list[str]) -> None:
    path = tmp_path / "state" / "secrets.json"
    write_atomic(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert len(fsynced) == 2
    assert Path(fsynced[0]).parent == path.parent and fsynced[0] != str(path), "the temp file"
    assert fsynced[1] == str(path.parent), "the rename is made durable"


def test_bulk_write_skips_fsync(tmp_path: Path, fsynced: list[str]) -> None:
    write_atomic(tmp_path / "dag.py", b"x = 1\n", durable=False)
    assert fsynced == []


def test_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o002)
    try:
        write_json(tmp_path / "secrets.json", {"k": "v"}, 0o600)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ports.json"
    write_json(path, {"old": 1})

    def full_disk(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError):
        write_json(path, {"new": 2})
    assert read_json(path) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ports.json"]


def test_json_round_trip(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": [1, 2], "a": None})
    assert read_json(tmp_path / "a.json") == {"a": None, "b": [1, 2]}
    write_json(tmp_path / "l.json", [1])
    assert read_json(tmp_path / "l.json", expect=list) == [1]


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [('{"fernet_key": "abc', "is not valid JSON"), ("", "is not valid JSON"), ("[1]", "a list")],
    ids=["truncated", "empty", "wrong type"],
)
def test_unusable_file_is_an_error_naming_it(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(content)
    with pytest.raises(StateFileError) as caught:
        read_json(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value) and problem in str(caught.value)
    assert path.read_text() == content


def test_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.mkdir()  # reading it fails with an OSError other than "not found"
    with pytest.raises(StateFileError, match="cannot be read") as caught:
        read_json(path)
    assert str(path) in str(caught.value)


# -- loops ------------------------------------------------------------------------------------


def failing(times: int) -> Any:
    """Work that raises ``times`` times, then succeeds."""
    state = {"left": times}

    def work() -> None:
        if state["left"]:
            state["left"] -= 1
            raise RuntimeError("broker unreachable")

    return work


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    errors: list[Exception | None] = []
    loop = PeriodicLoop("t", failing(8), 1.0, max_backoff=20.0, on_error=errors.append)
    assert loop.next_delay() == 1.0
    delays = []
    for _ in range(8):
        assert loop.run_once() is False
        delays.append(loop.next_delay())
    for failures, delay in enumerate(delays, start=1):
        wanted = min(20.0, 2.0**failures)
        assert 0.8 * wanted <= delay <= wanted, (failures, delay)
    assert delays[-1] <= 20.0 and loop.failures == 8
    assert loop.last_error == "RuntimeError: broker unreachable"
    assert loop.run_once() is True
    assert loop.failures == 0 and loop.last_error is None and loop.next_delay() == 1.0
    assert all(isinstance(e, RuntimeError) for e in errors[:8]) and errors[8:] == [None]


def test_a_repeated_error_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    loop = PeriodicLoop("t", failing(3), 1.0)
    with caplog.at_level(logging.ERROR, logger="openmwaa.core.loops"):
        for _ in range(3):
            loop.run_once()
    assert len(caplog.records) == 1


def test_wake_runs_the_next_pass_at_once_and_stop_is_clean() -> None:
    passes: list[float] = []
    in_pass = threading.Event()
    release = threading.Event()

    def work() -> None:
        passes.append(time.monotonic())
        if len(passes) == 2:
            in_pass.set()
            release.wait(5)

    loop = PeriodicLoop("t", work, 60.0)
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while not passes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(passes) == 1, "run_first: a pass at start"
        loop.wake()
        assert in_pass.wait(5), "wake() does not wait for the 60 s interval"

        # stop() waits for the pass under way to finish, and no pass follows it.
        stopper = threading.Thread(target=loop.stop)
        stopper.start()
        time.sleep(0.2)
        assert stopper.is_alive() and loop.stopping
        release.set()
        stopper.join(5)
        assert not stopper.is_alive() and not loop.running
        count = len(passes)
        time.sleep(0.2)
        assert len(passes) == count == 2
    finally:
        release.set()
        loop.stop()


def test_without_run_first_the_first_pass_waits_an_interval() -> None:
    passes: list[float] = []
    loop = PeriodicLoop("t", lambda: passes.append(time.monotonic()), 0.3, run_first=False)
    started = time.monotonic()
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while not passes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert passes and passes[0] - started >= 0.25
    finally:
        loop.stop()
    assert not loop.running


def test_a_failing_pass_does_not_end_the_loop() -> None:
    done = threading.Event()
    work = failing(2)

    def counted() -> None:
        work()
        done.set()

    loop = PeriodicLoop("t", counted, 0.01, max_backoff=0.05)
    loop.start()
    try:
        assert done.wait(5)
        assert loop.running
    finally:
        loop.stop()
