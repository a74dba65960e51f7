"""Outbox: SRs reach a real DCMTK storescp exactly once, survive a down destination and a restart."""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage
from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_report_fixtures import (  # noqa: E402
    StoreSCP,
    free_port,
    make_config,
    make_db,
    make_result,
    make_study,
    storescp,  # noqa: F401  (fixture)
)

from msfollowup import cli  # noqa: E402
from msfollowup.site.config import Config, Destination  # noqa: E402
from msfollowup.db import Database, utcnow  # noqa: E402
from msfollowup.app.outbox import (  # noqa: E402
    DELIVERED,
    PENDING,
    SENDING,
    Delivery,
    Outbox,
    backoff_seconds,
    is_delivered_status,
    list_deliveries,
)
from msfollowup.reports.files import write_reports  # noqa: E402


def _setup(tmp_path: Path, port: int, database: str | None = None, **report: Any) -> tuple[Config, Database, str, str]:
    cfg = make_config(tmp_path, [Destination(ae_title="PACS", host="127.0.0.1", port=port)], database, **report)
    db = make_db(cfg)
    study_uid, series = make_study(cfg, db)
    rec = write_reports(db, cfg, study_uid, 1, make_result(study_uid, series, "non-compliant",
                                                          [("sequence.t2_flair", "fail", "No FLAIR.")]))
    return cfg, db, study_uid, rec.sr_sop_instance_uid


def _jobs(db: Database) -> list[Delivery]:
    with db.session() as s:
        jobs = list(s.scalars(select(Delivery).order_by(Delivery.id)))
        for j in jobs:
            s.expunge(j)
        return jobs


def _received_uids(scp: StoreSCP) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received()]


def test_delivered_once_and_never_again(tmp_path: Path, storescp: StoreSCP) -> None:
    storescp.start()
    cfg, db, _, sr_uid = _setup(tmp_path, storescp.port)
    box = Outbox(db, cfg)
    assert box.run_once() == 1
    assert _received_uids(storescp) == [sr_uid]
    (job,) = _jobs(db)
    assert job.state == DELIVERED and job.attempts == 1 and job.last_status == 0 and job.delivered_at is not None
    later = utcnow() + dt.timedelta(days=1)
    assert box.run_once(later) == 0
    assert Outbox(db, cfg).run_once(later) == 0
    assert _received_uids(storescp) == [sr_uid]


def test_down_destination_then_restart_delivers_exactly_once(tmp_path: Path, storescp: StoreSCP, db_url: str) -> None:
    cfg, db, _, sr_uid = _setup(tmp_path, storescp.port, db_url, retry_initial_seconds=30, retry_max_seconds=120)
    t0 = utcnow()
    box = Outbox(db, cfg)
    assert box.run_once(t0) == 1  # nobody listening
    (job,) = _jobs(db)
    assert job.state == PENDING and job.attempts == 1 and job.last_error
    assert "association" in job.last_error
    assert job.next_attempt_at > t0
    assert box.run_once(t0) == 0  # not due before the backoff has passed

    storescp.start()
    db.dispose()
    db2 = Database(cfg.storage.database_url)  # a restarted node: new engine, new Outbox
    box2 = Outbox(db2, cfg)
    assert box2.run_once(job.next_attempt_at + dt.timedelta(seconds=1)) == 1
    (job,) = _jobs(db2)
    assert job.state == DELIVERED and job.attempts == 2
    assert _received_uids(storescp) == [sr_uid]
    assert box2.run_once(utcnow() + dt.timedelta(days=1)) == 0
    assert _received_uids(storescp) == [sr_uid]


def test_backoff_grows_exponentially_and_is_capped(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    cfg, db, _, _ = _setup(tmp_path, port, retry_initial_seconds=5, retry_max_seconds=30)
    assert [backoff_seconds(cfg, n) for n in (1, 2, 3, 4, 5, 60)] == [5, 10, 20, 30, 30, 30]
    box = Outbox(db, cfg)
    delays = []
    for _ in range(4):
        (job,) = _jobs(db)
        now = job.next_attempt_at
        assert box.run_once(now) == 1
        (after,) = _jobs(db)
        delays.append((after.next_attempt_at - utcnow()).total_seconds())
    assert [round(d / 5) * 5 for d in delays] == [5, 10, 20, 30]
    assert _jobs(db)[0].attempts == 4


def test_claim_is_atomic_between_nodes(tmp_path: Path, db_url: str) -> None:
    cfg, db, _, _ = _setup(tmp_path, free_port(), db_url)
    a, b = Outbox(db, cfg), Outbox(Database(cfg.storage.database_url), cfg)
    (job,) = _jobs(db)
    now = utcnow()
    assert a._claim(job.id, now) is not None
    assert b._claim(job.id, now) is None
    (job,) = _jobs(db)
    assert job.state == SENDING and job.claimed_by == a.worker_id


def test_stale_claim_of_a_dead_node_is_given_back(tmp_path: Path, storescp: StoreSCP, db_url: str) -> None:
    storescp.start()
    cfg, db, _, sr_uid = _setup(tmp_path, storescp.port, db_url)
    dead = Outbox(db, cfg)
    (job,) = _jobs(db)
    assert dead._claim(job.id, utcnow()) is not None  # ... and the node dies here
    alive = Outbox(db, cfg)
    assert alive.run_once(utcnow()) == 0  # within the lease: left alone
    assert alive.run_once(utcnow() + dt.timedelta(seconds=alive.lease_seconds + 1)) == 1
    assert _jobs(db)[0].state == DELIVERED
    assert _received_uids(storescp) == [sr_uid]


class _StatusSCP:
    """An in-process pynetdicom Storage SCP answering a fixed status (a real association on loopback)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="PACS")
        ae.add_supported_context(ComprehensiveSRStorage)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def status_scp(request: pytest.FixtureRequest) -> Iterator[_StatusSCP]:
    scp = _StatusSCP(request.param)
    yield scp
    scp.close()


@pytest.mark.parametrize("status_scp", [0xB000], indirect=True)
def test_warning_status_counts_as_delivered(tmp_path: Path, status_scp: _StatusSCP) -> None:
    cfg, db, _, sr_uid = _setup(tmp_path, status_scp.port)
    assert Outbox(db, cfg).run_once() == 1
    (job,) = _jobs(db)
    assert job.state == DELIVERED and job.last_status == 0xB000
    assert status_scp.received == [sr_uid]


@pytest.mark.parametrize("status_scp", [0xA700], indirect=True)
def test_failure_status_is_retried(tmp_path: Path, status_scp: _StatusSCP) -> None:
    cfg, db, _, sr_uid = _setup(tmp_path, status_scp.port)
    assert Outbox(db, cfg).run_once() == 1
    (job,) = _jobs(db)
    assert job.state == PENDING and job.last_status == 0xA700 and "0xA700" in (job.last_error or "")
    assert status_scp.received == [sr_uid]
    assert [is_delivered_status(s) for s in (0x0000, 0xB007, 0xA700, 0xC000, 0x0122)] == [True, True, False, False, False]


def test_daemon_thread_delivers_and_stops(tmp_path: Path, storescp: StoreSCP) -> None:
    storescp.start()
    cfg, db, _, sr_uid = _setup(tmp_path, storescp.port)
    box = Outbox(db, cfg, poll_seconds=0.2)
    box.start()
    try:
        deadline = time.monotonic() + 30
        while _jobs(db)[0].state != DELIVERED and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        box.stop()
    assert _jobs(db)[0].state == DELIVERED
    assert _received_uids(storescp) == [sr_uid]
    assert not any(t.name == "msfollowup-outbox" for t in threading.enumerate())


def test_stop_while_a_destination_hangs(tmp_path: Path) -> None:
    """A destination that accepts TCP but never answers: stop() still returns and the job stays pending."""
    import socket

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(1)
    try:
        cfg, db, _, _ = _setup(tmp_path, hang.getsockname()[1])
        box = Outbox(db, cfg, poll_seconds=0.1)
        box.start()
        deadline = time.monotonic() + 10
        while _jobs(db)[0].state != SENDING and time.monotonic() < deadline:
            time.sleep(0.05)
        # The job is marked sending before its association starts: wait for the connection, so the stop
        # below meets a negotiation in progress (on a loaded machine it could otherwise come first).
        hang.settimeout(10)
        peer, _ = hang.accept()
        thread = box._worker  # the PollingWorker running the loop
        assert thread is not None
        box.stop(timeout=20)
        peer.close()
        assert not thread.is_alive()  # the negotiation was aborted, not waited out
        (job,) = _jobs(db)
        assert job.state == PENDING and "aborted" in (job.last_error or "")
    finally:
        hang.close()


def test_new_destination_is_enqueued_on_rewrite(tmp_path: Path) -> None:
    cfg, db, study_uid, _ = _setup(tmp_path, free_port())
    more = make_config(tmp_path, [Destination(ae_title="PACS", host="127.0.0.1", port=cfg.report.destinations[0].port),
                                  Destination(ae_title="ARCHIVE", host="127.0.0.1", port=11113)])
    with db.session() as s:
        s.execute(update(Delivery).values(state=DELIVERED))
    result = json.loads((Path(cfg.storage.data_dir) / "reports" / study_uid / "v1.json").read_text())["result"]
    write_reports(db, more, study_uid, 1, result)
    states = {j.destination: j.state for j in list_deliveries(db)}
    assert states == {f"PACS@127.0.0.1:{cfg.report.destinations[0].port}": DELIVERED,
                      "ARCHIVE@127.0.0.1:11113": PENDING}


def test_outbox_command_lists_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db, study_uid, sr_uid = _setup(tmp_path, free_port())
    Outbox(db, cfg).run_once()
    conf = tmp_path / "msfollowup.toml"
    conf.write_text(f'[storage]\ndata_dir = "{cfg.storage.data_dir}"\n')
    assert cli.main(["outbox", "--json", "--config", str(conf)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["study_instance_uid"] == study_uid and row["sr_sop_instance_uid"] == sr_uid
    assert row["state"] == "pending" and row["attempts"] == 1 and row["last_error"] and row["next_attempt_at"]
    assert row["destination"].startswith("PACS@127.0.0.1:")
    assert cli.main(["outbox", "--config", str(conf)]) == 0
    text = capsys.readouterr().out
    assert "pending" in text and "last error:" in text
