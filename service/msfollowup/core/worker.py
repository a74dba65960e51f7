"""A background thread that runs one callable every `poll_seconds`, or at once when woken.

Stages after ingest (completion sweep, pipeline passes) are driven by the database, so a pass that
fails is simply retried at the next poll; the failure is logged, never swallowed silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PollingWorker:
    def __init__(self, name: str, poll_seconds: float, tick: Callable[[], object]) -> None:
        self.name = name
        self.poll_seconds = poll_seconds
        self.tick = tick
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self, *_: object) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - retried at the next poll (the database may come back)
                log.exception("%s pass failed", self.name)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
