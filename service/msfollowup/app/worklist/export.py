"""Export of the open items as DCMTK/Orthanc `.wl` files for a department worklist server."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
)
from sqlalchemy import (
    event,
)
from sqlalchemy.orm import Session

from msfollowup.site.config import Config
from msfollowup.core.files import atomic_write, fsync_directory
from msfollowup.db.worklist import (
    EXPORT_PREFIX,
    LOCKFILE,
    ScheduledStep,
    WorklistError,
    open_items,
)

log = logging.getLogger(__name__)


ExportOp = tuple[str, Path, bytes | None]
_EXPORT_OPS = "msfollowup.app.worklist.export_ops"


def _safe_component(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value.strip())
    if cleaned in ("", ".", ".."):
        raise WorklistError("AE title cannot name an export folder")
    return cleaned


def _export_path(export_dir: Path, step: ScheduledStep) -> Path:
    return export_dir / _safe_component(step.station_ae) / f"{EXPORT_PREFIX}{step.accession_number}.wl"


def export_uid(step: ScheduledStep) -> str:
    """The file's SOP Instance UID, the same for the same item version: a random one (pydicom's
    generate_uid(prefix=None) ignores its entropy sources) made every export rewrite every file."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'msfollowup-wl|{step.study_uid}|{step.version}').int}"


def _wl_bytes(step: ScheduledStep) -> bytes:
    """The step as a DICOM Part 10 file, the format wlmscpfs and Orthanc's worklist plugin read."""
    ds = step.dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ModalityWorklistInformationFind
    meta.MediaStorageSOPInstanceUID = UID(export_uid(step))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@contextmanager
def locked_folder(folder: Path) -> Iterator[None]:
    """Hold DCMTK's `lockfile` of an AE folder exclusively while changing the folder.

    wlmscpfs takes a POSIX record lock (fcntl F_RDLCK) on it while it reads; on Linux flock() locks do
    not conflict with those, so this must be lockf (fcntl F_WRLCK) too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_wl(path: Path, data: bytes) -> None:
    """Atomic replace: a reader sees the old file or the new one, never half of one (the temporary
    name does not end in .wl, so wlmscpfs never loads it)."""
    with locked_folder(path.parent):
        atomic_write(path, data)


def remove_wl(path: Path) -> None:
    with locked_folder(path.parent):
        path.unlink(missing_ok=True)
        fsync_directory(path.parent)


def _apply(ops: Iterable[ExportOp]) -> None:
    for action, path, data in ops:
        try:
            if action == "write" and data is not None:
                write_wl(path, data)
            else:
                remove_wl(path)
        except OSError as exc:  # the index is the truth; `sync_export` repairs the folder later
            log.error("worklist export: cannot %s %s: %s", action, path.name, exc.strerror)


def _after_commit(session: Session) -> None:
    _apply(session.info.pop(_EXPORT_OPS, []))


def _after_rollback(session: Session) -> None:
    session.info.pop(_EXPORT_OPS, None)


def _queue_export(session: Session, op: ExportOp) -> None:
    """File changes follow the transaction: done after commit, dropped on rollback."""
    session.info.setdefault(_EXPORT_OPS, []).append(op)
    if not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)


def queue_file(session: Session, step: ScheduledStep) -> None:
    """After a change of `step`: its file is (re)written if it is served, removed otherwise."""
    if not step.export_file:
        return
    if step.is_open and step.incomplete is None:
        _queue_export(session, ("write", Path(step.export_file), _wl_bytes(step)))
    else:
        _queue_export(session, ("remove", Path(step.export_file), None))


def sync_export(session: Session, cfg: Config) -> tuple[int, int]:
    """Make export_dir hold exactly the served items (repairs missed writes); returns (written, removed).
    A file already holding the item's bytes is not touched (its mtime is what wlmscpfs and backup
    tools go by)."""
    export_dir = cfg.worklist.export_dir
    if export_dir is None:
        return 0, 0
    wanted: dict[Path, ScheduledStep] = {}
    for step in open_items(session):
        path = _export_path(export_dir, step)
        if step.export_file != str(path):
            step.export_file = str(path)
        if step.incomplete is None:  # wlmscpfs refuses an item without a name; we do not serve it
            wanted[path] = step
    written = 0
    for path, step in wanted.items():
        data = _wl_bytes(step)
        if not path.exists() or path.read_bytes() != data:
            write_wl(path, data)
            written += 1
    removed = 0
    if export_dir.is_dir():
        for path in export_dir.glob(f"*/{EXPORT_PREFIX}*.wl"):
            if path not in wanted:
                remove_wl(path)
                removed += 1
    return written, removed

