"""Stop signals handled once, without a deadlock when they arrive in a burst.

A Python signal handler runs in the main thread between two bytecodes, possibly inside another run
of itself. `threading.Event.set` takes the event's (non-reentrant) lock, so a second signal arriving
while the first handler is inside `set()` ran a second `set()` that waited for the first one's lock
forever. That burst is not hypothetical: the parent-death signal an ingest process asks for
(PR_SET_PDEATHSIG) is sent again each time the kernel moves it to another thread of its dying parent,
so a kill -9 of the main process delivered up to four SIGTERMs to the worker, and about one run in six
of tests/test_ingest_workers.py left the worker hanging (py-spy: four nested handlers, the innermost
waiting in Condition.__enter__).

The guard below runs `action` for the first signal only. Its check and mark take no lock: a handler
nested before the mark runs `action` to its end before the outer one continues, so no lock is ever
waited for by the thread holding it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from types import FrameType


def on_first(signums: Iterable[signal.Signals], action: Callable[[signal.Signals], None]) -> None:
    """Install a handler for `signums` that calls `action(signum)` for the first one received only."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:
            return
        received.append(signum)
        action(signal.Signals(signum))

    for signum in signums:
        signal.signal(signum, handler)
