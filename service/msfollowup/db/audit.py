"""Audit trail: who did what to which object, kept in the index database, append-only.

"Who" is the remote DICOM peer (calling AE title + host; for a delivered report, the destination)
or, for changes made from the command line, the user. "What" is an action from `ACTIONS`; the
object is named by its UID (study, MPPS, SR) and, for plan changes, the patient ID. Names, birth
dates and query values are never recorded: a C-FIND row lists the attribute keywords that were
used, not what they asked for.

Rows are only ever inserted. There is no update or delete path, and the ORM refuses one (see
`_refuse_changes`), so a bug elsewhere cannot rewrite history through a session.

The node collects the events of an association in memory and writes them when it ends, in one
transaction: C-STORE answers never wait for an audit write.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Integer, String, Text, event, select
from sqlalchemy.orm import Mapped, ORMExecuteState, Session, mapped_column

from msfollowup.db import Base, Database, UTCDateTime, utcnow

log = logging.getLogger(__name__)

# The fixed vocabulary of actions (the CLI and the conformance statement list them).
ASSOCIATION_RELEASED = "association.released"
ASSOCIATION_ABORTED = "association.aborted"
ASSOCIATION_REJECTED = "association.rejected"
STORE = "store"  # one row per (association, study): counts, not one row per instance
QUERY_MWL = "query.mwl"
MPPS_CREATE = "mpps.create"
MPPS_SET = "mpps.set"
REPORT_DELIVERED = "report.delivered"
PLAN_CHANGE = "plan.change"
# Web application and its accounts: the actor is the signed-in user (actor_user), never the OS user.
USER_CHANGE = "user.change"
TOKEN_CHANGE = "token.change"
LOGIN = "user.login"
STUDY_ACCEPT = "study.accept"  # a QA lead accepted an unverifiable study (it now counts)
STUDY_REFERENCE = "study.reference"  # a user designated the reference study of a purpose
WORKLIST_CLOSE = "worklist.close"  # an item left the worklist: performed, replaced or cancelled, and why
ACTIONS = frozenset({
    ASSOCIATION_RELEASED, ASSOCIATION_ABORTED, ASSOCIATION_REJECTED, STORE, QUERY_MWL,
    MPPS_CREATE, MPPS_SET, REPORT_DELIVERED, PLAN_CHANGE, WORKLIST_CLOSE,
    USER_CHANGE, TOKEN_CHANGE, LOGIN, STUDY_ACCEPT, STUDY_REFERENCE,
})


class AuditError(Exception):
    """An audit row that cannot be written as asked (unknown action, attempt to change history)."""


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    actor_ae: Mapped[str | None] = mapped_column(String(16))
    actor_host: Mapped[str | None] = mapped_column(String(255))
    actor_user: Mapped[str | None] = mapped_column(String(128))  # CLI changes: who typed the command
    action: Mapped[str] = mapped_column(String(32), index=True)
    object_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)  # plan changes only
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON object: counts, keywords, statuses


@dataclass
class Entry:
    """One audit event not written yet (collected during an association)."""

    action: str
    actor_ae: str | None = None
    actor_host: str | None = None
    actor_user: str | None = None
    object_uid: str | None = None
    patient_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    time: dt.datetime = field(default_factory=utcnow)

    def row(self) -> AuditEvent:
        if self.action not in ACTIONS:
            raise AuditError(f"unknown audit action {self.action!r}")
        return AuditEvent(
            time=self.time,
            actor_ae=_clip(self.actor_ae, 16),
            actor_host=_clip(self.actor_host, 255),
            actor_user=_clip(self.actor_user, 128),
            action=self.action,
            object_uid=_clip(self.object_uid, 64),
            patient_id=_clip(self.patient_id, 64),
            detail=json.dumps(self.detail, sort_keys=True, default=str),
        )


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:limit] or None


def record(target: Session | Database, action: str, **fields: Any) -> None:
    """Append one event. With a Session it joins the caller's transaction (a plan change and its
    audit row commit together); with a Database it is written in a transaction of its own."""
    write(target, [Entry(action, **fields)])


def write(target: Session | Database, entries: Iterable[Entry]) -> int:
    rows = [e.row() for e in entries]
    if not rows:
        return 0
    if isinstance(target, Session):
        target.add_all(rows)
        return len(rows)
    with target.session() as s:
        s.add_all(rows)
    return len(rows)


def write_safely(db: Database, entries: Iterable[Entry]) -> int:
    """`write` for network threads: a failing audit write is logged, never fails the DICOM exchange."""
    try:
        return write(db, entries)
    except Exception as exc:  # noqa: BLE001 - the database may be down; the node keeps serving
        log.error("audit write failed: %s", type(exc).__name__)
        return 0


# --- append-only guard ------------------------------------------------------------------------


@event.listens_for(Session, "before_flush")
def _refuse_changes(session: Session, _ctx: object, _instances: object) -> None:
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, AuditEvent) and (obj in session.deleted or session.is_modified(obj)):
            raise AuditError("audit events are append-only: refusing to change or delete one")


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk_changes(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and _targets_audit(state):
        raise AuditError("audit events are append-only: refusing UPDATE/DELETE on audit_events")


def _targets_audit(state: ORMExecuteState) -> bool:
    table = getattr(state.statement, "table", None)
    return getattr(table, "name", None) == AuditEvent.__tablename__


# --- what a C-FIND asked, without its values --------------------------------------------------


def query_keys(identifier: Dataset, prefix: str = "") -> tuple[list[str], list[str]]:
    """(matching keys, return-only keys) of a query identifier, as keyword paths like
    "ScheduledProcedureStepSequence>Modality". Values never leave this function."""
    matching: list[str] = []
    returned: list[str] = []
    for elem in identifier:
        if elem.tag.group in (0x0000, 0x0002) or elem.keyword == "SpecificCharacterSet":
            continue
        name = prefix + (elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})")
        if elem.VR == "SQ":
            items = list(elem.value or [])
            if items and len(items[0]) > 0:
                sub_matching, sub_returned = query_keys(items[0], name + ">")
                matching += sub_matching
                returned += sub_returned
            else:
                returned.append(name)
        elif elem.value not in (None, "", b"") and str(elem.value).strip("* ") != "":
            matching.append(name)
        else:
            returned.append(name)
    return matching, returned


# --- reading --------------------------------------------------------------------------------


def events(db: Database, since: dt.datetime | None = None, action: str | None = None) -> Iterator[dict[str, Any]]:
    """Audit rows in time order, as plain dicts (the CLI's JSON)."""
    stmt = select(AuditEvent).order_by(AuditEvent.time, AuditEvent.id)
    if since is not None:
        stmt = stmt.where(AuditEvent.time >= since)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    with db.session() as s:
        rows = list(s.scalars(stmt))
    for r in rows:
        yield {
            "id": r.id, "time": r.time.isoformat(), "action": r.action,
            "actor_ae": r.actor_ae, "actor_host": r.actor_host, "actor_user": r.actor_user,
            "object_uid": r.object_uid, "patient_id": r.patient_id, "detail": json.loads(r.detail or "{}"),
        }


def parse_since(text: str) -> dt.datetime:
    """`--since`: a date (midnight UTC) or an ISO date-time (UTC unless it names an offset)."""
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(f"--since: {text!r} is not an ISO date (YYYY-MM-DD) or date-time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def format_line(ev: Mapping[str, Any]) -> str:
    actor = ev["actor_user"] or "@".join(p for p in (ev["actor_ae"], ev["actor_host"]) if p) or "-"
    subject = " ".join(p for p in (ev["object_uid"], f"patient={ev['patient_id']}" if ev["patient_id"] else None) if p)
    detail = json.dumps(ev["detail"], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return f"{ev['time']}  {ev['action']:<21} {actor:<32} {subject or '-'}  {detail}"
