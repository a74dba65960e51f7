"""The compliance dashboard and the study list: SQL over `study_results` / `requirement_results`.

Only each study's latest checked version counts. A QA acceptance counts as compliant.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, and_, case, false, func, or_, select, true, union_all
from sqlalchemy.orm import Session

from msfollowup.app.results import PatientRef, RequirementRow, StudyResult
from msfollowup.app.rollup import ComplianceCell, RequirementFailureCell
from msfollowup.app.study_review import StudyDecision

T = TypeVar("T")
VERDICTS = ("compliant", "non-compliant", "unverifiable")
EFFECTIVE = func.coalesce(StudyResult.reviewed_verdict, StudyResult.verdict)
# "latest = 1", not "latest IS 1": only an equality lets the database seek the covering indexes.
LATEST = StudyResult.latest == true()


class FilterError(ValueError):
    """A filter value that cannot be used (the message names it)."""


def _day(value: str | None, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class Filters:
    """What the dashboard and the study list are narrowed to (all optional)."""

    scanner: str | None = None
    profile: str | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    verdict: str | None = None  # a verdict, or "awaiting" (unverifiable, not reviewed)
    requirement: str | None = None  # studies failing this requirement
    week: str | None = None
    month: str | None = None
    purpose: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, q: dict[str, str]) -> Filters:
        verdict = q.get("verdict") or None
        if verdict not in (None, "awaiting", *VERDICTS):
            raise FilterError(f"verdict: {verdict!r} is not one of awaiting, {', '.join(VERDICTS)}")
        return cls(scanner=q.get("scanner") or None, profile=q.get("profile") or None,
                   start=_day(q.get("start"), "start"), end=_day(q.get("end"), "end"), verdict=verdict,
                   requirement=q.get("requirement") or None, week=q.get("week") or None, month=q.get("month") or None,
                   purpose=q.get("purpose") or None)

    def query(self) -> dict[str, str]:
        """The filters as query parameters (for links from a number to its studies)."""
        out = {"scanner": self.scanner, "profile": self.profile, "start": self.start and self.start.isoformat(),
               "end": self.end and self.end.isoformat(), "verdict": self.verdict, "requirement": self.requirement,
               "week": self.week, "month": self.month, "purpose": self.purpose}
        return {k: v for k, v in out.items() if v}

    def where(self) -> list[ColumnElement[bool]]:
        c: list[ColumnElement[bool]] = [LATEST]
        if self.scanner:
            c.append(StudyResult.scanner == self.scanner)
        if self.profile:
            c.append(StudyResult.profile_id == self.profile)
        if self.purpose:
            c.append(StudyResult.purpose == self.purpose)
        if self.start:
            c.append(StudyResult.study_date >= self.start)
        if self.end:
            c.append(StudyResult.study_date <= self.end)
        if self.week:
            c.append(StudyResult.week == self.week)
        if self.month:
            c.append(StudyResult.month == self.month)
        if self.verdict == "awaiting":
            c += [StudyResult.verdict == "unverifiable", StudyResult.reviewed_verdict.is_(None)]
        elif self.verdict:
            c.append(EFFECTIVE == self.verdict)
        if self.requirement:
            c.append(StudyResult.check_id.in_(select(RequirementRow.check_id).where(
                RequirementRow.requirement_id == self.requirement, RequirementRow.status == "fail",
                RequirementRow.informational == false())))
        return c


def _rates(counts: dict[tuple[str, str], list[int]]) -> list[dict[str, Any]]:
    return [{"key": k, "period": p, "studies": n, "compliant": c, "rate": round(c / n, 4) if n else None}
            for (k, p), (n, c) in sorted(counts.items())]


Cell = tuple[str, str, str | None, str, str | None, int]  # scanner, profile, period, verdict, reviewed, studies


def dashboard(session: Session, f: Filters, by: str = "week") -> dict[str, Any]:
    """Compliance rate per scanner and per profile by week or month, the requirements failing most,
    the number of studies awaiting review, and the choices for the filters.

    Read from the rollup (app/rollup.py: a few thousand cells instead of 100,000 result rows) whenever
    the filters are facts the rollup keeps; a date range reads its whole weeks from the rollup and the
    part-weeks at either end from the result rows. A verdict or requirement filter reads the rows."""
    if by not in ("week", "month"):
        raise FilterError(f"by: {by!r} is not week or month")
    if f.verdict or f.requirement:
        return dashboard_from_rows(session, f, by)
    weeks, edges = _split(f)
    if weeks is None:  # the range holds no whole week
        return dashboard_from_rows(session, f, by)
    sums = _rollup_sums(session, weeks, by)
    for edge in edges:
        sums.add_cells(_row_cells(session, edge, by))
    # Unfiltered, every scanner and profile there is also has a cell here: the choices are the same set.
    return _shape(f, by, sums, _failing_merged(session, weeks, edges), filter_choices(session))


def dashboard_from_rows(session: Session, f: Filters, by: str = "week") -> dict[str, Any]:
    """The dashboard computed from the result rows alone (any filter; the reference the rollup is tested
    against). One GROUP BY over (scanner, profile, period, verdict, review) read from a covering index."""
    if by not in ("week", "month"):
        raise FilterError(f"by: {by!r} is not week or month")
    cells = _row_cells(session, f, by)
    failing_q = _failing_rows(f).order_by(func.count().desc(), RequirementRow.requirement_id).limit(10)
    failing = [tuple(r) for r in session.execute(failing_q)]
    sums = _Sums()
    sums.add_cells(cells)
    return _shape(f, by, sums, failing, _choices_from(cells) if not f.query() else filter_choices(session))


def _row_cells(session: Session, f: Filters, by: str) -> list[Cell]:
    period = StudyResult.week if by == "week" else StudyResult.month
    # Core rows, not ORM rows: the week view has ~15,000 cells at 100,000 studies.
    return cast(list[Cell], session.connection().execute(
        select(StudyResult.scanner, StudyResult.profile_id, period, StudyResult.verdict, StudyResult.reviewed_verdict,
               func.count())
        .where(*f.where()).group_by(StudyResult.scanner, StudyResult.profile_id, period, StudyResult.verdict,
                                    StudyResult.reviewed_verdict)
    ).all())


def _failing_rows(f: Filters) -> Any:
    """requirement_id, label, failures of the result rows (grouped, not yet ordered)."""
    q = (select(RequirementRow.requirement_id, func.max(RequirementRow.label).label("label"),
                func.count().label("failures"))
         .where(RequirementRow.status == "fail", RequirementRow.informational == false())
         .group_by(RequirementRow.requirement_id))
    if f.query():  # filtered: join the study rows; unfiltered: the requirement rows' own latest flag
        return q.join(StudyResult, StudyResult.check_id == RequirementRow.check_id).where(*f.where())
    return q.where(RequirementRow.latest == true())


def _split(f: Filters) -> tuple[Filters | None, list[Filters]]:
    """The filters for the rollup (whole weeks Monday..Sunday inside start..end) and for the result rows
    (the part-weeks at either end); (None, []) when the range holds no whole week."""
    first = last = None  # Mondays of the first and last whole week
    if f.start:
        first = f.start + dt.timedelta(days=-f.start.weekday() % 7)
    if f.end:
        last = f.end - dt.timedelta(days=(f.end.weekday() + 1) % 7 + 6)
    if first and last and first > last:
        return None, []
    edges = []
    if f.start and first and f.start < first:
        edges.append(replace(f, end=first - dt.timedelta(days=1)))
    if f.end and last and f.end > last + dt.timedelta(days=6):
        edges.append(replace(f, start=last + dt.timedelta(days=7)))
    return replace(f, start=first, end=last), edges


def _rollup_where(f: Filters, table: Any) -> list[ColumnElement[bool]]:
    """f's filters on a rollup table (both have these columns); start/end must be whole weeks (_split)."""
    c: list[ColumnElement[bool]] = []
    for value, column in ((f.scanner, "scanner"), (f.profile, "profile_id"), (f.purpose, "purpose"),
                          (f.week, "week"), (f.month, "month")):
        if value:
            c.append(table.c[column] == value)
    if f.start:
        c.append(table.c.week >= f.start.isoformat())  # also leaves out '' (no study date)
    if f.end:
        c += [table.c.week <= f.end.isoformat(), table.c.week != ""]
    return c


def _rollup_sums(session: Session, f: Filters, by: str) -> _Sums:
    """The figures of the rollup's cells, summed in SQL per scanner and period, per profile and period,
    and per verdict: ~1,700 rows for the week view instead of ~16,000 cells shaped in Python."""
    c = ComplianceCell
    period = c.week if by == "week" else c.month
    where = [c.studies > 0, *_rollup_where(f, c.__table__)]
    compliant = or_(c.reviewed == "compliant", and_(c.reviewed == "", c.verdict == "compliant"))
    ok = func.sum(case((compliant, c.studies), else_=0))
    conn = session.connection()
    sums = _Sums()
    for dim, column in (("scanner", c.scanner), ("profile", c.profile_id)):
        sums.per[dim] = {(key, when): [int(n), int(k)] for key, when, n, k in conn.execute(
            select(column, period, func.sum(c.studies), ok).where(*where, period != "").group_by(column, period))}
    for verdict, reviewed, n in conn.execute(
            select(c.verdict, c.reviewed, func.sum(c.studies)).where(*where).group_by(c.verdict, c.reviewed)):
        sums.add_total(verdict, reviewed or None, int(n))
    return sums


def _failing_merged(session: Session, weeks: Filters, edges: list[Filters]) -> list[tuple[str, str | None, int]]:
    """The ten requirements failing most: the rollup's whole weeks plus the part-weeks' result rows,
    summed and ordered in SQL (the database's collation breaks ties, as in dashboard_from_rows)."""
    cell = RequirementFailureCell
    parts: list[Any] = [
        select(cell.requirement_id, func.max(func.nullif(cell.label, "")).label("label"),
               func.sum(cell.failures).label("failures"))
        .where(cell.failures > 0, *_rollup_where(weeks, cell.__table__)).group_by(cell.requirement_id)]
    parts += [_failing_rows(edge) for edge in edges]
    both = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    total = func.sum(both.c.failures)
    rows = session.execute(select(both.c.requirement_id, func.max(both.c.label), total)
                           .group_by(both.c.requirement_id).order_by(total.desc(), both.c.requirement_id).limit(10))
    return [(r, label, int(n)) for r, label, n in rows]


class _Sums:
    """Studies and compliant studies per (scanner, period) and (profile, period), totals per effective
    verdict, and the number awaiting review. Every figure is a sum, so parts add up: the rollup's whole
    weeks and the part-weeks' rows."""

    def __init__(self) -> None:
        self.per: dict[str, dict[tuple[str, str], list[int]]] = {"scanner": {}, "profile": {}}
        self.totals: dict[str, int] = {}
        self.awaiting = 0

    def add_total(self, verdict: str, reviewed: str | None, n: int) -> None:
        effective = reviewed or verdict
        self.totals[effective] = self.totals.get(effective, 0) + n
        if verdict == "unverifiable" and reviewed is None:
            self.awaiting += n

    def add_cells(self, cells: list[Cell]) -> None:
        """Result-row cells: both dimensions and the totals in one pass instead of four queries."""
        per_scanner, per_profile = self.per["scanner"], self.per["profile"]
        for scanner, profile, when, verdict, reviewed, n in cells:
            self.add_total(verdict, reviewed, n)
            if when is None:
                continue
            ok = n if (reviewed or verdict) == "compliant" else 0
            for dim, key in ((per_scanner, (scanner, when)), (per_profile, (profile, when))):
                cell = dim.get(key)
                if cell is None:
                    dim[key] = [n, ok]
                else:
                    cell[0] += n
                    cell[1] += ok


def _shape(f: Filters, by: str, sums: _Sums, failing: list[tuple[Any, ...]],
           choices: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "by": by,
        "filters": f.query(),
        "totals": sums.totals,
        "awaiting_review": sums.awaiting,
        "per_scanner": _rates(sums.per["scanner"]),
        "per_profile": _rates(sums.per["profile"]),
        "failing_requirements": [{"requirement": r, "label": label, "failures": n} for r, label, n in failing],
        "choices": choices,
    }


def change_token(session: Session) -> tuple[int, int, int, int]:
    """A cheap value that changes whenever a dashboard figure can change, read from the database (so it is
    right for every node sharing one PostgreSQL): study_results and requirement_results only grow (a check
    inserts rows; the older version's `latest` flag flips in that same transaction), and the only update
    of a verdict, a QA acceptance, appends a study_decisions row in its transaction. Row counts, not only
    the highest id: on PostgreSQL a transaction holding a lower id can commit after one holding a higher."""
    # One statement of four scalar subqueries: a bare count(*) and a bare max(primary key) each have
    # their own fast path in SQLite (page counts, one index seek); together in one SELECT they scan.
    parts = (select(func.count()).select_from(StudyResult), select(func.max(StudyResult.check_id)),
             select(func.count()).select_from(StudyDecision), select(func.max(StudyDecision.id)))
    row = session.execute(select(*(p.scalar_subquery() for p in parts))).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0)


@dataclass
class _Entry:
    token: tuple[int, ...]
    data: dict[str, Any]
    derived: dict[str, Any] = field(default_factory=dict)


class DashboardCache:
    """The last few dashboards (per filters and period), kept while `change_token` stays the same.

    The unfiltered dashboard at 100,000 studies is one GROUP BY over 100,000 index entries (~100 ms on a
    loaded machine); most page views in between two recorded results ask the same question. The token is
    read before the figures are computed, so a result recorded meanwhile can only make an entry newer than
    its token (recomputed at the next view), never older. Entries are shared: callers must not modify them.
    `derived` keeps what a caller builds from one entry (the page's charts) for as long as the entry lives."""

    def __init__(self, size: int = 16) -> None:  # a week page entry with its charts and table: ~1.5 MB
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()

    def dashboard(self, session: Session, f: Filters, by: str = "week") -> dict[str, Any]:
        if by not in ("week", "month"):
            raise FilterError(f"by: {by!r} is not week or month")
        key = (by, tuple(sorted(f.query().items())))
        token = change_token(session)
        with self._lock:
            found = self._entries.get(key)
            if found is not None and found.token == token:
                self._entries.move_to_end(key)
                return found.data
        data = dashboard(session, f, by)
        with self._lock:
            self._entries[key] = _Entry(token, data)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return data

    def derived(self, data: dict[str, Any], name: str, make: Callable[[], T]) -> T:
        """`make()` for this dashboard, built once while `data` is a kept entry (else every time)."""
        with self._lock:
            entry = next((e for e in self._entries.values() if e.data is data), None)
            if entry is not None and name in entry.derived:
                return cast(T, entry.derived[name])
        value = make()
        if entry is not None:
            with self._lock:
                entry.derived[name] = value
        return value


def _choices_from(cells: Any) -> dict[str, list[str]]:
    return {"scanners": sorted({c[0] for c in cells}), "profiles": sorted({c[1] for c in cells})}


def filter_choices(session: Session) -> dict[str, list[str]]:
    """The scanners and profiles there are (from the rollup's cells)."""
    return _choices_from(session.execute(
        select(ComplianceCell.scanner, ComplianceCell.profile_id).where(ComplianceCell.studies > 0)
        .group_by(ComplianceCell.scanner, ComplianceCell.profile_id)).all())


def _study_select(f: Filters) -> Any:
    return (select(StudyResult, PatientRef.patient_id).outerjoin(PatientRef, PatientRef.id == StudyResult.patient_ref)
            .where(*f.where()))


def list_studies(session: Session, f: Filters, page: int = 1, per_page: int = 50) -> dict[str, Any]:
    """One page of checked studies (latest version), newest study date first."""
    page, per_page = max(1, page), min(max(1, per_page), 1000)
    total = session.scalar(select(func.count()).select_from(StudyResult).where(*f.where())) or 0
    rows = session.execute(
        _study_select(f).order_by(StudyResult.study_date.desc(), StudyResult.check_id.desc())
        .limit(per_page).offset((page - 1) * per_page)
    ).all()
    return {"total": total, "page": page, "per_page": per_page, "items": [_study_row(r, pid) for r, pid in rows]}


def _study_row(r: StudyResult, patient_id: str | None) -> dict[str, Any]:
    return {
        "id": r.check_id, "study_instance_uid": r.study_uid, "version": r.version,
        "study_date": r.study_date.isoformat() if r.study_date else None, "scanner": r.scanner,
        "purpose": r.purpose, "profile": r.profile_id, "verdict": r.verdict, "reviewed_verdict": r.reviewed_verdict,
        "patient_id": patient_id, "patient": r.patient_ref,
    }


def study_detail(session: Session, check_id: int) -> dict[str, Any] | None:
    """The study page: this version's result, every version, deliveries and reviews."""
    from msfollowup.app.reviews import reviews_of
    from msfollowup.db.deliveries import Delivery
    from msfollowup.db.checks import StudyCheck
    from msfollowup.files.store import Study

    found = session.execute(_study_select(Filters()).where(StudyResult.check_id == check_id)).first()
    if found is None:
        found = session.execute(select(StudyResult, PatientRef.patient_id)
                                .outerjoin(PatientRef, PatientRef.id == StudyResult.patient_ref)
                                .where(StudyResult.check_id == check_id)).first()
        if found is None:
            return None
    res, patient_id = found
    chk = session.get(StudyCheck, check_id)
    assert chk is not None
    study = session.get(Study, res.study_uid)
    versions = session.execute(
        select(StudyResult.check_id, StudyResult.version, StudyResult.verdict, StudyResult.reviewed_verdict,
               StudyResult.checked_at).where(StudyResult.study_uid == res.study_uid).order_by(StudyResult.version)
    ).all()
    deliveries = session.scalars(select(Delivery).where(Delivery.study_uid == res.study_uid).order_by(Delivery.id)).all()
    return {
        "study": _study_row(res, patient_id),
        "description": study.study_description if study else None,
        "station_name": study.station_name if study else None,
        "result": json.loads(chk.result_json),
        "versions": [{"id": c, "version": v, "verdict": vd, "reviewed_verdict": rv, "checked_at": at.isoformat()}
                     for c, v, vd, rv, at in versions],
        "deliveries": [{"id": d.id, "version": d.version, "destination": d.destination, "state": d.state,
                        "attempts": d.attempts, "last_error": d.last_error,
                        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None} for d in deliveries],
        "reviews": reviews_of(session, res.study_uid),
    }


def exam_timeline(session: Session, patient_ref: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(StudyResult).where(StudyResult.patient_ref == patient_ref, LATEST)
                           .order_by(StudyResult.study_date)).all()
    return [_study_row(r, None) for r in rows]


