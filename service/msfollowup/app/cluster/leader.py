"""One leader per cluster: the node holding a PostgreSQL session-level advisory lock.

The lock lives on a dedicated connection (not the pool: a pooled connection is returned and reused,
and a session lock would go with it). PostgreSQL releases it when that session ends, which happens
at once when the leader process dies (the kernel closes its socket) and, when the leader's host dies
or is cut off, once the server's TCP keepalive gives up: the keepalive settings of the session are
derived from `leader_timeout_seconds` so that this happens within about two thirds of the bound, and
the other nodes retry the lock every `poll_seconds` (at most a third of the bound).

A leader that cannot reach the database any more (its ping fails) stops acting as leader at once;
periodic jobs are additionally claimed with a compare-and-set (jobs.py), so even two nodes believing
they lead never run one occurrence twice.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)
LEADER_LOCK_KEY = 0x6D7366_0002  # pg_try_advisory_lock(bigint)
APPLICATION_NAME = "msfollowup-leader"


def lock_parts(key: int = LEADER_LOCK_KEY) -> tuple[int, int]:
    """(classid, objid) of a bigint advisory lock as pg_locks shows it."""
    return key >> 32, key & 0xFFFFFFFF


class Leadership:
    def __init__(self, url: str, node_name: str, timeout_seconds: float) -> None:
        self.node_name = node_name
        idle = max(1, int(timeout_seconds / 3))
        interval = max(1, int(timeout_seconds / 6))
        connect_args = {
            "application_name": f"{APPLICATION_NAME}:{node_name}"[:63],
            "connect_timeout": max(2, int(timeout_seconds / 3)),
            # client side: notice a dead server, and do not wait forever on unacknowledged data
            "keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval, "keepalives_count": 2,
            "tcp_user_timeout": int(timeout_seconds * 1000 / 2),
            # server side: drop the session of a dead leader host (releasing the lock) within the bound
            "options": f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
                       f"-c tcp_keepalives_count=2 -c statement_timeout={int(timeout_seconds * 1000 / 3)}",
        }
        self._engine = create_engine(make_url(url), poolclass=NullPool, connect_args=connect_args,
                                     isolation_level="AUTOCOMMIT")
        self._conn: Connection | None = None

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    def check(self) -> bool:
        """Confirm or try to take leadership; True while this node leads."""
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except DBAPIError:
                log.warning("leadership lost: the connection holding the leader lock broke")
                self._drop()
        try:
            conn = self._engine.connect()
        except DBAPIError:
            return False
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK_KEY}).scalar())
        except DBAPIError:
            got = False
        if not got:
            conn.close()
            return False
        self._conn = conn
        log.info("this node is the cluster leader node=%s", self.node_name)
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except DBAPIError:
                pass

    def resign(self) -> None:
        """Clean shutdown: unlock, so another node takes over at its next poll rather than after a timeout."""
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK_KEY})
                self._conn.close()
            except DBAPIError:
                pass
            self._conn = None
        self._engine.dispose()


def current_leader(conn: Connection) -> str | None:
    """The node_name of the session holding the leader lock (None: no leader right now)."""
    classid, objid = lock_parts()
    name = conn.execute(text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :c AND l.objid = :o AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ), {"c": classid, "o": objid}).scalar()
    prefix = f"{APPLICATION_NAME}:"
    return name[len(prefix):] if isinstance(name, str) and name.startswith(prefix) else None
