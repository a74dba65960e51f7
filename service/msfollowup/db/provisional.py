"""The `provisional_results` table: every distinct provisional state of a study, in order.

A row is written only when the state changed (same content as the study's latest row: nothing written),
so the table is the history the scanner-room page showed, and a restart does not duplicate it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from msfollowup.db import Base, UTCDateTime


class ProvisionalRecord(Base):
    __tablename__ = "provisional_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    result_json: Mapped[str] = mapped_column(Text)  # ProvisionalResult.to_json()


def latest_content(session: Session, study_uid: str) -> dict[str, Any] | None:
    """The study's last recorded state without its computation time (to compare with a new one)."""
    raw = session.scalars(
        select(ProvisionalRecord.result_json)
        .where(ProvisionalRecord.study_uid == study_uid)
        .order_by(ProvisionalRecord.id.desc())
        .limit(1)
    ).first()
    if raw is None:
        return None
    data: dict[str, Any] = json.loads(raw)
    data.pop("computed_at", None)
    return data


def record(session: Session, study_uid: str, computed_at: dt.datetime, result: dict[str, Any]) -> None:
    session.add(ProvisionalRecord(study_uid=study_uid, computed_at=computed_at,
                                  result_json=json.dumps(result, default=str)))


def history(session: Session, study_uid: str) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(ProvisionalRecord.result_json).where(ProvisionalRecord.study_uid == study_uid)
        .order_by(ProvisionalRecord.id)
    )
    return [json.loads(r) for r in rows]
