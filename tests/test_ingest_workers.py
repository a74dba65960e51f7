"""`[node] processes = 2`: a second process receives the connections the main process hands it
(runtime/ingest_workers.py).

Every acknowledged instance is indexed whichever process took its association, the worker's counts
reach the main process's /metrics, a worker that dies is started again, and the worker never outlives
the service (SIGTERM or kill -9). The locks the processes share are held across processes.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hostileutil import healthz, mr_dataset, store
from nodeutil import RunningNode, free_port, tcp_sockets


class _Node(RunningNode):
    def __init__(self, tmp: Path, processes: int = 2) -> None:
        self.http_port = free_port()
        super().__init__(tmp, sections={"node": {"processes": processes}, "http": {"port": self.http_port}})

    def stored_total(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'^msfollowup_instances_total\{outcome="stored"\} ([0-9.e+]+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    def worker_pid(self, nth: int = 1) -> int:
        """The pid of the nth start of ingest worker 1."""
        def started() -> list[str] | None:
            pids = re.findall(r"ingest worker 1 listening pid=(\d+)", self.log())
            return pids if len(pids) >= nth else None
        return int(self.wait_for(f"ingest worker 1 not started {nth} time(s)", started)[nth - 1])


# A worker told to stop lets its associations finish for shutdown_grace_seconds (5 s in these tests);
# on a loaded 2-core machine one worker once needed more than 10 s in all.
GONE_SECONDS = 20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (dead) parent's reaper counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_both_processes_receive_and_every_acknowledged_instance_is_indexed(tmp_path: Path) -> None:
    node = _Node(tmp_path / "node").start()
    try:
        pid = node.worker_pid()
        sets = [[mr_dataset() for _ in range(4)] for _ in range(12)]  # 12 associations, 4 instances each
        with ThreadPoolExecutor(6) as pool:
            statuses = [s for out in pool.map(lambda items: store(node, items), sets) for s in out]
        assert statuses == [0x0000] * 48
        from msfollowup.files.store import Instance

        with node.db.session() as s:
            indexed = {uid for (uid,) in s.query(Instance.sop_instance_uid)}
        assert {ds.SOPInstanceUID for items in sets for ds in items} <= indexed
        # 12 associations from 6 senders at once, handed to the least busy process: the worker took
        # some, and its counts reached the main process's /metrics.
        log = node.log()
        assert "[ingest 1] " in log and re.search(r"\[ingest 1\] association released .* stored=4", log), log[-3000:]
        assert node.wait_for("the worker's counts never reached /metrics", lambda: node.stored_total() == 48, 10)
        assert _alive(pid)
    finally:
        node.stop()
    assert _gone(pid, GONE_SECONDS), "the ingest worker outlived a SIGTERM'd service"


def _connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """Established TCP connections on local `port` held open by each process."""
    return {pid: tcp_sockets(pid, "01", port) for pid in pids}


def test_the_main_process_hands_each_connection_to_the_least_busy_process(tmp_path: Path) -> None:
    """Eight associations held open at once are served four and four. With the kernel choosing by a
    hash of the addresses (SO_REUSEPORT, the first design) an even split came out 27% of the time."""
    from hostileutil import GOOD_HOST, scu

    node = _Node(tmp_path / "node").start()
    held = []
    try:
        worker = node.worker_pid()
        assert node.proc is not None
        for _ in range(8):
            assoc = scu().associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=(GOOD_HOST, 0))
            assert assoc.is_established
            held.append(assoc)
        counts = _connections_by_pid(node.port, [node.proc.pid, worker])
        assert counts == {node.proc.pid: 4, worker: 4}, counts
        assert all(a.send_c_echo().Status == 0 for a in held)  # both sides serve what they took
        for assoc in held[:4]:
            assoc.release()
        held = held[4:]
        # the ends were counted: the next four go where the four released ones were served
        node.wait_for("released associations still counted", lambda: sum(
            _connections_by_pid(node.port, [node.proc.pid, worker]).values()) == 4 or None, 10)
        before = _connections_by_pid(node.port, [node.proc.pid, worker])
        for _ in range(4):
            assoc = scu().associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=(GOOD_HOST, 0))
            assert assoc.is_established
            held.append(assoc)
        assert _connections_by_pid(node.port, [node.proc.pid, worker]) == {node.proc.pid: 4, worker: 4}, before
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
        node.stop()


def test_the_worker_dies_with_a_killed_service(tmp_path: Path) -> None:
    node = _Node(tmp_path / "node").start()
    pid = node.worker_pid()
    node.kill9()
    assert _gone(pid, GONE_SECONDS), "the ingest worker outlived kill -9 of the service"
    # and the port is free again for the next start, which recovers and serves
    node.start()
    try:
        assert store(node, [mr_dataset()]) == [0x0000]
    finally:
        node.stop()


def test_a_worker_that_dies_is_started_again_and_serves(tmp_path: Path) -> None:
    node = _Node(tmp_path / "node").start()
    try:
        first = node.worker_pid()
        assert healthz(node.http_port)[0] == 200
        os.kill(first, 9)
        down = node.wait_for("/healthz never reported the dead worker",
                             lambda: (r := healthz(node.http_port))[0] == 503 and r or None, 5)
        assert "ingest process(es) 1 not running" in str(down[1]["checks"]), down
        second = node.worker_pid(2)
        assert second != first and _alive(second)
        assert "ingest worker 1 ended (exit code -9); starting it again" in node.log()
        items = [[mr_dataset() for _ in range(2)] for _ in range(8)]  # 8 associations: both processes
        with ThreadPoolExecutor(4) as pool:
            assert [s for out in pool.map(lambda i: store(node, i), items) for s in out] == [0] * 16
        assert healthz(node.http_port)[0] == 200
    finally:
        node.stop()


def test_spool_folders_of_ingest_processes_are_recovered_at_start_whatever_processes_says(tmp_path: Path) -> None:
    node = _Node(tmp_path / "node", processes=1)
    leftover = node.data_dir / "tmp" / "ingest-3" / "cut-short.part"  # a worker of an earlier run, killed
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a data set")
    node.start()
    try:
        assert not leftover.exists()
        assert "recovered after an interrupted run: indexed=0 discarded=1" in node.log()
    finally:
        node.stop()


def test_the_sop_and_index_locks_are_held_across_processes(tmp_path: Path) -> None:
    """A second open file description (as another process has) cannot take a held lock."""
    import fcntl

    from msfollowup.db import Database
    from msfollowup.db.groupcommit import GroupCommitter
    from msfollowup.files.soplocks import SopLocks

    def free(path: Path) -> bool:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    locks = SopLocks()
    locks.share(tmp_path / "locks")
    with locks.held("1.2.3"):
        (stripe,) = list((tmp_path / "locks").iterdir())
        assert not free(stripe)
    assert free(stripe)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}", auto_upgrade=True)
    assert GroupCommitter(db.engine).run(lambda _tx: not free(tmp_path / "index.sqlite3-writer.lock"))
    assert free(tmp_path / "index.sqlite3-writer.lock")
