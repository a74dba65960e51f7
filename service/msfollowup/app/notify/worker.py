"""The notification sender: claims due deliveries, sends them, retries with exponential backoff.

Same mechanism as the SR outbox: claim = `UPDATE ... SET state='sending' WHERE id=? AND state='pending'`
(one winner, also across nodes sharing the database); success -> delivered, never sent again; failure ->
pending with next_attempt_at = now + backoff (persisted, so the backoff survives a restart). A node
that dies mid-send leaves a claim that is given back after a lease (at-least-once in that one case; the
X-Msfollowup-Delivery header lets a receiver drop the repeat).

Also watches for two events nothing else reports: report deliveries failing for good (delivery.failed)
and dead parts of the node (node.unhealthy, from Service.dead_parts).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from msfollowup.site.config import Config
from msfollowup.db import Database, utcnow
from msfollowup.app.notify import emit
from msfollowup.db.notifications import ABANDONED, DELIVERED, PENDING, SENDING, NotificationDelivery
from msfollowup.app.notify.send import SendError, send

log = logging.getLogger(__name__)

BATCH = 16
LEASE_SECONDS = 600.0  # longer than any send (timeouts are at most 300 s)
WATCH_SECONDS = 30.0  # how often delivery.failed is looked for
ERROR_MAX = 500


def backoff_seconds(cfg: Config, attempts: int) -> float:
    """Delay after `attempts` failed tries: initial * 2^(n-1), capped."""
    exponent = min(max(attempts - 1, 0), 40)
    return float(min(cfg.notify.retry_initial_seconds * (2.0**exponent), cfg.notify.retry_max_seconds))


def list_deliveries(db: Database, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    with db.session() as s:
        q = select(NotificationDelivery).order_by(NotificationDelivery.id.desc()).limit(limit)
        if state:
            q = q.where(NotificationDelivery.state == state)
        return [d.to_json() for d in s.scalars(q)]


class NotifyWorker:
    def __init__(self, db: Database, cfg: Config, health: Callable[[], list[str]] | None = None,
                 poll_seconds: float | None = None) -> None:
        self.db = db
        self.cfg = cfg
        self.health = health
        self.poll_seconds = poll_seconds or cfg.notify.poll_seconds
        self.worker_id = f"notify-{uuid.uuid4().hex[:16]}"
        self._destinations = {d.key: d for d in cfg.notify.destinations}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_watch: dt.datetime | None = None
        self._dead: list[str] = []

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="msfollowup-notify", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.watch()
                self.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup; the next poll retries
                log.exception("notification pass failed")
            self._stop.wait(self.poll_seconds)

    # --- events nobody else emits -----------------------------------------------------------------

    def watch(self, now: dt.datetime | None = None) -> None:
        now = now or utcnow()
        if self.health is not None:
            dead = [p for p in self.health() if p != "notify"]
            if dead and dead != self._dead:
                emit.on_unhealthy(self.db, self.cfg, dead, now)
            self._dead = dead
        if self._last_watch is None or (now - self._last_watch).total_seconds() >= WATCH_SECONDS:
            self._last_watch = now
            emit.report_deliveries_failed(self.db, self.cfg)
            self._release_stale(now)

    # --- sending ----------------------------------------------------------------------------------

    def run_once(self, now: dt.datetime | None = None) -> int:
        now = now or utcnow()
        with self.db.session() as s:
            due = list(s.scalars(
                select(NotificationDelivery.id)
                .where(NotificationDelivery.state == PENDING, NotificationDelivery.next_attempt_at <= now)
                .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id).limit(BATCH)))
        attempted = 0
        for job_id in due:
            if self._stop.is_set():
                break
            job = self._claim(job_id, now)
            if job is not None:
                attempted += 1
                self._attempt(job)
        return attempted

    def _release_stale(self, now: dt.datetime) -> None:
        cutoff = now - dt.timedelta(seconds=LEASE_SECONDS)
        with self.db.session() as s:
            s.execute(update(NotificationDelivery)
                      .where(NotificationDelivery.state == SENDING, NotificationDelivery.claimed_at < cutoff)
                      .values(state=PENDING, claimed_by=None, last_error="claim expired (node stopped while sending)"))

    def _claim(self, job_id: int, now: dt.datetime) -> NotificationDelivery | None:
        with self.db.session() as s:
            res = s.execute(
                update(NotificationDelivery)
                .where(NotificationDelivery.id == job_id, NotificationDelivery.state == PENDING,
                       NotificationDelivery.next_attempt_at <= now)
                .values(state=SENDING, claimed_by=self.worker_id, claimed_at=now,
                        attempts=NotificationDelivery.attempts + 1)
                .execution_options(synchronize_session=False))
            if cast(CursorResult[Any], res).rowcount != 1:
                return None
            job = s.get(NotificationDelivery, job_id)
            if job is not None:
                s.expunge(job)
            return job

    def _finish(self, job: NotificationDelivery, **values: Any) -> None:
        with self.db.session() as s:
            s.execute(update(NotificationDelivery)
                      .where(NotificationDelivery.id == job.id, NotificationDelivery.claimed_by == self.worker_id,
                             NotificationDelivery.state == SENDING)
                      .values(claimed_by=None, **values)
                      .execution_options(synchronize_session=False))

    def _attempt(self, job: NotificationDelivery) -> None:
        dest = self._destinations.get(job.destination)
        if dest is None:
            self._finish(job, state=ABANDONED, last_error="destination no longer configured")
            log.warning("notification %d abandoned: destination %s no longer configured", job.id, job.destination)
            return
        try:
            send(dest, json.loads(job.payload_json), job.id)
        except SendError as exc:
            delay = backoff_seconds(self.cfg, job.attempts)
            self._finish(job, state=PENDING, last_error=str(exc)[:ERROR_MAX],
                         next_attempt_at=utcnow() + dt.timedelta(seconds=delay))
            log.warning("notification %d (%s) failed, attempt %d, retry in %.0f s: %s", job.id, job.event,
                        job.attempts, delay, exc)
            return
        self._finish(job, state=DELIVERED, delivered_at=utcnow(), last_error=None)
        log.info("notification %d (%s) delivered to %s (attempt %d)", job.id, job.event, job.destination,
                 job.attempts)
