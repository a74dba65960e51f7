"""In-process publish/subscribe of provisional results, for the scanner-room stream.

Thread-safe; publishing never blocks on a subscriber. Each subscriber has a bounded buffer keyed by
study: a newer state of a study replaces its unsent older state (a panel only needs the latest), and
when more studies than the bound wait, the oldest is dropped and counted. So a stalled browser costs a
bounded amount of memory and no time of the publisher (the live worker; ingest never publishes at all).

Async consumers (the SSE endpoint) register their event loop: the publisher wakes them with
`call_soon_threadsafe`, which only writes to the loop's wake-up pipe.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

Event = dict[str, Any]


class Subscription:
    def __init__(self, broker: Broker, maxsize: int, loop: asyncio.AbstractEventLoop | None) -> None:
        self._broker = broker
        self._maxsize = maxsize
        self._pending: OrderedDict[str, Event] = OrderedDict()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = loop
        self._async_ready = asyncio.Event() if loop is not None else None
        self.dropped = 0
        self.closed = False

    def _offer(self, key: str, event: Event) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._pending[key] = event
            while len(self._pending) > self._maxsize:
                self._pending.popitem(last=False)
                self.dropped += 1
        self._ready.set()
        if self._loop is not None and self._async_ready is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_ready.set)
            except RuntimeError:  # the loop closed: the client is gone
                self.close()

    def drain(self) -> list[Event]:
        with self._lock:
            events = list(self._pending.values())
            self._pending.clear()
            self._ready.clear()
            if self._async_ready is not None:
                self._async_ready.clear()
        return events

    def get(self, timeout: float) -> list[Event]:
        """Blocking wait (thread consumers): the pending events, or [] after `timeout`."""
        self._ready.wait(timeout)
        return self.drain()

    async def wait(self, timeout: float) -> list[Event]:
        """Async wait (on the loop given at subscribe): the pending events, or [] after `timeout`."""
        assert self._async_ready is not None, "subscribe(loop=...) for async use"
        if not self._pending:
            try:
                await asyncio.wait_for(self._async_ready.wait(), timeout)
            except TimeoutError:
                return []
        return self.drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._broker._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Broker:
    """Latest event per key (for a page's first paint) plus fan-out to subscribers."""

    def __init__(self, maxsize: int = 64) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._latest: dict[str, Event] = {}

    def subscribe(self, loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        sub = Subscription(self, self.maxsize, loop)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, key: str, event: Event) -> None:
        with self._lock:
            self._latest[key] = event
            subs = list(self._subs)
        for sub in subs:
            sub._offer(key, event)

    def forget(self, keys: set[str]) -> None:
        """Drop keys that left the live window from the snapshot."""
        with self._lock:
            for key in keys:
                self._latest.pop(key, None)

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self._latest.values())

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)
