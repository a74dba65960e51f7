"""Who may use a storage root: one node alone (an OS lock), or the nodes of one cluster (a marker).

Without cluster mode the data folder belongs to one process: a second node on it would discard the
first one's half-received files at its start-up recovery and write the same SQLite index, so it is
refused while the first holds `<data_dir>/.msfollowup.lock` (flock; released by the kernel when the
process dies, even by kill -9).

In cluster mode the first node writes a cluster identity into the database and the same id into the
marker file `<storage root>/.msfollowup-cluster`. A node whose storage root does not hold that marker
(the shared filesystem is not mounted, or points elsewhere) would index files other nodes cannot read
and miss theirs: it refuses to start and names the path it expected.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from msfollowup.db.cluster import ClusterIdentity, ClusterNode
from msfollowup.core.errors import MsFollowupError
from msfollowup.core.files import atomic_write
from msfollowup.db import Database, utcnow

LOCK_FILE = ".msfollowup.lock"
MARKER_FILE = ".msfollowup-cluster"
_INIT_LOCK_KEY = 0x6D7366_0003  # pg_advisory_xact_lock: nodes starting together create one identity


class ClusterError(MsFollowupError):
    """This node cannot join: wrong storage root, a name in use, a data folder in use."""


class DataDirLock:
    """An exclusive flock on `<data_dir>/.msfollowup.lock`, held until `release()` or process exit."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ClusterError(
                f"another msfollowup node is already running on the data folder {self.path.parent} (it holds "
                f"{self.path}); one index and data folder serve one node. To run several nodes, use cluster mode: "
                f"a PostgreSQL storage.database, a shared storage.data_dir and [cluster] enabled = true with a "
                f"node_name per node (docs/cluster.md)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def marker_path(data_dir: Path) -> Path:
    return data_dir / MARKER_FILE


def _read_marker(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cluster marker {path} is unreadable ({exc}): restore it from another node's "
                           f"storage root or remove it") from None
    cluster_id = data.get("cluster_id") if isinstance(data, dict) else None
    if not isinstance(cluster_id, str):
        raise ClusterError(f"cluster marker {path} has no cluster_id")
    return cluster_id


def join_cluster(db: Database, data_dir: Path, node_name: str) -> str:
    """The cluster id after checking (or, for the first node, writing) identity and marker.

    Under a transaction-level advisory lock, so nodes starting together on an empty database and an
    empty storage root agree on one id. A marker without an identity row (the first node died between
    the two writes, or the database was restored empty) is adopted: its storage root is this one."""
    marker = marker_path(data_dir)
    with db.session() as s:
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _INIT_LOCK_KEY})
        identity = s.get(ClusterIdentity, 1)
        on_disk = _read_marker(marker)
        if identity is None:
            cluster_id = on_disk or str(uuid.uuid4())
            if on_disk is None:
                atomic_write(marker, json.dumps({"cluster_id": cluster_id, "created_by": node_name}).encode())
            s.add(ClusterIdentity(id=1, cluster_id=cluster_id, created_at=utcnow(), created_by=node_name))
            return cluster_id
        if on_disk != identity.cluster_id:
            found = "no marker" if on_disk is None else f"the marker of another cluster ({on_disk})"
            raise ClusterError(
                f"storage root {data_dir} is not this cluster's shared storage: expected the marker file {marker} "
                f"holding cluster id {identity.cluster_id} (written by node {identity.created_by}), found {found}. "
                f"Mount the shared storage at storage.data_dir (every node must use the same storage root)"
            )
        return identity.cluster_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register_node(s: Session, name: str, version: str, revision: str | None, dicom_address: str | None,
                  stale_seconds: float) -> None:
    """Insert or take over this node's registry row; refuse a name a live node is using.

    A row with a recent heartbeat belongs to a running node unless it is this host's and its process
    is gone (this node restarting after a crash)."""
    host = socket.gethostname()
    row = s.execute(select(ClusterNode).where(ClusterNode.name == name).with_for_update()).scalar_one_or_none()
    if row is not None and row.stopped_at is None:
        age = s.execute(text("SELECT extract(epoch FROM now() - :t)"), {"t": row.last_heartbeat}).scalar_one()
        restarted_here = row.host == host and not _pid_alive(row.pid)
        if float(age) < stale_seconds and not restarted_here and row.pid != os.getpid():
            raise ClusterError(
                f"cluster.node_name {name!r} is in use by a running node on host {row.host} (pid {row.pid}, last "
                f"heartbeat {float(age):.0f} s ago): give every node its own node_name"
            )
    values = {"host": host, "pid": os.getpid(), "version": version, "schema_revision": revision,
              "dicom_address": dicom_address, "stopped_at": None}
    s.execute(pg_insert(ClusterNode).values(name=name, started_at=func.now(), last_heartbeat=func.now(),
                                            **values)
              .on_conflict_do_update(index_elements=[ClusterNode.name],
                                     set_={**values, "started_at": func.now(), "last_heartbeat": func.now()}))
