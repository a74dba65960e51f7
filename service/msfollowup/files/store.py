"""The instance store (files under <data_dir>/store) and its index (studies, series, instances).

Durability rule: an instance is acknowledged only after its bytes are fsync'd under their final name
AND its index row is committed, or (SQLite, `index_commit = "behind"`, files/behind.py) recorded for
the next start to commit. The received bytes land in `<data_dir>/tmp` (same filesystem) under a name
made durable ahead (files/spool.py), are fsync'd, hard-linked to `store/<study>/<series>/<sop>.dcm`
(the directory fsync'd), indexed before or right after the answer, and only then is the temp name
removed. So after a crash `recover` only has to look in tmp/: a temp file with a second link was linked
(and maybe answered, maybe not indexed) -> index it; one without was never acknowledged -> delete.
The final name never holds a partial file, and start-up never has to walk the whole store.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any, Literal, cast

from pydicom.dataset import Dataset
from sqlalchemy import Connection, Table, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from msfollowup.dicom import structure
from msfollowup.dicom.classify import reader
from msfollowup.files import indexrows
from msfollowup.files.behind import IndexBehind, Pending
from msfollowup.files.dirflush import DirectoryFlusher
# Module-level names here (tests replace them to slow or fail a flush, and to see the order of steps).
from msfollowup.files.syncio import fsync_path as _fsync_path
from msfollowup.files.syncio import read_small as _small_file
from msfollowup.files.syncio import same_bytes as _same_bytes
from msfollowup.files.syncio import start_writeback as _start_writeback
from msfollowup.files.soplocks import SopLocks
from msfollowup.files.spool import SpoolFile
from msfollowup.files.index_header import SOP_CLASS, IngestError, ascii_value, read_index_header
from msfollowup.db import REBUILD_HINT, Database, IndexDatabaseError, groupcommit, rawsqlite, utcnow
from msfollowup.db.index import Instance, Series, Study, StudyState

log = logging.getLogger(__name__)

DURABLE_FOLDERS = 4096  # series folders remembered as made and flushed (a forgotten one costs 2 fsyncs)


# --- ingest ------------------------------------------------------------------------------------

class Outcome(str, Enum):
    STORED = "stored"
    DUPLICATE_SAME = "duplicate"  # identical bytes already stored: success, one copy kept
    DUPLICATE_KEPT_FIRST = "duplicate-kept-first"  # different bytes, policy keep_first: warning
    REPLACED = "replaced"


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    path: Path
    indexed: threading.Event | None = None  # set once the rows are committed (None: they were before the answer)


_QUEUED_WAIT = 10.0  # seconds a copy waits for the commit of an earlier copy of its SOP instance


def _has_file(root: Path) -> bool:
    for _folder, _dirs, files in os.walk(root):
        if any(f.endswith(".dcm") for f in files):
            return True
    return False


class InstanceStore:
    """Files under `root/store`, temporary files under `root/tmp`, rows in the index."""

    def __init__(
        self,
        data_dir: Path,
        db: Database,
        duplicate_policy: Literal["keep_first", "replace", "reject"] = "keep_first",
        fsync: bool = True,
        index_commit: Literal["behind", "before"] = "behind",
    ) -> None:
        self.root = data_dir / "store"
        self.tmp = data_dir / "tmp"
        self.db = db
        self.duplicate_policy = duplicate_policy
        self.fsync = fsync
        # Keep each stored file's parsed header for the next read of that file (reader.remember): the
        # live check and the study check read them in this process. An ingest process sets it off:
        # those readers run in the main process, and 2048 headers nobody reads only cost the cyclic
        # garbage collector a walk over ~160,000 objects on every full collection.
        self.remember_headers = True
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        # One SOP Instance UID is linked and indexed by one ingest at a time (files/soplocks.py); across
        # processes too once the service calls `sop_locks.share(...)` (runtime/ingest_workers.py).
        self.sop_locks = SopLocks()
        self._committer = groupcommit.GroupCommitter(db.engine)  # SQLite's index transactions (not PostgreSQL's)
        # SQLite: a spooled instance's rows are committed right after its answer (files/behind.py).
        # PostgreSQL takes concurrent writers itself; it keeps the index commit before the answer.
        self.behind: IndexBehind | None = None
        if db.engine.dialect.name == "sqlite" and index_commit == "behind":
            self.behind = IndexBehind(self._committer, self._after_behind_commit)
        self._readers = rawsqlite.Readers(db.engine)
        # Series folders known to exist with their names flushed, most recent last (see _make_dirs).
        self._durable_folders: OrderedDict[str, None] = OrderedDict()
        self._durable_lock = threading.Lock()
        self._folder_flushes = DirectoryFlusher()

    # -- paths

    def relative_path(self, study: str, series: str, sop: str) -> str:
        return f"{study}/{series}/{sop}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def temp_file(self) -> IO[bytes]:
        """A temporary file on the store's filesystem (so a link to the final name is atomic)."""
        return tempfile.NamedTemporaryFile(dir=self.tmp, suffix=".part", delete=False)

    # -- ingest

    def ingest_file(self, temp_path: Path, calling_ae: str | None = None, expected_sop: str | None = None,
                    expected_sop_class: str | None = None, spooled: SpoolFile | None = None,
                    index_behind: bool = False) -> IngestResult:
        """Make a complete Part 10 file at `temp_path` (in self.tmp) durable and indexed.

        The caller owns `temp_path` and removes it afterwards (pynetdicom does so for received files).
        Raises IngestError with the status to answer; nothing is linked into the store in that case.
        The encoded structure is checked first: a file a later stage cannot read is never acknowledged.
        The disk starts writing the bytes before the checks parse the file (`_start_writeback`), and
        the file is fsync'd after them: the flush then waits only for what the disk has not written yet.
        Nothing is linked before that fsync has succeeded.

        `spooled`: the still open spool file `temp_path` was written through (the node's storage path).
        Its descriptor is flushed instead of opening the name again, and the bytes it kept of a small
        data set are checked instead of read back: the same bytes, which a read would take from the
        same page cache (issue 17: 12 system calls and a copy less per instance).

        `index_behind` (with `spooled`, on SQLite): a new instance is answered once its rows are queued
        and its spool name is its durable record; they are committed right after (files/behind.py).
        Not while the index is failing: then every instance is indexed before its answer again.
        """
        fd: int | None = None
        data: bytes | None = None
        size: int | None = None
        if spooled is not None and (fd := spooled.fileno()) is not None:
            data, size = spooled.content(), spooled.size
        if self.fsync:
            _start_writeback(temp_path, fd=fd)
        ds, study, series, sop, header = self._check(temp_path, expected_sop, expected_sop_class, data)
        if self.fsync:
            _fsync_path(temp_path, fd=fd)  # a failed flush raises its OSError (Out of Resources)
        behind = spooled if index_behind and fd is not None and self.behind is not None \
            and self.behind.failing is None else None
        with self.sop_locks.held(sop):
            self._wait_if_queued(sop)
            result = self._link_and_index(temp_path, ds, study, series, sop, calling_ae, size, behind)
        if self.remember_headers and header is not None and result.outcome in (Outcome.STORED, Outcome.REPLACED):
            # for the live check's read
            reader.remember(result.path, header, temp_path.stat().st_size if size is None else size)
        return result

    def _check(self, temp_path: Path, expected_sop: str | None, expected_sop_class: str | None,
               content: bytes | None = None) -> tuple[Dataset, str, str, str, reader.Header | None]:
        """The encoded structure, the index attributes and checked UIDs, the index file's identity.
        `content`: the file's bytes when the caller holds them (else a small file is read here)."""
        data = content if content is not None else _small_file(temp_path)
        try:
            structure.check_file(temp_path) if data is None else structure.check_buffer(data)
        except structure.Malformed as exc:
            raise IngestError(0xC000, f"malformed: {exc}") from None
        # Without the memo only the index attributes are kept (~30 us less per MR slice).
        index_only = not self.remember_headers
        ds, study, series, sop, header = read_index_header(temp_path, data, index_only)
        if expected_sop is not None and sop != expected_sop.strip("\x00 "):
            raise IngestError(0xA900, "SOPInstanceUID in the data set differs from the C-STORE request")
        sop_class = ascii_value(ds, SOP_CLASS)
        if expected_sop_class is not None and sop_class and str(sop_class).strip("\x00 ") != expected_sop_class.strip("\x00 "):
            raise IngestError(0xA900, "SOPClassUID in the data set differs from the C-STORE request")
        try:
            self.db.check_file()  # a removed or replaced index would take the row and lose it on restart
        except IndexDatabaseError as exc:
            log.error("C-STORE refused: %s", exc)
            raise IngestError(0xA700, "index database file missing or replaced") from None
        return ds, study, series, sop, header

    def _link_and_index(
        self, temp_path: Path, ds: Dataset, study: str, series: str, sop: str, calling_ae: str | None,
        size: int | None = None, behind: SpoolFile | None = None,
    ) -> IngestResult:
        """`size`: the received file's, when known (the final name links to it when stored or replaced).
        `behind`: the spool of a new instance to index after the answer (files/behind.py)."""
        rel = self.relative_path(study, series, sop)
        final = self.absolute(rel)
        outcome = self._link(temp_path, final)
        if outcome is Outcome.STORED and behind is not None:
            return self._queue_index(temp_path, ds, (study, series, sop), rel, final,
                                     final.stat().st_size if size is None else size, calling_ae, behind)
        if outcome is Outcome.DUPLICATE_SAME or outcome is Outcome.DUPLICATE_KEPT_FIRST:
            # Make sure a row exists (the first copy may have been linked just before a crash).
            try:
                size = final.stat().st_size
            except FileNotFoundError:  # retention removed the first copy since _link found it
                size = temp_path.stat().st_size
            if self._index(ds, (study, series, sop), rel, size, calling_ae, only_if_missing=True):
                self._relink_if_retired(temp_path, final)
            return IngestResult(outcome, study, series, sop, final)
        try:
            self._index(ds, (study, series, sop), rel, final.stat().st_size if size is None else size, calling_ae,
                        only_if_missing=False)
        except BaseException:
            if outcome is Outcome.STORED:
                # Not indexed -> not acknowledged: the name goes too, so store/ only holds indexed files.
                final.unlink(missing_ok=True)
            raise
        self._relink_if_retired(temp_path, final)
        return IngestResult(outcome, study, series, sop, final)

    def _queue_index(self, temp_path: Path, ds: Dataset, uids: tuple[str, str, str], rel: str, final: Path,
                     size: int, calling_ae: str | None, spool: SpoolFile) -> IngestResult:
        """A new instance, durable under its final and its spool name: refuse it now for what its index
        transaction would refuse it for, else queue its rows and answer (files/behind.py). Runs under
        the SOP Instance UID's lock, so no other ingest of this process checks the same UID meanwhile."""
        assert self.behind is not None
        study, series, sop = uids
        try:
            with self._readers.reading() as r:  # a read: WAL readers wait for nobody
                indexrows.refuse_if_indexed_elsewhere(r, uids)
        except BaseException:
            final.unlink(missing_ok=True)  # not acknowledged: its name goes (store/ holds only answered files)
            raise
        now = utcnow()
        row = indexrows.instance_row(ds, uids, rel, size, calling_ae, now)
        pending = Pending(sop, lambda c: indexrows.write_rows(c, ds, uids, row, now, False),
                          str(temp_path), final)
        spool.handed_over = True  # the spool name stays until the commit (the replayed record)
        self.behind.submit(pending)
        return IngestResult(Outcome.STORED, study, series, sop, final, pending.indexed)

    def _wait_if_queued(self, sop: str) -> None:
        """Another copy of this SOP instance, answered and not yet indexed (files/behind.py): this
        ingest waits for its commit (a few ms) and then sees it as any indexed copy (duplicate, conflict,
        replace). Held under the UID's lock, so no copy is queued meanwhile."""
        queued = self.behind.queued(sop) if self.behind is not None else None
        if queued is not None and not queued.indexed.wait(_QUEUED_WAIT):
            raise IngestError(0xA700, "an earlier copy of this instance is still waiting for the index")

    def _after_behind_commit(self, pending: Pending) -> None:
        self._relink_if_retired(Path(pending.spool_name), pending.final)

    def close(self, timeout: float = 10.0) -> bool:
        """Index what was answered and is still queued (files/behind.py); False when time ran out."""
        return True if self.behind is None else self.behind.close(timeout)

    def _relink_if_retired(self, temp_path: Path, final: Path) -> None:
        """Retention removes unindexed files of an old study under the study row lock; a file linked
        before this ingest's index transaction got that lock may be gone: put it back from the temp
        file (still ours until the caller removes it) before the instance is acknowledged."""
        if final.exists():
            return
        log.warning("a stored file was removed by retention before its index commit; linked again")
        self._link_new_name(temp_path, final)  # retention removes a folder it emptied: made again if so
        if self.fsync:
            _fsync_path(final.parent, directory=True)

    def _make_dirs(self, series_dir: Path) -> None:
        """Create the study and series folders, each durably named in its parent before a file is
        linked into it.

        A folder another ingest has just made may not be flushed yet (its maker fsyncs the parent after
        its mkdir, and a link by another thread can come in between): so a folder found existing is
        flushed into its parent here too, once per process, and only then remembered as durable
        (`_durable_folders`). A remembered series folder costs no syscall at all; one that retention
        has removed since makes the link fail, and `_link_new_name` forgets it and comes back here.
        """
        key = str(series_dir)
        if key in self._durable_folders:
            return
        for folder in (series_dir.parent, series_dir):
            try:
                folder.mkdir()
            except FileExistsError:
                pass
            if self.fsync:
                _fsync_path(folder.parent, directory=True)
        with self._durable_lock:
            self._durable_folders[key] = None
            while len(self._durable_folders) > DURABLE_FOLDERS:
                self._durable_folders.popitem(last=False)

    def _forget_folder(self, series_dir: Path) -> None:
        with self._durable_lock:
            self._durable_folders.pop(str(series_dir), None)

    def _link_new_name(self, temp_path: Path, final: Path) -> None:
        """Link `final` to the temp file, in folders made durable first (FileExistsError: the name is
        taken)."""
        self._make_dirs(final.parent)
        try:
            os.link(temp_path, final)
        except FileNotFoundError:  # the folder was remembered, and removed since (retention)
            self._forget_folder(final.parent)
            self._make_dirs(final.parent)
            os.link(temp_path, final)

    def _link(self, temp_path: Path, final: Path) -> Outcome:
        try:
            self._link_new_name(temp_path, final)
        except FileExistsError:
            if _same_bytes(temp_path, final):
                return Outcome.DUPLICATE_SAME
            if self.duplicate_policy == "reject":
                raise IngestError(0xA900, "SOP Instance UID already stored with different content; rejected") from None
            if self.duplicate_policy == "keep_first":
                return Outcome.DUPLICATE_KEPT_FIRST
            # replace: a second link, then an atomic rename over the old name.
            spare = temp_path.with_suffix(".replace")
            os.link(temp_path, spare)
            os.replace(spare, final)
            if self.fsync:
                _fsync_path(final.parent, directory=True)
            return Outcome.REPLACED
        if self.fsync:  # the new name itself; one flush of the folder serves concurrent ingests
            self._folder_flushes.flush(str(final.parent), lambda: _fsync_path(final.parent, directory=True))
        return Outcome.STORED

    def index_stored_file(self, path: Path) -> bool:
        """Index a file already in store/ (`msfollowup index rebuild`); False when its row exists."""
        ds, study, series, sop, _ = read_index_header(path)
        rel = path.relative_to(self.root).as_posix()
        if rel != self.relative_path(study, series, sop):
            raise IngestError(0xC000, "file name does not match its Study/Series/SOP Instance UIDs")
        return self._index(ds, (study, series, sop), rel, path.stat().st_size, None, only_if_missing=True)

    def _index(self, ds: Dataset, uids: tuple[str, str, str], rel: str, size: int, calling_ae: str | None,
               only_if_missing: bool) -> bool:
        """Upsert the study, series and instance rows in one transaction (files/indexrows.py). `uids`:
        the Study, Series and SOP Instance UIDs read_index_header checked.

        Constant Core statements with parameters rather than ORM loads: this runs once per received
        instance, and the ORM cost about 1 ms of a 3 ms ingest (benchmarks/ingest.py).
        """
        now = utcnow()
        row = indexrows.instance_row(ds, uids, rel, size, calling_ae, now)
        return self._in_transaction(lambda c: indexrows.write_rows(c, ds, uids, row, now, only_if_missing))

    def _in_transaction(self, work: Callable[[Connection | rawsqlite.RawTransaction], bool]) -> bool:
        """Run the index statements of one instance in a transaction: on SQLite through the DB-API
        connection (db/rawsqlite.py, a fraction of Core's CPU per statement) and committed together
        with concurrent ingests' (db/groupcommit.py), elsewhere SQLAlchemy Core."""
        if self.db.engine.dialect.name != "sqlite":
            with self.db.engine.begin() as c:
                return work(c)
        try:
            done = self._committer.run(work)
        except SQLAlchemyError as exc:
            if self.behind is not None and not isinstance(exc, IntegrityError):
                self.behind.commit_failed(exc)
            raise
        if self.behind is not None:
            self.behind.commit_succeeded()
        return done

    # -- crash recovery

    def check_index_matches_files(self) -> None:
        """Refuse to start on an index without instances while store/ holds files (deleted, truncated
        or replaced): the node would acknowledge new instances while every earlier one is unknown.
        Cheap: one row from the index, the first file found under store/."""
        with self.db.engine.connect() as c:
            indexed = c.execute(select(Instance.sop_instance_uid).limit(1)).first() is not None
        if indexed or not _has_file(self.root):
            return
        where = self.db.file or "the index database"
        raise IndexDatabaseError(
            f"{where} has no instances but {self.root} holds received files (index deleted, truncated or "
            f"replaced?); run `{REBUILD_HINT}` to rebuild the index from the files, then start again"
        )

    def recover(self, folder: Path | None = None) -> dict[str, int]:
        """Finish what a crash interrupted: see the module docstring. Returns counts for the log.
        `folder`: a spool folder other than tmp/ (an ingest process's, runtime/ingest_workers.py)."""
        self.check_index_matches_files()
        folder = folder or self.tmp
        counts = {"indexed": 0, "discarded": 0}
        for entry in sorted(folder.iterdir()):
            if not entry.is_file():
                continue
            info = entry.stat()
            if info.st_nlink > 1:
                try:
                    self.ingest_file(entry)
                    counts["indexed"] += 1
                except IngestError as exc:
                    log.error("recovery could not index a linked temp file: %s", exc)
                    continue
            elif info.st_size:  # an empty one is a spool name made ahead and never used
                counts["discarded"] += 1
            entry.unlink()
        if self.fsync:
            _fsync_path(folder, directory=True)
        return counts

    # -- queries used by later stages

    def series_files(self, study_uid: str) -> dict[str, list[Path]]:
        """Files of a study grouped by series, in instance order."""
        out: dict[str, list[Path]] = {}
        with self.db.session() as s:
            rows = s.execute(
                select(Instance.series_uid, Instance.path)
                .where(Instance.study_uid == study_uid)
                .order_by(Instance.series_uid, Instance.instance_number, Instance.sop_instance_uid)
            ).all()
        for series_uid, rel in rows:
            out.setdefault(series_uid, []).append(self.absolute(rel))
        return out

    def delete_study_files(self, study_uid: str, cutoff: dt.datetime | None = None) -> int:
        """Retention clean-up: remove a study's instances, rows first then files (msfollowup.files.retention);
        reports are kept elsewhere. Returns the number of instance rows deleted."""
        from msfollowup.files.retention import retire_study

        return retire_study(self, study_uid, cutoff)


def mark_failed(db: Database, study_uid: str, reason: str) -> bool:
    """A complete study a later stage could not process: failed, with the reason, once (no retry loop).
    A late instance reopens it (state receiving) and the next version is tried afresh."""
    st = cast(Table, Study.__table__)
    with db.engine.begin() as c:
        changed = c.execute(
            st.update().where(st.c.study_uid == study_uid, st.c.state == StudyState.COMPLETE.value)
            .values(state=StudyState.FAILED.value, failure_reason=reason[:200])
        ).rowcount
    if changed:
        log.error("study failed study=%s reason=%s (not retried; see msfollowup studies)", study_uid, reason)
    return bool(changed)


def study_summaries(db: Database) -> list[dict[str, Any]]:
    """Rows for `msfollowup studies`: state, version, counts, receive times (no patient data)."""
    with db.session() as s:
        counts = dict(
            (uid, (n_inst, n_series))
            for uid, n_inst, n_series in s.execute(
                select(
                    Instance.study_uid,
                    func.count(Instance.sop_instance_uid),
                    func.count(func.distinct(Instance.series_uid)),
                ).group_by(Instance.study_uid)
            ).all()
        )
        studies = s.scalars(select(Study).order_by(Study.first_received)).all()
        return [
            {
                "study_instance_uid": st.study_uid,
                "state": st.state,
                "version": st.version,
                "instances": counts.get(st.study_uid, (0, 0))[0],
                "series": counts.get(st.study_uid, (0, 0))[1],
                "first_received": st.first_received.isoformat(),
                "last_received": st.last_received.isoformat(),
                "completed_at": st.completed_at.isoformat() if st.completed_at else None,
                "failure_reason": st.failure_reason,
            }
            for st in studies
        ]
