"""The received file's trips to the disk: its flush, a head start for it, one read for the checks, and
the comparison with a stored copy of the same instance.

Used by the store (files/store.py, `InstanceStore.ingest_file`) for every received instance; see
docs/architecture.md "Durability: what is flushed when".
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def fsync_path(path: Path, directory: bool = False, fd: int | None = None) -> None:
    """fsync a file, or a folder (its entries: names linked or made in it). `fd`: a descriptor of that
    file the caller holds open (the spool's own), flushed instead of opening `path` again."""
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CHUNK = 1 << 20  # same_bytes reads both files this much at a time


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (a duplicate C-STORE against the stored copy)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


# A received file up to this size is read once, whole, for both checks (the structure walk and the
# header parse): one read costs less than mapping it for the walk (mmap, page faults, munmap: ~20 us)
# and reading its head again for the parse (~8 us). A larger one is mapped, its pixel data never read.
SMALL_FILE = 256 << 10


def read_small(path: Path) -> bytes | None:
    """The file's content when it is at most SMALL_FILE bytes, else None."""
    with open(path, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size > SMALL_FILE:
            return None
        return f.readall()


# Linux's sync_file_range(2), which the os module does not offer; None elsewhere (the fsync alone then).
_SYNC_FILE_RANGE = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
_SYNC_FILE_RANGE_WRITE = 2  # start writing the dirty pages back, do not wait


def start_writeback(path: Path, fd: int | None = None) -> None:
    """Ask the kernel to start writing `path`'s data to the disk now, without waiting for it. `fd`: a
    descriptor of that file the caller holds open, used instead of opening `path` again.

    Only a head start, never the guarantee: `fsync_path` runs after the checks and waits for these
    writes, writes whatever is left and flushes the disk's cache; its failure is the one answered.
    Why not the fsync itself on a helper thread, as until issue 17's eighth session: the hand-off (a
    future, a queue, two thread wake-ups per instance) cost more CPU than the overlap saved; this way
    the disk still writes while the checks parse, and the thread that answers waits only for what is
    left (case (c), 3 alternating pairs: 2.29-3.20 against 1.97-2.67 ms of CPU per instance).
    """
    if _SYNC_FILE_RANGE is None:
        return
    if fd is not None:
        _SYNC_FILE_RANGE(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), _SYNC_FILE_RANGE_WRITE)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _SYNC_FILE_RANGE(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), _SYNC_FILE_RANGE_WRITE)  # result ignored
    finally:
        os.close(fd)
