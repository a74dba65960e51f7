"""Retention of received instances: index rows first, then files; the next run finishes a crashed one.

Order (the index decides what exists):
1. One transaction locks the study row, re-checks that it is still complete and older than the cutoff
   (a late instance moved `last_received` and reopened it: nothing is deleted) and deletes the
   study's instance rows. From its commit on, the instances are gone for every reader.
2. A second transaction locks the study row again and removes the files under `store/<study>/` that
   no row names, then the empty folders.

A crash between the two leaves files without rows, never rows without files: the next run selects the
same old study and step 2 removes them (step 1 finds nothing left). Step 2 removes only unindexed
files and holds the study row lock that every ingest's index transaction also takes, so an instance
indexed again in between (a re-send, `index rebuild`) keeps its file; a file linked by an ingest
whose index transaction is still waiting on the lock is put back from the ingest's temp file
(`InstanceStore._link_and_index` checks the name after its commit). Nothing here logs a patient
identifier; study UIDs are not patient data in this project's logs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Table, select, update
from sqlalchemy.orm import Session

from msfollowup.files.store import Instance, InstanceStore, Study, StudyState

log = logging.getLogger(__name__)


def _lock_study(session: Session, study_uid: str, *conditions: Any) -> bool:
    """Take the study row's write lock (PostgreSQL row lock, SQLite's write lock) by a no-op update:
    ingest's index transaction locks the same row. False when the row does not meet `conditions`."""
    st = cast(Table, Study.__table__)
    res = session.execute(update(st).where(st.c.study_uid == study_uid, *conditions).values(state=st.c.state))
    return cast(CursorResult[Any], res).rowcount == 1


def delete_rows(store: InstanceStore, study_uid: str, cutoff: dt.datetime | None) -> int:
    """Step 1: the study's instance rows, if the study is still complete and untouched since `cutoff`."""
    st = cast(Table, Study.__table__)
    conditions = [st.c.state == StudyState.COMPLETE.value]
    if cutoff is not None:
        conditions.append(st.c.last_received < cutoff)
    with store.db.session() as s:
        if not _lock_study(s, study_uid, *conditions):
            return 0  # reopened or received since the selection: keep everything
        n = s.query(Instance).filter(Instance.study_uid == study_uid).delete()
    return int(n)


def remove_unindexed_files(store: InstanceStore, study_uid: str) -> int:
    """Step 2: files of the study that no row names (removed by step 1, now or in a crashed run)."""
    study_dir = store.root / study_uid
    if not study_dir.is_dir():
        return 0
    removed = 0
    with store.db.session() as s:
        _lock_study(s, study_uid)
        indexed = set(s.scalars(select(Instance.path).where(Instance.study_uid == study_uid)))
        for folder, _dirs, files in os.walk(study_dir, topdown=False):
            for name in files:
                path = Path(folder) / name
                if path.relative_to(store.root).as_posix() not in indexed:
                    path.unlink(missing_ok=True)
                    removed += 1
            try:
                Path(folder).rmdir()  # only when empty; a folder with indexed files stays
            except OSError:
                pass
    return removed


def retire_study(store: InstanceStore, study_uid: str, cutoff: dt.datetime | None = None) -> int:
    """Both steps for one study; the number of instances whose rows were deleted."""
    n = delete_rows(store, study_uid, cutoff)
    files = remove_unindexed_files(store, study_uid)
    if files and not n:
        log.info("retention finished an interrupted clean-up: %d file(s) without index rows removed", files)
    return n
