"""The compliance aggregates in SQL (study_results / requirement_results), on SQLite and PostgreSQL:
only the latest version counts, a QA acceptance counts as compliant, filters narrow every figure."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from msfollowup.app import compliance, reviews
from msfollowup.app.results import RequirementRow, record_check
from msfollowup.db import Database
from msfollowup.db.checks import StudyCheck
from nodeutil import add_study_check


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)  # conftest: SQLite, and a fresh database of the session's PostgreSQL
    yield database
    database.dispose()


def _check(db: Database, pid: str, uid: str, version: int, date: str, verdict: str, scanner: str,
           failed: tuple[str, ...] = ()) -> int:
    add_study_check(db, pid, uid, version, date, verdict, failed)
    with db.session() as s:
        chk = s.scalars(select(StudyCheck).where(StudyCheck.study_uid == uid, StudyCheck.version == version)).one()
        result = {"profile": {"id": "ms-brain-routine"}, "verdict": verdict,
                  "series": [{"facts": {"station_name": scanner, "device_serial_number": "SN1"}}],
                  "requirements": json.loads(chk.result_json)["requirements"]}
        record_check(s, chk.id, uid, version, pid, date, result)
        return chk.id


def test_rates_failures_versions_and_acceptance(db: Database) -> None:
    _check(db, "P1", "1.1", 1, "20260105", "non-compliant", "MR1", ("sequence.t2_flair",))
    _check(db, "P1", "1.1", 2, "20260105", "compliant", "MR1")  # a late series fixed it: v1 no longer counts
    _check(db, "P2", "1.2", 1, "20260106", "non-compliant", "MR1", ("sequence.t2_flair", "field_strength"))
    unverifiable = _check(db, "P3", "1.3", 1, "20260220", "unverifiable", "MR2")
    _check(db, "P4", "1.4", 1, "20260221", "compliant", "MR2")
    with db.session() as s:
        d = compliance.dashboard(s, compliance.Filters(), "month")
        assert d["totals"] == {"compliant": 2, "non-compliant": 1, "unverifiable": 1} and d["awaiting_review"] == 1
        rates = {(r["key"], r["period"]): (r["studies"], r["compliant"]) for r in d["per_scanner"]}
        assert rates == {("MR1 / SN1", "2026-01"): (2, 1), ("MR2 / SN1", "2026-02"): (2, 1)}
        assert [(r["requirement"], r["failures"]) for r in d["failing_requirements"]] == [
            ("field_strength", 1), ("sequence.t2_flair", 1)]
        filtered = compliance.dashboard(s, compliance.Filters(scanner="MR2 / SN1"), "week")
        assert filtered["failing_requirements"] == [] and sum(r["studies"] for r in filtered["per_profile"]) == 2
        listed = compliance.list_studies(s, compliance.Filters.parse({"requirement": "sequence.t2_flair"}))
        assert [i["study_instance_uid"] for i in listed["items"]] == ["1.2"]
        first = s.scalars(select(StudyCheck.id).where(StudyCheck.study_uid == "1.1", StudyCheck.version == 1)).one()
        assert s.scalar(select(RequirementRow.latest).where(RequirementRow.requirement_id == "sequence.t2_flair",
                                                            RequirementRow.check_id == first)) is False
    with db.session() as s:
        with pytest.raises(reviews.ReviewError, match="only an unverifiable"):
            reviews.accept_as_compliant(s, compliance.list_studies(s, compliance.Filters(verdict="compliant"))["items"][0]["id"],
                                        "looks fine", "qa1")
    with db.session() as s:
        reviews.accept_as_compliant(s, unverifiable, "contrast timing checked on the console", "qa1")
    with db.session() as s:
        d = compliance.dashboard(s, compliance.Filters(), "month")
        assert d["totals"] == {"compliant": 3, "non-compliant": 1} and d["awaiting_review"] == 0
        assert compliance.list_studies(s, compliance.Filters(verdict="awaiting"))["total"] == 0
    with pytest.raises(compliance.FilterError, match="start"):
        compliance.Filters.parse({"start": "2026-02-30"})


def test_cached_dashboard_equals_the_straightforward_one_and_follows_every_change(db: Database) -> None:
    """The web's dashboard cache (keyed on a change token read from the database) answers exactly what the
    plain computation answers, on generated data, and a new check version or a QA acceptance shows at once."""
    rnd = random.Random(14)
    scanners, verdicts = ["MR1", "MR2", "MR3"], ["compliant", "compliant", "non-compliant", "unverifiable"]
    requirements = ["sequence.t2_flair", "field_strength", "contrast_delay"]
    unverifiable: list[int] = []
    for i in range(60):
        day = dt.date(2025, 12, 1) + dt.timedelta(days=rnd.randrange(120))
        verdict = rnd.choice(verdicts)
        failed = tuple(r for r in requirements if verdict == "non-compliant" and rnd.random() < 0.6)
        check = _check(db, f"P{i % 17}", f"2.{i}", 1, day.strftime("%Y%m%d"), verdict, rnd.choice(scanners), failed)
        if verdict == "unverifiable":
            unverifiable.append(check)
    cache = compliance.DashboardCache(size=4)
    views = [(compliance.Filters(), "month"), (compliance.Filters(), "week"),
             (compliance.Filters(scanner="MR2 / SN1"), "month"),
             (compliance.Filters(start=dt.date(2026, 1, 7), end=dt.date(2026, 2, 20)), "week"),
             (compliance.Filters.parse({"verdict": "awaiting"}), "month"),
             (compliance.Filters.parse({"requirement": "field_strength"}), "week")]

    def same_everywhere() -> dict[str, Any]:
        with db.session() as s:
            for f, by in views:
                assert cache.dashboard(s, f, by) == compliance.dashboard(s, f, by), (f, by)
            return cache.dashboard(s, compliance.Filters(), "month")

    first = same_everywhere()
    with db.session() as s:
        assert cache.dashboard(s, compliance.Filters(), "month") is first  # unchanged database: the kept entry
    _check(db, "P1", "2.0", 2, "20251201", "non-compliant", "MR3", ("contrast_delay",))  # a later version
    second = same_everywhere()
    assert second != first and second["totals"] != first["totals"]
    with db.session() as s:
        reviews.accept_as_compliant(s, unverifiable[0], "checked on the console", "qa1")
    third = same_everywhere()
    assert third["awaiting_review"] == second["awaiting_review"] - 1
    with pytest.raises(compliance.FilterError, match="by"):
        with db.session() as s:
            cache.dashboard(s, compliance.Filters(), "day")
