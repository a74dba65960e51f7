"""Issue 15: a kiosk token bound to one station. The scanner-room screen of MR2 shows MR2's exam and
nothing else: not MR1's panel, not the patient lists or reports, on the page, on the event stream and
through the browser session it gets from the token; revoking the token ends that session at once.

Against the real `msfollowup serve` (DICOM + web on loopback), studies sent with DCMTK storescu from two
calling AE titles."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicom_fixtures import generate_study
from nodeutil import DCMTK, DEFAULT_ALLOW
from webutil import PASSWORD, Client, WebNode

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("kiosk")
    n = WebNode(tmp / "node", allow=[(a, None) for a in (*DEFAULT_ALLOW, "MR1", "MR2")],
                sections={"live": {"settle_seconds": 0.5, "poll_seconds": 0.2}})
    n.start()
    for aet, name in (("MR1", "ONE"), ("MR2", "TWO")):
        study = generate_study(tmp / aet, slices=2, rows=32, columns=32, accession=f"ACC-{aet}",
                               patient_id=f"PID-{name}", patient_name=f"KIOSK^{name}", seed=len(name) + ord(aet[-1]))
        sent = n.storescu(study.files, aet=aet)
        assert sent.returncode == 0, sent.stderr
    yield n
    if n.proc is not None and n.proc.poll() is None:
        assert n.stop() == 0


def _wait_page(client: Client, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = client.get("/live")
        assert page.status == 200, (page.status, page.text[:200])
        if needle in page.text:
            return page.text
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} never on the live page")


def test_a_kiosk_token_needs_a_station_and_a_kiosk_has_no_password(node: WebNode) -> None:
    missing = node.cli("token", "create", "screen-x", "--role", "kiosk")
    assert missing.returncode == 2 and "--station" in missing.stderr
    wrong = node.cli("token", "create", "viewer-x", "--role", "viewer", "--station", "MR1")
    assert wrong.returncode == 2 and "kiosk" in wrong.stderr
    password = node.cli("user", "add", "screen-y", "--role", "kiosk", "--password-stdin", stdin=PASSWORD + "\n")
    assert password.returncode == 2 and "token" in password.stderr


def test_the_kiosk_of_mr2_sees_only_mr2_on_page_and_stream_and_nothing_else(node: WebNode) -> None:
    admin = node.client(node.token("admin-k", "admin"))
    both = _wait_page(admin, 'data-scanner="MR2"')
    _wait_page(admin, 'data-scanner="MR1"')
    assert "ACC-MR1" in both or "ACC-MR1" in admin.get("/live").text

    kiosk = node.client(node.token("screen-mr2", "kiosk", station="MR2"))
    page = kiosk.get("/live")
    assert page.status == 200 and 'data-scanner="MR2"' in page.text and "ACC-MR2" in page.text
    assert 'data-scanner="MR1"' not in page.text and "ACC-MR1" not in page.text
    assert "KIOSK" not in page.text and "PID-TWO" not in page.text  # initials only, no ID
    for path in ("/api/v1/studies", "/api/v1/patients/due", "/api/v1/worklist", "/api/v1/me", "/studies"):
        assert kiosk.get(path).status == 403, path

    # The event stream: the snapshot of a kiosk holds MR2's study only; the admin's holds both.
    def first_events(token: str, wanted: int) -> list[str]:
        scanners: list[str] = []

        def run() -> None:
            with httpx.Client(timeout=httpx.Timeout(5, read=3)) as c:
                try:
                    with c.stream("GET", f"http://127.0.0.1:{node.http_port}/api/v1/live/stream",
                                  headers={"Authorization": f"Bearer {token}"}) as rsp:
                        assert rsp.status_code == 200
                        for line in rsp.iter_lines():
                            m = re.search(r'"scanner":"([^"]*)"', line)
                            if line.startswith("data: ") and m:
                                scanners.append(m.group(1))
                            if line.startswith(": keep-alive") or len(scanners) >= wanted:
                                return
                except httpx.ReadTimeout:
                    return  # nothing more within 3 s: the snapshot is all there is

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(20)
        return scanners

    assert sorted(first_events(str(admin.token), 2)) == ["MR1", "MR2"]
    assert first_events(str(kiosk.token), 2) == ["MR2"]


def test_the_console_enters_the_token_once_and_revoking_it_ends_the_screen(node: WebNode) -> None:
    secret = node.token("screen-mr1", "kiosk", station="MR1")
    console = Client(node.http_port)
    form = console.get("/kiosk")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.status == 200 and csrf
    bad = console.post("/kiosk", form={"token": "msf_not-a-token", "csrf_token": csrf.group(1)})
    assert bad.status == 401 and "not a valid kiosk token" in bad.text
    admin_token = node.token("admin-k2", "admin")  # a powerful token does not become a kiosk session
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', bad.text)
    assert csrf
    assert console.post("/kiosk", form={"token": admin_token, "csrf_token": csrf.group(1)}).status == 401
    assert "msf_session" not in console.cookies
    no_csrf = Client(node.http_port).post("/kiosk", form={"token": secret})
    assert no_csrf.status == 403

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', console.get("/kiosk").text)
    assert csrf
    started = console.post("/kiosk", form={"token": secret, "csrf_token": csrf.group(1)})
    assert started.status == 303 and started.headers["location"] == "/live"
    cookie = next(c for c in started.set_cookies if c.startswith("msf_session="))
    assert "max-age=2592000" in cookie.lower() and "httponly" in cookie.lower()  # a month; revocable
    page = _wait_page(console, 'data-scanner="MR1"')
    assert "ACC-MR1" in page and 'data-scanner="MR2"' not in page
    assert console.get("/patients").status == 403

    revoked = node.cli("token", "revoke", "screen-mr1")
    assert revoked.returncode == 0, revoked.stderr
    after = console.get("/live")
    assert after.status in (303, 401) and "ACC-MR1" not in after.text


def test_a_kiosk_principal_without_a_station_sees_no_panel() -> None:
    from msfollowup.app.accounts import Principal

    assert not Principal(1, "screen", "kiosk").sees_station("MR1", "MRSCANNER")
    assert Principal(1, "screen", "kiosk", station="mr1 ").sees_station("MR1", None)
    assert not Principal(1, "screen", "kiosk", station="MR1").sees_station("MR2", "MR2 ROOM")
    assert Principal(2, "alice", "radiographer").sees_station("MR2", None)
