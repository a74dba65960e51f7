"""A burst of stop signals runs the stop action once and never deadlocks (runtime/signals.py).

The real case is tests/test_ingest_workers.py::test_the_worker_dies_with_a_killed_service: a kill -9
of the main process delivers the worker's parent-death SIGTERM several times; before this guard about
one run in six left the worker hanging in nested Event.set() calls.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from msfollowup.runtime import signals


def test_a_signal_arriving_inside_the_handler_does_not_run_the_action_again() -> None:
    calls: list[signal.Signals] = []
    stop = threading.Event()

    def action(signum: signal.Signals) -> None:
        calls.append(signum)
        os.kill(os.getpid(), signal.SIGUSR1)  # the next one of the burst, delivered inside this handler
        time.sleep(0.01)  # the nested handler runs here, at the next bytecode boundary
        stop.set()

    previous = signal.getsignal(signal.SIGUSR1)
    try:
        signals.on_first([signal.SIGUSR1], action)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.wait(5)
        os.kill(os.getpid(), signal.SIGUSR1)  # and any later one is ignored too
        time.sleep(0.05)
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
