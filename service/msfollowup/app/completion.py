"""Study completion: a study is complete after `stable_seconds` without a new instance.

All state is in the index (Study.last_received, state, version), so a restart resumes every timer
that was running, and several nodes sharing one database complete each study exactly once: the
transition is a compare-and-set UPDATE that only one of them can win.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update

from msfollowup.db import Database, utcnow
from msfollowup.files.store import Study, StudyState
from msfollowup.core.worker import PollingWorker

log = logging.getLogger(__name__)


def request_completion(db: Database, study_uid: str) -> bool:
    """Ask for a study to complete at the next sweep (MPPS COMPLETED). False if it is not known yet."""
    with db.session() as s:
        res = s.execute(
            update(Study)
            .where(Study.study_uid == study_uid, Study.state == StudyState.RECEIVING.value)
            .values(complete_requested=True)
        )
        return bool(cast(CursorResult[Any], res).rowcount)


def complete_due(db: Database, stable_seconds: float, now: dt.datetime | None = None) -> list[tuple[str, int]]:
    """Complete every study that has been quiet long enough; returns (study_uid, new version)."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=stable_seconds)
    done: list[tuple[str, int]] = []
    from msfollowup.app.worklist import mpps_completed  # MPPS is an input like C-STORE: "the exam is done"

    with db.session() as s:
        candidates = s.execute(
            select(Study.study_uid, Study.last_received, Study.version).where(
                Study.state == StudyState.RECEIVING.value,
                or_(
                    Study.last_received <= cutoff,
                    Study.complete_requested.is_(True),
                    # MPPS COMPLETED that arrived before the study's first instance
                    and_(Study.version == 0, mpps_completed(Study.study_uid)),
                ),
            )
        ).all()
    for study_uid, seen_last, version in candidates:
        with db.session() as s:
            # Compare-and-set: loses if an instance arrived since we looked, or another node won.
            res = s.execute(
                update(Study)
                .where(
                    Study.study_uid == study_uid,
                    Study.state == StudyState.RECEIVING.value,
                    Study.last_received == seen_last,
                    Study.version == version,
                )
                .values(state=StudyState.COMPLETE.value, version=version + 1, completed_at=now, complete_requested=False)
            )
        if cast(CursorResult[Any], res).rowcount == 1:
            done.append((study_uid, version + 1))
    return done


class CompletionWorker(PollingWorker):
    """Sweeps every `poll_seconds`; `on_complete(study_uid, version)` runs after each completion."""

    def __init__(
        self,
        db: Database,
        stable_seconds: float,
        poll_seconds: float,
        on_complete: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__("completion", poll_seconds, self.sweep)
        self.db = db
        self.stable_seconds = stable_seconds
        self.on_complete = on_complete

    def sweep(self) -> list[tuple[str, int]]:
        done = complete_due(self.db, self.stable_seconds)
        for study_uid, version in done:
            log.info("study complete study=%s version=%d", study_uid, version)
            if self.on_complete is not None:
                self.on_complete(study_uid, version)
        return done
