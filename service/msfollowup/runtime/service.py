"""`msfollowup serve`: wire the stages into one process and run until SIGTERM.

Start-up order follows the data flow: database -> store recovery -> pipeline workers -> node. Shutdown
is the reverse: the node stops accepting first, running associations get a bounded grace period.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from msfollowup.net import worklist_scp
from msfollowup.app import cluster, worklist

from msfollowup.runtime import heap, ingest_workers, jobs, sdnotify, signals
from msfollowup.app.completion import CompletionWorker
from msfollowup.site.config import Config, ConfigError, LoggingConfig
from msfollowup.db import Database
from msfollowup.app.live.settle import LiveWorker  # issue 15
from msfollowup.app.notify.worker import NotifyWorker  # issue 15
from msfollowup.app.metrics import Metrics, check_database, check_storage
from msfollowup.net.node import Node
from msfollowup.app.outbox import Outbox
from msfollowup.app.pipeline import Pipeline, PipelineWorker
from msfollowup.files.store import InstanceStore

log = logging.getLogger("msfollowup")
WORKER_STOP_SECONDS = 2.0  # after the associations' grace period: the background parts, all at once


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class _JournalFormatter(logging.Formatter):
    """For stderr read by journald: it stamps the time itself and takes the priority from a "<N>"
    prefix (sd-daemon(3)), so `journalctl -u msfollowup -p warning` filters by level."""

    _PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=<dev>:<inode> of the stream it connected to journald."""
    try:
        dev, ino = (int(v) for v in os.environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(cfg: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(_JsonFormatter())
    elif _stderr_is_journal():
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    # pynetdicom logs data set contents (patient names in identifiers) at INFO/DEBUG: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines name plugins and contexts; db.migrate logs upgrades
    # Library warnings quote element values (highdicom: "The string <patient name> is unlikely to
    # represent ...", 'value of argument "patient_name" is potentially invalid: <name>'; pydicom:
    # "Invalid value for VR ..."): PHI, and raw lines that break JSON logs. Errors only.
    logging.getLogger("highdicom").setLevel(logging.ERROR)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.ERROR)


class Service:
    """All the moving parts of one node; `start()` returns when the node is listening."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(cfg.storage.database_url, cfg.storage.busy_timeout_seconds, cfg.storage.auto_upgrade)
        self.store = InstanceStore(cfg.storage.data_dir, self.db, cfg.storage.duplicate_policy, cfg.storage.fsync,
                                   cfg.storage.index_commit)
        # --- cluster hook (msfollowup.app.cluster): own tmp/ per node, stage leases, export by the leader only
        self.cluster = cluster.ClusterRuntime(cfg, self.db) if cfg.cluster.enabled else None
        self._data_dir_lock: cluster.DataDirLock | None = None
        stage_cfg = cluster.stage_config(cfg)
        if self.cluster is not None:
            self.store.tmp = self.cluster.tmp_dir
        # --- end cluster hook
        self.pipeline = Pipeline(self.db, stage_cfg, self.store)
        if self.cluster is not None:
            self.pipeline.leases = self.cluster.leases
        self.pipeline_worker = PipelineWorker(self.pipeline)
        self.metrics = Metrics()
        self.completion = CompletionWorker(
            self.db, cfg.completion.stable_seconds, cfg.completion.poll_seconds, on_complete=self._on_complete
        )
        self.node = Node(
            cfg, self.store,
            extra_handlers=worklist_scp.event_handlers(self.db, stage_cfg),
            extra_contexts=list(worklist.SUPPORTED_CONTEXTS),
            metrics=self.metrics,
        )
        self.outbox = Outbox(self.db, cfg)
        self.ingest: ingest_workers.IngestWorkers | None = None
        if cfg.node.processes > 1:  # more receiving processes, handed connections by this one (ingest_workers.py)
            self.store.sop_locks.share(ingest_workers.lock_folder(self.store.tmp))
            self.ingest = ingest_workers.IngestWorkers(cfg, self.metrics, cfg.node.processes, self.store.tmp)
        # issue 15: settle detector + live broker (the web app mounts live.http.router(self.live.broker, ...))
        self.live = LiveWorker(self.db, cfg, self.store) if cfg.live.enabled else None
        self.notify = NotifyWorker(self.db, cfg, health=self.dead_parts) if cfg.notify.destinations else None
        self.scheduler: jobs.Scheduler | None = None
        self.address: tuple[str, int] | None = None
        self.http: Any = None  # msfollowup.web.server.WebServer when [http] port is set

    def start(self) -> tuple[str, int]:
        # cluster hook: before recovery touches tmp/, make sure this node may use the storage root
        if self.cluster is not None:
            self.cluster.join()
        else:
            self._data_dir_lock = cluster.DataDirLock(self.cfg.storage.data_dir).acquire()
        counts = self.store.recover()
        for folder in ingest_workers.spool_folders(self.store.tmp):  # workers are not started yet
            for k, v in self.store.recover(folder).items():
                counts[k] += v
        if any(counts.values()):
            log.warning("recovered after an interrupted run: indexed=%d discarded=%d", counts["indexed"], counts["discarded"])
        self.pipeline_worker.start()
        self.completion.start()
        self.outbox.start()
        if self.live is not None:  # issue 15
            self.live.start()
        if self.notify is not None:  # issue 15
            self.notify.start()
        if self.cluster is not None:
            self._start_cluster()
        elif self.cfg.scheduler.enabled:
            self.scheduler = jobs.start_scheduler(self)
        if self.cfg.http.port is not None:  # before the node: once it answers C-ECHO, the web answers too
            self.http = _start_web(self)
        self.address = self.node.start()
        if self.ingest is not None:
            assert self.node.server is not None
            self.ingest.start(self.node.server)
        log.info("listening ae_title=%s host=%s port=%d", self.cfg.node.ae_title, *self.address)
        if self.cluster is not None:
            self.cluster.set_address("%s:%d" % self.address)
        return self.address

    def _start_cluster(self) -> None:
        """Cluster hook: the periodic jobs and the worklist export run on the leader only."""
        assert self.cluster is not None
        scheduler = jobs.Scheduler(self, jobs.default_jobs(self.cfg)) if self.cfg.scheduler.enabled else None
        if scheduler is not None:
            scheduler.node_id = self.cluster.name  # scheduler_jobs.claimed_by names the node
        cfg = self.cfg

        def export() -> None:
            with self.db.session() as s:
                worklist.sync_export(s, cfg)

        self.cluster.start(run_jobs=scheduler.run_due if scheduler else None,
                           on_leadership=scheduler.sync if scheduler else None,
                           export=export if cfg.worklist.export_dir is not None else None)

    def _on_complete(self, study_uid: str, version: int) -> None:
        self.metrics.inc("studies_completed_total")
        self.pipeline_worker.wake()

    def health_checks(self) -> dict[str, Callable[[], None]]:
        """What /healthz verifies: the index answers and takes writes, tmp/ takes files, the node
        listens and (when enabled) the scheduler runs."""
        checks: dict[str, Callable[[], None]] = {
            "database": lambda: check_database(self.db),
            "storage": lambda: check_storage(self.store.tmp),
            "node": self.node.check_health,
        }
        if self.ingest is not None:
            checks["ingest"] = self.ingest.check_health
        if self.cluster is not None:
            checks["cluster"] = self.cluster.check_heartbeat
        elif self.cfg.scheduler.enabled:
            checks["scheduler"] = lambda: _require(self.scheduler is not None and self.scheduler.running, "not running")
        return checks

    def dead_parts(self) -> list[str]:
        """Parts that stopped working: the accept loop or a worker thread ended. Liveness only: a slow
        database or a long pipeline pass is no reason for systemd to restart the node."""
        alive = {
            "node": self.node.is_serving(),
            "pipeline": self.pipeline_worker.is_alive(),
            "completion": self.completion.is_alive(),
            "outbox": self.outbox.is_alive(),
        }
        if self.live is not None:  # issue 15
            alive["live"] = self.live.is_alive()
        if self.notify is not None:  # issue 15
            alive["notify"] = self.notify.is_alive()
        if self.cluster is not None:
            alive["cluster"] = self.cluster.alive()
        elif self.cfg.scheduler.enabled:
            alive["scheduler"] = self.scheduler is not None and self.scheduler.running
        if self.http is not None:
            alive["http"] = self.http.is_alive()
        return [name for name, ok in alive.items() if not ok]

    def _stop_workers(self, timeout: float) -> None:
        """Tell every background part to stop at once and give them `timeout` together, not one after the
        other: SIGTERM must end the process soon after the associations' grace period. A pass cut short
        loses nothing: every stage is idempotent and driven by what the database says is missing, so the
        next start finishes it (its open transaction is rolled back, report files are written atomically,
        an SR being sent goes back to pending)."""
        parts = [p for p in (self.scheduler, self.outbox, self.live, self.notify, self.completion,
                             self.pipeline_worker) if p is not None]
        stoppers = [threading.Thread(target=p.stop, kwargs={"timeout": timeout}, name="stop", daemon=True)
                    for p in parts]
        for t in stoppers:
            t.start()
        deadline = time.monotonic() + timeout
        for t in stoppers:
            t.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
        if self.ingest is not None:  # they stop accepting and drain alongside this process
            self.ingest.signal_stop()
        aborted = self.node.stop(self.cfg.node.shutdown_grace_seconds)
        if aborted:
            log.warning("shutdown aborted %d association(s) after the grace period", aborted)
        if self.ingest is not None:
            self.ingest.join(self.cfg.node.shutdown_grace_seconds + WORKER_STOP_SECONDS)
        self.store.close()  # rows answered and not yet committed (files/behind.py)
        self._stop_workers(WORKER_STOP_SECONDS)
        if self.cluster is not None:
            self.cluster.stop()
        if self._data_dir_lock is not None:
            self._data_dir_lock.release()
        self.db.dispose()
        log.info("stopped")


def _start_web(service: Service) -> Any:
    """The one HTTP listener: pages, API, /metrics, /healthz. With no web user yet, print once a
    one-time address (loopback, 30 minutes) that creates the first admin."""
    from msfollowup.app.accounts import has_users
    from msfollowup.web.app import SETUP_MINUTES, SetupToken, WebContext
    from msfollowup.web.server import TLSFileError, WebServer

    http = service.cfg.http
    assert http.port is not None
    ctx = WebContext(service.cfg, service.db, service.metrics, service.health_checks)
    if service.live is not None:
        ctx.extra["live_broker"] = service.live.broker
    with service.db.session() as s:
        if not has_users(s):
            ctx.setup = SetupToken.new()
    try:
        server = WebServer(http.host, http.port, ctx, http.tls)
    except TLSFileError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"http.port: cannot listen on {http.host}:{http.port}: {exc.strerror}") from None
    host, port = server.start()
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if http.tls else "http"
    log.info("web interface at %s://%s:%d/ (metrics /metrics, health /healthz, API /api/v1/)", scheme, shown, port)
    if ctx.setup is not None:
        # Console/journal only, once: whoever reads the service's own log may create the first admin.
        log.warning("no web user yet: create the first admin within %d minutes at %s://127.0.0.1:%d/setup/%s "
                    "(from this machine), or run `msfollowup user add NAME --role admin --password-stdin`",
                    SETUP_MINUTES, scheme, port, ctx.setup.secret)
    return server


def _require(condition: bool, failure: str) -> None:
    if not condition:
        raise RuntimeError(failure)


# How long a thread may hold the interpreter lock while another waits for it (CPython's default: 5 ms).
# Every association thread gives the lock up at each read, fsync and commit, and then waits for it
# behind whichever thread runs Python code (another association, the live check, the completion poll):
# with the default each such wait may last up to 5 ms. At 0.5 ms, benchmarks/ingest.py measured
# +9-12% instances/s with one sender and +10-14% with four (interleaved runs, same machine).
SWITCH_INTERVAL_SECONDS = 0.0005


def run_service(cfg: Config) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    setup_logging(cfg.logging)
    # The systemd watchdog kills a stalled node with SIGABRT: leave every thread's stack in the journal
    # (code locations only, no data) so the hang can be found.
    faulthandler.enable(all_threads=True)
    stop = threading.Event()

    def _on_signal(signum: signal.Signals) -> None:
        log.info("signal %s received, shutting down", signum.name)
        stop.set()

    signals.on_first((signal.SIGTERM, signal.SIGINT), _on_signal)  # once: see runtime/signals.py
    notifier = sdnotify.Notifier.from_environ()
    service = Service(cfg)
    try:
        host, port = service.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", cfg.node.host, cfg.node.port, exc.strerror)
        return 2
    heap.settle()  # after start-up: later collections skip what lives as long as the process
    status = f"listening on {host}:{port}{' (TLS)' if cfg.node.tls else ''}"
    notifier.ready(status)
    supervise(service, notifier, stop, status)
    notifier.stopping()
    service.stop()
    return 0


def supervise(service: Service, notifier: sdnotify.Notifier, stop: threading.Event, status: str) -> None:
    """Until `stop`: check the parts are alive and, only while they all are, ping the systemd watchdog.

    A dead part cannot restart itself; withholding the ping lets systemd kill and restart the node
    (WatchdogSec= in systemd/msfollowup.service). Outside systemd the failure is still logged.
    """
    interval = notifier.watchdog_interval or 1.0
    dead: list[str] = []
    while True:
        now_dead = service.dead_parts()
        if now_dead != dead:
            if now_dead:
                log.error("not healthy: %s stopped; withholding watchdog pings", ", ".join(now_dead))
                notifier.status(f"not healthy: {', '.join(now_dead)} stopped")
            else:
                log.info("healthy again")
                notifier.status(status)
            dead = now_dead
        if not dead:
            notifier.watchdog()
        if stop.wait(interval):
            return

