"""Running totals of the compliance dashboard, kept in the transaction that changes a result.

`compliance_cells` counts the latest checked version of each study per (scanner, profile, purpose,
week, month, verdict, reviewed verdict); `requirement_failure_cells` counts the failed non-informational
requirement results of those versions per (requirement, label, scanner, profile, purpose, week, month).
The dashboard sums a few thousand cells instead of grouping 100,000 result rows (docs/web.md,
"Dashboard speed"). Every write that changes what the raw rows would sum to (a recorded check, which
also retires the versions it replaces; a QA acceptance) adds its +1/-1 here in the same transaction.

NULL has no place in a key (a unique key does not treat NULLs as equal): `''` stands for "no study
date" (week, month), "not reviewed" and "no label". Keys are written in sorted order, so two writers on
one PostgreSQL take their row locks in the same order and cannot deadlock; the write is an
insert-or-update (ON CONFLICT DO UPDATE), so two nodes creating the same new cell do not collide.
A cell that drops to 0 stays (readers skip it): deleting it would race a writer adding to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Index, Integer, String, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.db import Base

# (scanner, profile_id, purpose, week, month, verdict, reviewed)
CellKey = tuple[str, str, str, str, str, str, str]
# (requirement_id, label, scanner, profile_id, purpose, week, month)
FailureKey = tuple[str, str, str, str, str, str, str]


CELL_COLUMNS = ("scanner", "profile_id", "purpose", "week", "month", "verdict", "reviewed")
FAILURE_COLUMNS = ("requirement_id", "label", "scanner", "profile_id", "purpose", "week", "month")


class ComplianceCell(Base):
    """How many studies (latest checked version) share these facts."""

    __tablename__ = "compliance_cells"

    scanner: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    week: Mapped[str] = mapped_column(String(10), primary_key=True)  # '' = no study date
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # a week can span two months
    verdict: Mapped[str] = mapped_column(String(16), primary_key=True)
    reviewed: Mapped[str] = mapped_column(String(16), primary_key=True)  # '' = no QA decision
    studies: Mapped[int] = mapped_column(Integer, default=0)

    # Covering indexes, one per GROUP BY of the dashboard (scanner or profile, then week or month; the
    # totals by verdict): the database streams the groups in index order and never sorts or reads the
    # table. Each holds every column, so the filters (scanner, profile, purpose, weeks) are covered too.
    __table_args__ = tuple(
        Index(f"ix_compliance_cells_{name}", *first, *(c for c in CELL_COLUMNS if c not in first), "studies")
        for name, first in (("scanner_week", ("scanner", "week")), ("scanner_month", ("scanner", "month")),
                            ("profile_week", ("profile_id", "week")), ("profile_month", ("profile_id", "month")),
                            ("verdict", ("verdict", "reviewed"))))


class RequirementFailureCell(Base):
    """How many failed (non-informational) requirement results of latest versions share these facts."""

    __tablename__ = "requirement_failure_cells"

    requirement_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(128), primary_key=True)  # '' = none
    scanner: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    week: Mapped[str] = mapped_column(String(10), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)

    # The key and the count: GROUP BY requirement_id reads this index alone.
    __table_args__ = (Index("ix_requirement_failure_cells_sum", *FAILURE_COLUMNS, "failures"),)


@dataclass
class Deltas:
    """The +1/-1 of one transaction, netted per cell before anything is written."""

    cells: dict[CellKey, int] = field(default_factory=dict)
    failures: dict[FailureKey, int] = field(default_factory=dict)

    def study(self, facts: tuple[Any, ...], verdict: str, reviewed: str | None, n: int) -> None:
        """facts: (scanner, profile_id, purpose, week, month) of a study_results row."""
        key = (*_facts(facts), verdict, reviewed or "")
        self.cells[key] = self.cells.get(key, 0) + n

    def failure(self, requirement_id: str, label: str | None, facts: tuple[Any, ...], n: int) -> None:
        key = (requirement_id, label or "", *_facts(facts))
        self.failures[key] = self.failures.get(key, 0) + n


def _facts(facts: tuple[Any, ...]) -> tuple[str, str, str, str, str]:
    scanner, profile_id, purpose, week, month = facts
    return scanner, profile_id, purpose, week or "", month or ""


def apply(session: Session, deltas: Deltas) -> None:
    """Add the deltas to their cells (insert-or-update, keys in sorted order, netted-out keys skipped)."""
    for table, column, keys, changes in (
        (ComplianceCell.__table__, "studies", CELL_COLUMNS, deltas.cells),
        (RequirementFailureCell.__table__, "failures", FAILURE_COLUMNS, deltas.failures),
    ):
        for key in sorted(changes):
            n = changes[key]
            if n == 0:
                continue
            session.execute(_upsert(session, table, column, keys), {**dict(zip(keys, key)), column: n})


def _upsert(session: Session, table: Any, column: str, keys: tuple[str, ...]) -> Any:
    dialect = session.get_bind().dialect.name
    stmt: sqlite.Insert | postgresql.Insert
    if dialect == "sqlite":
        stmt = sqlite.insert(table)
    elif dialect == "postgresql":
        stmt = postgresql.insert(table)
    else:
        raise NotImplementedError(f"compliance rollup: no insert-or-update for {dialect}")
    return stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={column: table.c[column] + stmt.excluded[column]})


# The whole rollup from the result rows: what the migration fills it with, and what `rebuild` (benchmark
# data generated straight into the result tables; a repair) runs. Plain SQL that SQLite and PostgreSQL share.
REBUILD_SQL = (
    "DELETE FROM compliance_cells",
    "DELETE FROM requirement_failure_cells",
    "INSERT INTO compliance_cells (scanner, profile_id, purpose, week, month, verdict, reviewed, studies) "
    "SELECT scanner, profile_id, purpose, COALESCE(week, ''), COALESCE(month, ''), verdict, "
    "COALESCE(reviewed_verdict, ''), COUNT(*) FROM study_results WHERE latest = true "
    "GROUP BY scanner, profile_id, purpose, COALESCE(week, ''), COALESCE(month, ''), verdict, "
    "COALESCE(reviewed_verdict, '')",
    "INSERT INTO requirement_failure_cells (requirement_id, label, scanner, profile_id, purpose, week, month, failures) "
    "SELECT r.requirement_id, COALESCE(r.label, ''), s.scanner, s.profile_id, s.purpose, COALESCE(s.week, ''), "
    "COALESCE(s.month, ''), COUNT(*) FROM requirement_results r JOIN study_results s ON s.check_id = r.check_id "
    "WHERE r.latest = true AND r.status = 'fail' AND r.informational = false "
    "GROUP BY r.requirement_id, COALESCE(r.label, ''), s.scanner, s.profile_id, s.purpose, COALESCE(s.week, ''), "
    "COALESCE(s.month, '')",
)


def rebuild(connection: Connection) -> None:
    """Recompute both tables from study_results / requirement_results (in the caller's transaction)."""
    for statement in REBUILD_SQL:
        connection.execute(text(statement))
