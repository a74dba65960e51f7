"""The web application and REST API over HTTP against the real `msfollowup serve` (one node for the
module): first-admin setup, roles on every route, CSRF, JSON and CSV of every list, login throttling,
security headers, no patient data in the access log or URLs."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msfollowup.app.accounts import PERMISSIONS
from nodeutil import DCMTK
from webutil import PASSWORD, ROLES, Client, WebNode

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")

PATIENT_ID = "PIDWEB4711"
PATIENT_NAME = "WEBSECRET^ANNA"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("web")
    n = WebNode(tmp / "node")
    n.start()
    n.tmp_studies = tmp / "studies"  # type: ignore[attr-defined]
    yield n
    if n.proc is not None and n.proc.poll() is None:
        assert n.stop() == 0


@pytest.fixture(scope="module")
def world(node: WebNode) -> dict[str, Any]:
    """One checked study with its worklist item, a user and a token per role."""
    uid = node.send_study(node.tmp_studies, "s1", patient_id=PATIENT_ID, patient_name=PATIENT_NAME)  # type: ignore[attr-defined]
    node.wait_scheduled(PATIENT_ID)
    tokens = {}
    for role in ROLES:
        if role not in ("admin", "kiosk"):  # a kiosk has tokens only
            node.add_user(f"{role}1", role)
        tokens[role] = node.token(f"{role}-bot", role, station="MR1" if role == "kiosk" else None)
    admin = node.client(tokens["admin"])
    study = admin.get("/api/v1/studies").json()["items"][0]
    item = admin.get("/api/v1/worklist").json()["items"][0]
    return {"uid": uid, "tokens": tokens, "check_id": study["id"], "patient": study["patient"], "item": item["id"]}


def test_first_admin_through_the_one_time_setup_address(node: WebNode) -> None:
    """No account exists: the log shows a loopback setup address once; it works once."""
    anonymous = node.client()
    assert anonymous.get("/").status == 303 and anonymous.get("/").headers["location"] == "/login"
    assert anonymous.get("/api/v1/studies").status == 401
    found = re.search(r"http://127\.0\.0\.1:\d+(/setup/[A-Za-z0-9_-]+)", node.log())
    assert found, node.log()
    path = found.group(1)
    assert anonymous.get("/setup/not-the-secret").status == 404
    page = anonymous.get(path)
    assert page.status == 200 and "first administrator" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    short = anonymous.post(path, form={"username": "admin1", "password": "short", "password2": "short", "csrf_token": csrf})
    assert short.status == 400 and "at least 12 characters" in short.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', short.text).group(1)  # type: ignore[union-attr]
    made = anonymous.post(path, form={"username": "admin1", "password": PASSWORD, "password2": PASSWORD, "csrf_token": csrf})
    assert made.status == 303 and "msf_session" in anonymous.cookies
    cookie = next(c for c in made.set_cookies if c.startswith("msf_session="))
    assert all(flag in cookie.lower() for flag in ("secure", "httponly", "samesite=strict"))
    assert anonymous.get("/").status == 200
    assert node.client().get(path).status == 404  # one time


def _routes(world: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    """(method, path, permission, body) of every API route; write bodies are invalid on purpose so an
    allowed request answers 422 without changing anything."""
    c, p, w = world["check_id"], world["patient"], world["item"]
    return [
        ("GET", "/api/v1/studies", "read", None), ("GET", "/api/v1/studies?format=csv", "read", None),
        ("GET", f"/api/v1/studies/{c}", "read", None), ("GET", "/api/v1/compliance", "read", None),
        ("GET", "/api/v1/compliance?format=csv", "read", None), ("GET", "/api/v1/patients/due", "read", None),
        ("GET", "/api/v1/patients/due?format=csv", "read", None), ("GET", f"/api/v1/patients/{p}", "read", None),
        ("GET", "/api/v1/worklist", "read", None), ("GET", "/api/v1/worklist?format=csv", "read", None),
        ("GET", "/api/v1/deliveries", "read", None), ("GET", "/api/v1/system", "read", None),
        ("GET", "/api/v1/me", "read", None), ("GET", "/api/v1/audit", "audit.read", None),
        ("POST", f"/api/v1/studies/{c}/accept", "study.review", {"reason": "x"}),
        ("POST", f"/api/v1/studies/{c}/reference", "study.review", {"reason": "x"}),
        ("POST", f"/api/v1/patients/{p}/plan", "plan.edit", {"jcv": "not-a-jcv-value"}),
        ("POST", f"/api/v1/worklist/{w}/cancel", "worklist.cancel", {"reason": "x"}),
        ("GET", "/api/v1/live/stream", "live.view", None),  # an endless event stream: status only
    ]


def _open_item(node: WebNode, world: dict[str, Any]) -> int:
    """The patient's open worklist item now (a plan change replaces it)."""
    items = node.client(world["tokens"]["admin"]).get("/api/v1/worklist").json()["items"]
    return int(items[0]["id"])


def test_roles_are_enforced_on_every_api_route(node: WebNode, world: dict[str, Any]) -> None:
    seen = {(m, re.sub(r"/\d+", "/{}", p.split("?")[0])) for m, p, _, _ in _routes(world)}
    spec = node.client().get("/api/v1/openapi.json").json()
    declared = {(m.upper(), re.sub(r"\{[a-z_]+\}", "{}", p)) for p, ops in spec["paths"].items() for m in ops}
    assert declared == seen, "a route without a role test"
    def status(client: Client, method: str, path: str, body: Any) -> int:
        return client.status(path) if path.endswith("/stream") else client.request(method, path, body=body).status

    for method, path, permission, body in _routes(world):
        assert status(node.client(), method, path, body) == 401, path
        assert status(node.client("msf_wrong"), method, path, body) == 401, path
        for role in ROLES:
            status_ = status(node.client(world["tokens"][role]), method, path, body)
            allowed = role == "admin" or role in PERMISSIONS[permission]
            expected = (200,) if method == "GET" else (422,)
            assert (status_ in expected) if allowed else status_ == 403, (role, method, path, status_)


def test_a_viewer_cannot_edit_a_plan_and_a_clinician_can(node: WebNode, world: dict[str, Any]) -> None:
    p = world["patient"]
    viewer = node.client()
    assert viewer.login("viewer1").status == 303
    page = viewer.get(f"/patients/{p}")
    assert page.status == 200 and PATIENT_ID in page.text and 'id="plan-form"' not in page.text
    refused = viewer.post(f"/patients/{p}/plan", form={"csrf_token": viewer.csrf(f"/patients/{p}"), "jcv": "positive",
                                                       "jcv__was": "unknown"})
    assert refused.status == 403 and "may not" in refused.text
    assert node.client(world["tokens"]["viewer"]).post(f"/api/v1/patients/{p}/plan", body={"jcv": "positive"}).status == 403
    assert node.client(world["tokens"]["admin"]).get(f"/api/v1/patients/{p}").json()["plan"] is None

    clinician = node.client()
    assert clinician.login("clinician1").status == 303
    csrf = clinician.csrf(f"/patients/{p}")
    bad = clinician.post(f"/patients/{p}/plan", form={"csrf_token": csrf, "dmt_start": "2024-13-45", "dmt_start__was": ""})
    assert bad.status == 422 and "not a date" in bad.text  # the CLI's validation, named
    ok = clinician.post(f"/patients/{p}/plan", form={"csrf_token": csrf, "dmt": "natalizumab", "dmt__was": "",
                                                     "dmt_start": "2025-01-10", "dmt_start__was": "", "jcv": "positive",
                                                     "jcv__was": "unknown"})
    assert ok.status == 303, ok.text
    data = node.client(world["tokens"]["admin"]).get(f"/api/v1/patients/{p}").json()
    assert data["plan"]["dmt"] == "natalizumab" and data["plan"]["jcv"] == "positive"
    assert data["history"][-1]["author"] == "clinician1"
    audit = node.client(world["tokens"]["admin"]).get("/api/v1/audit?action=plan.change").json()["items"]
    assert audit[0]["actor_user"] == "clinician1"


def test_the_plan_form_sets_name_birth_date_and_sex_and_the_worklist_serves_them(node: WebNode,
                                                                                 world: dict[str, Any]) -> None:
    """Issue 11: the web plan form offers the CLI's --name/--birth-date/--sex; the plan's name wins
    over the study's on the patient's open worklist item (same item, rebuilt)."""
    from sqlalchemy import select

    from msfollowup.app.worklist import ScheduledStep

    p = world["patient"]
    clinician = node.client()
    assert clinician.login("clinician1").status == 303
    page = clinician.get(f"/patients/{p}")
    assert 'id="f-patient_name"' in page.text and 'id="f-birth_date"' in page.text and 'id="f-sex"' in page.text
    csrf = clinician.csrf(f"/patients/{p}")
    bad = clinician.post(f"/patients/{p}/plan", form={"csrf_token": csrf, "sex": "Q", "sex__was": ""})
    assert bad.status == 422 and "sex: must be one of M, F, O" in bad.text
    ok = clinician.post(f"/patients/{p}/plan", form={
        "csrf_token": csrf, "patient_name": "PLAN^NAME", "patient_name__was": "", "birth_date": "1970-07-07",
        "birth_date__was": "", "sex": "O", "sex__was": ""})
    assert ok.status == 303, ok.text
    data = node.client(world["tokens"]["admin"]).get(f"/api/v1/patients/{p}").json()
    assert (data["plan"]["patient_name"], data["plan"]["birth_date"], data["plan"]["sex"]) == (
        "PLAN^NAME", "1970-07-07", "O")
    assert set(data["history"][-1]["changes"]) == {"patient_name", "birth_date", "sex"}
    with node.db.session() as s:
        step = s.scalars(select(ScheduledStep).where(ScheduledStep.patient_id == PATIENT_ID,
                                                     ScheduledStep.open_key.is_not(None))).one()
        ds = step.dataset()
    assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == ("PLAN^NAME", "19700707", "O")
    assert 'value="PLAN^NAME"' in clinician.get(f"/patients/{p}").text


def test_a_form_or_api_call_with_the_session_but_without_csrf_token_is_refused(node: WebNode, world: dict[str, Any]) -> None:
    rad = node.client()
    assert rad.login("radiographer1").status == 303
    w = _open_item(node, world)
    assert rad.post(f"/worklist/{w}/cancel", form={"reason": "patient moved"}).status == 403
    assert rad.post(f"/worklist/{w}/cancel", form={"reason": "patient moved", "csrf_token": "forged"}).status == 403
    assert rad.post(f"/api/v1/worklist/{w}/cancel", body={"reason": "patient moved"}).status == 403
    assert rad.post("/logout").status == 403  # logging out is a change too
    still_open = [i["id"] for i in node.client(world["tokens"]["admin"]).get("/api/v1/worklist").json()["items"]]
    assert w in still_open
    login = node.client()
    assert login.post("/login", form={"username": "radiographer1", "password": PASSWORD}).status == 403


def test_every_list_as_json_and_csv(node: WebNode, world: dict[str, Any]) -> None:
    api = node.client(world["tokens"]["viewer"])
    for path, key in (("/api/v1/studies", "study_instance_uid"), ("/api/v1/patients/due", "patient_id"),
                      ("/api/v1/worklist", "accession_number"), ("/api/v1/compliance", None)):
        as_json = api.get(path)
        assert as_json.status == 200 and as_json.headers["content-type"] == "application/json"
        as_csv = api.get(path + "?format=csv")
        assert as_csv.status == 200 and as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        if key is None:  # compliance: one row per scanner/profile and period
            data = as_json.json()
            assert len(rows) == len(data["per_scanner"]) + len(data["per_profile"]) >= 2
            assert {r["dimension"] for r in rows} == {"scanner", "profile"}
            continue
        items = as_json.json()["items"]
        assert items and [r[key] for r in rows] == [str(i[key]) for i in items], path
    studies = api.get("/api/v1/studies").json()["items"]
    assert studies[0]["study_instance_uid"] == world["uid"] and studies[0]["patient_id"] == PATIENT_ID
    assert api.get("/api/v1/studies?verdict=maybe").status == 400
    assert api.get("/api/v1/studies?start=yesterday").json()["detail"].startswith("start:")


def test_review_and_cancel_are_audited_with_the_user(node: WebNode, world: dict[str, Any]) -> None:
    qa = node.client(world["tokens"]["qa"])
    c = world["check_id"]
    verdict = qa.get(f"/api/v1/studies/{c}").json()["study"]["verdict"]
    page = node.client()
    assert page.login("qa1").status == 303

    def shown() -> tuple[int, int, int, int, int]:  # the API's and the page's figures (kept until a change)
        d = qa.get("/api/v1/compliance?by=month").json()
        html = page.get("/").text
        awaiting = re.search(r"<b>(\d+)</b> awaiting review", html)
        assert awaiting is not None
        on_page = sum(int(n) for n in re.findall(r'class="total v-[a-z-]+" href="[^"]*"><b>(\d+)</b>', html))
        return (d["awaiting_review"], d["totals"].get("compliant", 0), int(awaiting.group(1)), sum(d["totals"].values()),
                on_page)

    before = shown()
    assert shown() == before
    answer = qa.post(f"/api/v1/studies/{c}/accept", body={"reason": "checked the contrast timing by hand"})
    if verdict == "unverifiable":
        assert answer.status == 200
        assert shown() == (before[0] - 1, before[1] + 1, before[2] - 1, *before[3:])  # at once, not a kept copy
    else:
        assert answer.status == 409 and "only an unverifiable" in answer.json()["detail"]
        assert shown() == before
    before = shown()
    node.send_study(node.tmp_studies, "s2", patient_id="PIDWEB4712", patient_name="WEBSECRET^BERT")  # type: ignore[attr-defined]
    after = shown()
    assert after[3] == before[3] + 1 and after[4] == before[4] + 1 and before[3] == before[4]
    rad = node.client()
    assert rad.login("radiographer1").status == 303
    w = _open_item(node, world)
    assert rad.post(f"/worklist/{w}/cancel", form={"reason": "patient moved away", "csrf_token": rad.csrf("/worklist")}).status == 303
    admin = node.client(world["tokens"]["admin"])
    assert w not in [i["id"] for i in admin.get("/api/v1/worklist").json()["items"]]
    events = admin.get("/api/v1/audit?action=worklist.close").json()["items"]
    assert events[0]["actor_user"] == "radiographer1" and events[0]["detail"]["reason"] == "cancelled"
    assert events[0]["detail"]["note"] == "patient moved away"


def test_pages_render_with_security_headers_and_no_patient_data_in_the_access_log(node: WebNode, world: dict[str, Any]) -> None:
    admin = node.client()
    assert admin.login("admin1").status == 303
    p, c = world["patient"], world["check_id"]
    for path in ("/", "/?by=month", "/studies", f"/studies/{c}", "/patients", f"/patients/{p}", "/worklist",
                 "/deliveries", "/audit", "/system", f"/studies?scanner=x&verdict=awaiting"):
        page = admin.get(path)
        assert page.status == 200, (path, page.text[:500])
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "script-src 'self'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text and " style=" not in page.text and "http://" not in page.text.replace(
            "http://www.w3.org/2000/svg", "")
    assert "<svg" in admin.get("/").text
    admin.get(f"/studies?scanner={PATIENT_ID}")  # even a patient ID typed into a filter is not logged
    log = node.log()
    assert "GET /patients/{ref} 200" in log and "user=admin1" in log
    for secret in (PATIENT_ID, "WEBSECRET", PASSWORD):
        assert secret not in log
    echoed = admin.get("/studies?requirement=%3Cb%3Ex%3C/b%3E").text  # autoescaped where it is shown again
    assert "&lt;b&gt;x&lt;/b&gt;" in echoed and "<b>x</b>" not in echoed


def test_a_revoked_token_no_longer_opens_the_api(node: WebNode, world: dict[str, Any]) -> None:
    token = node.token("short-lived", "viewer")
    assert node.client(token).get("/api/v1/me").json() == {"name": "short-lived", "role": "viewer", "version": "0.1.0"}
    done = node.cli("token", "revoke", "short-lived")
    assert done.returncode == 0 and "1 token(s)" in done.stdout
    assert node.client(token).get("/api/v1/me").status == 401
    assert node.client(world["tokens"]["viewer"]).get("/api/v1/me").status == 200  # others' tokens unaffected
    bad = node.cli("token", "create", "short-lived", "--role", "admin")
    assert bad.returncode == 2 and "has role 'viewer'" in bad.stderr


def test_logins_are_throttled_after_repeated_failures(node: WebNode, world: dict[str, Any]) -> None:
    """Runs last in the module: five wrong passwords lock the name for 15 minutes, the right one included."""
    c = Client(node.http_port)
    for _ in range(5):
        assert c.login("qa1", "wrong password!").status == 401
    assert c.login("qa1", PASSWORD).status == 429
    assert Client(node.http_port).login("admin1").status == 303  # another name still logs in


def test_the_example_config_serves_the_web_on_loopback_port_8080() -> None:
    """The README's first command uses this file: it must bring the web application up on loopback."""
    from msfollowup.site.config import load_config

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "config" / "msfollowup.example.toml"))
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8080)
