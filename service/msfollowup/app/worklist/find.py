"""C-FIND answers from the database: SQL narrows by the column-backed keys, matching decides."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.tag import BaseTag, Tag
from sqlalchemy import (
    ColumnElement,
    and_,
    or_,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from msfollowup.followup.matching import (
    _SPS_SEQ,
    CompiledQuery,
    Condition,
    Projection,
    _Key,
    response_charset,
)
from msfollowup.db.worklist import (
    ScheduledStep,
    decode_identifier,
    name_key,
    servable,
)


def _like_pattern(pattern: str) -> str:
    """LIKE form of a wildcard pattern; runs of "*" become one "%" (the same matches, and the
    database's LIKE has no run of "%" to try every split of)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return re.sub(r"\*+", "%", escaped).replace("?", "_")


def _sql_for(column: InstrumentedAttribute[Any], cond: Condition) -> ColumnElement[bool]:
    if cond.kind == "range":
        low, high = cond.values
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    if cond.kind == "wildcard":
        return or_(*(column.like(_like_pattern(p), escape="\\") for p in cond.values))
    if len(cond.values) == 1:
        return column == cond.values[0]
    return column.in_(cond.values)


# Keys answered by a column: SQL narrows on them (Python still checks every key afterwards).
_TOP_COLUMNS: dict[BaseTag, InstrumentedAttribute[Any]] = {
    Tag("PatientName"): ScheduledStep.patient_name_fold,
    Tag("PatientID"): ScheduledStep.patient_id,
    Tag("AccessionNumber"): ScheduledStep.accession_number,
    Tag("StudyInstanceUID"): ScheduledStep.study_uid,
    Tag("RequestedProcedureID"): ScheduledStep.requested_procedure_id,
}
_SPS_COLUMNS: dict[BaseTag, InstrumentedAttribute[Any]] = {
    Tag("ScheduledStationAETitle"): ScheduledStep.station_ae,
    Tag("Modality"): ScheduledStep.modality,
    Tag("ScheduledProcedureStepStartDate"): ScheduledStep.start_date,
    Tag("ScheduledProcedureStepID"): ScheduledStep.sps_id,
    Tag("ScheduledProcedureStepStatus"): ScheduledStep.sps_status,
}


def _name_prefix_clause(cond: Condition) -> ColumnElement[bool] | None:
    """Index range on patient_name_key for the literal prefixes of PN patterns (None: no prefix)."""
    ranges = []
    for pattern in cond.values:
        prefix = re.split(r"[*?]", pattern, maxsplit=1)[0] if cond.kind == "wildcard" else pattern
        if not prefix:
            return None  # "*Müller": nothing to narrow on
        low = name_key(prefix)
        ranges.append(and_(ScheduledStep.patient_name_key >= low, ScheduledStep.patient_name_key < low + "g"))
    return or_(*ranges)


def sql_filter(compiled: CompiledQuery) -> list[ColumnElement[bool]]:
    """WHERE clauses for the column-backed keys of a query (a superset of the real matches)."""
    clauses: list[ColumnElement[bool]] = []

    def add(keys: Iterable[_Key], columns: dict[BaseTag, InstrumentedAttribute[Any]]) -> None:
        for key in keys:
            column = columns.get(key.tag)
            if column is None or key.cond is None:
                continue
            if key.vr == "PN" and (prefix := _name_prefix_clause(key.cond)) is not None:
                clauses.append(prefix)
            clauses.append(_sql_for(column, key.cond))

    add(compiled.keys, _TOP_COLUMNS)
    for key in compiled.keys:
        if key.tag == _SPS_SEQ and key.sub is not None:
            add(key.sub.keys, _SPS_COLUMNS)
    return clauses


def find(session: Session, query: CompiledQuery) -> Iterator[Projection]:
    """Served items (open, with a patient name) matching a compiled MWL identifier, projected to its keys."""
    rows = session.execute(
        select(ScheduledStep.identifier, ScheduledStep.specific_character_set)
        .where(servable(), *sql_filter(query))
        .order_by(ScheduledStep.start_date, ScheduledStep.id)
    )
    for identifier, record_cs in rows:
        result = query.apply(decode_identifier(identifier))
        if result is None:
            continue
        charset = response_charset(list(query.charset), record_cs, result.dataset)
        if charset is not None or query.asks_charset:
            result.dataset.SpecificCharacterSet = charset or ""
        yield result

