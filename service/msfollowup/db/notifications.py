"""The `notification_deliveries` table: one row per (event occurrence, destination).

The same discipline as the SR outbox (outbox.py): a row is created in the transaction that records
what happened (a study check, an overdue finding), so an event is never lost and never enqueued twice
(`dedup_key` + destination is unique); a sender claims it with an atomic UPDATE on the state, and a
delivered row is never sent again. The payload is stored already filtered for its destination (no
patient name, ID or birth date unless that destination includes patient data); secrets are not stored:
the signature is made at send time from the configuration.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.db import Base, UTCDateTime

PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
ABANDONED = "abandoned"  # its destination was removed from the configuration
STATES = (PENDING, SENDING, DELIVERED, ABANDONED)


class NotificationDelivery(Base):
    __tablename__ = "notification_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event: Mapped[str] = mapped_column(String(32), index=True)
    dedup_key: Mapped[str] = mapped_column(String(255))  # the event occurrence, e.g. "study.non_compliant|uid|v1"
    destination: Mapped[str] = mapped_column(String(300))  # NotifyDestination.key
    kind: Mapped[str] = mapped_column(String(16))  # webhook / email
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    payload_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("dedup_key", "destination", name="uq_notification_deliveries_dest"),)

    def to_json(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "id": self.id,
            "event": self.event,
            "destination": self.destination,
            "study_instance_uid": self.study_uid,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": iso(self.next_attempt_at) if self.state == PENDING else None,
            "delivered_at": iso(self.delivered_at),
            "created_at": iso(self.created_at),
        }
