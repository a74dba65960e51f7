"""`msfollowup nodes`: the nodes of the cluster, their heartbeat, and which one leads.

A node is "up" while its heartbeat is younger than cluster.lease_seconds (after that other nodes take
its leases over), "stopped" after a clean shutdown, "lost" otherwise. The leader is read from the
database's lock table (the session holding the leader lock), not from what the nodes last wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from msfollowup.site.config import load_config


def node_rows(url: str, lease_seconds: float) -> list[dict[str, Any]]:
    from sqlalchemy import func, inspect, select

    from msfollowup.app.cluster.leader import current_leader
    from msfollowup.db.cluster import ClusterNode
    from msfollowup.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(ClusterNode.__tablename__):
                return []
            leader = current_leader(conn)
            now = conn.execute(select(func.now())).scalar_one()
            rows = conn.execute(select(ClusterNode).order_by(ClusterNode.name)).all()
    finally:
        engine.dispose()
    out = []
    for r in rows:
        age = (now - r.last_heartbeat).total_seconds()
        state = "stopped" if r.stopped_at is not None else "up" if age < lease_seconds else "lost"
        out.append({
            "name": r.name, "host": r.host, "pid": r.pid, "version": r.version, "schema": r.schema_revision,
            "dicom": r.dicom_address, "started_at": r.started_at.isoformat(),
            "last_heartbeat": r.last_heartbeat.isoformat(), "heartbeat_age_seconds": round(age, 1),
            "state": state, "leader": r.name == leader,
        })
    return out


def _cmd_nodes(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if not cfg.storage.database_url.startswith("postgresql"):
        print("msfollowup: not a cluster: nodes share an index only on PostgreSQL with [cluster] enabled = true "
              "(docs/cluster.md)", file=sys.stderr)
        return 2
    rows = node_rows(cfg.storage.database_url, cfg.cluster.lease_seconds)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'NAME':<20} {'HOST':<24} {'VERSION':<10} {'STATE':<8} {'HEARTBEAT':>10}  {'DICOM':<22} LEADER")
    for r in rows:
        print(f"{r['name']:<20} {r['host']:<24} {r['version']:<10} {r['state']:<8} "
              f"{r['heartbeat_age_seconds']:>8.1f} s  {r['dicom'] or '-':<22} {'*' if r['leader'] else ''}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("nodes", help="cluster nodes: name, host, version, last heartbeat, leader")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", help="TOML configuration file (default: $MSFOLLOWUP_CONFIG, else built-in defaults)")
    p.set_defaults(func=_cmd_nodes)
