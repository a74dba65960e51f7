"""Server-side latency of the web application on a large index, side by side with the CLI.

Generates N studies (default 100,000) of M patients (default 20,000) straight into a fresh SQLite
index: studies, study_checks, the per-study and per-requirement result rows (8 requirements per study)
and the dashboard's rollup filled from them, one open worklist item per patient and a plan for every
tenth patient.
Then serves the real application (uvicorn in a thread, as in `msfollowup serve`) and times, over
HTTP on loopback with an API token:

  dashboard      GET /api/v1/compliance?by=month (rates per scanner and profile, failing requirements)
  dashboard_page GET /?by=month (the same rendered as HTML with the SVG charts; session cookie)
  dashboard_week_page GET / (the page as it opens: by week, ~1,300 table rows and 1,700 chart points)
  studies        GET /api/v1/studies?scanner=...&verdict=non-compliant&start=...&end=... (one page)
  due            GET /api/v1/patients/due?status=overdue (one page)

The server keeps the dashboard while nothing changed in the database (compliance.DashboardCache), so
the dashboard figures above are views between two recorded results; the `..._changed` ones time the
first view after a change (a QA acceptance of one unverifiable study, made before each request and not
timed), which recomputes everything.

and, for comparison, the CLI's nearest commands run as subprocesses (`msfollowup studies --json`,
`msfollowup due --overdue --json`: they compute everything, unpaged).

Run: python benchmarks/web.py [--studies 100000] [--patients 20000] [--requests 40]. Target: p95 < 300 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from msfollowup.app import accounts, reviews, rollup
from msfollowup.app.results import PatientRef, RequirementRow, StudyResult, month_key, week_key
from msfollowup.site.config import Config, HttpConfig, StorageConfig
from msfollowup.db import Database, utcnow
from msfollowup.app.metrics import Metrics
from msfollowup.db.checks import StudyCheck
from msfollowup.app.plans import MonitoringPlan
from msfollowup.files.store import Study
from msfollowup.web.app import WebContext
from msfollowup.web.server import WebServer
from msfollowup.app.worklist import ScheduledStep

TARGET_P95_MS = 300.0
SCANNERS = [f"MRI{n} / SN{1000 + n}" for n in range(12)]
PROFILES = ["ms-brain-routine", "ms-brain-no-contrast", "ms-brain-pml-screening", "ms-spine-new-deficit"]
REQUIREMENTS = ["sequence.t2_flair", "sequence.t2", "sequence.t1_post", "sequence.dwi", "field_strength",
                "resolution.t2_flair", "contrast_delay", "reference.scanner"]
VERDICTS = ["compliant"] * 7 + ["non-compliant"] * 2 + ["unverifiable"]
FIRST = dt.date(2024, 1, 1)


def _chunks(rows: list[dict[str, Any]], n: int = 5000) -> Any:
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


def generate(db: Database, studies: int, patients: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    now = utcnow()
    raw = db.engine.raw_connection()  # generating, not serving: no fsync per commit (pooled connection keeps it)
    raw.driver_connection.execute("PRAGMA synchronous=OFF")  # type: ignore[union-attr]
    raw.close()
    with db.engine.begin() as c:
        c.execute(insert(PatientRef), [{"id": p + 1, "patient_id": f"PID{p:06d}"} for p in range(patients)])
        c.execute(insert(MonitoringPlan), [
            {"patient_id": f"PID{p:06d}", "dmt": "natalizumab", "jcv": "positive", "dmt_start": FIRST, "flags_json": "{}",
             "created_at": now, "updated_at": now, "updated_by": "bench"} for p in range(0, patients, 10)])
        c.execute(insert(ScheduledStep), [
            {"open_key": f"PID{p:06d}|brain", "purpose": "brain", "profile_id": rnd.choice(PROFILES), "recall": p % 17 == 0,
             "earliest": FIRST + dt.timedelta(days=300 + p % 400), "target": FIRST + dt.timedelta(days=330 + p % 400),
             "latest": FIRST + dt.timedelta(days=360 + p % 400), "study_uid": f"2.25.9{p}", "accession_number": f"B{p:015d}",
             "requested_procedure_id": f"R{p}", "sps_id": f"S{p}", "station_ae": "MRSCANNER1", "modality": "MR",
             "start_date": (FIRST + dt.timedelta(days=330 + p % 400)).strftime("%Y%m%d"), "start_time": "000000",
             "patient_id": f"PID{p:06d}", "sps_status": "SCHEDULED", "identifier": b"", "created_at": now}
            for p in range(patients)])
    rows_s, rows_c, rows_r, rows_q = [], [], [], []
    for i in range(studies):
        day = FIRST + dt.timedelta(days=rnd.randrange(730))
        patient = rnd.randrange(patients)
        uid, verdict, profile, scanner = f"2.25.{10**12 + i}", rnd.choice(VERDICTS), rnd.choice(PROFILES), rnd.choice(SCANNERS)
        rows_s.append({"study_uid": uid, "state": "complete", "version": 1, "patient_id": f"PID{patient:06d}",
                       "study_date": day.strftime("%Y%m%d"), "station_name": scanner.split(" /")[0],
                       "first_received": now, "last_received": now, "completed_at": now})
        rows_c.append({"id": i + 1, "study_uid": uid, "version": 1, "patient_id": f"PID{patient:06d}",
                       "study_date": day.strftime("%Y%m%d"), "profile_id": profile, "profile_version": "1",
                       "verdict": verdict, "result_json": json.dumps({"verdict": verdict, "requirements": []}),
                       "created_at": now, "followup_done": True})
        rows_r.append({"check_id": i + 1, "study_uid": uid, "version": 1, "latest": True, "patient_ref": patient + 1,
                       "profile_id": profile, "purpose": "brain", "verdict": verdict, "scanner": scanner,
                       "study_date": day, "week": week_key(day), "month": month_key(day), "checked_at": now})
        for req in REQUIREMENTS:
            status = "pass" if verdict == "compliant" or rnd.random() < 0.8 else (
                "fail" if verdict == "non-compliant" else "unverifiable")
            rows_q.append({"check_id": i + 1, "requirement_id": req, "label": req, "status": status, "informational": False, "latest": True})
    with db.engine.begin() as c:
        for table, rows in ((Study, rows_s), (StudyCheck, rows_c), (StudyResult, rows_r), (RequirementRow, rows_q)):
            for chunk in _chunks(rows):
                c.execute(insert(table), chunk)
        rollup.rebuild(c)  # the rows went in without record_check: fill the dashboard's rollup as migration 0011 does


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    rsp = conn.getresponse()
    body = rsp.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    return rsp.status, elapsed, len(body)


def _accept_one(db: Database) -> None:
    """A change every dashboard figure depends on: accept the next unverifiable study as compliant."""
    with db.session() as s:
        check_id = s.scalar(select(StudyResult.check_id).where(
            StudyResult.latest.is_(True), StudyResult.verdict == "unverifiable", StudyResult.reviewed_verdict.is_(None))
            .limit(1))
        assert check_id is not None, "no unverifiable study left to accept"
        reviews.accept_as_compliant(s, check_id, "benchmark: a change before the view", "bench")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _cli(config: Path, *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "msfollowup", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"msfollowup {' '.join(args)} failed: {done.stderr[-500:]}")
    return (time.perf_counter() - started) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--cli-runs", type=int, default=1)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--keep", type=Path, help="generate into (or reuse) this folder instead of a temporary one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="msf-bench-web-") as tmp_dir:
        tmp = args.keep or Path(tmp_dir)
        data = Path(tmp) / "var"
        reuse = (data / "index.sqlite3").exists()
        data.mkdir(parents=True, exist_ok=True)
        config = Path(tmp) / "bench.toml"
        config.write_text(f'[storage]\ndata_dir = "{data}"\n[scheduler]\nenabled = false\n')
        cfg = Config(storage=StorageConfig(data_dir=data), http=HttpConfig(port=0))
        db = Database(cfg.storage.database_url)
        t0 = time.perf_counter()
        if reuse:
            print(f"reusing the index in {data}", flush=True)
        else:
            generate(db, args.studies, args.patients)
            print(f"generated {args.studies} studies, {args.patients} patients in {time.perf_counter() - t0:.1f} s", flush=True)
        with db.session() as s:
            token = accounts.create_token(s, "bench", "viewer", "bench")
            user = accounts.add_user(s, f"benchweb{int(time.time())}", "viewer", "x" * 16, "bench")
            cookie, _ = accounts.start_session(s, accounts.Principal(user.id, user.name, user.role))
        ctx = WebContext(cfg, db, Metrics(), lambda: {}, today=lambda: FIRST + dt.timedelta(days=600))
        server = WebServer("127.0.0.1", 0, ctx)
        port = server.start()[1]
        auth = {"Authorization": f"Bearer {token}"}
        browser = {"Cookie": f"msf_session={cookie}"}
        queries = {
            "dashboard": "/api/v1/compliance?by=month",
            "dashboard_page": "/?by=month",
            "dashboard_week_page": "/",
            "studies": f"/api/v1/studies?scanner={SCANNERS[3].replace(' ', '%20').replace('/', '%2F')}"
                       "&verdict=non-compliant&start=2024-03-01&end=2025-06-30",
            "due": "/api/v1/patients/due?status=overdue",
        }
        queries |= {f"{name}_changed": queries[name] for name in ("dashboard", "dashboard_page", "dashboard_week_page")}
        results: dict[str, Any] = {}
        try:
            for name, path in queries.items():
                headers = browser if "_page" in name else auth
                status, _, _ = _get(port, path, headers)  # warm-up (and correctness)
                assert status == 200, (name, status)
                times = []
                for _ in range(args.requests):
                    if name.endswith("_changed"):
                        _accept_one(db)
                    times.append(_get(port, path, headers)[1])
                results[name] = {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(_p(times, 0.95), 1)}
                print(f"web {name:<27} p50 {results[name]['p50_ms']:7.1f} ms  p95 {results[name]['p95_ms']:7.1f} ms", flush=True)
        finally:
            server.stop()
        if not args.skip_cli:
            for name, cmd in (("studies", ("studies", "--json")), ("due", ("due", "--overdue", "--json"))):
                times = [_cli(config, *cmd) for _ in range(args.cli_runs)]
                results[f"cli_{name}"] = {"median_ms": round(statistics.median(times), 1)}
                print(f"cli msfollowup {' '.join(cmd):<22} {statistics.median(times):9.1f} ms (whole command)", flush=True)
        worst = max(v["p95_ms"] for k, v in results.items() if not k.startswith("cli_"))
        out = Path(__file__).parent / "out"
        out.mkdir(exist_ok=True)
        (out / "web.json").write_text(json.dumps({"studies": args.studies, "patients": args.patients, **results}, indent=2))
        print(f"worst web p95 {worst:.1f} ms (target < {TARGET_P95_MS:.0f} ms): {'OK' if worst < TARGET_P95_MS else 'MISSED'}")
        return 0 if worst < TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
