"""Server-rendered pages (Jinja2, autoescaped). Every form posts with the session's CSRF token; every
change goes through a use case that audits it with the signed-in user."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from msfollowup import __version__

from msfollowup.db import audit
from msfollowup.app import accounts, compliance, operations, patients, reviews
from msfollowup.app.accounts import Principal
from msfollowup.app.plans import IntervalRules, PlanError, load_interval_rules
from msfollowup.web.context import HERE, WebContext, system_summary
from msfollowup.web.chart import line_chart
from msfollowup.web.security import (
    PRE_CSRF_COOKIE, SESSION_COOKIE, check_pre_csrf, client_host, is_loopback, require, resolve,
)

log = logging.getLogger("msfollowup.web")
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["version"] = __version__
templates.env.filters["combine"] = lambda a, b: {**a, **b}
templates.env.filters["qs"] = lambda d: urlencode({k: v for k, v in d.items() if v not in (None, "")})


def _ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def render(request: Request, name: str, who: Principal | None, status: int = 200, **data: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"who": who, "csrf": who.csrf_token if who else None, **data},
                                      status_code=status)


def error_response(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    who = resolve(request)
    return render(request, "error.html", who, status=status, status_code=status, detail=detail)


def _secure_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _rules(ctx: WebContext) -> IntervalRules:
    return load_interval_rules(ctx.cfg.validation.protocols_dir)


# --- login, logout, first admin -----------------------------------------------------------------


def _login_form(request: Request, error: str | None = None, status: int = 200, template: str = "login.html",
                **data: Any) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, template, None, status=status, form_csrf=token, error=error, **data)
    _secure_cookie(response, PRE_CSRF_COOKIE, token, 3600)
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    who = resolve(request)
    if who is not None:
        return _redirect("/live" if who.role == accounts.KIOSK else "/")
    return _login_form(request)


@router.get("/kiosk")
def kiosk_page(request: Request) -> Response:
    """The scanner-room screen's one-time set-up: paste the station's kiosk token, once."""
    return _login_form(request, template="kiosk.html")


@router.post("/kiosk")
def kiosk_login(request: Request, token: str = Form(""), csrf_token: str = Form("")) -> Response:
    """A kiosk token becomes a browser session bound to its station (EventSource cannot send a
    Bearer header, and a token in the URL would end up in logs)."""
    check_pre_csrf(request, csrf_token)
    throttle = request.app.state.throttle
    keys = (f"host:{client_host(request)}",)
    if throttle.blocked(*keys):
        return _login_form(request, "Too many failed attempts: wait 15 minutes and try again.", 429,
                           template="kiosk.html")
    with _ctx(request).db.session() as s:
        who = accounts.token_principal(s, token.strip()) if token.strip() else None
    if who is None or who.role != accounts.KIOSK:
        throttle.failed(*keys)
        log.info("kiosk set-up refused")
        return _login_form(request, "This is not a valid kiosk token (msfollowup token create NAME --role kiosk "
                                    "--station STATION).", 401, template="kiosk.html")
    throttle.succeeded(*keys)
    request.state.user = who.name
    return _start(request, who, "/live")


def _start(request: Request, who: Principal, target: str = "/") -> Response:
    with _ctx(request).db.session() as s:
        cookie, _csrf = accounts.start_session(s, who)
        audit.record(s, audit.LOGIN, actor_user=who.name, actor_host=client_host(request), detail={"via": "web"})
    response = _redirect(target)
    _secure_cookie(response, SESSION_COOKIE, cookie, accounts.session_hours(who) * 3600)
    response.delete_cookie(PRE_CSRF_COOKIE, path="/")
    return response


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""),
          csrf_token: str = Form("")) -> Response:
    check_pre_csrf(request, csrf_token)
    throttle = request.app.state.throttle
    keys = (f"user:{username.lower()}", f"host:{client_host(request)}")
    if throttle.blocked(*keys):
        return _login_form(request, "Too many failed attempts: wait 15 minutes and try again.", 429)
    with _ctx(request).db.session() as s:
        who = accounts.authenticate(s, username, password)
    if who is None:
        throttle.failed(*keys)
        log.info("web login failed")  # no user name: it may be a password typed into the wrong field
        return _login_form(request, "Wrong user name or password.", 401)
    throttle.succeeded(*keys)
    request.state.user = who.name
    return _start(request, who)


@router.post("/logout")
def logout(request: Request, who: Principal = Depends(require("read"))) -> Response:
    with _ctx(request).db.session() as s:
        accounts.end_session(s, request.cookies.get(SESSION_COOKIE, ""))
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _setup_allowed(request: Request, secret: str) -> None:
    ctx = _ctx(request)
    if ctx.setup is None or not ctx.setup.valid(secret) or not is_loopback(request):
        raise HTTPException(404, "this setup address is not valid (used, expired, or not from this machine)")
    with ctx.db.session() as s:
        if accounts.has_users(s):
            raise HTTPException(404, "this setup address is not valid (an admin exists)")


@router.get("/setup/{secret}")
def setup_page(request: Request, secret: str) -> Response:
    _setup_allowed(request, secret)
    return _login_form(request, template="setup.html", secret=secret)


@router.post("/setup/{secret}")
def setup(request: Request, secret: str, username: str = Form(""), password: str = Form(""),
          password2: str = Form(""), csrf_token: str = Form("")) -> Response:
    _setup_allowed(request, secret)
    check_pre_csrf(request, csrf_token)
    if password != password2:
        return _login_form(request, "The two passwords differ.", 400, template="setup.html", secret=secret)
    try:
        with _ctx(request).db.session() as s:
            user = accounts.add_user(s, username, "admin", password, author=f"setup:{username}")
            who = Principal(user.id, user.name, user.role)
    except accounts.AccountError as exc:
        return _login_form(request, str(exc), 400, template="setup.html", secret=secret)
    _ctx(request).setup = None  # one time
    return _start(request, who)


# --- dashboard and studies ----------------------------------------------------------------------


def _filters(request: Request) -> compliance.Filters:
    try:
        return compliance.Filters.parse(dict(request.query_params))
    except compliance.FilterError as exc:
        raise HTTPException(400, str(exc)) from None


@router.get("/")
def dashboard(request: Request, who: Principal = Depends(require("read"))) -> Response:
    f = _filters(request)
    by = request.query_params.get("by", "week")
    try:
        with _ctx(request).db.session() as s:
            data = _ctx(request).dashboards.dashboard(s, f, by)
    except compliance.FilterError as exc:
        raise HTTPException(400, str(exc)) from None
    base = f.query()

    def links_and_charts() -> dict[str, Any]:
        quote = _QuoteOnce()
        def link(dim: str) -> Callable[[str, str], str]:
            return lambda key, period: "/studies?" + quote.query({**base, dim: key, by: period})

        return {"charts": {dim: line_chart(data[f"per_{dim}"], by, link(dim)) for dim in ("scanner", "profile")},
                "scanner_table": _scanner_rows(data["per_scanner"], base, by, quote)}

    # Built once per kept dashboard: the week view links ~4,000 numbers (charts and table) to their studies.
    view = _ctx(request).dashboards.derived(data, "page", links_and_charts)
    return render(request, "dashboard.html", who, data=data, f=base, by=by, **view)


def _scanner_rows(rows: list[dict[str, Any]], base: dict[str, str], by: str, quote: _QuoteOnce) -> Markup:
    """The per-scanner table's rows (~1,300 by week), each number linking to its studies. Built here
    rather than in a Jinja loop (5x faster: the first view after a change renders them all again);
    every text is escaped as the template's autoescape would."""
    esc: dict[str, str] = {}

    def e(value: object) -> str:  # escape each distinct scanner, period and query string once
        text = str(value)
        found = esc.get(text)
        if found is None:
            found = esc[text] = str(escape(text))
        return found

    out = []
    for r in rows:
        key, period = r["key"], r["period"]
        studies_qs = e(quote.query({**base, "scanner": key, by: period}, skip_empty=True))
        compliant_qs = e(quote.query({**base, "scanner": key, by: period, "verdict": "compliant"}, skip_empty=True))
        out.append(f'\n<tr><td>{e(key)}</td><td>{e(period)}</td>\n'
                   f'<td class="num"><a href="/studies?{studies_qs}">{r["studies"]}</a></td>\n'
                   f'<td class="num"><a href="/studies?{compliant_qs}">{r["compliant"]}</a></td>\n'
                   f'<td class="num">{(r["rate"] or 0) * 100:.0f}%</td></tr>\n')
    return Markup("".join(out))


class _QuoteOnce:
    """urlencode (and the `qs` filter, skip_empty) with each distinct key and value quoted once per page:
    the week dashboard's links are made of a dozen scanners and a hundred weeks, and quote_plus is most of
    the page's rendering time otherwise. Lives for one page (no process-wide memory of filter values)."""

    def __init__(self) -> None:
        self._done: dict[str, str] = {}

    def _q(self, value: object) -> str:
        text = str(value)
        found = self._done.get(text)
        if found is None:
            found = self._done[text] = quote_plus(text)
        return found

    def query(self, params: dict[str, Any], skip_empty: bool = False) -> str:
        return "&".join(f"{self._q(k)}={self._q(v)}" for k, v in params.items()
                        if not (skip_empty and v in (None, "")))


@router.get("/studies")
def studies(request: Request, page: int = 1, who: Principal = Depends(require("read"))) -> Response:
    f = _filters(request)
    with _ctx(request).db.session() as s:
        data = compliance.list_studies(s, f, page, 50)
        choices = compliance.filter_choices(s)
    return render(request, "studies.html", who, data=data, f=f.query(), choices=choices,
                  verdicts=("awaiting", *compliance.VERDICTS))


@router.get("/studies/{check_id}")
def study(request: Request, check_id: int, who: Principal = Depends(require("read"))) -> Response:
    with _ctx(request).db.session() as s:
        data = compliance.study_detail(s, check_id)
    if data is None:
        raise HTTPException(404, f"no checked study {check_id}")
    series = sorted(data["result"].get("series", []), key=lambda x: (x.get("series_number") is None, x.get("series_number") or 0))
    for x in series:
        ev = x.get("evidence")
        x["evidence_text"] = "; ".join(map(str, ev)) if isinstance(ev, list) else ("" if ev is None else str(ev))
    data["series_sorted"] = series
    return render(request, "study.html", who, d=data, error=request.query_params.get("error"))


def _review(request: Request, check_id: int, reason: str, who: Principal, accept: bool) -> Response:
    try:
        with _ctx(request).db.session() as s:
            (reviews.accept_as_compliant if accept else reviews.use_as_reference)(
                s, check_id, reason, who.name, client_host(request))
    except reviews.ReviewError as exc:
        return _redirect(f"/studies/{check_id}?" + urlencode({"error": str(exc)}))
    return _redirect(f"/studies/{check_id}")


@router.post("/studies/{check_id}/accept")
def accept(request: Request, check_id: int, reason: str = Form(""),
           who: Principal = Depends(require("study.review"))) -> Response:
    return _review(request, check_id, reason, who, True)


@router.post("/studies/{check_id}/reference")
def reference(request: Request, check_id: int, reason: str = Form(""),
              who: Principal = Depends(require("study.review"))) -> Response:
    return _review(request, check_id, reason, who, False)


# --- patients -----------------------------------------------------------------------------------


@router.get("/patients")
def patient_lists(request: Request, page: int = 1, who: Principal = Depends(require("read"))) -> Response:
    try:
        f = patients.DueFilters.parse(dict(request.query_params))
    except patients.PatientError as exc:
        raise HTTPException(400, str(exc)) from None
    with _ctx(request).db.session() as s:
        data = patients.due_list(s, f, _ctx(request).today(), page, 100)
    return render(request, "patients.html", who, data=data,
                  f={"profile": f.profile, "status": f.status, "sort": f.sort, "purpose": f.purpose},
                  statuses=patients.STATUSES, sorts=list(patients.SORTS))


def _patient(request: Request, ref: int, who: Principal, error: str | None = None, status: int = 200) -> Response:
    ctx = _ctx(request)
    rules = _rules(ctx)
    try:
        with ctx.db.session() as s:
            data = patients.patient_page(s, ref, ctx.today(), rules)
    except patients.PatientError as exc:
        raise HTTPException(404, str(exc)) from None
    return render(request, "patient.html", who, status=status, d=data, error=error, flags=rules.flags,
                  drugs=patients.drug_names(ctx.cfg.validation.protocols_dir), jcv_values=("unknown", "negative", "positive"),
                  saved=request.query_params.get("saved"))


@router.get("/patients/{ref}")
def patient(request: Request, ref: int, who: Principal = Depends(require("read"))) -> Response:
    return _patient(request, ref, who)




@router.post("/patients/{ref}/plan")
async def plan(request: Request, ref: int, who: Principal = Depends(require("plan.edit"))) -> Response:
    """The plan form: only fields that were changed are sent on (the CLI's flags, as a dict)."""
    form = await request.form()
    ctx = _ctx(request)
    rules = _rules(ctx)
    changes: dict[str, Any] = {}
    for key in patients.PLAN_FORM_FIELDS:
        value = str(form.get(key) or "").strip()
        if value != str(form.get(f"{key}__was") or "").strip():
            changes[key] = value
    set_flags, clear_flags = [], []
    for flag in rules.flags:
        on, was = form.get(f"flag_{flag}") == "on", form.get(f"flag_{flag}__was") == "on"
        if on and not was:
            day = str(form.get(f"flag_{flag}_date") or "").strip()
            set_flags.append(f"{flag}={day}" if day else flag)
        elif was and not on:
            clear_flags.append(flag)
    if set_flags:
        changes["set_flags"] = set_flags
    if clear_flags:
        changes["clear_flags"] = clear_flags
    if form.get("clear_override") == "on":
        changes["clear_override"] = True
    try:
        from msfollowup.app import patients as uc

        with ctx.db.session() as s:
            uc.update_plan(s, ref, changes, who.name, ctx.cfg, ctx.today(), rules)
    except patients.PatientError as exc:
        raise HTTPException(404, str(exc)) from None
    except PlanError as exc:
        return _patient(request, ref, who, error=str(exc), status=422)
    return _redirect(f"/patients/{ref}?saved=1")


# --- worklist, deliveries, audit, system --------------------------------------------------------


@router.get("/worklist")
def worklist_page(request: Request, page: int = 1, who: Principal = Depends(require("read"))) -> Response:
    with _ctx(request).db.session() as s:
        data = operations.worklist_items(s, page, 200)
    return render(request, "worklist.html", who, data=data, error=request.query_params.get("error"))


@router.post("/worklist/{item_id}/cancel")
def cancel(request: Request, item_id: int, reason: str = Form(""),
           who: Principal = Depends(require("worklist.cancel"))) -> Response:
    try:
        with _ctx(request).db.session() as s:
            operations.cancel_item(s, item_id, reason, who.name, client_host(request))
    except operations.OperationError as exc:
        return _redirect("/worklist?" + urlencode({"error": str(exc)}))
    return _redirect("/worklist")


@router.get("/deliveries")
def deliveries_page(request: Request, who: Principal = Depends(require("read"))) -> Response:
    state = request.query_params.get("state") or None
    with _ctx(request).db.session() as s:
        items = operations.deliveries(s, state)
    return render(request, "deliveries.html", who, items=items, state=state)


@router.get("/audit")
def audit_page(request: Request, who: Principal = Depends(require("audit.read"))) -> Response:
    action = request.query_params.get("action") or None
    user = request.query_params.get("user") or None
    with _ctx(request).db.session() as s:
        items = operations.audit_events(s, action, user, limit=300)
    return render(request, "audit.html", who, items=items, action=action, user=user, actions=sorted(audit.ACTIONS))


@router.get("/system")
def system_page(request: Request, who: Principal = Depends(require("read"))) -> Response:
    return render(request, "system.html", who, d=system_summary(_ctx(request)))
