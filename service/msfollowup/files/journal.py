"""The ingest journal: one flush per received instance (or per group of instances across associations).

Without it a C-STORE is answered after three flushes in a row: the file's bytes, its new name (the
series directory) and the index commit (the SQLite WAL), ~2-3 ms of waiting per instance on this
project's test disk (issue 17). With it the instance's whole Part 10 file is appended to a
pre-written segment file and made durable with one `fdatasync`, shared by every association that
appended in the meantime (group commit). Only then is the file linked into `store/` and indexed,
without flushes of their own, and the C-STORE answered.

Why this is as safe as the three flushes:
- The record is durable before the store or the index see the instance, so after a power loss every
  name or row the page cache may have lost or left half-written has its record here. Start-up
  (`InstanceStore.recover`) replays every record of the current segment through the durable ingest
  (fsync of file, folder and index): a missing file is written, a truncated one (the page cache lost its
  data, the folder kept the name) is replaced, a missing row is inserted. A record whose ingest was
  refused (a UID conflict) is refused again, so replay changes nothing that was not acknowledged.
- The segment is written with zeros (and flushed) ahead of the records, 1 MiB at a time the first
  time through, so `fdatasync` of a record never has to commit file metadata: it is one data write
  and one cache flush.
- A record carries a CRC-32 of its header fields and bytes and the segment's generation: a record torn by
  the crash (never acknowledged) or left by an earlier generation ends the replay.
- When a segment is full (or before retention deletes files, or at shutdown) a checkpoint makes the store
  and the index durable by themselves (`syncfs` of the data folder's filesystem, and of the index's
  when the SQLite file lives elsewhere; never an fsync through a descriptor of the SQLite file, whose
  close would drop SQLite's POSIX locks) and starts a new generation: the records before it are no
  longer needed.

Not used on PostgreSQL (its commit is durable and several nodes share the store) nor with
`[storage] fsync = false`; objects larger than a quarter of a segment take the flushing path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"MSFJOURN"
_SEGMENT_HEADER = struct.Struct("<8sQ")  # magic, generation
_RECORD = struct.Struct("<4sQIQI")  # b"REC1", generation, meta length, data length, CRC-32 of the rest
_REC = b"REC1"
HEADER_SIZE = 4096  # the segment header's block; records follow
_ZERO_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    """One replayable instance: what the store needs to ingest it again."""

    meta: dict[str, str]
    data: bytes


def _syncfs_function() -> Callable[[int], int] | None:
    """libc's syncfs(2) (Linux): one flush of everything dirty on the data folder's filesystem."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func  # type: ignore[no-any-return]


_SYNCFS = _syncfs_function()


def sync_filesystem(folder: Path) -> None:
    """Everything written on `folder`'s filesystem reaches the disk (syncfs; sync where it is missing)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS is None:
            os.sync()
        elif _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}")
    finally:
        os.close(fd)


class Journal:
    """One pre-written segment file; `append` makes a record durable, `checkpoint` retires them all.

    `flush_others`: what the checkpoint must make durable besides the data folder's filesystem (the
    index database's filesystem when it is another one).
    """

    def __init__(self, folder: Path, segment_bytes: int, data_dir: Path,
                 flush_others: Callable[[], None] = lambda: None) -> None:
        self.folder = folder
        self.segment_bytes = max(segment_bytes, HEADER_SIZE * 16)
        self.inline_limit = (self.segment_bytes - HEADER_SIZE) // 4  # larger objects flush themselves
        self.data_dir = data_dir
        self.flush_others = flush_others
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "segment"
        self._fd = self._open_segment()
        self.generation = self._read_generation()
        self._lock = threading.Lock()  # the write offset and checkpoints
        self._flushed = threading.Condition()
        self._offset = HEADER_SIZE
        self._prepared = os.fstat(self._fd).st_size  # zeros (or older records) flushed up to here
        self._written = 0  # records written (a counter, not an offset: offsets restart at a checkpoint)
        self._durable = 0  # records known flushed
        self._flushing = False
        self._in_flight = 0  # records appended whose instance is not yet linked and indexed
        self._settled = threading.Condition(self._lock)
        self._checkpointing = False  # appends wait while a checkpoint waits for the instances in flight
        self.checkpoints = 0

    # -- the segment file

    def _open_segment(self) -> int:
        """Open the segment, creating its header block when it is new."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(fd).st_size < HEADER_SIZE:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _SEGMENT_HEADER.pack(MAGIC, 1).ljust(HEADER_SIZE, b"\0"), 0)
            os.fsync(fd)
            _fsync_dir(self.folder)
        return fd

    def _prepare(self, end: int) -> None:
        """Zeros written and flushed up to `end` (in steps of 1 MiB, at most the segment): a record's own
        flush then never has to commit file metadata (its size, its blocks)."""
        if end <= self._prepared:
            return
        target = min(max(end, self._prepared + _ZERO_CHUNK), self.segment_bytes)
        _pwrite_all(self._fd, bytes(target - self._prepared), self._prepared)
        os.fsync(self._fd)
        self._prepared = target

    def _read_generation(self) -> int:
        magic, generation = _SEGMENT_HEADER.unpack(os.pread(self._fd, _SEGMENT_HEADER.size, 0))
        if magic != MAGIC:
            raise OSError(f"{self.path} is not an msfollowup journal segment")
        return int(generation)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # -- writing

    @contextmanager
    def entry(self, meta: dict[str, str], data: bytes) -> Iterator[None]:
        """`with journal.entry(meta, data):` link and index the instance inside. The record is durable
        when the body starts, and no checkpoint runs until the body has ended: a checkpoint retires
        only records whose instance the store and the index already hold."""
        self._append(meta, data)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if not self._in_flight:
                    self._settled.notify_all()

    def _append(self, meta: dict[str, str], data: bytes) -> None:
        """Write one record and return once it is durable (a flush shared with concurrent appends)."""
        blob = json.dumps(meta, separators=(",", ":")).encode()
        size = _RECORD.size + len(blob) + len(data)
        if size > self.segment_bytes - HEADER_SIZE:
            raise ValueError("record larger than a journal segment")
        with self._lock:
            while self._checkpointing:
                self._settled.wait()
            if self._offset + size > self.segment_bytes:
                self._checkpoint_locked()
            generation, offset = self.generation, self._offset
            self._prepare(offset + size)
            crc = zlib.crc32(data, zlib.crc32(blob, zlib.crc32(struct.pack("<QQ", generation, len(data)))))
            head = _RECORD.pack(_REC, generation, len(blob), len(data), crc)
            _pwrite_all(self._fd, head + blob, offset)
            _pwrite_all(self._fd, data, offset + len(head) + len(blob))
            self._offset = offset + size
            self._written += 1
            self._in_flight += 1
            mine = self._written
        try:
            self._wait_durable(mine)
        except BaseException:
            with self._lock:
                self._in_flight -= 1
                self._settled.notify_all()
            raise

    def _wait_durable(self, mine: int) -> None:
        """Group commit: the first waiter flushes for everyone written so far, the others wait for it."""
        with self._flushed:
            while self._durable < mine:
                if self._flushing:
                    self._flushed.wait()
                    continue
                self._flushing = True
                target = self._written
                self._flushed.release()
                try:
                    os.fdatasync(self._fd)
                finally:
                    self._flushed.acquire()
                    self._flushing = False
                    self._flushed.notify_all()
                self._durable = max(self._durable, target)

    # -- checkpoints

    def checkpoint(self, force: bool = False) -> None:
        """Make the store and the index durable by themselves and retire every record. `force`: also
        when this process wrote none (after start-up replayed the records an earlier run left)."""
        with self._lock:
            self._checkpoint_locked(force)

    def _checkpoint_locked(self, force: bool = False) -> None:
        while self._checkpointing:
            self._settled.wait()
        if self._offset == HEADER_SIZE and not force:
            return
        self._checkpointing = True
        try:
            while self._in_flight:  # the instances of records already written are linked and indexed first
                self._settled.wait()
            sync_filesystem(self.data_dir)
            self.flush_others()
            self.generation += 1
            os.pwrite(self._fd, _SEGMENT_HEADER.pack(MAGIC, self.generation), 0)
            os.fdatasync(self._fd)
            self._offset = HEADER_SIZE
            self.checkpoints += 1
        finally:
            self._checkpointing = False
            self._settled.notify_all()

    # -- replay

    def records(self) -> Iterator[Record]:
        """The records of the current generation, in order, up to the first torn or older one."""
        offset, size = HEADER_SIZE, os.fstat(self._fd).st_size
        while offset + _RECORD.size <= size:
            tag, generation, meta_len, data_len, crc = _RECORD.unpack(os.pread(self._fd, _RECORD.size, offset))
            end = offset + _RECORD.size + meta_len + data_len
            if tag != _REC or generation != self.generation or end > size:
                return
            blob = os.pread(self._fd, meta_len, offset + _RECORD.size)
            data = os.pread(self._fd, data_len, offset + _RECORD.size + meta_len)
            if zlib.crc32(data, zlib.crc32(blob, zlib.crc32(struct.pack("<QQ", generation, data_len)))) != crc:
                log.warning("journal: a torn record ends the replay (never acknowledged)")
                return
            yield Record(json.loads(blob), data)
            offset = end

    def has_records(self) -> bool:
        return next(self.records(), None) is not None


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
