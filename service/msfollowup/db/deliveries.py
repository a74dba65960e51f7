"""The report delivery queue (`report_deliveries`): one job per (report, destination), created in the
same transaction as the report row it delivers. The sending worker is msfollowup.app.outbox."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.db import Base, UTCDateTime, utcnow
from msfollowup.site.config import Config, Destination

PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
STATES = (PENDING, SENDING, DELIVERED)


class Delivery(Base):
    __tablename__ = "report_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sr_path: Mapped[str] = mapped_column(Text)  # relative to <data_dir>
    destination: Mapped[str] = mapped_column(String(300))  # "AE@host:port", the job's identity
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("report_id", "destination", name="uq_report_deliveries_dest"),)


def destination_key(dest: Destination) -> str:
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


def enqueue(
    session: Session,
    cfg: Config,
    report_id: int,
    study_uid: str,
    version: int,
    sr_sop_instance_uid: str,
    sr_path: str,
    now: dt.datetime | None = None,
) -> int:
    """Create the missing jobs of one report (one per destination); returns how many were created.

    Idempotent: a destination that already has a job for this report keeps it (and its state).
    """
    now = now or utcnow()
    existing = set(session.scalars(select(Delivery.destination).where(Delivery.report_id == report_id)))
    created = 0
    for dest in cfg.report.destinations:
        key = destination_key(dest)
        if key in existing:
            continue
        existing.add(key)
        session.add(
            Delivery(
                report_id=report_id,
                study_uid=study_uid,
                version=version,
                sr_sop_instance_uid=sr_sop_instance_uid,
                sr_path=sr_path,
                destination=key,
                ae_title=dest.ae_title,
                host=dest.host,
                port=dest.port,
                calling_ae_title=dest.calling_ae_title or cfg.node.ae_title,
                state=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        created += 1
    return created
