"""The dashboard's rollup (compliance_cells, requirement_failure_cells) stays equal to what the result rows
sum to, on SQLite and PostgreSQL: after new results, a version replacing another, a QA acceptance, several
purposes in one transaction, and the migration that fills it from rows already there. The dashboard read
from it equals the one computed from the rows alone, also for date ranges cutting weeks in the middle."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, select, text

from msfollowup.app import compliance, reviews, rollup
from msfollowup.app.results import StudyResult, record_check
from msfollowup.db import Database
from msfollowup.db import migrate as dbmigrate
from msfollowup.db.checks import StudyCheck
from msfollowup.db.index import Study
from msfollowup.db import utcnow

SCANNERS = ["MR1", "MR2", "MR3"]
REQUIREMENTS = [("sequence.t2_flair", "3D FLAIR"), ("field_strength", None), ("contrast_delay", "Contrast delay")]
FIRST = dt.date(2025, 12, 1)  # a Monday


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)  # conftest: SQLite, and a fresh database of the session's PostgreSQL
    yield database
    database.dispose()


def _result(verdict: str, scanner: str, failed: tuple[str, ...], profile: str = "ms-brain-routine") -> dict[str, Any]:
    reqs: list[dict[str, Any]] = [{"id": "sequence.t2", "status": "pass", "label": "T2"}]
    reqs += [{"id": r, "status": "fail", "label": label} for r, label in REQUIREMENTS if r in failed]
    reqs.append({"id": "note.coverage", "status": "fail", "informational": True})  # never counted
    return {"profile": {"id": profile}, "verdict": verdict,
            "series": [{"facts": {"station_name": scanner, "device_serial_number": "SN1"}}], "requirements": reqs}


def _check(db: Database, pid: str, uid: str, version: int, day: dt.date | None, verdict: str, scanner: str,
           failed: tuple[str, ...] = (), purposes: tuple[str, ...] = ("brain",)) -> list[int]:
    """One checked version, one study_checks row per purpose, recorded as the pipeline does (one transaction)."""
    date = day.strftime("%Y%m%d") if day else None
    ids = []
    with db.session() as s:
        if s.get(Study, uid) is None:
            s.add(Study(study_uid=uid, patient_id=pid, study_date=date, first_received=utcnow(), last_received=utcnow()))
            s.flush()
        deltas = rollup.Deltas()
        for purpose in purposes:
            row = StudyCheck(study_uid=uid, version=version, patient_id=pid, study_date=date, purpose=purpose,
                             profile_id="ms-brain-routine", profile_version="1", verdict=verdict, result_json="{}",
                             created_at=utcnow())
            s.add(row)
            s.flush()
            record_check(s, row.id, uid, version, pid, date, _result(verdict, scanner, failed), purpose=purpose,
                         deltas=deltas if len(purposes) > 1 else None)
            ids.append(row.id)
        if len(purposes) > 1:
            rollup.apply(s, deltas)
    return ids


def _cells(conn: Connection) -> tuple[dict[tuple[Any, ...], int], dict[tuple[Any, ...], int]]:
    cells = {tuple(r[:-1]): int(r[-1]) for r in conn.execute(text(
        "SELECT scanner, profile_id, purpose, week, month, verdict, reviewed, studies FROM compliance_cells "
        "WHERE studies <> 0"))}
    failures = {tuple(r[:-1]): int(r[-1]) for r in conn.execute(text(
        "SELECT requirement_id, label, scanner, profile_id, purpose, week, month, failures "
        "FROM requirement_failure_cells WHERE failures <> 0"))}
    return cells, failures


def assert_rollup_matches_rows(db: Database) -> None:
    """The kept rollup equals the one recomputed from the result rows (recomputed, compared, rolled back)."""
    with db.engine.connect() as conn:
        kept = _cells(conn)
        rollup.rebuild(conn)
        recomputed = _cells(conn)
        conn.rollback()
    assert kept == recomputed
    assert kept[0], "no cells at all: the comparison would prove nothing"


VIEWS = [
    compliance.Filters(),
    compliance.Filters(scanner="MR2 / SN1"),
    compliance.Filters(purpose="spine"),
    compliance.Filters(start=dt.date(2026, 1, 7), end=dt.date(2026, 2, 20)),  # Wednesday .. Friday
    compliance.Filters(start=dt.date(2026, 1, 5), end=dt.date(2026, 2, 22)),  # Monday .. Sunday: whole weeks
    compliance.Filters(start=dt.date(2026, 1, 4), end=dt.date(2026, 1, 5)),  # Sunday .. Monday: no whole week
    compliance.Filters(start=dt.date(2026, 1, 1), end=dt.date(2026, 1, 1)),  # one day
    compliance.Filters(start=dt.date(2026, 1, 10)),  # Saturday, open end
    compliance.Filters(end=dt.date(2026, 1, 14)),  # Wednesday, open start (leaves out undated studies)
    compliance.Filters(scanner="MR1 / SN1", start=dt.date(2025, 12, 31), end=dt.date(2026, 3, 3)),
    compliance.Filters(month="2026-01", start=dt.date(2026, 1, 3)),  # a week spanning two months
    compliance.Filters(week="2025-12-29"),
    compliance.Filters(profile="ms-brain-routine", purpose="brain", end=dt.date(2026, 3, 1)),
    compliance.Filters.parse({"verdict": "awaiting"}),  # read from the rows
]


def assert_dashboards_match(db: Database) -> None:
    with db.session() as s:
        for f in VIEWS:
            for by in ("week", "month"):
                assert compliance.dashboard(s, f, by) == compliance.dashboard_from_rows(s, f, by), (f, by)


def _populate(db: Database, n: int = 80, seed: int = 14) -> list[int]:
    rnd = random.Random(seed)
    verdicts = ["compliant", "compliant", "non-compliant", "unverifiable"]
    unverifiable = []
    for i in range(n):
        day = None if i % 23 == 0 else FIRST + dt.timedelta(days=rnd.randrange(110))
        verdict = rnd.choice(verdicts)
        failed = tuple(r for r, _ in REQUIREMENTS if verdict == "non-compliant" and rnd.random() < 0.6)
        purposes = ("brain", "spine") if i % 9 == 0 else ("brain",)
        ids = _check(db, f"P{i % 17}", f"2.{i}", 1, day, verdict, rnd.choice(SCANNERS), failed, purposes)
        if verdict == "unverifiable":
            unverifiable += ids
    return unverifiable


def test_rollup_follows_results_versions_and_acceptances(db: Database) -> None:
    unverifiable = _populate(db)
    assert_rollup_matches_rows(db)
    assert_dashboards_match(db)
    with db.session() as s:
        before = compliance.dashboard(s, compliance.Filters(), "month")
    # a later version replaces one: its old verdict and failures leave, the new ones arrive
    _check(db, "P1", "2.1", 2, FIRST + dt.timedelta(days=40), "non-compliant", "MR3", ("contrast_delay",))
    _check(db, "P2", "2.2", 2, FIRST + dt.timedelta(days=3), "compliant", "MR1")
    _check(db, "P0", "2.0", 2, FIRST + dt.timedelta(days=50), "unverifiable", "MR2", (), ("brain", "spine"))
    assert_rollup_matches_rows(db)
    assert_dashboards_match(db)
    # QA acceptances move studies from unverifiable to compliant (one of them has two purposes)
    with db.session() as s:
        for check_id in unverifiable[:4]:
            row = s.get(StudyResult, check_id)
            if row is not None and row.latest and row.reviewed_verdict is None:  # a 2-purpose study: both at once
                reviews.accept_as_compliant(s, check_id, "checked on the console", "qa1")
    assert_rollup_matches_rows(db)
    assert_dashboards_match(db)
    with db.session() as s:
        after = compliance.dashboard(s, compliance.Filters(), "month")
    assert after != before and after["awaiting_review"] < before["awaiting_review"]
    # the version after an accepted one starts unreviewed again
    with db.session() as s:
        uid = s.scalar(select(StudyResult.study_uid).where(StudyResult.reviewed_verdict == "compliant").limit(1))
        version = s.scalar(select(StudyResult.version).where(StudyResult.study_uid == uid, StudyResult.latest.is_(True)))
    assert uid is not None and version is not None
    _check(db, "P5", uid, version + 1, FIRST + dt.timedelta(days=9), "unverifiable", "MR1")
    assert_rollup_matches_rows(db)
    assert_dashboards_match(db)


def test_part_weeks_are_read_from_the_rows(db: Database) -> None:
    """A range cutting weeks reads those days from the rows: studies on the cut weeks' other days, which
    sit in the same rollup cells, must not be counted."""
    monday = dt.date(2026, 1, 5)
    for offset, verdict in ((0, "compliant"), (2, "non-compliant"), (6, "compliant"), (7, "compliant"),
                            (9, "unverifiable"), (13, "non-compliant")):
        _check(db, "P1", f"3.{offset}", 1, monday + dt.timedelta(days=offset), verdict, "MR1", ("field_strength",))
    with db.session() as s:
        d = compliance.dashboard(s, compliance.Filters(start=monday + dt.timedelta(days=2),
                                                       end=monday + dt.timedelta(days=9)), "week")
        assert d["totals"] == {"non-compliant": 1, "compliant": 2, "unverifiable": 1}
        assert [(r["period"], r["studies"]) for r in d["per_scanner"]] == [("2026-01-05", 2), ("2026-01-12", 2)]
        assert d["failing_requirements"] == [{"requirement": "field_strength", "label": None, "failures": 4}]
    assert_dashboards_match(db)


def test_migration_fills_the_rollup_from_existing_rows(db: Database) -> None:
    """A database of the previous revision with results: the upgrade creates the rollup and fills it."""
    _populate(db, n=40, seed=3)
    with db.session() as s:
        reviews.accept_as_compliant(s, s.scalars(select(StudyResult.check_id).where(
            StudyResult.verdict == "unverifiable", StudyResult.latest.is_(True))).first() or 0, "fine", "qa1")
    with db.engine.connect() as conn:
        expected = _cells(conn)
    with db.engine.begin() as conn:
        command.downgrade(dbmigrate.alembic_config(conn), "0010_kiosk_mpps_series")
    with db.engine.begin() as conn:
        command.upgrade(dbmigrate.alembic_config(conn), "head")
    with db.engine.connect() as conn:
        assert _cells(conn) == expected and expected[0] and expected[1]
    assert_rollup_matches_rows(db)
    assert_dashboards_match(db)
