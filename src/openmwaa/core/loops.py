"""One periodic loop for every background job: interval, backoff on failure, clean stop."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicLoop:
    """Runs ``work`` every ``interval`` seconds in a daemon thread.

    A pass that raises is logged (once per distinct message) and the next waits
    longer, doubling up to ``max_backoff``; a pass that succeeds resets the wait.
    ``wake()`` starts the next pass at once; ``stop()`` returns once the current
    pass has finished (or ``timeout`` has passed).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], None],
        interval: float,
        *,
        max_backoff: float = 60.0,
        run_first: bool = True,
        on_error: Callable[[Exception | None], None] | None = None,
    ) -> None:
        self.name = name
        self._work = work
        self.interval = interval
        self._max_backoff = max(max_backoff, interval)
        self._run_first = run_first
        self._on_error = on_error
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        """Consecutive failed passes (0 after a good one)."""
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def next_delay(self) -> float:
        """The wait before the next pass: the interval, or a backoff after failures."""
        if not self.failures:
            return self.interval
        backoff = min(self._max_backoff, self.interval * 2 ** min(self.failures, 16))
        return backoff * random.uniform(0.8, 1.0)

    def run_once(self) -> bool:
        """One pass, with the loop's error handling; True when it succeeded."""
        try:
            self._work()
        except Exception as exc:  # the loop must outlive any one bad pass
            self.failures += 1
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.exception("%s: pass failed (retrying with backoff)", self.name)
            self.last_error = message
            if self._on_error is not None:
                self._on_error(exc)
            return False
        if self.failures and self._on_error is not None:
            self._on_error(None)
        self.failures = 0
        self.last_error = None
        return True

    def _run(self) -> None:
        if not self._run_first:
            self._wait(self.interval)
        while not self._stop.is_set():
            self.run_once()
            self._wait(self.next_delay())

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()
