"""Run the real `msfollowup serve` as a subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

from msfollowup.net import worklist_scp as mwl_scp
from msfollowup.app import worklist
from msfollowup.site.config import Config, load_config
from msfollowup.db import Database, utcnow
from msfollowup.db.checks import StudyCheck
from msfollowup.app.plans import DueExam
from msfollowup.files.store import Instance, Study

T = TypeVar("T")
DCMTK = Path("/usr/bin")
DEFAULT_ALLOW = ("STORESCU", "ECHOSCU", "FINDSCU", "PYNETDICOM", "TESTSCU", "MPPSSCU")


_PORTS = random.Random()  # seeded from the OS per process: parallel workers draw differently


def tcp_sockets(pid: int, state: str, port: int | None = None) -> int:
    """TCP sockets the process holds in `state` (/proc/net/tcp's hex code: "01" established, "0A"
    listening), on local `port` if given: the process's socket inodes matched against the tables."""
    try:
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:  # the process ended
        return 0
    inodes = {t[8:-1] for t in targets if t.startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state and (port is None or fields[1].endswith(f":{port:04X}")):
                found.add(fields[9])
    return len(inodes & found)


def free_port() -> int:
    """A loopback port nobody holds, drawn below the kernel's ephemeral range (32768-60999 by default).
    A port taken from port 0 is an ephemeral one, which the suite's many outgoing connections may take
    before the server meant for it binds it: a storescp in CI lost that race once."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = _PORTS.randrange(10000, max(low, 20000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port found")


def due_exam(patient_id: str, target: dt.date, purpose: str = "brain", profile_id: str = "ms-brain-routine",
             earliest: dt.date | None = None, latest: dt.date | None = None) -> DueExam:
    """A next exam as plans.py computes it (window target -30/+60 days unless given), for worklist tests."""
    return DueExam(
        patient_id=patient_id, purpose=purpose, profile_id=profile_id,
        earliest=earliest or target - dt.timedelta(days=30), target=target,
        latest=latest or target + dt.timedelta(days=60), rule_ids=("stable-dmt",), reason="stable on DMT: yearly",
        recall=False, recall_items=(), based_on_study=None,
    )


def add_study_check(db: Database, patient_id: str, uid: str, version: int, date: str, verdict: str,
                    failed: Sequence[str] = ()) -> None:
    """A checked study version as the pipeline writes it: a passing T2 and a failure per id in `failed`."""
    reqs = [{"id": "sequence.t2", "status": "pass", "message": "T2 present"}]
    reqs += [{"id": f, "status": "fail", "message": f"{f} missing"} for f in failed]
    with db.session() as s:
        if s.get(Study, uid) is None:
            now = utcnow()
            s.add(Study(study_uid=uid, patient_id=patient_id, study_date=date, first_received=now, last_received=now))
            s.flush()
        s.add(StudyCheck(
            study_uid=uid, version=version, patient_id=patient_id, study_date=date, profile_id="ms-brain-routine",
            profile_version="1", verdict=verdict, result_json=json.dumps({"requirements": reqs}), created_at=utcnow(),
        ))


@contextmanager
def worklist_scp(db: Database, cfg: Config, extra_handlers: Sequence[tuple[Any, Any]] = ()) -> Iterator[int]:
    """The worklist and MPPS handlers on a plain pynetdicom AE on a free loopback port (no whole node).
    `extra_handlers` are bound after them (pynetdicom keeps the last handler bound to a notification event)."""
    ae = AE(ae_title="MSFOLLOWUP")
    for uid in worklist.SUPPORTED_CONTEXTS:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[*mwl_scp.event_handlers(db, cfg), *extra_handlers])
    assert server is not None
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, Any]], allow: Iterable[tuple[str, str | None]],
                 extra: str = "") -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for ae, host in allow:
        lines.append("[[access.allow]]")
        lines.append(f"ae_title = {_toml_value(ae)}")
        if host:
            lines.append(f"host = {_toml_value(host)}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


_started: list[subprocess.Popen[bytes]] = []


def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Remember a started node process: whatever a failing test leaves running is killed when the test
    process (an xdist worker) exits, so one failure does not leave servers eating the CPU of the rest."""
    _started.append(proc)
    return proc


@atexit.register
def _kill_leftovers() -> None:
    for proc in _started:
        if proc.poll() is None:
            proc.kill()


class RunningNode:
    """A started `msfollowup serve`; its log goes to <tmp>/serve.log."""

    def __init__(self, tmp: Path, stable_seconds: float = 1.0, allow: Iterable[tuple[str, str | None]] | None = None,
                 sections: dict[str, dict[str, Any]] | None = None, extra: str = "", port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.ae_title = "MSFOLLOWUP"
        self.data_dir = tmp / "var"
        tmp.mkdir(parents=True, exist_ok=True)
        merged: dict[str, dict[str, Any]] = {
            "node": {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, "shutdown_grace_seconds": 5},
            "storage": {"data_dir": str(self.data_dir)},
            "completion": {"stable_seconds": stable_seconds, "poll_seconds": 0.2},
        }
        for name, values in (sections or {}).items():
            merged.setdefault(name, {}).update(values)
        self.config_path = write_config(
            tmp / "msfollowup.toml", merged, allow if allow is not None else [(a, None) for a in DEFAULT_ALLOW], extra
        )
        self.log_path = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._db: Database | None = None

    # -- process control

    def start(self, timeout: float = 30) -> RunningNode:
        log = self.log_path.open("ab")
        self.proc = track(subprocess.Popen(
            [sys.executable, "-m", "msfollowup", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"msfollowup exited with {self.proc.returncode}:\n{self.log()}")
            if self.echo():
                return self
            time.sleep(0.1)
        # A node that did not answer in time must not live on: left running it would load the machine and
        # make the next tests miss their deadlines too (seen as a cascade on a loaded 2-core machine).
        self.proc.kill()
        self.proc.wait(10)
        raise RuntimeError(f"msfollowup did not start listening within {timeout:g} s:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the node process so far (VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
        """Poll `probe` until it returns something truthy; fail with `what` and the node's log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"{what} within {timeout} s; node log:\n{self.log()[-4000:]}")

    # -- DICOM helpers

    def echo(self, attempts: int = 3) -> bool:
        """C-ECHO answered with Success; a few tries (2 s each) so a loaded CI machine's scheduling delay
        is not taken for a frozen node, which fails every try."""
        for _ in range(attempts):
            ae = AE(ae_title="ECHOSCU")
            ae.add_requested_context("1.2.840.10008.1.1")
            ae.acse_timeout = ae.network_timeout = 2
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
            if assoc.is_established:
                status = assoc.send_c_echo()
                assoc.release()
                if status and status.Status == 0:
                    return True
            time.sleep(0.5)
        return False

    def storescu(self, paths: Iterable[Path], *extra: str, aet: str = "STORESCU") -> subprocess.CompletedProcess[str]:
        args = [str(DCMTK / "storescu"), "-aet", aet, "-aec", self.ae_title, *extra, "127.0.0.1", str(self.port)]
        return subprocess.run(args + [str(p) for p in paths], capture_output=True, text=True, timeout=600)

    # -- index helpers

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(load_config(self.config_path).storage.database_url)
        return self._db

    def study(self, study_uid: str) -> Study | None:
        with self.db.session() as s:
            return s.get(Study, study_uid)

    def instances(self, study_uid: str) -> list[Instance]:
        with self.db.session() as s:
            return list(s.query(Instance).filter(Instance.study_uid == study_uid))

    def wait_complete(self, study_uid: str, version: int = 1, timeout: float = 30) -> Study:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.study(study_uid)
            if st is not None and st.state == "complete" and st.version >= version:
                return st
            time.sleep(0.1)
        raise AssertionError(f"study did not complete (version {version}) within {timeout} s")


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta (what travels on the wire)."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM", f"{path} is not a Part 10 file"
    # (0002,0000) UL group length is the first element of the file meta, explicit VR little endian.
    assert raw[132:136] == b"\x02\x00\x00\x00"
    group_len = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_len:]


class TcpBalancer:
    """Debian's HAProxy in TCP mode, round robin per connection, in front of `ports` on loopback (the
    load balancer of docs/cluster.md); `available()` is False when it is not installed."""

    BINARY = Path("/usr/sbin/haproxy")

    def __init__(self, folder: Path, ports: Sequence[int], ae_title: str = "MSFOLLOWUP") -> None:
        self.port = free_port()
        self.ae_title = ae_title
        servers = "\n".join(f"    server n{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
        self.config = folder / "haproxy.cfg"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "global\n    maxconn 256\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n"
            f"    timeout server 120s\n    retries 2\n    option redispatch\nfrontend dicom\n"
            f"    bind 127.0.0.1:{self.port}\n    default_backend nodes\nbackend nodes\n    balance roundrobin\n"
            f"{servers}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> bool:
        return cls.BINARY.exists()

    def __enter__(self) -> TcpBalancer:
        self.proc = subprocess.Popen([str(self.BINARY), "-f", str(self.config), "-db"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Ready = a C-ECHO through it succeeds (a bare TCP probe would be passed on to a node and reset
        # there: a connection reset logged by the node).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ae = AE(ae_title="ECHOSCU")
            ae.add_requested_context("1.2.840.10008.1.1")
            ae.acse_timeout = ae.network_timeout = 2
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
            if assoc.is_established:
                assoc.release()
                return self
            time.sleep(0.1)
        raise RuntimeError("haproxy did not pass a C-ECHO on")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


def performed_series(files: list[Path]) -> list[Dataset]:
    """Performed Series Sequence items listing every instance, as a modality's final N-SET does."""
    series: dict[str, Dataset] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        item = series.get(ds.SeriesInstanceUID)
        if item is None:
            item = series[ds.SeriesInstanceUID] = Dataset()
            item.SeriesInstanceUID = ds.SeriesInstanceUID
            item.SeriesDescription = ds.get("SeriesDescription", "")
            item.ReferencedImageSequence = []
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        item.ReferencedImageSequence.append(ref)
    return list(series.values())


def spool_left(data_dir: Path) -> list[str]:
    """Files in the node's tmp/ that are leftovers: everything but the empty spool names the node makes
    ahead of use (files/spool.py `_Ready`; a used spool file holds at least the preamble and file meta)."""
    return sorted(p.name for p in (data_dir / "tmp").iterdir()
                  if not (p.is_file() and p.suffix == ".part" and p.stat().st_size == 0 and p.stat().st_nlink == 1))
