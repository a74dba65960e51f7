"""Ingest processes that share the DICOM port (`[node] processes` > 1).

Receiving is bound by Python CPU under one interpreter lock: with several senders one `serve` process
uses about one core whatever the machine has. With `processes = N` the service starts N-1 more
processes, each a DICOM node on the same address (SO_REUSEPORT: the kernel spreads new connections
over the listening sockets), each with its own index connection and its own spool folder
(`tmp/ingest-K`), and the same durability path (files/store.py: fsync, link, fsync, commit before
Success). Index transactions take turns on one lock file across the processes (db/rawsqlite.py), and
one SOP Instance UID is linked and indexed by one process at a time (files/soplocks.py). Everything
after the index (completion, checks, reports, live checks, worklist, web) stays in the main process,
which finds the instances in the index as before.

What a worker adds to the main process's view:
* its counters and histograms are forwarded to the main process's /metrics every FORWARD_SECONDS
  (`ForwardingMetrics`; values, never labels beyond the declared ones);
* its log lines start with "[ingest K] ";
* it dies with the main process (PR_SET_PDEATHSIG), so a kill -9 of the service leaves no worker
  holding the port; a worker that dies on its own is started again (its spool folder recovered first);
* `max_associations` applies per process.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from msfollowup.app.metrics import Metrics
from msfollowup.site.config import Config

log = logging.getLogger(__name__)

FORWARD_SECONDS = 0.5
RESTART_PAUSE = 1.0
_PR_SET_PDEATHSIG = 1


class ForwardingMetrics(Metrics):
    """A worker's metrics: counted as usual, and queued for the main process's registry."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[tuple[str, str, dict[str, str] | None, float]] = []
        self._pending_lock = threading.Lock()

    def inc(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        super().inc(name, labels, value)
        with self._pending_lock:
            self._pending.append(("inc", name, dict(labels) if labels else None, value))

    def observe(self, name: str, seconds: float) -> None:
        super().observe(name, seconds)
        with self._pending_lock:
            self._pending.append(("observe", name, None, seconds))

    def drain(self) -> list[tuple[str, str, dict[str, str] | None, float]]:
        with self._pending_lock:
            out, self._pending = self._pending, []
        return out


def apply(metrics: Metrics, batch: list[tuple[str, str, dict[str, str] | None, float]]) -> None:
    """A worker's batch into the main process's metrics (Metrics refuses anything undeclared)."""
    for kind, name, labels, value in batch:
        if kind == "inc":
            metrics.inc(name, labels, value)
        elif kind == "observe":
            metrics.observe(name, value)


class _Prefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when the main process ends, however it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF below still ends the worker
        pass
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(0)


def spool_folder(tmp_root: Path, index: int) -> Path:
    """Worker `index`'s spool folder, inside the main process's tmp/."""
    return tmp_root / f"ingest-{index}"


def spool_folders(tmp_root: Path) -> list[Path]:
    """Every worker spool folder there is, of this run's workers or an earlier run's (recovered at start)."""
    return sorted(p for p in tmp_root.glob("ingest-*") if p.is_dir())


def lock_folder(tmp_root: Path) -> Path:
    """Where the processes of one service find the SOP Instance UID lock files (files/soplocks.py):
    beside their spool folders, in the main process's tmp/."""
    return tmp_root / "locks"


def worker_main(cfg: Config, index: int, tmp_root: Path, parent: int, conn: Connection) -> None:
    """A worker process: one DICOM node on the shared port until SIGTERM (or the main process ends)."""
    _die_with_parent(parent)
    from msfollowup.app import cluster, worklist
    from msfollowup.db import Database
    from msfollowup.files.store import InstanceStore
    from msfollowup.net import worklist_scp
    from msfollowup.net.node import Node
    from msfollowup.runtime.service import SWITCH_INTERVAL_SECONDS, setup_logging

    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # as in the main process (runtime/service.py)
    setup_logging(cfg.logging)
    for handler in logging.getLogger().handlers:  # which process says it, in the one shared journal
        handler.addFilter(_Prefix(f"[ingest {index}] "))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    db = Database(cfg.storage.database_url, cfg.storage.busy_timeout_seconds, auto_upgrade=False)
    store = InstanceStore(cfg.storage.data_dir, db, cfg.storage.duplicate_policy, cfg.storage.fsync)
    store.tmp = spool_folder(tmp_root, index)
    store.tmp.mkdir(parents=True, exist_ok=True)
    store.sop_locks.share(lock_folder(tmp_root))
    store.recover()  # this worker's own spool folder: what a crash of the previous worker left
    metrics = ForwardingMetrics()
    node = Node(cfg, store, extra_handlers=worklist_scp.event_handlers(db, cluster.stage_config(cfg)),
                extra_contexts=list(worklist.SUPPORTED_CONTEXTS), metrics=metrics)
    node.start()
    conn.send(("ready", os.getpid()))
    try:
        while not stop.wait(FORWARD_SECONDS):
            if os.getppid() != parent:
                break
            batch = metrics.drain()
            if batch:
                conn.send(("metrics", batch))
    finally:
        node.stop(cfg.node.shutdown_grace_seconds)
        try:
            conn.send(("metrics", metrics.drain()))
        except OSError:
            pass
        db.dispose()


class IngestWorkers:
    """The main process's side: start, watch (restart), forward metrics, stop."""

    def __init__(self, cfg: Config, metrics: Metrics, count: int, tmp_root: Path) -> None:
        self.cfg = cfg
        self.tmp_root = tmp_root  # the main process's spool folder; worker K spools in tmp_root/ingest-K
        self.metrics = metrics
        self.count = count
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads and sockets
        self._procs: dict[int, Any] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, port: int) -> None:
        """Start the workers on the port the main node listens on; returns once they all listen. Each
        worker then has a thread of its own here, which lives as long as the service: a worker gets
        PR_SET_PDEATHSIG's SIGTERM when the *thread* that started it ends, so a worker started again
        is started by that same thread."""
        node = self.cfg.node.model_copy(update={"port": port})
        self.cfg = self.cfg.model_copy(update={"node": node})
        started = [(k, self._start_one(k)) for k in range(1, self.count)]
        for k, conn in started:
            if not self._ready(k, conn):
                raise RuntimeError(f"ingest worker {k} did not start (its error is above)")
        for k, conn in started:
            t = threading.Thread(target=self._watch, args=(k, conn), name=f"ingest-{k}", daemon=True)
            t.start()
            self._threads.append(t)

    def _start_one(self, index: int) -> Connection:
        mine, theirs = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=worker_main,
                                 args=(self.cfg, index, self.tmp_root, os.getpid(), theirs),
                                 name=f"msfollowup-ingest-{index}", daemon=True)
        proc.start()
        theirs.close()
        self._procs[index] = proc
        return mine

    def _ready(self, index: int, conn: Connection) -> bool:
        try:
            ready = bool(conn.poll(60)) and conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if ready:
            log.info("ingest worker %d listening pid=%d", index, self._procs[index].pid)
        return ready

    def _watch(self, index: int, conn: Connection) -> None:
        """Forward the worker's metrics; start it again (from this thread) whenever it ends while the
        service runs."""
        while True:
            while True:
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    break
                if kind == "metrics":
                    apply(self.metrics, payload)
            conn.close()
            if self._stopping.is_set():
                return
            proc = self._procs[index]
            proc.join(5)
            log.error("ingest worker %d ended (exit code %s); starting it again", index, proc.exitcode)
            if self._stopping.wait(RESTART_PAUSE):
                return
            conn = self._start_one(index)
            if not self._ready(index, conn):
                log.error("ingest worker %d did not start (its error is above)", index)

    def check_health(self) -> None:
        """For /healthz: every worker runs (one being started again counts as down: less capacity)."""
        down = [k for k in range(1, self.count) if k not in self._procs or not self._procs[k].is_alive()]
        if down:
            raise RuntimeError(f"ingest process(es) {', '.join(map(str, down))} not running")

    def signal_stop(self) -> None:
        """SIGTERM every worker: each stops accepting and lets its associations finish (grace period)."""
        self._stopping.set()
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    def join(self, timeout: float) -> None:
        """Wait for the workers signalled by signal_stop; kill what is left after `timeout`."""
        deadline = time.monotonic() + timeout
        for proc in self._procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        for t in self._threads:
            t.join(2)
