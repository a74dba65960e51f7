"""Ingest benchmark: DCMTK storescu -> msfollowup (fsync + index on) vs DCMTK storescp, same run.

    python benchmarks/ingest.py [--small N] [--large N] [--senders K] [--multiframe-mb MB] [--out DIR]

Prints instances/s and MB/s for each receiver and the ratio, for (a) N small (256x256 16-bit) instances,
(b) N large (512x512) instances, (c) K concurrent senders of the small set, and the peak RSS of the
msfollowup process while it receives one large enhanced multi-frame object (default 1 GiB).
storescp runs with TCP_NODELAY=1 and writes every instance to disk (no fsync: it does not offer one).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_fixtures import generate_study, write_large_multiframe  # noqa: E402
from nodeutil import RunningNode, free_port  # noqa: E402
from test_report_fixtures import StoreSCP  # noqa: E402

STORESCU = "/usr/bin/storescu"


def make_set(root: Path, count: int, size: int, seed: int) -> list[Path]:
    """Generated MR studies until `count` instances exist (several studies if needed)."""
    files: list[Path] = []
    i = 0
    while len(files) < count:
        study = generate_study(root / f"s{i}", slices=40, rows=size, columns=size, seed=seed + i,
                               patient_id=f"BENCH{i:04d}")
        files += study.files
        i += 1
    return files[:count]


def send(port: int, aec: str, files: list[Path]) -> None:
    """One storescu association per 500 files (keeps argv small), explicit VR little endian."""
    args = [STORESCU, "-aet", "STORESCU", "-aec", aec, "-xe", "127.0.0.1", str(port)]
    for i in range(0, len(files), 500):
        subprocess.run(args + [str(f) for f in files[i:i + 500]], check=True, capture_output=True,
                       env={**os.environ, "TCP_NODELAY": "1"})  # DCMTK disables Nagle only when asked


def timed_send(port: int, aec: str, batches: list[list[Path]]) -> float:
    start = time.perf_counter()
    if len(batches) == 1:
        send(port, aec, batches[0])
    else:
        with ThreadPoolExecutor(len(batches)) as pool:
            for f in [pool.submit(send, port, aec, b) for b in batches]:
                f.result()
    return time.perf_counter() - start


def report(label: str, files: list[Path], t_ms: float, t_ref: float) -> None:
    mb = sum(f.stat().st_size for f in files) / 1e6
    n = len(files)
    print(f"{label:<34} msfollowup {n / t_ms:8.1f} inst/s {mb / t_ms:7.1f} MB/s | "
          f"storescp {n / t_ref:8.1f} inst/s {mb / t_ref:7.1f} MB/s | ratio {t_ref / t_ms:5.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=600)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--multiframe-mb", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-"))
    print(f"generating data under {root} ...", flush=True)
    small = make_set(root / "small", args.small, 256, 100)
    large = make_set(root / "large", args.large, 512, 500)

    cases = [
        (f"(a) {len(small)} x 256x256, 1 sender", [small]),
        (f"(b) {len(large)} x 512x512, 1 sender", [large]),
        (f"(c) {len(small)} x 256x256, {args.senders} senders",
         [small[i::args.senders] for i in range(args.senders)]),
    ]
    print(f"{'case':<34} (msfollowup: fsync + index on; storescp: TCP_NODELAY=1, writes to disk)")
    for label, batches in cases:
        tag = label.split()[0].strip("()")
        node = RunningNode(root / f"node-{tag}", stable_seconds=3600,
                           sections={"scheduler": {"enabled": False}, "logging": {"level": "WARNING"}}).start()
        t_ms = timed_send(node.port, node.ae_title, batches)
        node.stop()
        scp = StoreSCP(root / f"storescp-{tag}", free_port())
        scp.start()
        t_ref = timed_send(scp.port, scp.ae_title, batches)
        scp.stop()
        report(label, [f for b in batches for f in b], t_ms, t_ref)
        shutil.rmtree(root / f"storescp-{tag}", ignore_errors=True)
        shutil.rmtree(root / f"node-{tag}" / "var" / "store", ignore_errors=True)

    big = write_large_multiframe(root / "big.dcm", args.multiframe_mb * 1024 * 1024)
    node = RunningNode(root / "node-big", stable_seconds=3600,
                       sections={"scheduler": {"enabled": False}, "logging": {"level": "WARNING"}}).start()
    t = timed_send(node.port, node.ae_title, [[big]])
    rss = node.peak_rss_mb()
    node.stop()
    print(f"(d) one {big.stat().st_size / 2**20:.0f} MiB enhanced multi-frame object: {t:.1f} s, "
          f"peak RSS of msfollowup {rss:.0f} MB (target < 300 MB)")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
