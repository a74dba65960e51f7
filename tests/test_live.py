"""Live provisional checks (issue 15): the pure check, the broker, and end to end with the real node,
DCMTK storescu sending a study series by series and a real SSE client on the scanner-room stream."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_fixtures import generate_study
from msfollowup.dicom.classify import classify_study, read_headers
from msfollowup.site.config import load_config
from msfollowup.db import Database
from msfollowup.db import provisional as records
from msfollowup.app.live.broker import Broker
from msfollowup.check.provisional import Expected, StudyContext, initials, provisional_check
from msfollowup.site.profiles import get_profile
from nodeutil import DCMTK, free_port, performed_series, track, write_config

HERE = Path(__file__).resolve().parent
TOKEN = "live-test-token"


# --- the pure check ---------------------------------------------------------------------------------


def _check(files: list[Path], profile: str = "ms-brain-routine") -> dict[str, Any]:
    series, _, _ = read_headers(files)
    classified = classify_study(list(series.values()))
    ctx = StudyContext(study_uid="1.2.3", scanner="MR1")
    return provisional_check(classified, Expected(get_profile(profile), "default"), ctx).to_json()


def test_provisional_lists_missing_post_contrast_t1_with_timer_then_clears_it(tmp_path: Path) -> None:
    study = generate_study(tmp_path, profile="ms-brain-routine", slices=4)
    before = [f for s in study.series if s.key != "t1_post" for f in s.files]
    partial = _check(before)
    assert [m["id"] for m in partial["missing"]] == ["sequence.t1_post"]
    assert partial["failing"] == []
    (timer,) = partial["timers"]
    assert timer["requirement"] == "sequence.t1_post"
    assert "contrast given at" in timer["message"] and "not before" in timer["message"]
    whole = _check(list(study.files))
    assert whole["missing"] == [] and whole["failing"] == [] and whole["timers"] == []
    assert {m["id"] for m in whole["met"]} >= {"sequence.t1_post", "contrast_delay"}
    kinds = {s["description"]: s["kind"] for s in whole["series"]}
    assert "T2_FLAIR" in kinds.values() and "T1" in kinds.values()


def test_provisional_flags_5mm_slices_as_failing_now_with_the_reason(tmp_path: Path) -> None:
    study = generate_study(tmp_path, profile="ms-brain-routine", defects=["thick_slices_5mm"], slices=4)
    upto_t2 = [f for s in study.series if s.key in ("loc", "t1_pre", "flair", "t2") for f in s.files]
    result = _check(upto_t2)
    failing = {m["id"]: m["message"] for m in result["failing"]}
    assert "resolution.t2" in failing and "5 mm" in failing["resolution.t2"]
    assert [m["id"] for m in result["missing"]] == ["sequence.t1_post"]


def test_nothing_settled_yet_lists_every_required_sequence_as_missing() -> None:
    result = provisional_check([], Expected(get_profile("ms-brain-routine"), "worklist"),
                               StudyContext(study_uid="1.2.3", scanner="MR1")).to_json()
    assert {m["id"] for m in result["missing"]} == {"sequence.t1_pre", "sequence.t2_flair", "sequence.t2",
                                                    "sequence.t1_post"}
    assert result["profile"]["source"] == "worklist"


def test_initials_from_person_name() -> None:
    assert initials("DOE^JANE") == "J.D."
    assert initials("DOE") == "D."
    assert initials("") is None and initials(None) is None


# --- the broker -------------------------------------------------------------------------------------


def test_broker_slow_subscriber_is_bounded_and_never_blocks_the_publisher() -> None:
    broker = Broker(maxsize=3)
    slow = broker.subscribe()
    fast = broker.subscribe()
    started = time.perf_counter()
    for i in range(10_000):
        broker.publish(f"study{i % 5}", {"n": i})
    assert time.perf_counter() - started < 2.0
    got = slow.drain()
    assert len(got) == 3 and slow.dropped > 0  # 5 studies keep changing, bound 3: the oldest are dropped
    assert [e["n"] for e in got] == [9997, 9998, 9999]  # each study's latest state only
    assert len(fast.drain()) == 3
    slow.close()
    assert broker.subscriber_count == 1
    assert {e["n"] for e in broker.snapshot()} == {9995, 9996, 9997, 9998, 9999}


# --- end to end -------------------------------------------------------------------------------------


class LiveNode:
    def __init__(self, tmp: Path, settle: float = 1.0, stable: float = 60.0) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_port(), free_port()
        self.config = write_config(tmp / "msfollowup.toml", {
            "node": {"ae_title": "MSFOLLOWUP", "host": "127.0.0.1", "port": self.port, "shutdown_grace_seconds": 2},
            "storage": {"data_dir": str(tmp / "var")},
            "completion": {"stable_seconds": stable, "poll_seconds": 0.2},
            "live": {"settle_seconds": settle, "poll_seconds": 0.2},
            "scheduler": {"enabled": False},
        }, [("STORESCU", None), ("MR1", None)])
        self.log = tmp / "live-node.log"
        self.proc = track(subprocess.Popen(
            [sys.executable, str(HERE / "live_node.py"), str(self.config), str(self.http_port), TOKEN],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        self.base = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.base + "/live", headers=self.auth, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.proc.kill()  # not left running to slow down the tests after this one
        self.proc.wait(10)
        raise AssertionError("live node did not start:\n" + self.log.read_text())

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def storescu(self, files: list[Path], aet: str = "MR1") -> None:
        done = subprocess.run([str(DCMTK / "storescu"), "-aet", aet, "-aec", "MSFOLLOWUP", "127.0.0.1",
                               str(self.port), *map(str, files)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class SseClient:
    """A real EventSource-like client on a thread: every `provisional` event's JSON lands in `events`."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.raw: list[str] = []
        self.status: int | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(5, read=None))
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as rsp:
                self.status = rsp.status_code
                self.content_type = rsp.headers.get("content-type", "")
                kind = None
                for line in rsp.iter_lines():
                    self.raw.append(line)
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "provisional":
                        self.events.put(json.loads(line[6:]))
        except httpx.HTTPError:
            pass

    def wait_for(self, what: str, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(ev):
                return ev
        raise AssertionError(f"no event where {what} within {timeout} s")

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def live_node(tmp_path: Path) -> Iterator[LiveNode]:
    node = LiveNode(tmp_path / "node")
    try:
        yield node
    finally:
        node.stop()


def test_series_by_series_over_storescu_the_stream_shows_each_series_and_the_missing_post_t1(
        live_node: LiveNode, tmp_path: Path) -> None:
    study = generate_study(tmp_path / "study", profile="ms-brain-routine", slices=4, accession="ACC77",
                           patient_name="DOE^JANE", patient_id="PID-SECRET-1")
    denied = httpx.get(live_node.base + "/api/v1/live/stream", timeout=5)
    assert denied.status_code == 401
    sse = SseClient(live_node.base + "/api/v1/live/stream", live_node.auth)
    try:
        for s in study.series:
            live_node.storescu(list(s.files))
            ev = sse.wait_for(f"series {s.key} appears classified",
                              lambda e, uid=s.series_uid: any(x["series_instance_uid"] == uid for x in e["series"]))
            assert ev["study_instance_uid"] == study.study_uid
            assert ev["scanner"] == "MR1" and ev["accession_number"] == "ACC77"
            assert ev["patient_initials"] == "J.D." and ev["patient_name"] is None
            missing = [m["id"] for m in ev["missing"]]
            if s.key == "t2":  # everything but the post-contrast T1 has arrived
                assert missing == ["sequence.t1_post"], missing
                assert ev["timers"] and ev["timers"][0]["requirement"] == "sequence.t1_post"
                assert ev["failing"] == []
            if s.key == "t1_post":
                assert missing == [] and ev["timers"] == []
                assert "contrast_delay" in {m["id"] for m in ev["met"]}
            kinds = {x["series_instance_uid"]: x["kind"] for x in ev["series"]}
            assert kinds[s.series_uid] == s.expected_kind
        assert sse.status == 200 and sse.content_type.startswith("text/event-stream")
        everything = "\n".join(sse.raw)
        assert "DOE" not in everything and "JANE" not in everything and "PID-SECRET-1" not in everything
        page = httpx.get(live_node.base + "/live", headers=live_node.auth, timeout=5)
        assert page.status_code == 200 and 'data-scanner="MR1"' in page.text and "<script>" not in page.text
        assert "DOE" not in page.text and "ACC77" in page.text
        js = httpx.get(live_node.base + "/live/static/live.js", headers=live_node.auth, timeout=5)
        assert js.status_code == 200 and "EventSource" in js.text
        db = Database(load_config(live_node.config).storage.database_url)
        with db.session() as s:
            hist = records.history(s, study.study_uid)
        db.dispose()
        assert len(hist) >= len(study.series)
        assert [m["id"] for m in hist[-1]["missing"]] == []
        assert any([m["id"] for m in h["missing"]] == ["sequence.t1_post"] for h in hist)
    finally:
        sse.close()


def test_a_series_the_mpps_reports_done_is_judged_at_once_without_waiting_to_settle(tmp_path: Path) -> None:
    """Issue 15: "as each series settles (no new instance for a few seconds, or the MPPS N-SET listing it)".
    With a settle time of a minute, the T2 the modality lists in an IN PROGRESS N-SET is classified
    (and its 5 mm slices flagged) within seconds; the series it does not list yet keep "receiving"."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

    node = LiveNode(tmp_path / "node", settle=60.0)
    study = generate_study(tmp_path / "study", profile="ms-brain-routine", slices=3, accession="ACC78",
                           defects=["thick_slices_5mm"])
    loc, t1_pre, flair, t2 = study.series[:4]
    sse = SseClient(node.base + "/api/v1/live/stream", node.auth)
    scu = AE(ae_title="MR1")
    scu.add_requested_context(ModalityPerformedProcedureStep)
    assoc = scu.associate("127.0.0.1", node.port, ae_title="MSFOLLOWUP")
    try:
        assert assoc.is_established
        create = Dataset()
        ref = Dataset()
        ref.StudyInstanceUID = study.study_uid
        ref.AccessionNumber = "ACC78"
        create.ScheduledStepAttributesSequence = [ref]
        create.PerformedProcedureStepID = "PPS78"
        create.PerformedProcedureStepStatus = "IN PROGRESS"
        create.Modality = "MR"
        create.PerformedSeriesSequence = []
        mpps_uid = generate_uid()
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0x0000
        node.storescu([f for s in (loc, t1_pre, flair, t2) for f in s.files])
        first = sse.wait_for("the study appears, every series still receiving", lambda e: len(e["receiving"]) == 4)
        assert first["series"] == []

        listed = Dataset()
        listed.PerformedProcedureStepStatus = "IN PROGRESS"
        listed.PerformedSeriesSequence = performed_series(list(t2.files))
        sent = time.monotonic()
        status, _ = assoc.send_n_set(listed, ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0x0000
        ev = sse.wait_for("the T2 judged", lambda e: any(x["series_instance_uid"] == t2.series_uid
                                                             for x in e["series"]), timeout=15)
        assert time.monotonic() - sent < 10  # well before the 60 s settle time
        assert {x["series_instance_uid"] for x in ev["receiving"]} == {loc.series_uid, t1_pre.series_uid, flair.series_uid}
        assert any(m["id"] == "resolution.t2" and "5 mm" in m["message"] for m in ev["failing"]), ev["failing"]
    finally:
        if assoc.is_established:
            assoc.release()
        sse.close()
        node.stop()
