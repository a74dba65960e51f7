"""Notifications (issue 15): a real SMTP server with STARTTLS and authentication (aiosmtpd), a real HTTP
receiver checking the HMAC signature, a receiver that is down at first (across a restart), the rules
(events, scanners, profiles) and the persistent, exactly-once delivery table."""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import hmac
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from dicom_fixtures import generate_study
from msfollowup.site.config import Config, ConfigError, load_config
from msfollowup.db import Database
from msfollowup.app.notify import emit, events
from msfollowup.site.notify_config import NotifyDestination
from msfollowup.db.notifications import DELIVERED, NotificationDelivery
from msfollowup.app.notify.worker import NotifyWorker, backoff_seconds
from nodeutil import RunningNode, free_port

OPENSSL = shutil.which("openssl")
SECRET = "s3cret-hook-key"
PATIENT = {"patient_id": "PID-NOTIFY-9", "patient_name": "ROE^RICHARD"}


# --- receivers --------------------------------------------------------------------------------------


class HookReceiver:
    """A real HTTP server on loopback recording every POST (headers and body)."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]


def valid_signature(headers: dict[str, str], body: bytes, secret: str = SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-msfollowup-signature", ""), expected)


class _Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if OPENSSL is None:
        pytest.skip("openssl command not installed")
    folder = tmp_path_factory.mktemp("smtp-pki")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def smtp_server(smtp_cert: tuple[Path, Path]) -> Iterator[tuple[_Collect, int, list[str]]]:
    """aiosmtpd on loopback: STARTTLS required, AUTH required (only after TLS), one user."""
    cert, key = smtp_cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    logins: list[str] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == b"notifier" and data.password == b"pw-123"
        if ok:
            logins.append(mechanism)
        return AuthResult(success=ok)

    handler = _Collect()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                            authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller.start()
    try:
        yield handler, port, logins
    finally:
        controller.stop()


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def webhook_toml(url: str, events_: list[str], include_patient_data: bool = False, name: str | None = None,
                 scanners: list[str] | None = None, profiles: list[str] | None = None) -> str:
    return "\n".join([
        "[[notify.destinations]]", 'kind = "webhook"', f"url = {json.dumps(url)}", f"secret = {json.dumps(SECRET)}",
        f"events = {_toml_list(events_)}", f"scanners = {_toml_list(scanners or [])}",
        f"profiles = {_toml_list(profiles or [])}", f"include_patient_data = {str(include_patient_data).lower()}",
        *([f"name = {json.dumps(name)}"] if name else []), "timeout_seconds = 3", ""])


def email_toml(port: int, ca: Path) -> str:
    return "\n".join([
        "[[notify.destinations]]", 'kind = "email"', 'smtp_host = "127.0.0.1"', f"smtp_port = {port}",
        'from = "msfollowup@example.org"', 'to = ["mr-team@example.org"]', 'username = "notifier"',
        'password = "pw-123"', f"ca_file = {json.dumps(str(ca))}", 'events = ["study.non_compliant"]',
        "timeout_seconds = 5", ""])


def _send_non_compliant(node: RunningNode, tmp: Path, seed: int = 0) -> str:
    # A missing FLAIR is non-compliant whatever the contrast evidence (a missing post-contrast T1 leaves the
    # lone T1's contrast state unknown, which is "unverifiable" since issue 13).
    study = generate_study(tmp / f"study{seed}", profile="ms-brain-routine", defects=["missing_flair"], slices=3,
                           seed=seed, accession=f"ACC{seed}", **PATIENT)
    done = node.storescu(study.files, aet="STORESCU")
    assert done.returncode == 0, done.stderr
    return study.study_uid


def _deliveries(db: Database) -> list[NotificationDelivery]:
    with db.session() as s:
        rows = list(s.scalars(select(NotificationDelivery).order_by(NotificationDelivery.id)))
        for r in rows:
            s.expunge(r)
        return rows


# --- end to end ---------------------------------------------------------------------------------------


def test_non_compliant_study_mails_and_posts_without_patient_data_by_default(
        tmp_path: Path, smtp_server: tuple[_Collect, int, list[str]], smtp_cert: tuple[Path, Path]) -> None:
    mailbox, smtp_port, logins = smtp_server
    plain, with_patient, other_scanner = HookReceiver(), HookReceiver(), HookReceiver()
    extra = (email_toml(smtp_port, smtp_cert[0])
             + webhook_toml(plain.url, ["study.non_compliant"], name="plain")
             + webhook_toml(with_patient.url, ["study.non_compliant"], include_patient_data=True, name="pd")
             + webhook_toml(other_scanner.url, ["study.non_compliant"], scanners=["MR9"], name="mr9"))
    node = RunningNode(tmp_path / "node", stable_seconds=1.0, sections={"scheduler": {"enabled": False}},
                       extra=extra).start()
    try:
        study_uid = _send_non_compliant(node, tmp_path)
        node.wait_for("the e-mail", lambda: mailbox.messages, timeout=60)
        node.wait_for("both webhooks", lambda: plain.posts and with_patient.posts, timeout=30)
    finally:
        node.stop()
    (mail_from, rcpt, raw), = mailbox.messages
    assert mail_from == "msfollowup@example.org" and rcpt == ["mr-team@example.org"]
    assert logins, "the client did not authenticate"
    msg = email.message_from_bytes(raw)
    text = msg.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "study.non_compliant" in msg["Subject"] and "STORESCU" in msg["Subject"]
    assert study_uid in text and "T2 FLAIR" in text and "missing" in text.lower()
    for phi in ("PID-NOTIFY-9", "ROE", "RICHARD", "patient:"):
        assert phi not in raw.decode(errors="replace"), phi
    (headers, body), = plain.posts
    assert valid_signature(headers, body) and headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert payload["event"] == "study.non_compliant" and payload["verdict"] == "non-compliant"
    assert payload["study"]["study_instance_uid"] == study_uid and payload["study"]["scanner"] == "STORESCU"
    assert [m["id"] for m in payload["missing"]] == ["sequence.t2_flair"]
    assert "patient" not in payload and b"PID-NOTIFY-9" not in body and b"ROE" not in body
    (headers2, body2), = with_patient.posts
    assert valid_signature(headers2, body2)
    assert json.loads(body2)["patient"]["id"] == "PID-NOTIFY-9"
    assert other_scanner.posts == []  # filtered: the study came from STORESCU, not MR9
    for r in (plain, with_patient, other_scanner):
        r.close()


def test_receiver_down_at_first_gets_it_exactly_once_after_it_comes_up_across_a_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    node = RunningNode(tmp_path / "node", stable_seconds=1.0,
                       sections={"scheduler": {"enabled": False},
                                 "notify": {"retry_initial_seconds": 0.5, "retry_max_seconds": 1.0}},
                       extra=webhook_toml(url, ["study.non_compliant"])).start()
    try:
        _send_non_compliant(node, tmp_path)
        node.wait_for("two failed attempts", lambda: [d for d in _deliveries(node.db)
                                                      if d.attempts >= 2 and d.last_error], timeout=60)
    finally:
        node.stop()
    (job,) = _deliveries(node.db)
    assert job.state == "pending" and "ConnectError" in (job.last_error or "")
    assert job.next_attempt_at > job.created_at  # the backoff is in the table: it survives the restart
    receiver = HookReceiver(port)
    try:
        node.start()
        try:
            node.wait_for("the delivery", lambda: receiver.posts, timeout=30)
            time.sleep(3)  # several more polls: nothing is sent again
            (delivered,) = _deliveries(node.db)
            assert delivered.state == DELIVERED and delivered.delivered_at is not None
        finally:
            node.stop()
        node.start()  # and not after another restart either
        time.sleep(2)
        node.stop()
        assert len(receiver.posts) == 1
        headers, body = receiver.posts[0]
        assert valid_signature(headers, body) and headers["x-msfollowup-delivery"] == str(job.id)
        cli = subprocess.run([sys.executable, "-m", "msfollowup", "notifications", "--json", "--config",
                              str(node.config_path)], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        (row,) = json.loads(cli.stdout)
        assert row["state"] == "delivered" and row["event"] == "study.non_compliant"
    finally:
        receiver.close()


# --- rules, enqueueing, sending -------------------------------------------------------------------------


def _cfg(tmp: Path, *dests: dict[str, Any], db_url: str | None = None) -> Config:
    return Config.model_validate({"storage": {"data_dir": str(tmp), "database": db_url},
                                  "notify": {"destinations": list(dests),
                                  "retry_initial_seconds": 1, "retry_max_seconds": 8}})


def _hook(url: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "webhook", "url": url, "secret": SECRET, "events": ["study.non_compliant"], **kw}


RESULT = {"verdict": "non-compliant", "profile": {"id": "ms-brain-routine", "version": "1", "title": "Routine"},
          "requirements": [
              {"id": "sequence.t1_post", "label": "Post-contrast T1", "status": "fail", "series": [],
               "message": "Post-contrast T1 missing"},
              {"id": "resolution.t2", "label": "T2", "status": "fail", "series": ["1.2"], "message": "5 mm slices"},
              {"id": "exam_length", "status": "fail", "informational": True, "series": [], "message": "long"}]}
STUDY = {"study_instance_uid": "1.2.3", "accession_number": "A1", "study_date": "20260101", "scanner": "MR1",
         "station_name": "MRSTATION"}


def test_rules_filter_by_event_scanner_and_profile(tmp_path: Path) -> None:
    occ = events.study_checked(_cfg(tmp_path).notify, RESULT, STUDY, 1, {"id": "P1", "name": "X^Y"})
    assert occ is not None
    assert [m["id"] for m in occ.body["missing"]] == ["sequence.t1_post"]
    assert [m["id"] for m in occ.body["failing"]] == ["resolution.t2"]
    d = NotifyDestination.model_validate
    assert occ.wanted_by(d(_hook("http://h/x")))
    assert occ.wanted_by(d(_hook("http://h/x", scanners=["mrstation"])))  # station name, any case
    assert not occ.wanted_by(d(_hook("http://h/x", scanners=["MR2"])))
    assert occ.wanted_by(d(_hook("http://h/x", profiles=["ms-brain-routine"])))
    assert not occ.wanted_by(d(_hook("http://h/x", profiles=["ms-spine-new-deficit"])))
    assert not occ.wanted_by(d(_hook("http://h/x", events=["patient.overdue"])))
    now = dt.datetime.now(dt.timezone.utc)
    assert "patient" not in occ.payload(d(_hook("http://h/x")), now)
    assert occ.payload(d(_hook("http://h/x", include_patient_data=True)), now)["patient"]["id"] == "P1"
    assert events.study_checked(_cfg(tmp_path).notify, {**RESULT, "verdict": "compliant"}, STUDY, 1, {}) is None


def test_bad_destinations_are_refused_naming_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[notify.destinations]]\nkind = "webhook"\nurl = "http://x/h"\nevents = ["study.non_compliant"]\n')
    with pytest.raises(ConfigError, match="secret"):
        load_config(path)
    path.write_text('[[notify.destinations]]\nkind = "email"\nsmtp_host = "h"\nfrom = "a@b"\nto = ["c@d"]\n'
                    'username = "u"\npassword = "p"\nstarttls = false\nevents = ["study.non_compliant"]\n')
    with pytest.raises(ConfigError, match="STARTTLS"):
        load_config(path)
    path.write_text('[[notify.destinations]]\nkind = "webhook"\nurl = "http://x/h"\nsecret = "k"\n'
                    'events = ["study.exploded"]\n')
    with pytest.raises(ConfigError, match="events"):
        load_config(path)


def test_enqueue_is_idempotent_and_a_delivered_job_is_never_sent_again(tmp_path: Path, db_url: str) -> None:
    receiver = HookReceiver()
    cfg = _cfg(tmp_path, _hook(receiver.url), db_url=db_url)
    db = Database(cfg.storage.database_url)
    occ = events.study_checked(cfg.notify, RESULT, STUDY, 1, {})
    assert occ is not None
    with db.session() as s:
        assert emit.enqueue(s, cfg, occ) == 1
    with db.session() as s:
        assert emit.enqueue(s, cfg, occ) == 0  # a retried pass
    worker = NotifyWorker(db, cfg)
    other = NotifyWorker(db, cfg)  # a second node on the same database
    assert worker.run_once() + other.run_once() == 1
    assert worker.run_once() == 0 and other.run_once() == 0
    assert len(receiver.posts) == 1 and valid_signature(*receiver.posts[0])
    receiver.close()
    db.dispose()


def test_failed_sends_back_off_exponentially(tmp_path: Path, db_url: str) -> None:
    cfg = _cfg(tmp_path, _hook(f"http://127.0.0.1:{free_port()}/down"), db_url=db_url)
    assert [backoff_seconds(cfg, n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 8, 8]
    db = Database(cfg.storage.database_url)
    occ = events.study_checked(cfg.notify, RESULT, STUDY, 1, {})
    assert occ is not None
    with db.session() as s:
        emit.enqueue(s, cfg, occ)
    worker = NotifyWorker(db, cfg)
    assert worker.run_once() == 1
    assert worker.run_once() == 0  # not due yet
    (job,) = _deliveries(db)
    assert job.state == "pending" and job.attempts == 1 and "ConnectError" in (job.last_error or "")
    assert worker.run_once(now=job.next_attempt_at + dt.timedelta(milliseconds=1)) == 1
    (job,) = _deliveries(db)
    assert job.attempts == 2
    db.dispose()


def test_node_unhealthy_is_emitted_once_per_episode(tmp_path: Path) -> None:
    receiver = HookReceiver()
    cfg = _cfg(tmp_path, _hook(receiver.url, events=["node.unhealthy"]))
    db = Database(cfg.storage.database_url)
    dead: list[str] = []
    worker = NotifyWorker(db, cfg, health=lambda: list(dead))
    worker.watch()
    dead.append("pipeline")
    worker.watch()
    worker.watch()
    worker.run_once()
    assert len(receiver.posts) == 1
    payload = receiver.payloads()[0]
    assert payload["event"] == "node.unhealthy" and payload["stopped"] == ["pipeline"]
    receiver.close()
    db.dispose()


def test_overdue_patients_notify_once_per_window_without_the_patient_id_by_default(tmp_path: Path) -> None:
    from nodeutil import due_exam

    plain, with_patient = HookReceiver(), HookReceiver()
    cfg = _cfg(tmp_path, _hook(plain.url, events=["patient.overdue"]),
               _hook(with_patient.url, events=["patient.overdue"], include_patient_data=True, name="pd"))
    db = Database(cfg.storage.database_url)
    today = dt.date(2026, 12, 1)
    late = due_exam("PID-OVERDUE-3", target=dt.date(2026, 6, 1), latest=dt.date(2026, 8, 1))
    for _ in range(2):  # the hourly job finds the same patient again: one notification
        with db.session() as s:
            emit.on_overdue(s, cfg, [late], today)
    NotifyWorker(db, cfg).run_once()
    assert len(plain.posts) == 1 and len(with_patient.posts) == 1
    (payload,) = plain.payloads()
    assert payload["event"] == "patient.overdue" and payload["overdue"]["days_overdue"] == 122
    assert b"PID-OVERDUE-3" not in plain.posts[0][1]
    assert with_patient.payloads()[0]["patient"]["id"] == "PID-OVERDUE-3"
    for r in (plain, with_patient):
        r.close()
    db.dispose()
