"""Cluster mode: several nodes on one PostgreSQL database and one shared storage root (docs/cluster.md).

model     the tables (identity, node registry, stage leases)
identity  the storage root's owner: one node (an OS lock) or one cluster (a marker file + identity row)
leases    which node runs a stage of a study
leader    the one node (a PostgreSQL advisory lock) that runs the periodic jobs and the worklist export
runtime   a node's part while `serve` runs (hooks used by service.py)
"""

from msfollowup.app.cluster.identity import ClusterError, DataDirLock
from msfollowup.app.cluster.runtime import ClusterRuntime, stage_config

__all__ = ["ClusterError", "ClusterRuntime", "DataDirLock", "stage_config"]
