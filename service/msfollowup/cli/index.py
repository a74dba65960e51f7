"""`msfollowup index rebuild`: the index of studies, series and instances, rebuilt from the files in store/.

For an index that was deleted, truncated, replaced or corrupted: every file under store/ is read (header
only) and indexed where its row is missing; rows already there are kept. An index file SQLite cannot
open is moved aside first (renamed, never deleted) so it stays available for inspection. Run it with
the node stopped: it refuses while a node holds the data folder's lock (and holds it itself, so no node
starts meanwhile). Rebuilt studies come back as receiving: they complete and are checked again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msfollowup.site.config import Config, load_config

if TYPE_CHECKING:
    from msfollowup.app.cluster import DataDirLock

_SUFFIXES = ("", "-wal", "-shm", "-journal")


@dataclass
class RebuildCounts:
    indexed: int = 0
    present: int = 0
    skipped: int = 0


def move_aside(index: Path) -> Path:
    """Rename an unusable SQLite file (and its WAL/SHM) to <name>.unusable-<UTC time>."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = index.with_name(f"{index.name}.unusable-{stamp}")
    for suffix in _SUFFIXES:
        part = Path(f"{index}{suffix}")
        if part.exists():
            part.rename(Path(f"{target}{suffix}"))
    return target


def rebuild_index(store: Any, warn: Any = print) -> RebuildCounts:
    """Index every store/<study>/<series>/<sop>.dcm whose row is missing (one transaction per file)."""
    from msfollowup.files.store import IngestError

    counts = RebuildCounts()
    for path in sorted(store.root.glob("*/*/*.dcm")):
        rel = path.relative_to(store.root).as_posix()
        try:
            if store.index_stored_file(path):
                counts.indexed += 1
            else:
                counts.present += 1
        except IngestError as exc:
            counts.skipped += 1
            warn(f"skipped {rel}: {exc}")
    return counts


def _cmd_rebuild(args: argparse.Namespace) -> int:
    cfg: Config = load_config(args.config)
    lock = _hold_data_dir(cfg.storage.data_dir)
    if lock is None:
        return 2
    try:
        return _rebuild(cfg)
    finally:
        lock.release()


def _hold_data_dir(data_dir: Path) -> DataDirLock | None:
    """The data folder's node lock (cluster.DataDirLock, the one `serve` takes), held for the whole
    rebuild: a running node would go on writing the index being rebuilt (or keep the unusable file
    open while it is moved aside), and a node started during the rebuild would run its recovery on
    tmp/ meanwhile. None, with the message printed, when a node holds it."""
    from msfollowup.app.cluster import ClusterError, DataDirLock

    try:
        return DataDirLock(data_dir).acquire()
    except ClusterError:
        print(f"msfollowup: index rebuild refused: a node is running on the data folder {data_dir} (it holds "
              f"{DataDirLock(data_dir).path}); stop it first (systemctl stop msfollowup), then run the rebuild "
              "again", file=sys.stderr)
        return None


def _rebuild(cfg: Config) -> int:
    from msfollowup.db import Database, IndexDatabaseError, sqlite_file
    from msfollowup.files.store import InstanceStore

    url = cfg.storage.database_url
    try:
        db = Database(url, cfg.storage.busy_timeout_seconds)
    except IndexDatabaseError:
        index = sqlite_file(url)
        if index is None:  # a server database is not ours to move: the message says what is wrong
            raise
        print(f"msfollowup: {index} cannot be opened; moved aside to {move_aside(index)}", file=sys.stderr)
        db = Database(url, cfg.storage.busy_timeout_seconds)
    store = InstanceStore(cfg.storage.data_dir, db, cfg.storage.duplicate_policy, cfg.storage.fsync)
    counts = rebuild_index(store, warn=lambda m: print(f"msfollowup: {m}", file=sys.stderr))
    db.dispose()
    print(f"index rebuilt from {store.root}: {counts.indexed} instances indexed, {counts.present} already indexed, "
          f"{counts.skipped} skipped")
    return 0 if counts.skipped == 0 else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="the index of received instances: rebuild it from the files in store/")
    commands = p.add_subparsers(dest="index_command", required=True)
    r = commands.add_parser("rebuild", help="index every file in store/ that the index lacks (node stopped)")
    r.add_argument("--config", help="TOML configuration file (default: $MSFOLLOWUP_CONFIG, else built-in defaults)")
    r.set_defaults(func=_cmd_rebuild)
