"""Running under systemd: the unit passes `systemd-analyze verify` and rates <= 2.0 in `systemd-analyze
security`; its files agree with the shipped config; the real service speaks sd_notify (READY=1 once
listening, WATCHDOG=1 while every part is alive, STOPPING=1 on SIGTERM); the node works under the
kernel's write-xor-execute rule that MemoryDenyWriteExecute= imposes."""

from __future__ import annotations

import configparser
import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodeutil import DCMTK, RunningNode, free_port  # noqa: E402

from dicom_fixtures import generate_study  # noqa: E402
from msfollowup.runtime import sdnotify  # noqa: E402
from msfollowup.site.config import CompletionConfig, Config, NodeConfig, StorageConfig, load_config  # noqa: E402
from msfollowup.reports.content import ReportError  # noqa: E402
from msfollowup.reports.files import latest_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "msfollowup.service"
SHIPPED_CONFIG = REPO / "systemd" / "msfollowup.toml"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed: apt-get install systemd (CI must install it)"
)


def _unit() -> configparser.ConfigParser:
    # strict=False: SystemCallFilter= is legitimately given twice; we only read single-valued keys.
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def _exec_start() -> list[str]:
    return shlex.split(_unit()["Service"]["ExecStart"])


def _msfollowup_binary() -> str:
    found = shutil.which("msfollowup")
    if found is None:
        pytest.skip("the msfollowup console script is not on PATH (pip install -e .)")
    return str(Path(found).resolve())


def _local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify needs it to exist)."""
    shipped = UNIT.read_text()
    binary = _exec_start()[0]
    text = shipped.replace(f"ExecStart={binary} ", f"ExecStart={_msfollowup_binary()} ")
    assert text != shipped
    path = tmp_path / "msfollowup.service"  # the unit's name decides its identity in the checks
    path.write_text(text)
    return path


# --- the unit file ---------------------------------------------------------------------------------


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    res = subprocess.run([SYSTEMD_ANALYZE, "verify", str(_local_unit(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "msfollowup.service" not in res.stderr, res.stderr  # warnings about our unit (unknown keys ...)


@needs_analyze
def test_unit_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    res = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(_local_unit(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    match = re.search(r"Overall exposure level for msfollowup\.service: (\d+\.\d)", res.stdout)
    assert match, res.stdout[-2000:]
    assert float(match.group(1)) <= 2.0, res.stdout
    # The directives the brief of a network daemon calls for are really in effect, not just scored.
    for check in ("MemoryDenyWriteExecute=", "NoNewPrivileges=", "ProtectSystem=", "PrivateDevices=",
                  "RestrictAddressFamilies=~AF_PACKET", "SystemCallArchitectures=", "ProtectProc=", "UMask="):
        assert re.search(rf"^\S+ {re.escape(check)}", res.stdout, re.M), check
        assert not re.search(rf"^✗ {re.escape(check)}", res.stdout, re.M), f"{check} not satisfied"


def test_unit_and_shipped_config_agree() -> None:
    service = _unit()["Service"]
    argv = _exec_start()
    assert argv[1:3] == ["serve", "--config"]
    config_path = Path(argv[3])
    assert config_path.parent == Path("/etc") / service["ConfigurationDirectory"]
    cfg = load_config(SHIPPED_CONFIG)  # validates every key of the shipped file
    assert cfg.storage.data_dir == Path("/var/lib") / service["StateDirectory"] == Path(service["WorkingDirectory"])
    assert cfg.storage.database is None or cfg.storage.database.startswith("postgresql")
    # No capability in the unit: the port must not need CAP_NET_BIND_SERVICE.
    assert service["CapabilityBoundingSet"] == "" and cfg.node.port >= 1024
    # systemd must not SIGKILL a node still inside its own shutdown grace period.
    assert cfg.node.shutdown_grace_seconds < float(service["TimeoutStopSec"])
    assert service["Type"] == "notify" and float(service["WatchdogSec"]) > 0
    assert tomllib.loads(SHIPPED_CONFIG.read_text())["node"]["host"] == "0.0.0.0"


# --- sd_notify ---------------------------------------------------------------------------------------


class NotifySocket:
    """What systemd listens on: a unix datagram socket; `messages()` decodes what arrived."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(30)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def until(self, key: str, what: str) -> list[dict[str, str]]:
        """Messages up to and including the first one carrying `key`."""
        got: list[dict[str, str]] = []
        while True:
            try:
                got.append(self.next())
            except TimeoutError:
                raise AssertionError(f"no {key} ({what}); received {got}") from None
            if key in got[-1]:
                return got

    def drain(self) -> list[dict[str, str]]:
        self.sock.settimeout(0.2)
        got = []
        try:
            while True:
                got.append(self.next())
        except TimeoutError:
            return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    if len(path) >= 100:  # sun_path is 108 bytes
        pytest.skip("tmp_path too long for a unix socket address")
    sock = NotifySocket(path)
    yield path, sock
    sock.close()


def test_notifier_is_a_no_op_outside_systemd() -> None:
    n = sdnotify.Notifier.from_environ({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False


def test_notifier_abstract_socket_watchdog_pid_and_unreachable_socket(tmp_path: Path) -> None:
    name = f"msfollowup-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = NotifySocket("\0" + name)
    try:
        n = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
        assert n.watchdog_interval == 1.5
        assert n.ready("listening on x") and n.watchdog()
        assert sock.next() == {"READY": "1", "STATUS": "listening on x"}
        assert sock.next() == {"WATCHDOG": "1"}
    finally:
        sock.close()
    # The watchdog of another process (WATCHDOG_PID) is not ours to feed.
    other = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.enabled and other.watchdog_interval is None
    # Nobody listening: False, never an exception.
    gone = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    assert gone.enabled and gone.ready("x") is False


def _shipped_config_for_test(tmp_path: Path, port: int) -> Path:
    """systemd/msfollowup.toml as shipped, moved to loopback, a free port and a data folder in tmp."""
    text = SHIPPED_CONFIG.read_text()
    for old, new in (('host = "0.0.0.0"', 'host = "127.0.0.1"'), ("port = 11112", f"port = {port}"),
                     ('data_dir = "/var/lib/msfollowup"', f'data_dir = "{tmp_path / "var"}"')):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "msfollowup.toml"
    path.write_text(text)
    return path


def test_service_notifies_ready_watchdog_and_stopping(tmp_path: Path, notify_socket: tuple[str, NotifySocket]) -> None:
    """The unit's own ExecStart command line with the shipped config, as systemd would run it (stderr
    to journald: no time stamp of our own, the priority as a "<N>" prefix)."""
    address, sock = notify_socket
    node = RunningNode(tmp_path / "probe")  # only for its echo probe (ECHOSCU is allowed from 127.0.0.1)
    node.port = free_port()
    config = _shipped_config_for_test(tmp_path, node.port)
    argv = [_msfollowup_binary(), *_exec_start()[1:3], str(config)]
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    with (tmp_path / "serve.log").open("wb") as log:
        st = os.fstat(log.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        first = sock.until("READY", "the node never said it is ready")
        assert len(first) == 1, f"notifications before READY=1: {first}"
        assert first[0]["READY"] == "1" and first[0]["STATUS"] == f"listening on 127.0.0.1:{node.port}"
        assert node.echo(), "READY=1 arrived but the port does not answer C-ECHO"
        pings = 0
        while pings < 3:  # keep coming while the node is alive
            pings += sock.until("WATCHDOG", "no watchdog ping")[-1]["WATCHDOG"] == "1"
        proc.send_signal(signal.SIGTERM)
        last = sock.until("STOPPING", "no STOPPING=1 after SIGTERM")[-1]
        assert last["STOPPING"] == "1"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = (tmp_path / "serve.log").read_text().splitlines()
    assert lines[0] == f"<6>INFO msfollowup: listening ae_title=MSFOLLOWUP host=127.0.0.1 port={node.port}"
    assert lines[-1] == "<6>INFO msfollowup: stopped"


def test_watchdog_abort_leaves_every_threads_stack_in_the_log(tmp_path: Path) -> None:
    """What systemd does when the pings stop (SIGABRT): the journal must show where each thread was."""
    node = RunningNode(tmp_path / "node")
    node.start()
    assert node.proc is not None
    # faulthandler walks other threads' frames without the GIL: a thread exiting at that moment (start()'s
    # C-ECHO association winding down) can crash the dump itself (SIGSEGV, seen in CI). A watchdog abort
    # hits a stuck, settled process, so abort once the set of threads has stopped changing.
    tasks = Path(f"/proc/{node.proc.pid}/task")
    seen: list[set[str]] = []

    def settled() -> bool:  # the same threads for 2 s (wait_for polls every 0.2 s)
        seen.append({t.name for t in tasks.iterdir()})
        return len(seen) >= 10 and all(s == seen[-1] for s in seen[-10:])

    node.wait_for("a settled set of threads", settled)
    node.proc.send_signal(signal.SIGABRT)
    assert node.proc.wait(30) == -signal.SIGABRT
    log = node.log()
    assert "Fatal Python error: Aborted" in log
    assert re.search(r'File ".*service\.py", line \d+ in supervise', log), log[-3000:]
    assert re.search(r"^Thread 0x[0-9a-f]+ \(most recent call first\):", log, re.M), log[-3000:]


def test_watchdog_pings_stop_when_a_part_dies(tmp_path: Path, notify_socket: tuple[str, NotifySocket],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead worker thread cannot restart itself: the pings stop so that systemd restarts the node."""
    import tempfile

    from pynetdicom import dimse_messages

    from msfollowup.runtime.service import Service, supervise

    # Service sets two process-wide defaults for its node; give them back after the test.
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    address, sock = notify_socket
    cfg = Config(node=NodeConfig(port=0, shutdown_grace_seconds=1), storage=StorageConfig(data_dir=tmp_path / "var"),
                 completion=CompletionConfig(poll_seconds=0.2))
    service = Service(cfg)
    service.start()
    stop = threading.Event()
    notifier = sdnotify.Notifier(address, watchdog_usec=200_000)
    runner = threading.Thread(target=supervise, args=(service, notifier, stop, "listening"))
    runner.start()
    try:
        assert service.dead_parts() == []
        sock.until("WATCHDOG", "no ping while healthy")
        service.pipeline_worker.stop()
        status = sock.until("STATUS", "no status for the dead pipeline worker")[-1]["STATUS"]
        assert status == "not healthy: pipeline stopped"
        assert service.dead_parts() == ["pipeline"]
        time.sleep(1.0)  # five watchdog intervals
        stop.set()
        runner.join(10)
        assert [m for m in sock.drain() if "WATCHDOG" in m] == []
    finally:
        stop.set()
        runner.join(10)
        service.stop()


# --- the unit's syscall filter and MemoryDenyWriteExecute= -------------------------------------------

# Applied in the node's process before it execs Python again: what systemd does for this unit with
# SystemCallFilter=@system-service ~@privileged, SystemCallErrorNumber=EPERM, SystemCallArchitectures=native
# (libseccomp, as systemd uses it), NoNewPrivileges=yes and MemoryDenyWriteExecute=yes (the kernel's
# own form of it, prctl PR_SET_MDWE, Linux >= 6.3).
_SANDBOX_PRELUDE = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(ok, what):
    if not ok:
        sys.exit(f"{what} failed: errno {ctypes.get_errno()}")
check(libc.prctl(65, 1, 0, 0, 0) == 0, "prctl(PR_SET_MDWE)")
check(libc.prctl(38, 1, 0, 0, 0) == 0, "prctl(PR_SET_NO_NEW_PRIVS)")
seccomp = ctypes.CDLL("libseccomp.so.2")
seccomp.seccomp_init.restype = ctypes.c_void_p
seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = seccomp.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM) for everything not listed
for name in os.environ.pop("SANDBOX_SYSCALLS").split():
    nr = seccomp.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # not a syscall of this architecture otherwise
        check(seccomp.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0) == 0, f"seccomp_rule_add({name})")
check(seccomp.seccomp_load(ctx) == 0, "seccomp_load")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _syscall_sets() -> dict[str, list[str]]:
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run([SYSTEMD_ANALYZE, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    sets: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            current = sets.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and line.startswith(" "):
            current.append(line.strip())
    return sets


def _expand(name: str, sets: dict[str, list[str]]) -> set[str]:
    return set().union(*(_expand(m, sets) if m.startswith("@") else {m} for m in sets[name]))


def _unit_allowed_syscalls() -> set[str]:
    """Expand the unit's SystemCallFilter= lines: allow-lists add, ~lists remove, in order."""
    sets = _syscall_sets()
    allowed: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            deny = value.startswith("~")
            names = set().union(*(_expand(n, sets) if n.startswith("@") else {n} for n in value.lstrip("~").split()))
            allowed = allowed - names if deny else allowed | names
    return allowed


def _sandbox_supported() -> str | None:
    if SYSTEMD_ANALYZE is None:
        return "systemd-analyze not installed (apt-get install systemd)"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp.so.2 not installed"
    if ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE
        return "kernel without PR_SET_MDWE (Linux < 6.3)"
    return None


def _sandboxed(*python_args: str) -> list[str]:
    return [sys.executable, "-c", _SANDBOX_PRELUDE, *python_args]


@pytest.mark.skipif(_sandbox_supported() is not None, reason=str(_sandbox_supported()))
@pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")
def test_node_receives_checks_and_reports_inside_the_units_syscall_sandbox(tmp_path: Path) -> None:
    """The whole path (C-STORE, classification, validation, SR/HTML report, worklist) under the unit's
    syscall filter and without writable+executable memory."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SANDBOX_SYSCALLS": " ".join(sorted(_unit_allowed_syscalls()))}
    # The sandbox bites: W+X memory, and a syscall of @privileged (chroot), are refused.
    probe = subprocess.run(
        _sandboxed("-c", "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"),
        capture_output=True, text=True, timeout=60, env=env)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    probe = subprocess.run(_sandboxed("-c", "import os; os.chroot('/')"), capture_output=True, text=True,
                           timeout=60, env=env)
    assert probe.returncode != 0 and "Operation not permitted" in probe.stderr, probe.stderr

    node = RunningNode(tmp_path / "node")
    with node.log_path.open("ab") as log:
        node.proc = subprocess.Popen(_sandboxed("-m", "msfollowup", "serve", "--config", str(node.config_path)),
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not node.echo():
            assert node.proc.poll() is None, node.log()
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        status = Path(f"/proc/{node.proc.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        study = generate_study(tmp_path / "gen", slices=4, rows=32, columns=32)
        res = node.storescu(study.files)
        assert res.returncode == 0, res.stderr
        node.wait_complete(study.study_uid)
        cfg = load_config(node.config_path)
        deadline = time.monotonic() + 60
        while True:
            try:
                report = latest_report(node.db, cfg, study.study_uid)
                break
            except ReportError:
                assert node.proc.poll() is None, node.log()
                assert time.monotonic() < deadline, f"no report:\n{node.log()[-3000:]}"
                time.sleep(0.3)
        assert report.sr_path.stat().st_size > 0 and report.html_path.stat().st_size > 0
        assert node.stop() == 0
        log_text = node.log()
        assert "Traceback" not in log_text and "Operation not permitted" not in log_text, log_text[-3000:]
    finally:
        if node.proc.poll() is None:
            node.kill9()
