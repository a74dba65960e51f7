"""Delivery of report SRs to the configured destinations (C-STORE SCU), as persistent jobs.

One row per (report, destination) in `report_deliveries`. A job is claimed with an atomic
`UPDATE ... WHERE state = 'pending'` (portable, so several nodes may share the database), sent, and
either marked delivered (Success, or a Warning status: the destination kept the object) or given back
as pending with an exponential backoff. A delivered job is never sent again. A node that dies while
sending leaves its claim behind; after a lease the claim is given back (at-least-once delivery: the
destination may receive the same SOP Instance UID twice in that one case, which a PACS treats as a
duplicate of the same object).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_P_ABORT
from sqlalchemy import select, update

from msfollowup.db import audit
from msfollowup.site.config import Config
from msfollowup.core import dimse
from msfollowup.db import Database, utcnow
from msfollowup.core.worker import PollingWorker
from msfollowup.db.deliveries import DELIVERED, PENDING, SENDING, Delivery

log = logging.getLogger(__name__)

BATCH = 16  # jobs looked at per run_once; the rest wait for the next second
STALE_CHECK_SECONDS = 30.0  # how often to look for claims of dead nodes (a write; not every poll)
ERROR_MAX = 500


@dataclass(frozen=True)
class DeliveryInfo:
    """One job as shown by `msfollowup outbox`."""

    id: int
    study_uid: str
    version: int
    sr_sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    last_error: str | None
    last_status: int | None
    next_attempt_at: dt.datetime | None
    delivered_at: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "id": self.id,
            "study_instance_uid": self.study_uid,
            "version": self.version,
            "sr_sop_instance_uid": self.sr_sop_instance_uid,
            "destination": self.destination,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_status": f"0x{self.last_status:04X}" if self.last_status is not None else None,
            "next_attempt_at": iso(self.next_attempt_at) if self.state != DELIVERED else None,
            "delivered_at": iso(self.delivered_at),
        }


def list_deliveries(db: Database, study_uid: str | None = None) -> list[DeliveryInfo]:
    with db.session() as s:
        q = select(Delivery).order_by(Delivery.id)
        if study_uid:
            q = q.where(Delivery.study_uid == study_uid)
        return [
            DeliveryInfo(
                id=d.id,
                study_uid=d.study_uid,
                version=d.version,
                sr_sop_instance_uid=d.sr_sop_instance_uid,
                destination=d.destination,
                state=d.state,
                attempts=d.attempts,
                last_error=d.last_error,
                last_status=d.last_status,
                next_attempt_at=d.next_attempt_at,
                delivered_at=d.delivered_at,
            )
            for d in s.scalars(q)
        ]


def backoff_seconds(cfg: Config, attempts: int) -> float:
    """Delay before the next try after `attempts` failed tries: initial * 2^(n-1), capped."""
    initial = cfg.report.retry_initial_seconds
    exponent = min(max(attempts - 1, 0), 40)  # 2**40 * anything > any sane cap; avoids float overflow
    return float(min(initial * (2.0**exponent), cfg.report.retry_max_seconds))


def is_delivered_status(status: int) -> bool:
    """Success, or a Warning (0xB000 range, 0x0001, 0x0107, 0x0116): the destination stored it."""
    return dimse.is_stored(status)


class SendError(Exception):
    """A C-STORE that did not end in a stored object; the message says why (no patient data)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _abort(assoc: Association) -> None:
    """Abort, and wake a requestor still waiting for the A-ASSOCIATE answer.

    pynetdicom's abort() does not wake that wait (it would last the whole ACSE timeout), so an
    A-P-ABORT is handed to the waiting queue, as the DUL itself does when the peer vanishes.
    """
    assoc.abort()
    wake = A_P_ABORT()
    wake.provider_reason = 0x00
    queue = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    if queue is not None:
        queue.put(wake)


class Outbox:
    """Sends pending report deliveries; `run_once` for tests and tools, `start`/`stop` for the node."""

    def __init__(self, db: Database, cfg: Config, poll_seconds: float = 1.0) -> None:
        self.db = db
        self.cfg = cfg
        self.poll_seconds = poll_seconds
        self.worker_id = f"outbox-{uuid.uuid4().hex[:16]}"
        self._stop = threading.Event()
        self._last_stale_check: dt.datetime | None = None
        self._worker: PollingWorker | None = None
        self._assoc_lock = threading.Lock()
        self._assoc: Association | None = None  # the send in progress, so stop() can abort it
        node = cfg.node
        # A claim older than this belongs to a node that died mid-send: every timeout of one
        # association has passed by then, twice.
        self.lease_seconds = 2.0 * (node.acse_timeout + node.network_timeout + node.dimse_timeout)

    # --- the loop -------------------------------------------------------------------------------

    def run_once(self, now: dt.datetime | None = None) -> int:
        """Attempt every due delivery (up to a batch); returns the number of deliveries attempted."""
        now = now or utcnow()
        last = self._last_stale_check
        if last is None or (now - last).total_seconds() >= STALE_CHECK_SECONDS:
            self._release_stale_claims(now)
            self._last_stale_check = now
        with self.db.session() as s:
            due = list(
                s.scalars(
                    select(Delivery.id)
                    .where(Delivery.state == PENDING, Delivery.next_attempt_at <= now)
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(BATCH)
                )
            )
        attempted = 0
        for job_id in due:
            if self._stop.is_set():
                break
            job = self._claim(job_id, now)
            if job is None:
                continue  # another node (or thread) took it
            attempted += 1
            self._attempt(job)
        return attempted

    def start(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        self._stop.clear()
        self._worker = PollingWorker("msfollowup-outbox", self.poll_seconds, self.run_once)
        self._worker.start()

    def is_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop quickly: abort a send in progress (its job goes back to pending) and join."""
        self._stop.set()
        with self._assoc_lock:
            if self._assoc is not None:
                _abort(self._assoc)
        if self._worker is not None:
            self._worker.stop(timeout)
            self._worker = None

    # --- job state ------------------------------------------------------------------------------

    def _release_stale_claims(self, now: dt.datetime) -> None:
        cutoff = now - dt.timedelta(seconds=self.lease_seconds)
        with self.db.session() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.state == SENDING, Delivery.claimed_at < cutoff)
                .values(state=PENDING, claimed_by=None, last_error="claim expired (node stopped while sending)")
            )

    def _claim(self, job_id: int, now: dt.datetime) -> Delivery | None:
        with self.db.session() as s:
            res = s.execute(
                update(Delivery)
                .where(Delivery.id == job_id, Delivery.state == PENDING, Delivery.next_attempt_at <= now)
                .values(
                    state=SENDING,
                    claimed_by=self.worker_id,
                    claimed_at=now,
                    attempts=Delivery.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            job = s.get(Delivery, job_id)
            if job is None:
                return None
            s.expunge(job)
            return job

    def _attempt(self, job: Delivery) -> None:
        try:
            status = self._send(job)
        except SendError as exc:
            self._failed(job, str(exc), exc.status)
            return
        except OSError as exc:
            self._failed(job, f"cannot read SR file: {exc.strerror or exc}", None)
            return
        self._delivered(job, status)

    def _finish(self, job: Delivery, **values: Any) -> None:
        with self.db.session() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.id == job.id, Delivery.claimed_by == self.worker_id, Delivery.state == SENDING)
                .values(claimed_by=None, **values)
                .execution_options(synchronize_session=False)
            )

    def _delivered(self, job: Delivery, status: int) -> None:
        now = utcnow()
        self._finish(job, state=DELIVERED, delivered_at=now, last_status=status, last_error=None)
        audit.write_safely(self.db, [audit.Entry(
            audit.REPORT_DELIVERED, actor_ae=job.ae_title, actor_host=job.host, object_uid=job.sr_sop_instance_uid,
            detail={"study_uid": job.study_uid, "version": job.version, "status": f"0x{status:04X}", "port": job.port},
        )])
        log.info(
            "report delivered: study %s v%d to %s (status 0x%04X, attempt %d)",
            job.study_uid, job.version, job.destination, status, job.attempts,
        )

    def _failed(self, job: Delivery, error: str, status: int | None) -> None:
        now = utcnow()
        delay = backoff_seconds(self.cfg, job.attempts)
        self._finish(
            job,
            state=PENDING,
            last_error=error[:ERROR_MAX],
            last_status=status,
            next_attempt_at=now + dt.timedelta(seconds=delay),
        )
        log.warning(
            "report delivery failed: study %s v%d to %s (attempt %d, retry in %.0f s): %s",
            job.study_uid, job.version, job.destination, job.attempts, delay, error,
        )

    # --- the network ----------------------------------------------------------------------------

    def _on_connection(self, event: evt.Event) -> None:
        """Remember the association as soon as TCP is up: stop() may have to abort it mid-negotiation."""
        with self._assoc_lock:
            self._assoc = event.assoc
            if self._stop.is_set():
                _abort(event.assoc)

    def _send(self, job: Delivery) -> int:
        path = Path(self.cfg.storage.data_dir) / job.sr_path
        ds = dcmread(path)
        node = self.cfg.node
        ae = AE(ae_title=job.calling_ae_title)
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.connection_timeout = min(node.acse_timeout, 10.0)  # a dead host must not hold the loop
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        handlers: list[Any] = [(evt.EVT_CONN_OPEN, self._on_connection)]
        try:
            if self._stop.is_set():
                raise SendError("stopped before sending")
            assoc = ae.associate(job.host, job.port, ae_title=job.ae_title, max_pdu=node.max_pdu,
                                 evt_handlers=handlers)
            if not assoc.is_established:
                reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
                raise SendError(f"association with {job.destination} failed ({reason})")
            try:
                rsp = assoc.send_c_store(ds)
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            with self._assoc_lock:
                self._assoc = None
        if rsp is None or "Status" not in rsp:
            raise SendError(f"no C-STORE response from {job.destination} (timeout or abort)")
        status = int(rsp.Status)
        if not is_delivered_status(status):
            raise SendError(f"{job.destination} answered C-STORE status 0x{status:04X}", status)
        return status
