"""A node's part in the cluster while `serve` runs: join, heartbeat, leases, leadership.

What the service hands over and gets back (service.py marks the hooks):
- `join()` before the store's start-up recovery: identity/marker check, node name check, registry row;
- `tmp_dir`: this node's own temp folder on the shared storage (recovery at start-up discards
  unlinked temp files: on a shared tmp/ it would discard other nodes' half-received instances);
- `leases` for the pipeline's stages;
- `stage_config(cfg)`: the configuration for the stages, without the worklist export folder: only the
  leader writes `.wl` files (`export` below), so two nodes never rewrite the folder against each other;
- `start(scheduler, export)`: the heartbeat thread and the leader thread (periodic jobs, export).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import func, update

import msfollowup
from msfollowup.app.cluster.identity import join_cluster, register_node
from msfollowup.app.cluster.leader import Leadership
from msfollowup.app.cluster.leases import Leases
from msfollowup.db.cluster import ClusterNode
from msfollowup.site.config import Config
from msfollowup.db import Database
from msfollowup.core.worker import PollingWorker

log = logging.getLogger(__name__)


def stage_config(cfg: Config) -> Config:
    """The configuration the stages run with: cluster mode leaves the worklist export to the leader."""
    if not cfg.cluster.enabled or cfg.worklist.export_dir is None:
        return cfg
    return cfg.model_copy(update={"worklist": cfg.worklist.model_copy(update={"export_dir": None})})


class ClusterRuntime:
    def __init__(self, cfg: Config, db: Database) -> None:
        assert cfg.cluster.enabled and cfg.cluster.node_name
        self.cfg = cfg
        self.db = db
        self.name = cfg.cluster.node_name
        self.cluster_id: str | None = None
        self.leases = Leases(db, self.name, cfg.cluster.lease_seconds)
        self.leadership = Leadership(db.url, self.name, cfg.cluster.leader_timeout_seconds)
        self.tmp_dir = cfg.storage.data_dir / "tmp" / self.name
        self._heartbeat = PollingWorker("cluster-heartbeat", cfg.cluster.heartbeat_seconds, self.heartbeat)
        self._leader = PollingWorker("cluster-leader", min(1.0, cfg.cluster.leader_timeout_seconds / 3), self.lead)
        self._run_jobs: Callable[[], object] | None = None
        self._on_leadership: Callable[[], object] | None = None
        self._export: Callable[[], object] | None = None
        self._last_export = 0.0
        self._was_leader = False
        self._last_beat = time.monotonic()

    # -- start-up and shutdown

    def join(self, dicom_address: str | None = None) -> str:
        """Check identity and name, register; raises ClusterError with what to fix."""
        from msfollowup.db.migrate import head_revision

        self.cluster_id = join_cluster(self.db, self.cfg.storage.data_dir, self.name)
        with self.db.session() as s:
            register_node(s, self.name, msfollowup.__version__, head_revision(), dicom_address,
                          stale_seconds=self.cfg.cluster.lease_seconds)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        log.info("joined cluster=%s node=%s", self.cluster_id, self.name)
        return self.cluster_id

    def set_address(self, address: str) -> None:
        with self.db.session() as s:
            s.execute(update(ClusterNode).where(ClusterNode.name == self.name).values(dicom_address=address))

    def start(self, run_jobs: Callable[[], object] | None, on_leadership: Callable[[], object] | None,
              export: Callable[[], object] | None) -> None:
        """`run_jobs` each leader tick, `on_leadership` once when this node becomes leader, `export` every
        heartbeat interval while leading."""
        self._run_jobs, self._on_leadership, self._export = run_jobs, on_leadership, export
        self._heartbeat.start()
        self._leader.start()

    def stop(self) -> None:
        self._leader.stop()
        self._heartbeat.stop()
        self.leadership.resign()
        try:
            with self.db.session() as s:
                s.execute(update(ClusterNode).where(ClusterNode.name == self.name)
                          .values(stopped_at=func.now(), last_heartbeat=func.now()))
        except Exception:  # noqa: BLE001 - the row then just ages out; shutdown goes on
            log.warning("could not mark this node stopped in the registry")

    # -- the two threads

    def heartbeat(self) -> None:
        with self.db.session() as s:
            s.execute(update(ClusterNode).where(ClusterNode.name == self.name)
                      .values(last_heartbeat=func.now(), stopped_at=None))
        self.leases.renew()
        self._last_beat = time.monotonic()

    def lead(self) -> None:
        leading = self.leadership.check()
        if leading and not self._was_leader and self._on_leadership is not None:
            self._on_leadership()
        self._was_leader = leading
        if not leading:
            return
        if self._run_jobs is not None:
            self._run_jobs()
        now = time.monotonic()
        if self._export is not None and now - self._last_export >= self.cfg.cluster.heartbeat_seconds:
            self._last_export = now
            self._export()

    # -- health

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    def alive(self) -> bool:
        return self._heartbeat.is_alive() and self._leader.is_alive()

    def check_heartbeat(self) -> None:
        """/healthz: the registry row is being renewed (else other nodes take this node's leases)."""
        late = time.monotonic() - self._last_beat
        if late > self.cfg.cluster.lease_seconds / 2:
            raise RuntimeError(f"no heartbeat written for {late:.0f} s")
