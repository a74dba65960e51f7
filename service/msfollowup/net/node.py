"""The DICOM node: Verification, Storage SCP for every storage SOP class, access control.

Handlers stay thin (receive, hand over to the store); pynetdicom turns an exception in a handler into
a failure status, but we map the failures we understand to precise statuses ourselves.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import OperationalError

from msfollowup.db import audit

from msfollowup.net import compat as netcompat
from msfollowup.site.config import Config
from msfollowup.app.metrics import Metrics
from msfollowup.files.spool import SpoolFile, spool_factory
from msfollowup.files.store import IngestError, InstanceStore, IngestResult, Outcome
from msfollowup.net.tls import server_context

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DUPLICATE_WARNING = 0xB006  # "Elements discarded": the new copy was discarded, the first kept
STATUS_PROCESSING_FAILURE = 0xC000

ExtraHandlers = list[EventHandlerType]

_UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2"]
_DEFLATED = ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"]
_LOSSLESS = [
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.5",
]


def _accept_order() -> list[str]:
    """Transfer syntaxes in the order this SCP accepts them.

    pynetdicom picks the first of the acceptor's list that the requestor offered, so the order decides
    what a sender must send. We never transcode, and a sender that offers a compressed syntax holds its
    data that way: prefer compressed (lossless before lossy) so nobody has to decompress for us. Most
    senders hold uncompressed data and offer deflate only as an option: uncompressed before deflated,
    so they do not spend CPU compressing for us.
    """
    rest = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _UNCOMPRESSED + _DEFLATED + _LOSSLESS]
    return _LOSSLESS + rest + _UNCOMPRESSED + _DEFLATED


ACCEPTED_TRANSFER_SYNTAXES = _accept_order()


@dataclass
class _AssocStats:
    calling_ae: str
    host: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    found: int = 0
    queries: int = 0
    studies: dict[str, int] = field(default_factory=dict)  # study UID -> instances received
    audit: list[audit.Entry] = field(default_factory=list)  # written when the association ends
    indexed: threading.Event | None = None  # set once the newest instance stored here is indexed


HALF_OPEN_PER_HOST = 8  # connections of one host still without an A-ASSOCIATE-RQ
HALF_OPEN_TOTAL = 64
_INSTANCE_OUTCOMES = {"stored": "stored", "duplicates": "duplicate", "failed": "failed"}
RELEASE_INDEX_WAIT = 10.0  # seconds an A-RELEASE-RQ waits for the association's instances' index commit
_AUDIT_BATCH = 500  # a long association flushes its audit entries every so many
_PENDING = (0xFF00, 0xFF01)


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _disable_nagle(event: Event) -> None:
    """Switch Nagle off on every association's socket (pynetdicom leaves it on).

    A response is several small writes in a row; with Nagle the last one waits for the peer's delayed
    ACK (~40 ms on Linux): every C-STORE and C-FIND answer would pay it. DCMTK disables Nagle too.
    """
    raw = netcompat.raw_socket(event.assoc)
    if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Node:
    """One AE serving the configured address; `start()` returns once it is listening."""

    def __init__(
        self,
        cfg: Config,
        store: InstanceStore,
        extra_handlers: ExtraHandlers | None = None,
        extra_contexts: list[str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics or Metrics()
        # Received data sets are streamed to a file instead of memory (bounded memory for multi-GB
        # enhanced objects): a SpoolFile in the store's tmp/, so the finished file can be hard-linked
        # into place (same filesystem, no copy) and a full disk is answered instead of aborting.
        netcompat.stream_datasets_to(spool_factory(store.tmp))
        # This process's own C-STORE SCU (the SR outbox) gets the replies its peers send (item 12 of
        # docs/pynetdicom-notes.md: pynetdicom's reactor can take a fast reply from its caller).
        netcompat.keep_replies_for_their_caller()
        self._stats: dict[int, _AssocStats] = {}
        # Associations that passed access control and still run: the only ones holding a slot.
        self._admitted: set[Association] = set()
        self._lock = threading.Lock()
        self.ae = self._build_ae(extra_contexts or [])
        self.handlers: ExtraHandlers = [
            (evt.EVT_CONN_OPEN, _disable_nagle),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_finished),
            (evt.EVT_ABORTED, self._on_finished),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            *(self._instrument(h) for h in extra_handlers or []),
        ]
        self.server: netcompat.GuardedServer | None = None
        self._serving: threading.Thread | None = None
        self.ssl_context = self._ssl_context()  # now: a bad [node.tls] file stops start-up with a clear error

    # -- setup

    def _build_ae(self, extra_contexts: list[str]) -> AE:
        node = self.cfg.node
        ae = AE(ae_title=node.ae_title)
        # pynetdicom counts every connection from its TCP accept on; our limit is in _on_requested and
        # counts only associations that passed access control. Its own check must never come first.
        ae.maximum_associations = 1_000_000
        ae.network_timeout = node.network_timeout
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.maximum_pdu_size = node.max_pdu
        # Access control is done in _on_requested (AE title + host); pynetdicom's own checks off.
        ae.require_called_aet = False
        ae.add_supported_context(Verification, _UNCOMPRESSED)
        storage = [cx.abstract_syntax for cx in AllStoragePresentationContexts if cx.abstract_syntax is not None]
        for uid in storage:
            ae.add_supported_context(uid, ACCEPTED_TRANSFER_SYNTAXES)
        # What netcompat's lean data-transfer path may serve: storage and echo, nothing the extra handlers
        # (worklist, MPPS) answer; an association that also negotiated one of those stays with pynetdicom.
        self._storage_syntaxes = frozenset({str(u) for u in storage} | {netcompat.VERIFICATION}) - set(extra_contexts)
        for extra in extra_contexts:
            ae.add_supported_context(extra, _UNCOMPRESSED)
        return ae

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.cfg.node.tls
        return None if tls is None else server_context(tls)

    def start(self) -> tuple[str, int]:
        node = self.cfg.node
        limits = netcompat.Limits(
            artim_seconds=node.acse_timeout, pdu_seconds=node.network_timeout, max_pdu=node.max_pdu,
            half_open_per_host=HALF_OPEN_PER_HOST, half_open_total=max(HALF_OPEN_TOTAL, 2 * node.max_associations),
        )
        lean = netcompat.LeanConfig(self._storage_syntaxes, self._on_lean_store, self._before_release) \
            if node.lean_storage else None
        server = netcompat.make_guarded_server(
            self.ae, (node.host, node.port), self.handlers, self.ssl_context, node.acse_timeout, limits, lean,
        )
        self._serving = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
        self._serving.start()
        self.server = server
        host, port = server.server_address[:2]
        return str(host), int(port)

    def is_serving(self) -> bool:
        """The accept loop is running (for the systemd watchdog)."""
        return self.server is not None and self._serving is not None and self._serving.is_alive()

    def check_health(self) -> None:
        """For /healthz: the node accepts, and a sender can get an association slot."""
        if not self.is_serving():
            raise RuntimeError("not accepting associations")
        limit = self.cfg.node.max_associations
        with self._lock:
            used = len(self._live_admitted())
        if used >= limit:
            raise RuntimeError(f"all {limit} association slots in use")
        server = self.server
        if server is not None and server.half_open() >= server.limits.half_open_total:
            raise RuntimeError(f"{server.limits.half_open_total} connections without an A-ASSOCIATE-RQ (limit)")

    def stop(self, grace_seconds: float) -> int:
        """Stop accepting, let running associations finish for up to `grace_seconds`, then cut the rest.

        Whatever the peers do, this returns within about grace_seconds + 2 s: the remaining connections
        are shut down under pynetdicom (its own abort can wait forever on a peer that stopped reading).
        """
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()  # closes the listening socket; running associations continue
        deadline = time.monotonic() + grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.ae.active_associations
        for assoc in left:
            assoc.abort(block=False)
        if server is not None:
            server.cut_all()
        cut_deadline = time.monotonic() + 2.0
        while self.ae.active_associations and time.monotonic() < cut_deadline:
            time.sleep(0.05)
        return len(left)

    # -- access control and per-association log line

    def _allowed(self, calling: str, host: str) -> bool:
        for entry in self.cfg.access.allow:
            if entry.ae_title == calling and (entry.host is None or entry.host == host):
                return True
        return False

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        assert rq is not None  # EVT_REQUESTED fires after the A-ASSOCIATE-RQ was read
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        host = str(assoc.requestor.address)
        reason = None
        if self.cfg.access.require_called_ae and called != self.cfg.node.ae_title:
            reason, diag = "called AE title not recognised", 0x07
        elif not self._allowed(calling, host):
            reason, diag = "calling AE title/host not on the allow-list", 0x03
        if reason is None:
            self._admit(event)
            return
        log.warning("association rejected calling_ae=%s host=%s called_ae=%s reason=%s", calling, host, called, reason)
        self.metrics.inc("associations_total", {"result": "rejected"})
        self.metrics.inc("associations_rejected_total", {"reason": "called_ae" if diag == 0x07 else "not_allowed"})
        audit.write_safely(self.store.db, [audit.Entry(
            audit.ASSOCIATION_REJECTED, actor_ae=calling, actor_host=host, detail={"called_ae": called, "reason": reason}
        )])
        netcompat.reject(assoc, 0x01, 0x01, diag)

    def _live_admitted(self) -> set[Association]:
        """The admitted associations still running (called with the lock held)."""
        self._admitted = {a for a in self._admitted if a.is_alive() and not (a.is_released or a.is_aborted)}
        return self._admitted

    def _admit(self, event: Event) -> None:
        """Take a slot for an association that passed access control, or reject it (transient)."""
        assoc = event.assoc
        with self._lock:
            full = len(self._live_admitted()) >= self.cfg.node.max_associations
            if not full:
                self._admitted.add(assoc)
        if not full:
            return
        self._on_limit(event)
        netcompat.reject(assoc, 0x02, 0x03, 0x02)  # rejected-transient, local limit exceeded

    def _on_limit(self, event: Event) -> None:
        """`max_associations` reached: log, count, audit (pynetdicom's own checks are all off, see _build_ae)."""
        rq = event.assoc.requestor.primitive  # in EVT_REQUESTED the requestor's AE title is only here
        calling = str(rq.calling_ae_title if rq is not None else event.assoc.requestor.ae_title).strip()
        host = str(event.assoc.requestor.address)
        log.warning("association rejected calling_ae=%s host=%s reason=too many associations", calling, host)
        self.metrics.inc("associations_total", {"result": "rejected"})
        self.metrics.inc("associations_rejected_total", {"reason": "limit"})
        audit.write_safely(self.store.db, [audit.Entry(
            audit.ASSOCIATION_REJECTED, actor_ae=calling, actor_host=host, detail={"reason": "too many associations"}
        )])

    def _on_established(self, event: Event) -> None:
        assoc = event.assoc
        with self._lock:
            self._stats[id(assoc)] = _AssocStats(
                calling_ae=str(assoc.requestor.ae_title).strip(), host=str(assoc.requestor.address)
            )
        self.metrics.inc("associations_total", {"result": "accepted"})

    def _on_finished(self, event: Event) -> None:
        # A data set cut off by an abort or a closed socket: its partial temp file goes now.
        partial = netcompat.partial_spool(event.assoc)
        if isinstance(partial, SpoolFile):
            partial.discard()
        with self._lock:
            st = self._stats.pop(id(event.assoc), None)
        if st is None:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info(
            "association %s calling_ae=%s host=%s stored=%d duplicates=%d failed=%d found=%d seconds=%.2f",
            how, st.calling_ae, st.host, st.stored, st.duplicates, st.failed, st.found,
            time.monotonic() - st.started,
        )
        self.metrics.inc("associations_ended_total", {"outcome": how})
        audit.write_safely(self.store.db, self._audit_entries(st, how))

    def _count(self, assoc: Association, key: str) -> None:
        with self._lock:
            st = self._stats.get(id(assoc))
            if st is not None:
                setattr(st, key, getattr(st, key) + 1)
        if key in _INSTANCE_OUTCOMES:
            self.metrics.inc("instances_total", {"outcome": _INSTANCE_OUTCOMES[key]})

    def count_found(self, event: Event) -> None:
        self._count(event.assoc, "found")

    # -- services

    def _on_echo(self, event: Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Event) -> Dataset | int:
        """EVT_C_STORE: a storage association that pynetdicom serves to the end (e.g. with MPPS contexts)."""
        request = cast(C_STORE, event.request)
        return self._store(event.assoc, netcompat.dataset_path(request), netcompat.dataset_spool(request),
                           str(request.AffectedSOPInstanceUID), str(request.AffectedSOPClassUID))

    def _on_lean_store(self, assoc: Association, request: netcompat.StoreRequest) -> Dataset | int:
        """A C-STORE served by netcompat's lean data-transfer path (storage-only associations)."""
        return self._store(assoc, request.path, request.spool, request.sop_instance, request.sop_class, lean=True)

    def _store(self, assoc: Association, path: str | None, spool: object, sop_instance: str,
               sop_class: str, lean: bool = False) -> Dataset | int:
        """Ingest one received data set (its spool file at `path`) and say what to answer. `lean`: the
        spool is still open and only this thread touches it (netcompat's lean path), so the store may
        flush its descriptor and check the bytes it kept."""
        calling = str(assoc.requestor.ae_title).strip()
        if path is None:  # Command Data Set Type 0x0101
            self._count(assoc, "failed")
            log.warning("C-STORE without a data set calling_ae=%s", calling)
            return _status(STATUS_PROCESSING_FAILURE, "C-STORE request without a data set")
        if isinstance(spool, SpoolFile) and spool.error is not None:
            self._count(assoc, "failed")
            log.error("C-STORE out of resources while receiving calling_ae=%s error=%s", calling, spool.error.strerror)
            return _status(STATUS_OUT_OF_RESOURCES, f"cannot store: {spool.error.strerror}")
        temp = Path(path)
        with self._lock:
            st = self._stats.get(id(assoc))
            # Index behind the answer (files/behind.py) once this association has stored one instance
            # indexed before its answer: a sender learns of a failing index at its first instance.
            behind = lean and st is not None and st.stored > 0
        try:
            result = self.store.ingest_file(temp, calling_ae=calling, expected_sop=sop_instance,
                                            expected_sop_class=sop_class,
                                            spooled=spool if lean and isinstance(spool, SpoolFile) else None,
                                            index_behind=behind)
        except IngestError as exc:
            self._count(assoc, "failed")
            log.warning("C-STORE failed calling_ae=%s status=0x%04X reason=%s", calling, exc.status, exc)
            return _status(exc.status, str(exc))
        except OSError as exc:
            self._count(assoc, "failed")
            log.error("C-STORE out of resources calling_ae=%s error=%s", calling, exc.strerror)
            return _status(STATUS_OUT_OF_RESOURCES, f"cannot store: {exc.strerror}")
        except OperationalError as exc:  # index locked, full or unreachable: transient, the sender may retry
            self._count(assoc, "failed")
            log.error("C-STORE index unavailable calling_ae=%s error=%s", calling, str(exc.orig).partition("\n")[0][:200])
            return _status(STATUS_OUT_OF_RESOURCES, "index database unavailable")
        except Exception as exc:  # noqa: BLE001 - a bug: never acknowledge
            self._count(assoc, "failed")
            log.exception("C-STORE processing failure calling_ae=%s", calling)
            return _status(STATUS_PROCESSING_FAILURE, f"processing failure: {type(exc).__name__}")
        self._received(assoc, temp, result, spool.size if isinstance(spool, SpoolFile) else None)
        if result.outcome is Outcome.DUPLICATE_KEPT_FIRST:
            self._count(assoc, "duplicates")
            log.warning("duplicate SOP instance with different content, first copy kept study=%s", result.study_uid)
            return _status(STATUS_DUPLICATE_WARNING, "duplicate SOP Instance UID, different content; first kept")
        self._count(assoc, "duplicates" if result.outcome is Outcome.DUPLICATE_SAME else "stored")
        return STATUS_SUCCESS

    # -- metrics and audit (kept off the C-STORE answer: memory only until the association ends)

    def _received(self, assoc: Association, temp: Path, result: IngestResult, size: int | None) -> None:
        """`size`: the spool's byte count when it counted them (else the file is asked)."""
        if size is None:
            try:
                size = temp.stat().st_size
            except OSError:
                size = 0
        self.metrics.inc("received_bytes_total", value=size)
        with self._lock:
            st = self._stats.get(id(assoc))
            if st is not None:
                st.studies[result.study_uid] = st.studies.get(result.study_uid, 0) + 1
                if result.indexed is not None:
                    st.indexed = result.indexed

    def _before_release(self, assoc: Association) -> None:
        """Before the A-RELEASE-RP: the rows of every instance this association stored are committed
        (files/behind.py indexes in order, so the newest one's stands for all). A peer that released
        finds what it sent indexed. Its data is durable either way: after RELEASE_INDEX_WAIT the
        release is answered anyway (the index is failing; its writer keeps retrying)."""
        with self._lock:
            st = self._stats.get(id(assoc))
            indexed = None if st is None else st.indexed
        if indexed is not None and not indexed.wait(RELEASE_INDEX_WAIT):
            log.warning("association released before its instances were indexed (index writer behind)")

    def _audit_entries(self, st: _AssocStats, how: str) -> list[audit.Entry]:
        ae, host = st.calling_ae, st.host
        summary = {
            "stored": st.stored, "duplicates": st.duplicates, "failed": st.failed, "queries": st.queries,
            "found": st.found, "studies": len(st.studies), "seconds": round(time.monotonic() - st.started, 3),
        }
        action = audit.ASSOCIATION_RELEASED if how == "released" else audit.ASSOCIATION_ABORTED
        stores = [audit.Entry(audit.STORE, ae, host, object_uid=uid, detail={"instances": n}) for uid, n in st.studies.items()]
        return [*st.audit, *stores, audit.Entry(action, ae, host, detail=summary)]

    def _audit(self, event: Event, entry: audit.Entry) -> None:
        """Queue an entry on its association; flushed at its end (or every _AUDIT_BATCH entries)."""
        entry.actor_ae = str(event.assoc.requestor.ae_title).strip()
        entry.actor_host = str(event.assoc.requestor.address)
        batch: list[audit.Entry] = [entry]
        with self._lock:
            st = self._stats.get(id(event.assoc))
            if st is not None:
                st.audit.append(entry)
                batch = st.audit if len(st.audit) >= _AUDIT_BATCH else []
                if batch:
                    st.audit = []
        audit.write_safely(self.store.db, batch)

    def _instrument(self, handler: Any) -> Any:
        """Time and audit the worklist handlers without touching them (the handler stays the same)."""
        event_type, func, *args = handler
        if event_type is evt.EVT_C_FIND:
            return (event_type, self._timed_find(func), *args)
        if event_type in (evt.EVT_N_CREATE, evt.EVT_N_SET):
            return (event_type, self._audited_mpps(func), *args)
        return handler

    def _timed_find(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def on_find(event: Event, *args: Any) -> Any:
            started, matches, finished = time.monotonic(), 0, False
            try:
                for status, identifier in func(event, *args):
                    code = int(status.Status if isinstance(status, Dataset) else status)
                    if code in _PENDING:
                        matches += 1
                    elif not finished:  # the final status: account before pynetdicom sends it
                        finished = True
                        self._found(event, time.monotonic() - started, matches, code)
                    yield status, identifier
            finally:  # an exception, or pynetdicom dropping the generator (abort): still one failed query
                if not finished:
                    self._found(event, time.monotonic() - started, matches, STATUS_PROCESSING_FAILURE)

        return on_find

    def _found(self, event: Event, seconds: float, matches: int, code: int) -> None:
        self.metrics.observe("cfind_duration_seconds", seconds)
        status = "success" if code == 0 else "cancel" if code == 0xFE00 else "failure"
        self.metrics.inc("cfind_requests_total", {"status": status})
        self.metrics.inc("cfind_matches_total", value=matches)
        with self._lock:
            st = self._stats.get(id(event.assoc))
            if st is not None:
                st.queries += 1
                st.found += matches
        try:
            matching, returned = audit.query_keys(event.identifier)
        except Exception:  # noqa: BLE001 - an undecodable identifier: still audited, keys unknown
            matching, returned = [], []
        self._audit(event, audit.Entry(audit.QUERY_MWL, detail={
            "matching_keys": matching, "return_keys": returned, "matches": matches, "status": f"0x{code:04X}",
        }))

    def _audited_mpps(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def on_mpps(event: Event, *args: Any) -> Any:
            result = func(event, *args)
            status, reply = result
            code = int(status.Status if isinstance(status, Dataset) else status)
            create = event.event is evt.EVT_N_CREATE
            self.metrics.inc("mpps_requests_total", {
                "operation": "create" if create else "set", "result": "success" if code == 0 else "failure",
            })
            req = event.request
            uid = getattr(req, "AffectedSOPInstanceUID" if create else "RequestedSOPInstanceUID", None)
            if uid is None and reply is not None:
                uid = reply.get("AffectedSOPInstanceUID")
            try:
                values = event.attribute_list if create else event.modification_list
                pps_status = str(values.get("PerformedProcedureStepStatus", "") or "") or None
            except Exception:  # noqa: BLE001 - the handler already answered an undecodable list
                pps_status = None
            self._audit(event, audit.Entry(
                audit.MPPS_CREATE if create else audit.MPPS_SET, object_uid=str(uid) if uid else None,
                detail={"pps_status": pps_status, "status": f"0x{code:04X}"},
            ))
            return result

        return on_mpps
