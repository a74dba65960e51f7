"""Stage leases: one node runs the check (or the reports and scheduling) of one study version.

Every node's pipeline sees the same pending work in the shared database. Before running a stage for
a study the node claims the stage's lease: an upsert that succeeds only when nobody holds the lease
(no row, or the holder's lease expired) and the stage is not done. The holder's heartbeat renews its
leases, so a long check keeps its lease while the node lives; a node that dies stops renewing and
another node takes the stage over `lease_seconds` later. A finished stage is marked done, so a node
working through an older list of pending work does not run it again.

The unique keys of the stage results (one `study_checks` row per study version, one report per
version) stay the last line of defence when a node is paused past its lease.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from msfollowup.db.cluster import StageLease
from msfollowup.db import Database

log = logging.getLogger(__name__)
DONE_KEPT = dt.timedelta(hours=1)  # longer than any pipeline pass works from one list of pending work


class Leases:
    def __init__(self, db: Database, holder: str, lease_seconds: float) -> None:
        self.db = db
        self.holder = holder
        self.ttl = dt.timedelta(seconds=lease_seconds)

    def claim(self, key: str) -> bool:
        """True if this node now holds `key` (free, expired, or already its own and not done)."""
        stmt = pg_insert(StageLease).values(key=key, holder=self.holder, acquired_at=func.now(),
                                            expires_at=func.now() + self.ttl)
        claim = stmt.on_conflict_do_update(
            index_elements=[StageLease.key],
            set_={"holder": stmt.excluded.holder, "acquired_at": stmt.excluded.acquired_at,
                  "expires_at": stmt.excluded.expires_at},
            where=StageLease.done_at.is_(None) & or_(StageLease.expires_at < func.now(),
                                                     StageLease.holder == self.holder),
        ).returning(StageLease.key)
        with self.db.session() as s:
            return s.execute(claim).first() is not None

    def finish(self, key: str) -> None:
        with self.db.session() as s:
            s.execute(update(StageLease).where(StageLease.key == key, StageLease.holder == self.holder)
                      .values(done_at=func.now()))

    def release(self, key: str) -> None:
        """Give a lease back unfinished (the stage failed): any node retries it at its next pass."""
        with self.db.session() as s:
            s.execute(delete(StageLease).where(StageLease.key == key, StageLease.holder == self.holder,
                                               StageLease.done_at.is_(None)))

    def renew(self) -> int:
        """Heartbeat: push this node's open leases `lease_seconds` on; purge old finished ones."""
        with self.db.session() as s:
            res = s.execute(update(StageLease)
                            .where(StageLease.holder == self.holder, StageLease.done_at.is_(None))
                            .values(expires_at=func.now() + self.ttl))
            s.execute(delete(StageLease).where(StageLease.done_at < func.now() - DONE_KEPT))
        return int(cast(CursorResult[Any], res).rowcount)
