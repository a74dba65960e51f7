"""Metrics and health over HTTP: `/metrics` (Prometheus text format 0.0.4) and `/healthz`.

Counters live in a `Metrics` registry owned by the Service and handed to the node (no module
globals, so tests and two services in one process do not share counts). What the database already
knows (verdicts per profile, outbox backlog, open worklist items) is counted at scrape time instead
of being mirrored in memory, so it is right after a restart and with several nodes on one database.

Labels only ever take values from fixed sets (outcomes, statuses, verdicts, profile ids): never an
AE title, a host, a UID or anything from a data set, so a scrape can leak no patient data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Integer, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.db import Base, Database, UTCDateTime, utcnow

log = logging.getLogger(__name__)

PREFIX = "msfollowup_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# C-FIND latency buckets (seconds): a worklist answer should take milliseconds; >1 s is a problem.
CHECK_TIMEOUT = 5.0  # seconds /healthz waits for each check (they run in parallel)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")


@dataclass(frozen=True)
class MetricDef:
    kind: str  # "counter" | "histogram"
    help: str
    labels: Mapping[str, frozenset[str]]  # label name -> the only values it may take


def _labels(**allowed: Iterable[str]) -> Mapping[str, frozenset[str]]:
    return {k: frozenset(v) for k, v in allowed.items()}


# Everything the process counts itself. Adding a metric = one line here.
DEFINITIONS: Mapping[str, MetricDef] = {
    "associations_total": MetricDef("counter", "Associations requested, by result.", _labels(result=("accepted", "rejected"))),
    "associations_rejected_total": MetricDef(
        "counter", "Rejected associations, by reason.", _labels(reason=("called_ae", "not_allowed", "limit"))
    ),
    "associations_ended_total": MetricDef(
        "counter", "Accepted associations that ended, by how.", _labels(outcome=("released", "aborted"))
    ),
    "instances_total": MetricDef(
        "counter", "C-STORE requests handled, by outcome.", _labels(outcome=("stored", "duplicate", "failed"))
    ),
    "received_bytes_total": MetricDef("counter", "Bytes of received data sets (as written to disk).", {}),
    "studies_completed_total": MetricDef("counter", "Study versions completed by this process.", {}),
    "cfind_requests_total": MetricDef(
        "counter", "Modality Worklist C-FIND requests, by final status.", _labels(status=("success", "cancel", "failure"))
    ),
    "cfind_matches_total": MetricDef("counter", "Worklist items returned by C-FIND.", {}),
    "cfind_duration_seconds": MetricDef("histogram", "C-FIND handling time, first request to final status.", {}),
    "mpps_requests_total": MetricDef(
        "counter", "MPPS requests, by operation and result.",
        _labels(operation=("create", "set"), result=("success", "failure")),
    ),
}


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1  # the smallest bucket only; cumulated when rendered
                break


LabelKey = tuple[tuple[str, str], ...]


class Metrics:
    """Thread-safe counters and histograms of one service; `inc`/`observe` are cheap (one lock)."""

    def __init__(self, definitions: Mapping[str, MetricDef] = DEFINITIONS) -> None:
        self.definitions = definitions
        self.started_wall = time.time()
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, LabelKey], float] = {}
        self._histograms: dict[str, _Histogram] = {}

    def _key(self, name: str, kind: str, labels: Mapping[str, str] | None) -> tuple[str, LabelKey]:
        d = self.definitions.get(name)
        if d is None or d.kind != kind:
            raise ValueError(f"metric {name!r} is not a declared {kind}")
        labels = labels or {}
        if set(labels) != set(d.labels):
            raise ValueError(f"metric {name!r} takes labels {sorted(d.labels)}, got {sorted(labels)}")
        for k, v in labels.items():
            if v not in d.labels[k]:
                raise ValueError(f"metric {name!r}: label {k} has no value {v!r}")
        return name, tuple(sorted(labels.items()))

    def inc(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        key = self._key(name, "counter", labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, name: str, seconds: float) -> None:
        self._key(name, "histogram", None)
        with self._lock:
            hist = self._histograms.get(name)
            if hist is None:
                hist = self._histograms[name] = _Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        key = self._key(name, "counter", labels)
        with self._lock:
            return self._counters.get(key, 0.0)

    def uptime(self) -> float:
        return time.monotonic() - self._started

    def render(self, gauges: Iterable[Gauge] = ()) -> str:
        """The exposition text: declared metrics (zeros included, so rates work from the start),
        then the scrape-time gauges."""
        out: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            hists = {n: (list(h.counts), h.sum, h.count) for n, h in self._histograms.items()}
        for name, d in sorted(self.definitions.items()):
            full = PREFIX + name
            out += [f"# HELP {full} {d.help}", f"# TYPE {full} {d.kind}"]
            if d.kind == "histogram":
                counts, total, n = hists.get(name, ([0] * len(LATENCY_BUCKETS), 0.0, 0))
                running = 0
                for bound, c in zip(LATENCY_BUCKETS, counts):
                    running += c
                    out.append(f'{full}_bucket{{le="{float(bound)!r}"}} {running}')
                out += [f'{full}_bucket{{le="+Inf"}} {n}', f"{full}_sum {_num(total)}", f"{full}_count {n}"]
                continue
            for combo in _label_combinations(d.labels):
                out.append(f"{full}{_fmt_labels(combo)} {_num(counters.get((name, combo), 0.0))}")
        out += _render_gauges([*gauges, Gauge("uptime_seconds", "Seconds since the service started.", (), self.uptime())])
        out.append(f"# HELP {PREFIX}start_time_seconds Start of the service, Unix time.")
        out.append(f"# TYPE {PREFIX}start_time_seconds gauge")
        out.append(f"{PREFIX}start_time_seconds {_num(self.started_wall)}")
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str
    labels: LabelKey
    value: float


def _label_combinations(labels: Mapping[str, frozenset[str]]) -> list[LabelKey]:
    combos: list[LabelKey] = [()]
    for k in sorted(labels):
        combos = [(*c, (k, v)) for c in combos for v in sorted(labels[k])]
    return combos


def _fmt_labels(labels: LabelKey) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _render_gauges(gauges: Iterable[Gauge]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for g in sorted(gauges, key=lambda g: g.name):  # stable: one HELP/TYPE block per name
        full = PREFIX + g.name
        if g.name not in seen:
            seen.add(g.name)
            out += [f"# HELP {full} {g.help}", f"# TYPE {full} gauge"]
        out.append(f"{full}{_fmt_labels(g.labels)} {_num(g.value)}")
    return out


def _safe_label(value: str | None) -> str:
    """Scrape-time label values come from the database (profile ids, verdicts, states): anything
    that does not look like such an identifier is not shown as itself."""
    return value if value is not None and _LABEL_VALUE_RE.match(value) else "other"


def database_gauges(db: Database) -> list[Gauge]:
    """What the index knows, counted now: studies by state, verdicts by profile, outbox, worklist."""
    from msfollowup.outbox import Delivery
    from msfollowup.pipeline import StudyCheck
    from msfollowup.store import Study
    from msfollowup.worklist import ScheduledStep

    gauges: list[Gauge] = []
    with db.session() as s:
        for state, n in s.execute(select(Study.state, func.count()).group_by(Study.state)):
            gauges.append(Gauge("studies", "Studies in the index, by state.", (("state", _safe_label(state)),), n))
        checks = s.execute(
            select(StudyCheck.profile_id, StudyCheck.verdict, func.count()).group_by(StudyCheck.profile_id, StudyCheck.verdict)
        )
        for profile, verdict, n in checks:
            gauges.append(Gauge(
                "study_checks", "Checked study versions, by profile and verdict.",
                (("profile", _safe_label(profile)), ("verdict", _safe_label(verdict))), n,
            ))
        backlog = 0
        for state, n in s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)):
            gauges.append(Gauge("outbox_deliveries", "Report deliveries, by state.", (("state", _safe_label(state)),), n))
            if state != "delivered":
                backlog += n
        gauges.append(Gauge("outbox_backlog", "Report deliveries not delivered yet (pending or being sent).", (), backlog))
        open_items = s.scalar(select(func.count()).select_from(ScheduledStep).where(ScheduledStep.open_key.is_not(None)))
        gauges.append(Gauge("worklist_open_items", "Open Modality Worklist items.", (), open_items or 0))
    return gauges


# --- health ------------------------------------------------------------------------------------


class HealthProbe(Base):
    """One row per database, updated and committed by /healthz: proves the database takes writes."""

    __tablename__ = "health_probes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[Any] = mapped_column(UTCDateTime())


def check_database(db: Database) -> None:
    """The index file is still the one opened at start, and a write is committed.

    A rolled-back insert proves nothing: SQLite writes nothing before COMMIT, so a read-only or full
    index passed while every C-STORE failed. The probe row is updated in place (nothing accumulates);
    two nodes racing to create it on one database both end with a committed write."""
    db.check_file()
    table = cast(Table, HealthProbe.__table__)
    for _ in range(2):
        try:
            with db.engine.begin() as conn:
                if conn.execute(update(table).where(table.c.id == 1).values(at=utcnow())).rowcount == 0:
                    conn.execute(insert(table).values(id=1, at=utcnow()))
            return
        except IntegrityError:  # the other node inserted row 1 first: update it now
            continue


def check_storage(folder: Path) -> None:
    """Create, fsync and remove a file where received objects land (the same filesystem as store/)."""
    probe = folder / f".healthz-{os.getpid()}-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink()


def _failure(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error; its text holds no parameters
    return f"{type(exc).__name__}: {str(orig if orig is not None else exc)[:200]}"


def run_checks(checks: Mapping[str, Callable[[], None]], timeout: float = CHECK_TIMEOUT) -> tuple[bool, dict[str, str]]:
    """Every check runs, in parallel (one failure or hang does not hide another); "ok" or what failed.

    A check still running after `timeout` fails as such: a probe must answer in time, and a database
    locked that long is stalling C-STORE answers too. Its thread finishes on its own (daemon)."""
    results: dict[str, str] = {}

    def run(name: str, check: Callable[[], None]) -> None:
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - a failing check is the answer, not an error
            results[name] = _failure(exc)

    threads = [threading.Thread(target=run, args=item, name=f"healthz-{item[0]}", daemon=True) for item in checks.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out = {name: results.get(name, f"no answer within {timeout:g} s") for name in checks}
    return all(v == "ok" for v in out.values()), out


# --- HTTP ---------------------------------------------------------------------------------------


class HttpEndpoint:
    """ThreadingHTTPServer in a daemon thread serving /metrics and /healthz; nothing else."""

    def __init__(self, host: str, port: int, checks: Callable[[], Mapping[str, Callable[[], None]]],
                 metrics: Metrics, db: Database) -> None:
        HealthProbe.__table__.create(db.engine, checkfirst=True)  # type: ignore[attr-defined]
        self.checks, self.metrics, self.db = checks, metrics, db
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        self._thread.start()
        return self.address

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def healthz(self) -> tuple[int, bytes]:
        ok, results = run_checks(self.checks())
        body = {"status": "ok" if ok else "failing", "checks": results, "uptime_seconds": round(self.metrics.uptime(), 1)}
        return (200 if ok else 503), (json.dumps(body) + "\n").encode()

    def metrics_text(self) -> tuple[int, bytes]:
        try:
            gauges = database_gauges(self.db)
        except Exception as exc:  # noqa: BLE001 - still serve the process counters
            log.warning("metrics: database gauges unavailable: %s", type(exc).__name__)
            gauges = [Gauge("database_up", "1 when the scrape-time database queries succeeded.", (), 0)]
        else:
            gauges.append(Gauge("database_up", "1 when the scrape-time database queries succeeded.", (), 1))
        return 200, self.metrics.render(gauges).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "msfollowup"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    status, body = endpoint.healthz()
                    ctype = "application/json"
                elif path == "/metrics":
                    status, body = endpoint.metrics_text()
                    ctype = CONTENT_TYPE
                else:
                    status, body, ctype = 404, b"not found\n", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
                log.debug("http %s", format % args)

        return Handler
