"""What each way of making a received file durable costs on this disk, side by side in one run.

    python benchmarks/flushes.py [--dir DIR] [--files N] [--size BYTES] [--threads 1,4] [--reps R]

Issue 17 asks for fewer flushes per instance. Before redesigning the store, this measures the file part
of the choices on the disk the store is on (the index's WAL flush is not included; it is the same in
every scheme). Each scheme writes N files of BYTES (default: one 256x256 MR slice, ~130 kB) from T
threads, each file created in `tmp/` and linked into one series folder as the store does:

* msfollowup: today's chain (docs/architecture.md "Durability" steps 1-2): writeback started, the file
  fsync'd, linked, the folder fsync'd, the temp name removed. The reference of the ratio column. The
  folder is fsync'd once per file here; the store shares a folder's fsync between ingests that meet
  in it, which four senders rarely do (~0.95 folder fsyncs per instance, same section).
* file only: the same without the folder's fsync: what taking the folder flush off each instance
  (issue 17's route 1) could save at most. Not durable (the new name may be lost).
* syncfs: no per-file flush; after the link, one syncfs(2) of the filesystem, shared by the threads
  (one that starts after a file's link covers it): file data, inodes and names with one device flush.
* no flush: create, write, link, unlink, nothing flushed. The floor (DCMTK storescp flushes nothing
  either, and writes straight to the final name).

The schemes and thread counts are interleaved and repeated; the figures are medians: files/s and CPU
ms per file (user + system of this process). Every run's folder is kept until the end (deleting files
makes the next creates slow on some filesystems) and removed then. Linux only (sync_file_range, syncfs).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from msfollowup.files.dirflush import DirectoryFlusher
from msfollowup.files.syncio import fsync_path, start_writeback

_LIBC = ctypes.CDLL(None, use_errno=True)  # syncfs(2), which the os module does not offer


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def run(scheme: str, root: Path, files: int, size: int, threads: int) -> tuple[float, float]:
    """(files/s, CPU ms per file) of one scheme."""
    tmp, series = root / "tmp", root / "store" / "study" / "series"
    tmp.mkdir(parents=True)
    series.mkdir(parents=True)
    data = os.urandom(size)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    # one syncfs at a time, each covering every file linked before it started (files/dirflush.py's rule,
    # with the whole filesystem as the folder)
    shared = DirectoryFlusher()

    def store(name: str) -> None:
        temp, final = tmp / f"{name}.part", series / f"{name}.dcm"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            if scheme in ("msfollowup", "file only"):  # the store's own calls (files/syncio.py)
                start_writeback(temp, fd=fd)
                fsync_path(temp, fd=fd)
        finally:
            os.close(fd)
        os.link(temp, final)
        if scheme == "msfollowup":
            fsync_path(series, directory=True)
        elif scheme == "syncfs":
            shared.flush("filesystem", lambda: _check(_LIBC.syncfs(root_fd), "syncfs"))
        os.unlink(temp)

    def worker(k: int, errors: list[BaseException]) -> None:
        try:
            for i in range(k, files, threads):
                store(f"{i:06d}")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    errors: list[BaseException] = []
    workers = [threading.Thread(target=worker, args=(k, errors)) for k in range(threads)]
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    os.close(root_fd)
    if errors:
        raise errors[0]
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return files / elapsed, 1000 * cpu / files


SCHEMES = ("msfollowup", "file only", "syncfs", "no flush")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(),
                        help="a folder on the disk to measure (the store's); runs go into a new folder in it")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=133_000)
    parser.add_argument("--threads", default="1,4")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    base = Path(tempfile.mkdtemp(prefix="flushes-", dir=args.dir))
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    n = 0
    try:
        for rep in range(args.reps):
            for threads in thread_counts:
                schemes = SCHEMES[rep % len(SCHEMES):] + SCHEMES[:rep % len(SCHEMES)]  # rotate the order
                for scheme in schemes:
                    n += 1
                    results.setdefault((scheme, threads), []).append(
                        run(scheme, base / f"run{n}", args.files, args.size, threads))
        print(f"{args.files} files of {args.size} bytes under {base}; medians of {args.reps} interleaved repetitions")
        print(f"{'scheme':<12} {'threads':>7} {'files/s':>9} {'CPU ms/file':>12} {'ratio':>7}")
        for threads in thread_counts:
            reference = statistics.median(r[0] for r in results[("msfollowup", threads)])
            for scheme in SCHEMES:
                rate = statistics.median(r[0] for r in results[(scheme, threads)])
                cpu = statistics.median(r[1] for r in results[(scheme, threads)])
                print(f"{scheme:<12} {threads:>7} {rate:>9.1f} {cpu:>12.3f} {rate / reference:>6.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
