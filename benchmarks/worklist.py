"""C-FIND latency of the Modality Worklist SCP with a large open worklist.

Bulk-inserts N open items (default 100,000: 10 stations, start dates over two years) into a fresh
SQLite index, serves them with the real handlers on loopback and times complete C-FIND exchanges
for the two queries modalities send:

  station  ScheduledStationAETitle + a one-day ScheduledProcedureStepStartDate range (~14 matches)
  name     PatientName wildcard ("FAMILY0123*", case-insensitive; 10 matches)

Two figures per query, both on an established association:
  scp  the SCP's service time: handler called -> final status handed over, which includes pynetdicom
       encoding and sending every pending response (it pulls the next match only after sending one)
  e2e  request sent -> final response received by a pynetdicom SCU in the same process; pynetdicom's
       reader threads poll with 1 ms sleeps per PDU, so this grows with the match count and the load

Run: python benchmarks/worklist.py [--items 100000] [--queries 200]. Target: scp p95 < 50 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import socket
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]
from sqlalchemy import insert

from msfollowup.net import worklist_scp
from msfollowup.app import worklist
from msfollowup.site.config import Config
from msfollowup.db import Database, utcnow
from msfollowup.site.profiles import get_profile
from msfollowup.app.worklist import Demographics, ScheduledStep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeutil import worklist_scp  # noqa: E402

STATIONS = 10
DAYS = 730
FIRST_DAY = dt.date(2026, 1, 1)
TARGET_P95_MS = 50.0
PROFILE_ID = "ms-brain-routine"


# Fixed-width values and same-width placeholders: the encoded template stays byte-exact after replace.
FIELDS = {"pid": "PID000000", "name": "Family00000^Given", "uid": "2.25.100000000000", "acc": "MFB0000000000000",
          "sps": "SPB0000000000000", "ae": "MRSCANNER0", "date": "20260101"}


def _placeholder(key: str) -> bytes:
    return (f"@{key}@" + "#" * len(FIELDS[key]))[: len(FIELDS[key])].encode()


def _template() -> bytes:
    """One encoded identifier with placeholders: building 100k datasets with pydicom takes minutes."""
    ph = {k: _placeholder(k).decode() for k in FIELDS}
    ds = worklist.build_identifier(
        demographics=Demographics(ph["pid"], ph["name"], "19800101", "F", "ISO_IR 192"),
        profile=get_profile(PROFILE_ID),
        study_uid=ph["uid"],
        accession=ph["acc"],
        requested_procedure_id=ph["acc"],
        sps_id=ph["sps"],
        station_ae=ph["ae"],
        start_date=ph["date"],
        reason="stable on DMT: yearly",
        recall=False,
    )
    return worklist.encode_identifier(ds)


def populate(db: Database, items: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the placeholders are not valid UIDs / dates
        template = _template()
    now = utcnow()
    rows = []
    for i in range(items):
        day = FIRST_DAY + dt.timedelta(days=i % DAYS)
        values = {
            "pid": f"PID{i:06d}", "name": f"Family{i:05d}^Given", "uid": f"2.25.{10**11 + i:012d}",
            "acc": f"MFB{i:013d}", "sps": f"SPB{i:013d}", "ae": f"MRSCANNER{(i // DAYS) % STATIONS}",
            "date": f"{day:%Y%m%d}",
        }  # every station on every day
        ident = template
        for key, value in values.items():
            ident = ident.replace(_placeholder(key), value.encode())
        rows.append(
            dict(
                open_key=f"{values['pid']}|brain", purpose="brain", profile_id=PROFILE_ID, profile_version="1.0.0",
                recall=False, earliest=day, target=day, latest=day + dt.timedelta(days=60), study_uid=values["uid"],
                accession_number=values["acc"], requested_procedure_id=values["acc"], sps_id=values["sps"],
                station_ae=values["ae"], modality="MR", start_date=values["date"],
                start_time=worklist.DEFAULT_START_TIME, patient_id=values["pid"], patient_name=values["name"],
                patient_name_fold=worklist.fold_name(values["name"]),
                patient_name_key=worklist.name_key(worklist.fold_name(values["name"]) or ""),
                specific_character_set="ISO_IR 192", sps_status=worklist.SCHEDULED, identifier=ident, created_at=now,
            )
        )
    for start in range(0, len(rows), 10_000):
        with db.session() as s:
            s.execute(insert(ScheduledStep), rows[start : start + 10_000])


def station_query(rng: random.Random) -> Dataset:
    day = f"{FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS)):%Y%m%d}"
    sps = Dataset()
    sps.ScheduledStationAETitle = f"MRSCANNER{rng.randrange(STATIONS)}"
    sps.ScheduledProcedureStepStartDate = f"{day}-{day}"
    sps.ScheduledProcedureStepStartTime = ""
    sps.Modality = "MR"
    sps.ScheduledProcedureStepID = ""
    return _with_return_keys(sps)


def name_query(rng: random.Random, items: int) -> Dataset:
    sps = Dataset()
    sps.ScheduledStationAETitle = ""
    ds = _with_return_keys(sps)
    ds.PatientName = f"FAMILY{rng.randrange(max(items // 10, 1)):04d}*"
    return ds


def _with_return_keys(sps: Dataset) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    ds.RequestedProcedureID = ""
    ds.RequestedProcedureDescription = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


class ServiceClock:
    """Wraps the C-FIND handler to time the SCP side of each query."""

    def __init__(self, handler: Callable[[Event], Iterator[tuple[Any, Any]]]) -> None:
        self.handler = handler
        self.times: list[float] = []

    def __call__(self, event: Event) -> Iterator[tuple[Any, Any]]:
        t0 = time.perf_counter()
        for status, identifier in self.handler(event):
            if status in (0x0000, 0xFE00) or (isinstance(status, Dataset) and status.Status < 0xFE00):
                self.times.append((time.perf_counter() - t0) * 1000)  # pynetdicom asks no further
            yield status, identifier


def timed(assoc: Association, clock: ServiceClock, make: Callable[[], Dataset], n: int) -> tuple[list[float], list[float], list[int]]:
    clock.times.clear()
    latencies, counts = [], []
    for _ in range(n):
        query = make()
        t0 = time.perf_counter()
        matches = 0
        for status, _identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            if status and status.Status in (0xFF00, 0xFF01):
                matches += 1
            elif not status or status.Status != 0x0000:
                raise RuntimeError(f"C-FIND failed: {status}")
        latencies.append((time.perf_counter() - t0) * 1000)
        counts.append(matches)
    return list(clock.times), latencies, counts


def _pct(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=20)[-1]


def report(label: str, scp: list[float], e2e: list[float], counts: list[int]) -> bool:
    (s50, s95), (e50, e95) = _pct(scp), _pct(e2e)
    ok = s95 < TARGET_P95_MS
    print(
        f"{label:8s} scp p50 {s50:6.1f} ms  p95 {s95:6.1f} ms | e2e p50 {e50:6.1f} ms  p95 {e95:6.1f} ms | "
        f"matches/query {statistics.mean(counts):5.1f}  {'OK' if ok else 'ABOVE TARGET'} (scp p95 < {TARGET_P95_MS:.0f} ms)"
    )
    return ok


def _nodelay(assoc: Association) -> None:
    """TCP_NODELAY, as DCMTK SCUs set it and as the node sets it on accepted connections: without it
    every C-FIND that matches waits ~40 ms for a delayed ACK (Nagle)."""
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]


def _on_open(event: Event) -> None:
    _nodelay(event.assoc)


def _empty_find(event: Event) -> Iterator[tuple[int, None]]:
    yield 0x0000, None


def baseline(queries: int) -> float:
    """e2e p50 of a C-FIND whose handler answers at once: pynetdicom's own cost on this machine now."""
    scp = AE(ae_title="EMPTY")
    scp.add_supported_context(ModalityWorklistInformationFind, ALL_TRANSFER_SYNTAXES)
    server = scp.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_FIND, _empty_find), (evt.EVT_CONN_OPEN, _on_open)],
    )
    assert server is not None
    scu = AE(ae_title="MRSCANNER0")
    scu.add_requested_context(ModalityWorklistInformationFind)
    assoc = scu.associate("127.0.0.1", int(server.server_address[1]), ae_title="EMPTY")
    _nodelay(assoc)
    try:
        times = []
        for _ in range(queries):
            t0 = time.perf_counter()
            list(assoc.send_c_find(station_query(random.Random(0)), ModalityWorklistInformationFind))
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        assoc.release()
        server.shutdown()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'index.sqlite3'}")
        t0 = time.perf_counter()
        populate(db, args.items)
        print(f"inserted {args.items} open items in {time.perf_counter() - t0:.1f} s")
        # The real C-FIND handler wrapped in a clock, bound after the originals (the last bound is kept).
        clock = ServiceClock(next(h[1] for h in worklist_scp.event_handlers(db, Config()) if h[0] is evt.EVT_C_FIND))
        with worklist_scp(db, Config(), [(evt.EVT_C_FIND, clock), (evt.EVT_CONN_OPEN, _on_open)]) as port:
            scu = AE(ae_title="MRSCANNER0")
            scu.add_requested_context(ModalityWorklistInformationFind)
            assoc = scu.associate("127.0.0.1", port, ae_title="MSFOLLOWUP")
            _nodelay(assoc)
            try:
                timed(assoc, clock, lambda: station_query(rng), 5)  # warm-up: caches, first connection
                ok = report("station", *timed(assoc, clock, lambda: station_query(rng), args.queries))
                ok &= report("name", *timed(assoc, clock, lambda: name_query(rng, args.items), args.queries))
                print(f"baseline e2e p50 {baseline(min(args.queries, 50)):6.1f} ms: pynetdicom SCU+SCP with an empty "
                      "handler")
            finally:
                assoc.release()
        db.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
