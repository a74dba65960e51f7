"""Metrics and health: the Prometheus registry of one service and the `/healthz` checks.

Counters live in a `Metrics` object owned by the Service and handed to the node; each has its own
prometheus_client registry (no module globals, so tests and two services in one process do not
share counts). What the database already knows (verdicts per profile, outbox backlog, open worklist
items) is counted at scrape time by a custom collector instead of being mirrored in memory, so it is
right after a restart and with several nodes on one database. The HTTP side (`/metrics`, `/healthz`)
is served by the web application (msfollowup.web), on the one `[http]` listener.

Labels only ever take values from fixed sets (outcomes, statuses, verdicts, profile ids): never an
AE title, a host, a UID or anything from a data set, so a scrape can leak no patient data.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Integer, Table, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.db import Base, Database, UTCDateTime, utcnow

log = logging.getLogger(__name__)

PREFIX = "msfollowup_"
# The classic text format: what every Prometheus and the tests parse (prometheus_client's own
# CONTENT_TYPE_LATEST moved on to 1.0.0 in recent releases; the bytes are the same 0.0.4 syntax).
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


class Metrics:
    """The counters and histograms of one service on a private prometheus_client registry.

    `inc`/`observe` refuse a metric or label value that is not declared in `DEFINITIONS`: that
    refusal is what keeps AE titles and patient IDs out of label values."""

    def __init__(self, definitions: Mapping[str, MetricDef] = DEFINITIONS) -> None:
        self.definitions = definitions
        self.started_wall = time.time()
        self._started = time.monotonic()
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Counter | Histogram] = {}
        for name, d in definitions.items():
            full = PREFIX + name
            if d.kind == "histogram":
                self._metrics[name] = Histogram(full, d.help, sorted(d.labels), registry=self.registry, buckets=LATENCY_BUCKETS)
                continue
            counter = Counter(full, d.help, sorted(d.labels), registry=self.registry)
            for combo in _label_combinations(d.labels):  # declared series start at zero, so rates work at once
                if combo:
                    counter.labels(**dict(combo))
            self._metrics[name] = counter
        self.registry.register(_ProcessCollector(self))

    def _child(self, name: str, kind: str, labels: Mapping[str, str] | None) -> Any:
        d = self.definitions.get(name)
        if d is None or d.kind != kind:
            raise ValueError(f"metric {name!r} is not a declared {kind}")
        labels = labels or {}
        if set(labels) != set(d.labels):
            raise ValueError(f"metric {name!r} takes labels {sorted(d.labels)}, got {sorted(labels)}")
        for k, v in labels.items():
            if v not in d.labels[k]:
                raise ValueError(f"metric {name!r}: label {k} has no value {v!r}")
        metric = self._metrics[name]
        return metric.labels(**labels) if labels else metric

    def inc(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        self._child(name, "counter", labels).inc(value)

    def observe(self, name: str, seconds: float) -> None:
        self._child(name, "histogram", None).observe(seconds)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        self._child(name, "counter", labels)  # validates
        sample = self.registry.get_sample_value(PREFIX + name, dict(labels or {}))
        return sample or 0.0

    def uptime(self) -> float:
        return time.monotonic() - self._started

    def render(self, db: Database | None = None) -> bytes:
        """The exposition text: declared metrics, process gauges and (with `db`) what the index holds."""
        if db is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Both(self.registry, DatabaseCollector(db)))
        return generate_latest(registry)


def _label_combinations(labels: Mapping[str, frozenset[str]]) -> list[tuple[tuple[str, str], ...]]:
    combos: list[tuple[tuple[str, str], ...]] = [()]
    for k in sorted(labels):
        combos = [(*c, (k, v)) for c in combos for v in sorted(labels[k])]
    return combos


class _ProcessCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since the service started.", value=self.metrics.uptime())
        yield GaugeMetricFamily(PREFIX + "start_time_seconds", "Start of the service, Unix time.", value=self.metrics.started_wall)


class _Both(Collector):
    """The service registry followed by the scrape-time database collector, as one collector."""

    def __init__(self, registry: CollectorRegistry, extra: Collector) -> None:
        self.registry, self.extra = registry, extra

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.extra.collect()


def _safe_label(value: str | None) -> str:
    """Scrape-time label values come from the database (profile ids, verdicts, states): anything
    that does not look like such an identifier is not shown as itself."""
    return value if value is not None and _LABEL_VALUE_RE.match(value) else "other"


class DatabaseCollector(Collector):
    """What the index knows, counted at scrape time; `database_up` 0 when the queries fail (the
    process counters are still served)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        try:
            families = database_gauges(self.db)
        except Exception as exc:  # noqa: BLE001 - still serve the process counters
            log.warning("metrics: database gauges unavailable: %s", type(exc).__name__)
            families, up = [], 0
        else:
            up = 1
        yield from families
        yield GaugeMetricFamily(PREFIX + "database_up", "1 when the scrape-time database queries succeeded.", value=up)


def database_gauges(db: Database) -> list[GaugeMetricFamily]:
    """What the index knows, counted now: studies by state, verdicts by profile, outbox, worklist."""
    from msfollowup.db.deliveries import Delivery
    from msfollowup.db.checks import StudyCheck
    from msfollowup.files.store import Study
    from msfollowup.app.worklist import ScheduledStep

    studies = GaugeMetricFamily(PREFIX + "studies", "Studies in the index, by state.", labels=["state"])
    checks = GaugeMetricFamily(PREFIX + "study_checks", "Checked study versions, by profile and verdict.",
                               labels=["profile", "verdict"])
    deliveries = GaugeMetricFamily(PREFIX + "outbox_deliveries", "Report deliveries, by state.", labels=["state"])
    with db.session() as s:
        for state, n in s.execute(select(Study.state, func.count()).group_by(Study.state)):
            studies.add_metric([_safe_label(state)], n)
        for profile, verdict, n in s.execute(
            select(StudyCheck.profile_id, StudyCheck.verdict, func.count()).group_by(StudyCheck.profile_id, StudyCheck.verdict)
        ):
            checks.add_metric([_safe_label(profile), _safe_label(verdict)], n)
        backlog = 0
        for state, n in s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)):
            deliveries.add_metric([_safe_label(state)], n)
            if state != "delivered":
                backlog += n
        open_items = s.scalar(select(func.count()).select_from(ScheduledStep).where(ScheduledStep.open_key.is_not(None)))
    return [
        studies, checks, deliveries,
        GaugeMetricFamily(PREFIX + "outbox_backlog", "Report deliveries not delivered yet (pending or being sent).", value=backlog),
        GaugeMetricFamily(PREFIX + "worklist_open_items", "Open Modality Worklist items.", value=open_items or 0),
    ]


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
