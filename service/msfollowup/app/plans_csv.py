"""CSV import of monitoring plans: every row in the caller's transaction; a bad row applies nothing."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from msfollowup.followup.model import PlanError
from msfollowup.site.rules import IntervalRules

CSV_COLUMNS = (
    "patient_id", "diagnosed", "dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "flags",
    "clear_flags", "override_interval", "override_protocol", "clear_override", "dmt_stop", "jcv_date", "events",
    "patient_name", "birth_date", "sex",
)  # fmt: skip
_TRUE = ("1", "true", "yes", "y", "x")


class PlanImportError(PlanError):
    """A CSV row that cannot be applied; `line` is the file's line number (header = line 1)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def _split_names(cell: str) -> list[str]:
    return [n for n in cell.replace(";", " ").replace("|", " ").split() if n]


def _row_changes(row: Mapping[str, str]) -> dict[str, Any]:
    """Empty cells leave a field unchanged; flags are separated by ';', '|' or spaces; events are
    `kind=YYYY-MM-DD` items (relapse-brain=2026-03-01;relapse-spinal=2026-06-10), each one dated event."""
    changes: dict[str, Any] = {}
    for key in ("diagnosed", "dmt", "dmt_start", "previous_dmt", "switch_date", "jcv", "override_interval",
                "override_protocol", "dmt_stop", "jcv_date", "patient_name", "birth_date", "sex"):
        value = (row.get(key) or "").strip()
        if value:
            changes[key] = value
    if (row.get("flags") or "").strip():
        changes["set_flags"] = _split_names(row["flags"])
    if (row.get("clear_flags") or "").strip():
        changes["clear_flags"] = _split_names(row["clear_flags"])
    if (row.get("events") or "").strip():
        events = []
        for item in _split_names(row["events"]):
            kind, sep, date = item.partition("=")
            if not sep or not date:
                raise PlanError(f"events: {item[:40]!r} is not kind=YYYY-MM-DD")
            events.append({"kind": kind, "date": date})
        changes["add_events"] = events
    clear = (row.get("clear_override") or "").strip().lower()
    if clear:
        if clear not in _TRUE + ("0", "false", "no", "n"):
            raise PlanError(f"clear_override: {clear[:10]!r} is not yes/no")
        changes["clear_override"] = clear in _TRUE
    return changes


def import_plans_csv(
    session: Session, lines: Iterable[str], author: str, rules: IntervalRules, today: dt.date | None = None
) -> list[str]:
    """Apply every row of a plans CSV in `session`; the first bad row raises PlanImportError (the
    caller rolls the whole file back). Returns the patient ID of every row applied, in file order
    (the caller reschedules those patients)."""
    from msfollowup.app.plans import set_plan  # the repository imports this module to re-export it

    reader = csv.DictReader(lines)
    header = [(h or "").strip().lower().replace("-", "_") for h in (reader.fieldnames or [])]
    if "patient_id" not in header:
        raise PlanImportError(1, "header needs a patient_id column")
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise PlanImportError(1, f"unknown column {unknown[0]!r} (known: {', '.join(CSV_COLUMNS)})")
    reader.fieldnames = header
    applied: list[str] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise PlanImportError(line, "more cells than header columns")
        pid = (row.get("patient_id") or "").strip()
        if not pid:
            raise PlanImportError(line, "patient_id is empty")
        try:
            set_plan(session, pid, _row_changes(row), author, rules=rules, today=today)
        except PlanError as exc:
            raise PlanImportError(line, str(exc)) from None
        applied.append(pid)
    return applied
