"""Live provisional checks benchmark (issue 15 targets), on loopback with DCMTK storescu.

    python benchmarks/live.py [--instances 500] [--rounds 3] [--out DIR]

1. Latency: a ~500-instance study without its post-contrast T1 and with 5 mm T2 slices is sent in one
   storescu run while an SSE client listens on /api/v1/live/stream; printed: seconds from storescu's
   end (the study's last instance) to the event that shows the post-contrast T1 missing and the T2
   failing. Target < 5 s (default settle_seconds 3 + poll 0.5).
   Failing series: a study sent series by series; printed: seconds from the last instance of a 5 mm
   T2 to the event that flags it, and from its settling (settle_seconds later) to that event. Target
   < 5 s after settling. Then the same T2 settled by an MPPS N-SET listing it (IN PROGRESS, no wait):
   seconds from the N-SET response to the event.
2. Ingest cost: instances/s of a ~500-instance study, alternately with no client and with the live
   page fetched and 3 SSE subscribers connected (same node, interleaved rounds, median), and on a node
   with [live] disabled. Target: with subscribers within 5 % of without.
The node is tests/live_node.py: the real Service plus the live router under uvicorn, one process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]  # noqa: E402

from dicom_fixtures import generate_study  # noqa: E402
from nodeutil import DCMTK, RunningNode, performed_series  # noqa: E402
from test_live import LiveNode, SseClient  # noqa: E402


def study_files(root: Path, instances: int, seed: int, defects: tuple[str, ...] = ()) -> tuple[str, list[Path]]:
    slices = max(1, (instances - 9) // 4)  # routine brain: 9 localizer images + 4 series
    study = generate_study(root / f"s{seed}", profile="ms-brain-routine", slices=slices, seed=seed,
                           patient_id=f"BENCH{seed:04d}", accession=f"B{seed}", defects=list(defects))
    return study.study_uid, list(study.files)


def storescu(port: int, files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run([str(DCMTK / "storescu"), "-aet", "MR1", "-aec", "MSFOLLOWUP", "-xe", "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def latency(node: LiveNode, root: Path, instances: int) -> float:
    uid, files = study_files(root, instances, 9000, ("missing_t1_post", "thick_slices_5mm"))
    sse = SseClient(node.base + "/api/v1/live/stream", node.auth)
    try:
        time.sleep(0.5)
        storescu(node.port, files)
        sent = time.perf_counter()
        # The post-contrast T1 is flagged as missing, or as failing when the lone T1 that arrived has no
        # contrast attributes (it cannot be both T1s: issue 13's rule); either way the panel names it.
        sse.wait_for("missing post-contrast T1 and failing T2 for the whole study", lambda e: (
            e["study_instance_uid"] == uid and not e["receiving"]
            and "sequence.t1_post" in {m["id"] for m in e["missing"] + e["failing"]}
            and "resolution.t2" in {m["id"] for m in e["failing"]}), timeout=60)
        return time.perf_counter() - sent
    finally:
        sse.close()


def _t2_failing(uid: str, t2_uid: str) -> Any:
    return lambda e: (e["study_instance_uid"] == uid and any(x["series_instance_uid"] == t2_uid for x in e["series"])
                      and "resolution.t2" in {m["id"] for m in e["failing"]})


def failing_series(node: LiveNode, root: Path, instances: int, seed: int, by_mpps: bool) -> float:
    """Seconds from the 5 mm T2's last instance (or from the MPPS N-SET listing it) to the event flagging it."""
    slices = max(1, (instances - 9) // 4)
    study = generate_study(root / f"f{seed}", profile="ms-brain-routine", slices=slices, seed=seed,
                           patient_id=f"BENCH{seed:04d}", accession=f"F{seed}", defects=["thick_slices_5mm"])
    by_key = {s.key: s for s in study.series}
    t2 = by_key["t2"]
    sse = SseClient(node.base + "/api/v1/live/stream", node.auth)
    assoc = None
    try:
        if by_mpps:
            scu = AE(ae_title="MR1")
            scu.add_requested_context(ModalityPerformedProcedureStep)
            assoc = scu.associate("127.0.0.1", node.port, ae_title="MSFOLLOWUP")
            ref = Dataset()
            ref.StudyInstanceUID = study.study_uid
            create = Dataset()
            create.ScheduledStepAttributesSequence = [ref]
            create.PerformedProcedureStepStatus = "IN PROGRESS"
            create.Modality = "MR"
            create.PerformedSeriesSequence = []
            mpps_uid = generate_uid()
            assert assoc.send_n_create(create, ModalityPerformedProcedureStep, mpps_uid)[0].Status == 0
        for key in ("loc", "t1_pre", "flair"):
            storescu(node.port, list(by_key[key].files))
        storescu(node.port, list(t2.files))
        start = time.perf_counter()
        if assoc is not None:
            nset = Dataset()
            nset.PerformedProcedureStepStatus = "IN PROGRESS"
            nset.PerformedSeriesSequence = performed_series(list(t2.files))
            assert assoc.send_n_set(nset, ModalityPerformedProcedureStep, mpps_uid)[0].Status == 0
            start = time.perf_counter()
        sse.wait_for("the 5 mm T2 flagged", _t2_failing(study.study_uid, t2.series_uid), timeout=60)
        return time.perf_counter() - start
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        sse.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-bench-live-"))
    print(f"generating data under {root} ...", flush=True)
    sets = [study_files(root / "data", args.instances, seed)[1] for seed in range(3 * args.rounds)]
    n = len(sets[0])

    node = LiveNode(root / "node", settle=3.0)
    try:
        seconds = latency(node, root / "data", args.instances)
        print(f"missing series + failing series shown {seconds:.2f} s after the last instance "
              f"(target < 5 s) {'OK' if seconds < 5 else 'MISSED'}", flush=True)
        quiet = failing_series(node, root / "data", args.instances, 9100, by_mpps=False)
        settle = 3.0
        print(f"failing series (5 mm T2, sent series by series) shown {quiet:.2f} s after its last instance = "
              f"{quiet - settle:.2f} s after it settled (settle_seconds {settle:g}; target < 5 s) "
              f"{'OK' if quiet - settle < 5 else 'MISSED'}", flush=True)
        nset = failing_series(node, root / "data", args.instances, 9200, by_mpps=True)
        print(f"failing series settled by an MPPS N-SET listing it: shown {nset:.2f} s after the N-SET "
              f"(target < 5 s) {'OK' if nset < 5 else 'MISSED'}", flush=True)
        without: list[float] = []
        with_subs: list[float] = []
        for r in range(args.rounds):
            without.append(n / storescu(node.port, sets[2 * r]))
            page = httpx.get(node.base + "/live", headers=node.auth, timeout=10)
            assert page.status_code == 200
            clients = [SseClient(node.base + "/api/v1/live/stream", node.auth) for _ in range(3)]
            time.sleep(0.5)
            with_subs.append(n / storescu(node.port, sets[2 * r + 1]))
            for c in clients:
                c.close()
            time.sleep(4)  # let the provisional checks of this round finish before the next one
    finally:
        node.stop()
    disabled_node = RunningNode(root / "disabled", stable_seconds=60,
                                sections={"live": {"enabled": False}, "scheduler": {"enabled": False}},
                                allow=[("MR1", None), ("ECHOSCU", None)]).start()
    try:
        disabled = [n / storescu(disabled_node.port, sets[2 * args.rounds + r]) for r in range(args.rounds)]
    finally:
        disabled_node.stop()
    a, b, c = statistics.median(without), statistics.median(with_subs), statistics.median(disabled)
    print(f"ingest {n} instances, median of {args.rounds}: no client {a:7.1f} inst/s | live page + 3 SSE "
          f"subscribers {b:7.1f} inst/s | ratio {b / a:5.3f} (target >= 0.95) {'OK' if b / a >= 0.95 else 'MISSED'}")
    print(f"[live] disabled (separate node, msfollowup serve): {c:7.1f} inst/s | live enabled, no client / "
          f"disabled: {a / c:5.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
