"""The running service's web side for tests: a node with [http] on loopback, users and tokens made
with the real CLI, and a small HTTP client that keeps cookies (Secure ones too: the tests talk plain
HTTP to loopback, which a browser also treats as a secure context) and never follows redirects."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dicom_fixtures import generate_study
from nodeutil import RunningNode, free_port

PASSWORD = "correct horse battery"
ROLES = ("viewer", "radiographer", "clinician", "qa", "admin", "kiosk")


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, cookies: list[str]) -> None:
        self.status, self.headers, self.body, self.set_cookies = status, headers, body, cookies

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token
        self.cookies: dict[str, str] = {}

    def status(self, path: str) -> int:
        """The status of a GET without reading the body (an event stream never ends)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        hdrs = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request("GET", path, headers=hdrs)
            return conn.getresponse().status
        finally:
            conn.close()

    def request(self, method: str, path: str, form: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        hdrs = dict(headers or {})
        data: bytes | None = None
        if form is not None:
            data = urlencode(form, doseq=True).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=data, headers=hdrs)
            rsp = conn.getresponse()
            raw = rsp.read()
            set_cookies = rsp.headers.get_all("set-cookie") or []
            for c in set_cookies:
                name, _, rest = c.partition("=")
                value = rest.split(";", 1)[0].strip('"')
                if "max-age=0" in c.lower() or 'expires=thu, 01 jan 1970' in c.lower() or value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
            return Response(rsp.status, {k.lower(): v for k, v in rsp.getheaders()}, raw, set_cookies)
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def login(self, name: str, password: str = PASSWORD) -> Response:
        page = self.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf, page.text
        return self.post("/login", form={"username": name, "password": password, "csrf_token": csrf.group(1)})

    def csrf(self, path: str = "/") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(path).text)
        assert found
        return found.group(1)


class WebNode(RunningNode):
    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.http_port = free_port()
        sections = kw.pop("sections", {})
        sections.setdefault("http", {})["port"] = self.http_port
        super().__init__(tmp, sections=sections, **kw)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "msfollowup", *args, "--config", str(self.config_path)],
                              input=stdin, capture_output=True, text=True, timeout=60)

    def add_user(self, name: str, role: str, password: str = PASSWORD) -> None:
        done = self.cli("user", "add", name, "--role", role, "--password-stdin", stdin=password + "\n")
        assert done.returncode == 0, done.stderr

    def token(self, name: str, role: str, station: str | None = None) -> str:
        done = self.cli("token", "create", name, "--role", role, *(["--station", station] if station else []))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def client(self, token: str | None = None) -> Client:
        return Client(self.http_port, token)

    def send_study(self, tmp: Path, name: str, **kw: Any) -> str:
        """storescu one generated study and wait until its check is in the compliance rows."""
        from sqlalchemy import select

        from msfollowup.app.results import StudyResult

        study = generate_study(tmp / name, slices=3, rows=32, columns=32, **kw)
        sent = self.storescu(study.files)
        assert sent.returncode == 0, sent.stderr

        def checked() -> bool:
            with self.db.session() as s:
                return s.scalar(select(StudyResult.check_id).where(StudyResult.study_uid == study.study_uid)) is not None

        self.wait_for(f"study {name} not checked", checked)
        return study.study_uid

    def wait_scheduled(self, patient_id: str) -> None:
        from sqlalchemy import select

        from msfollowup.app.worklist import ScheduledStep

        def scheduled() -> bool:
            with self.db.session() as s:
                return s.scalar(select(ScheduledStep.id).where(ScheduledStep.patient_id == patient_id,
                                                               ScheduledStep.open_key.is_not(None))) is not None

        self.wait_for("no worklist item", scheduled)


def wait_http(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Client(port).get("/healthz").status in (200, 503):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("web listener did not answer")
