"""Ingest processes that receive beside the main process (`[node] processes` > 1).

Receiving is bound by Python CPU under one interpreter lock: with several senders one `serve` process
uses about one core whatever the machine has. With `processes = N` the service starts N-1 more
processes, each a DICOM node with its own index connection and its own spool folder (`tmp/ingest-K`),
and the same durability path (files/store.py: fsync, link, fsync, commit before or right after
Success; each process has its own index writer, files/behind.py). Index
transactions take turns on one lock file across the processes (db/rawsqlite.py), and one SOP Instance
UID is linked and indexed by one process at a time (files/soplocks.py). Everything after the index
(completion, checks, reports, live checks, worklist, web) stays in the main process, which finds the
instances in the index as before.

Who serves a connection: the main process accepts every connection on the DICOM port and hands it,
still unread, to the process serving the fewest connections at that moment (itself included; a worker
on a tie), over a Unix socket pair per worker (SCM_RIGHTS). The worker serves it exactly as one it
accepted (the same half-open bounds, ARTIM, TLS handshake, access control) and reports back, one byte,
when it ends. First built with SO_REUSEPORT (each process listening on the port, the kernel choosing
by a hash of the addresses): four senders were then spread 2:2 over two processes only 3 times in 8,
and the busiest process set the pace. A worker's own listening socket is an unused ephemeral port on
loopback (the node needs one); nothing is announced there. A worker that cannot take a connection (it
died, its socket is full) leaves it to the main process.

What a worker adds to the main process's view:
* its counters and histograms are forwarded to the main process's /metrics every FORWARD_SECONDS
  (`ForwardingMetrics`; values, never labels beyond the declared ones);
* its log lines start with "[ingest K] ";
* it dies with the main process (PR_SET_PDEATHSIG), so a kill -9 of the service leaves no worker
  behind; a worker that dies on its own is started again (its spool folder recovered first);
* `max_associations` applies per process.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msfollowup.app.metrics import Metrics
from msfollowup.site.config import Config
from msfollowup.runtime import heap, signals

if TYPE_CHECKING:
    from msfollowup.net.compat import GuardedServer

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


def worker_main(cfg: Config, index: int, tmp_root: Path, parent: int, conn: Connection,
                handed: socket.socket) -> None:
    """A worker process: one DICOM node serving the connections the main process hands over on
    `handed`, until SIGTERM (or the main process ends)."""
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
    signals.on_first([signal.SIGTERM], lambda _: stop.set())  # the parent-death SIGTERM comes in bursts
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    db = Database(cfg.storage.database_url, cfg.storage.busy_timeout_seconds, auto_upgrade=False)
    store = InstanceStore(cfg.storage.data_dir, db, cfg.storage.duplicate_policy, cfg.storage.fsync,
                          cfg.storage.index_commit)
    store.tmp = spool_folder(tmp_root, index)
    store.remember_headers = False  # the live check and the study check read in the main process
    store.tmp.mkdir(parents=True, exist_ok=True)
    store.sop_locks.share(lock_folder(tmp_root))
    store.recover()  # this worker's own spool folder: what a crash of the previous worker left
    metrics = ForwardingMetrics()
    node = Node(cfg, store, extra_handlers=worklist_scp.event_handlers(db, cluster.stage_config(cfg)),
                extra_contexts=list(worklist.SUPPORTED_CONTEXTS), metrics=metrics)
    node.start()
    assert node.server is not None
    _serve_handed(node.server, handed)
    heap.settle()  # as the main process does once it listens (runtime/heap.py)
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
        store.close()  # rows answered and not yet committed (files/behind.py)
        try:
            conn.send(("metrics", metrics.drain()))
        except OSError:
            pass
        db.dispose()


def _worker_node(cfg: Config) -> Config:
    """A worker's node: the main process's settings on an unused ephemeral loopback port (it serves
    handed connections only), and no workers of its own."""
    loopback = "::1" if ":" in cfg.node.host else "127.0.0.1"
    node = cfg.node.model_copy(update={"host": loopback, "port": 0, "processes": 1})
    return cfg.model_copy(update={"node": node})


def _serve_handed(server: GuardedServer, handed: socket.socket) -> None:
    """In a worker: serve every connection that arrives on `handed`; one byte back per ended one."""
    sending = threading.Lock()

    def finished() -> None:
        with sending:
            try:
                handed.sendall(b"\x01")
            except OSError:  # the main process is gone; this process follows it
                pass

    def receive() -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(handed, 64, 16)
            except OSError:
                return
            if not data and not fds:  # the main process closed its end
                return
            for fd in fds:
                server.serve_handed(socket.socket(fileno=fd))

    server.on_finished = finished
    threading.Thread(target=receive, name="handed-connections", daemon=True).start()


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
        # the hand-off (module docstring): each running worker's socket and its connections right now
        self._balance = threading.Lock()
        self._channels: dict[int, socket.socket] = {}
        self._serving: dict[int, int] = {}
        self._local: GuardedServer | None = None

    def start(self, server: GuardedServer) -> None:
        """Start the workers and hand them connections the main node's `server` accepts; returns once
        they all serve. Each worker then has a thread of its own here, which lives as long as the
        service: a worker gets PR_SET_PDEATHSIG's SIGTERM when the *thread* that started it ends, so a
        worker started again is started by that same thread."""
        self.cfg = _worker_node(self.cfg)
        self._local = server
        started = [(k, *self._start_one(k)) for k in range(1, self.count)]
        for k, conn, channel in started:
            if not self._ready(k, conn, channel):
                raise RuntimeError(f"ingest worker {k} did not start (its error is above)")
        server.handoff = self.hand_off
        for k, conn, _channel in started:
            t = threading.Thread(target=self._watch, args=(k, conn), name=f"ingest-{k}", daemon=True)
            t.start()
            self._threads.append(t)

    def _start_one(self, index: int) -> tuple[Connection, socket.socket]:
        mine, theirs = self._ctx.Pipe(duplex=False)
        channel, handed = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = self._ctx.Process(target=worker_main,
                                 args=(self.cfg, index, self.tmp_root, os.getpid(), theirs, handed),
                                 name=f"msfollowup-ingest-{index}", daemon=True)
        proc.start()
        theirs.close()
        handed.close()
        self._procs[index] = proc
        return mine, channel

    def _ready(self, index: int, conn: Connection, channel: socket.socket) -> bool:
        try:
            ready = bool(conn.poll(60)) and conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            channel.close()
            return False
        log.info("ingest worker %d listening pid=%d", index, self._procs[index].pid)
        with self._balance:
            self._channels[index], self._serving[index] = channel, 0
        threading.Thread(target=self._count_finished, args=(index, channel), name=f"ingest-{index}-ends",
                         daemon=True).start()
        return True

    def hand_off(self, request: socket.socket) -> bool:
        """The main acceptor's choice for one new connection: the worker serving the fewest connections
        takes it (True) unless this process serves fewer (False: serve it here)."""
        with self._balance:
            here = self._local.serving if self._local is not None else 0
            loads = sorted((n, k) for k, n in self._serving.items())
            if not loads or loads[0][0] > here:
                return False
            index = loads[0][1]
            try:  # never blocks the accept loop: a worker that does not read is skipped
                socket.send_fds(self._channels[index], [b"c"], [request.fileno()], socket.MSG_DONTWAIT)
            except OSError as exc:
                log.warning("ingest worker %d did not take a connection (%s); served here", index, exc.strerror or exc)
                return False
            self._serving[index] += 1
            return True

    def _count_finished(self, index: int, channel: socket.socket) -> None:
        """A byte per connection the worker finished; end of stream when it ends."""
        while True:
            try:
                data = channel.recv(4096)
            except OSError:
                data = b""
            with self._balance:
                if self._channels.get(index) is not channel:
                    break
                if not data:
                    del self._channels[index], self._serving[index]
                    break
                self._serving[index] = max(0, self._serving[index] - len(data))
        channel.close()

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
            conn, channel = self._start_one(index)
            if not self._ready(index, conn, channel):
                log.error("ingest worker %d did not start (its error is above)", index)

    def check_health(self) -> None:
        """For /healthz: every worker runs (one being started again counts as down: less capacity)."""
        down = [k for k in range(1, self.count) if k not in self._procs or not self._procs[k].is_alive()]
        if down:
            raise RuntimeError(f"ingest process(es) {', '.join(map(str, down))} not running")

    def signal_stop(self) -> None:
        """SIGTERM every worker: each lets its associations finish (grace period). New connections
        are no longer handed to them: the main process serves them until it stops accepting too."""
        self._stopping.set()
        if self._local is not None:
            self._local.handoff = None
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
