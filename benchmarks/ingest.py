"""Ingest benchmark: DCMTK storescu -> msfollowup, DCMTK storescp and Orthanc, side by side in one run.

    python benchmarks/ingest.py [--reps R] [--small N] [--large N] [--senders K] [--multiframe-mb MB] [--out DIR]
                                [--processes P[,P...]] [--cases abce] [--only-msfollowup]

Cases: (a) N small (256x256 16-bit) instances from one sender, (b) N large (512x512) instances from one
sender, (c) the small set split over K concurrent senders. Every receiver is started fresh for every
measurement and the receivers are interleaved (the order rotates each repetition), so a neighbour's load
on a shared machine hits all of them alike; the figures printed are medians over R repetitions:
instances/s, MB/s, CPU ms per instance (user + system of the receiver's process tree, start-up excluded),
peak RSS, and each receiver's ratio to msfollowup.

* msfollowup: fsync + index on (the durability guarantee of docs/architecture.md "Durability");
  TCP_NODELAY set by the node itself on every association's socket. msf-xP: the same with
  `[node] processes = P`, for each P of `--processes` (default 2 and 4; ingest processes the main
  process hands connections to, runtime/ingest_workers.py); with `--index-before` each setting also
  with `[storage] index_commit = "before"` (named *-before: every instance indexed before its answer);
  its peak RSS is the sum over its processes.
* storescp: DCMTK, TCP_NODELAY=1, writes every instance to disk, never flushes.
* Orthanc (Debian `orthanc`, if /usr/sbin/Orthanc exists): default SQLite index, SyncStorageArea on,
  TCP_NODELAY=1 (it uses DCMTK's network layer); skipped with a note when not installed.

storescu runs with TCP_NODELAY=1 (DCMTK disables Nagle only when asked) in (a)-(c); (e) is (a) with
storescu's default (Nagle on), as most modalities send: a receiver that delays its ACKs then waits
~40 ms per instance. Finally (d): the peak
RSS of msfollowup while it receives one large enhanced multi-frame object.

Every receiver's folder is kept until the end of the run (`set_aside`: deleting it taxes whoever
creates files next), so the run needs free disk for all of them: ~15 GB with the defaults (a note says so
up front when there is less).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_fixtures import generate_study, write_large_multiframe  # noqa: E402
from msfollowup.site.config import CompletionConfig  # noqa: E402
from nodeutil import RunningNode, free_port, tcp_sockets  # noqa: E402
from test_report_fixtures import StoreSCP  # noqa: E402

STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
TICK = os.sysconf("SC_CLK_TCK")
NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def make_set(root: Path, count: int, size: int, seed: int) -> list[Path]:
    """Generated MR studies until `count` instances exist (several studies if needed)."""
    files: list[Path] = sorted(root.rglob("*.dcm")) if root.exists() else []  # --out DIR: reuse the data
    if len(files) >= count:
        return files[:count]
    shutil.rmtree(root, ignore_errors=True)
    files, i = [], 0
    while len(files) < count:
        study = generate_study(root / f"s{i}", slices=40, rows=size, columns=size, seed=seed + i,
                               patient_id=f"BENCH{i:04d}")
        files += study.files
        i += 1
    return files[:count]


NAGLE = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}  # storescu's default, like most modalities


def send(port: int, aec: str, files: list[Path], env: dict[str, str] | None = None) -> None:
    """One storescu association per 500 files (keeps argv small), explicit VR little endian."""
    args = [STORESCU, "-aet", "STORESCU", "-aec", aec, "-xe", "127.0.0.1", str(port)]
    for i in range(0, len(files), 500):
        subprocess.run(args + [str(f) for f in files[i:i + 500]], check=True, capture_output=True,
                       env=NODELAY if env is None else env)


def timed_send(port: int, aec: str, batches: list[list[Path]], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    if len(batches) == 1:
        send(port, aec, batches[0], env)
    else:
        with ThreadPoolExecutor(len(batches)) as pool:
            for f in [pool.submit(send, port, aec, b, env) for b in batches]:
                f.result()
    return time.perf_counter() - start


# --- process figures ------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """pid and its descendants (a receiver may fork per association)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
    return total / TICK


def peak_rss_mb(pid: int) -> float:
    """The peak resident set of pid and its descendants (ingest processes), summed."""
    total = 0.0
    for p in _tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:"))
    return total


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


# --- receivers ------------------------------------------------------------------------------------


class Receiver(Protocol):
    name: str
    port: int
    ae_title: str

    def start(self, folder: Path) -> int: ...  # returns the pid
    def stop(self) -> None: ...


class MsFollowup:
    name = "msfollowup"

    def __init__(self, processes: int = 1, index_commit: str = "behind") -> None:
        self.node: RunningNode | None = None
        self.processes = processes
        self.index_commit = index_commit
        if processes > 1:
            self.name = f"msf-x{processes}"
        if index_commit != "behind":
            self.name += f"-{index_commit}"

    def start(self, folder: Path) -> int:
        # The production defaults for the background pollers (the test harness polls completion every
        # 0.2 s to keep tests short; a deployed node polls every second).
        self.node = RunningNode(folder, stable_seconds=3600, sections={
            "scheduler": {"enabled": False}, "logging": {"level": "WARNING"},
            "completion": {"poll_seconds": CompletionConfig().poll_seconds},
            "node": {"processes": self.processes}, "storage": {"index_commit": self.index_commit}}).start()
        # C-ECHO is answered once the main process listens; it hands connections to the ingest
        # processes once they have started, and each started one listens on a port of its own
        # (runtime/ingest_workers.py)
        assert self.node.proc is not None
        main = self.node.proc.pid
        self.node.wait_for("ingest processes", lambda: sum(
            1 for p in _tree(main) if p != main and tcp_sockets(p, "0A")) >= self.processes - 1 or None, 60)
        self.port, self.ae_title = self.node.port, self.node.ae_title
        return self.node.proc.pid

    def stop(self) -> None:
        assert self.node is not None
        self.node.stop()


class DcmtkStoreSCP:
    name = "storescp"

    def __init__(self) -> None:
        self.scp: StoreSCP | None = None

    def start(self, folder: Path) -> int:
        self.scp = StoreSCP(folder, free_port())  # starts /usr/bin/storescp with TCP_NODELAY=1
        self.scp.start()
        self.port, self.ae_title = self.scp.port, self.scp.ae_title
        assert self.scp.proc is not None
        return self.scp.proc.pid

    def stop(self) -> None:
        assert self.scp is not None
        self.scp.stop()


class Orthanc:
    name = "orthanc"
    ae_title = "ORTHANC"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, folder: Path) -> int:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "Name": "bench", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "StorageCompression": False, "SyncStorageArea": True, "DicomAet": self.ae_title,
            "DicomPort": self.port, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "HttpServerEnabled": False, "RemoteAccessAllowed": False, "Plugins": [], "ConcurrentJobs": 1,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], env=NODELAY,
                                     stdout=subprocess.DEVNULL, stderr=(folder / "orthanc.log").open("wb"))
        wait_listening(self.port)
        return self.proc.pid

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Figures:
    rate: list[float] = field(default_factory=list)
    mbps: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)


def set_aside(folder: Path) -> None:
    """Move a measured receiver's folder out of the way; main() deletes them all once every case ran.

    Deleting it at once would tax the next receiver: on ext4 without a journal (this project's test
    disk) the inode allocator skips every inode freed in the last 60 s (300 s while its inode table
    block is dirty) and looks each one up as it goes, so after 2000 files were deleted a new file
    costs 555-620 us to create instead of 24-41 us (measured here, 2000 creates in a new folder).
    Who pays depends on where the receiver's folders land: msfollowup, creating every spool file in
    one folder, paid ~20% of the machine's CPU for it in case (c) (perf), Orthanc nothing visible.
    """
    if folder.exists():
        (folder.parent / "measured").mkdir(exist_ok=True)
        folder.rename(folder.parent / "measured" / f"{folder.name}-{time.monotonic_ns()}")


def measure(rx: Receiver, folder: Path, batches: list[list[Path]], mb: float, fig: Figures,
            env: dict[str, str] | None = None) -> None:
    n = sum(len(b) for b in batches)
    pid = rx.start(folder)
    try:
        cpu0 = cpu_seconds(pid)
        t = timed_send(rx.port, rx.ae_title, batches, env)
        cpu = cpu_seconds(pid) - cpu0
        fig.rss.append(peak_rss_mb(pid))
    finally:
        rx.stop()
        set_aside(folder)
    fig.rate.append(n / t)
    fig.mbps.append(mb / t)
    fig.cpu_ms.append(1000 * cpu / n)


def paired(rates: list[float], reference: list[float]) -> str:
    """Ratios of the same repetitions (median and range): `rates[i] / reference[i]`."""
    ratios = [r / ref for r, ref in zip(rates, reference)]
    return f"{statistics.median(ratios):5.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=600)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--multiframe-mb", type=int, default=1024, help="0: skip case (d)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cases", default="abce", help="which of the cases a, b, c, e to run")
    ap.add_argument("--only-msfollowup", action="store_true", help="no other receivers (quick A/B runs)")
    ap.add_argument("--index-before", action="store_true",
                    help="also measure each msfollowup setting with [storage] index_commit = \"before\" (named *-before)")
    ap.add_argument("--processes", default="2,4",
                    help="also measure msfollowup with [node] processes = N, for each N of this comma-separated "
                         "list (ingest processes; 1: skip)")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-"))
    try:
        run(args, root)
    finally:  # an interrupted run leaves no received folders behind (they add up to many GB)
        for folder in [root / "measured", root / "node-big", *root.glob("rx-*")]:
            shutil.rmtree(folder, ignore_errors=True)
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, root: Path) -> None:
    """Every case and receiver of one benchmark run (main() cleans up after it)."""
    print(f"generating data under {root} ...", flush=True)
    small = make_set(root / "small", args.small, 256, 100)
    large = make_set(root / "large", args.large, 512, 500)

    counts = [1] + [n for n in sorted({int(n) for n in str(args.processes).split(",") if n.strip()}) if n > 1]
    receivers: list[Receiver] = [MsFollowup(count) for count in counts]
    if args.index_before:
        receivers += [MsFollowup(count, "before") for count in counts]
    receivers.append(DcmtkStoreSCP())
    if args.only_msfollowup:
        receivers = [rx for rx in receivers if isinstance(rx, MsFollowup)]
    elif Path(ORTHANC).exists():
        receivers.append(Orthanc())
    else:
        print(f"note: Orthanc skipped ({ORTHANC} not installed; `apt-get install orthanc` to include it)")
    cases = [
        (f"(a) {len(small)} x 256x256, 1 sender", [small]),
        (f"(b) {len(large)} x 512x512, 1 sender", [large]),
        (f"(c) {len(small)} x 256x256, {args.senders} senders",
         [small[i::args.senders] for i in range(args.senders)]),
        (f"(e) {len(small)} x 256x256, Nagle on", [small]),  # the sender as a modality: no TCP_NODELAY
    ]
    cases = [c for c in cases if c[0][1] in args.cases]
    received = sum(f.stat().st_size for _, batches in cases for batch in batches for f in batch)
    need = args.reps * len(receivers) * received + args.multiframe_mb * 2**20
    free = shutil.disk_usage(root).free
    if free < need:
        print(f"note: {free / 1e9:.1f} GB free under {root}, the received folders need ~{need / 1e9:.1f} GB "
              f"(kept until the end, see set_aside)", flush=True)
    print(f"medians of {args.reps} interleaved repetitions; ratio = receiver / msfollowup (inst/s), of the "
          "medians and, paired, per repetition (median, lowest-highest)", flush=True)
    print(f"{'case':<30} {'receiver':<11} {'inst/s':>8} {'MB/s':>7} {'CPU ms/inst':>11} {'peak RSS MB':>11} "
          f"{'ratio':>6} {'inst/s lowest-highest':>21} {'paired ratio':>18}", flush=True)
    for label, batches in cases:
        mb = sum(f.stat().st_size for b in batches for f in b) / 1e6
        figs = {rx.name: Figures() for rx in receivers}
        for rep in range(args.reps):
            order = receivers[rep % len(receivers):] + receivers[:rep % len(receivers)]
            for rx in order:
                measure(rx, root / f"rx-{rx.name}", batches, mb, figs[rx.name], NAGLE if label.startswith("(e)") else None)
        ref = figs["msfollowup"].rate
        for rx in receivers:
            f = figs[rx.name]
            rate = statistics.median(f.rate)
            print(f"{label:<30} {rx.name:<11} {rate:8.1f} {statistics.median(f.mbps):7.1f} "
                  f"{statistics.median(f.cpu_ms):11.2f} {max(f.rss):11.0f} {rate / statistics.median(ref):5.2f}x "
                  f"{min(f.rate):10.1f}-{max(f.rate):<10.1f} {paired(f.rate, ref)}", flush=True)
            label = ""
        if "orthanc" in figs:
            # The target of issue 17: the best msfollowup setting against Orthanc. Paired per repetition
            # too: the receivers of one repetition ran back to back, so a slow spell of the machine
            # (another tenant) hits both sides of a pair.
            ours = [rx.name for rx in receivers if isinstance(rx, MsFollowup)]
            best = max(ours, key=lambda name: statistics.median(figs[name].rate))
            per_rep = [max(figs[name].rate[rep] for name in ours) for rep in range(args.reps)]
            print(f"{'':<30} best msfollowup ({best}) / Orthanc: "
                  f"{statistics.median(figs[best].rate) / statistics.median(figs['orthanc'].rate):.2f}x of the "
                  f"medians; the best setting of each repetition: {paired(per_rep, figs['orthanc'].rate).strip()}", flush=True)

    if args.multiframe_mb:
        big = write_large_multiframe(root / "big.dcm", args.multiframe_mb * 1024 * 1024)
        rx = MsFollowup()
        pid = rx.start(root / "node-big")
        t = timed_send(rx.port, rx.ae_title, [[big]])
        rss = peak_rss_mb(pid)
        rx.stop()
        set_aside(root / "node-big")
        print(f"(d) one {big.stat().st_size / 2**20:.0f} MiB enhanced multi-frame object: {t:.1f} s, "
              f"peak RSS of msfollowup {rss:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    sys.exit(main())
