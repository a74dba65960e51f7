"""The cluster's tables: its identity, the node registry, and the stage leases.

Times written by the cluster code come from the database clock (`now()`), never a node's clock: nodes
on different hosts compare heartbeats and lease expiries against one clock.

The tables come with migration 0007_cluster.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from msfollowup.db import Base, UTCDateTime


class ClusterIdentity(Base):
    """One row (id = 1): the cluster this database belongs to; the storage root holds the same id."""

    __tablename__ = "cluster_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    cluster_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(64))  # node_name of the first node


class ClusterNode(Base):
    """A node that joined the cluster; `last_heartbeat` is renewed every cluster.heartbeat_seconds."""

    __tablename__ = "cluster_nodes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # cluster.node_name
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))  # msfollowup release
    schema_revision: Mapped[str | None] = mapped_column(String(64))
    dicom_address: Mapped[str | None] = mapped_column(String(300))  # host:port the node listens on
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_heartbeat: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # set by a clean shutdown


class StageLease(Base):
    """Who runs one stage of one study (`check:<uid>:<version>`, `followup:<check id>`).

    Held while `expires_at` is in the future (the holder's heartbeat renews it); `done_at` set: the
    stage is finished and nobody claims it again (rows are purged an hour later)."""

    __tablename__ = "cluster_leases"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64), index=True)
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)



