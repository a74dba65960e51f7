"""REST API under /api/v1 (OpenAPI at /api/v1/openapi.json). Lists answer JSON, or CSV with
?format=csv. Patients are addressed by internal number, never by patient ID."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from msfollowup import __version__
from msfollowup.app import compliance, operations, patients, reviews
from msfollowup.app.accounts import Principal
from msfollowup.app.plans import IntervalRulesError, PlanError, load_interval_rules
from msfollowup.web.security import client_host, require

router = APIRouter(prefix="/api/v1", tags=["api"])
Format = Literal["json", "csv"]
_CSV_DANGER = ("=", "+", "@", "\t", "\r")


def _cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would run as a formula is quoted with a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    text = str(value)
    if text.startswith(_CSV_DANGER) or (text.startswith("-") and not text[1:2].isdigit()):
        return "'" + text
    return text


def csv_response(rows: Iterable[dict[str, Any]], columns: list[str], name: str) -> Response:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


def _ctx(request: Request) -> Any:
    return request.app.state.ctx


def _query(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items()}


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(400, str(exc))


STUDY_COLUMNS = ["id", "study_instance_uid", "version", "study_date", "scanner", "purpose", "profile", "verdict",
                 "reviewed_verdict", "patient_id", "patient"]


@router.get("/studies", summary="Checked studies (latest version), filterable and paged")
def studies(request: Request, page: int = 1, per_page: int = Query(50, le=1000), format: Format = "json",
            scanner: str | None = None, profile: str | None = None, verdict: str | None = None,
            start: str | None = None, end: str | None = None, requirement: str | None = None,
            week: str | None = None, month: str | None = None,
            _: Principal = Depends(require("read"))) -> Any:
    try:
        f = compliance.Filters.parse(_query(request))
    except compliance.FilterError as exc:
        raise _bad(exc) from None
    with _ctx(request).db.session() as s:
        out = compliance.list_studies(s, f, page, per_page)
    if format == "csv":
        return csv_response(out["items"], STUDY_COLUMNS, "studies")
    return out


@router.get("/studies/{check_id}", summary="One checked study version: report, versions, deliveries, reviews")
def study(request: Request, check_id: int, _: Principal = Depends(require("read"))) -> Any:
    with _ctx(request).db.session() as s:
        out = compliance.study_detail(s, check_id)
    if out is None:
        raise HTTPException(404, f"no checked study {check_id}")
    return out


class Reason(BaseModel):
    reason: str = Field(min_length=3, max_length=2000)


def _review(request: Request, check_id: int, reason: str, who: Principal, accept: bool) -> dict[str, Any]:
    try:
        with _ctx(request).db.session() as s:
            (reviews.accept_as_compliant if accept else reviews.use_as_reference)(
                s, check_id, reason, who.name, client_host(request))
    except reviews.ReviewError as exc:
        raise HTTPException(404 if str(exc).startswith("no checked") else 409, str(exc)) from None
    return {"ok": True}


@router.post("/studies/{check_id}/accept", summary="Accept an unverifiable result as compliant (QA)")
def accept(request: Request, check_id: int, body: Reason, who: Principal = Depends(require("study.review"))) -> Any:
    return _review(request, check_id, body.reason, who, True)


@router.post("/studies/{check_id}/reference", summary="Use this study as the patient's reference (QA)")
def reference(request: Request, check_id: int, body: Reason, who: Principal = Depends(require("study.review"))) -> Any:
    return _review(request, check_id, body.reason, who, False)


COMPLIANCE_COLUMNS = ["dimension", "key", "period", "studies", "compliant", "rate"]


def _compliance_rows(out: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for dim in ("scanner", "profile"):
        for r in out[f"per_{dim}"]:
            yield {"dimension": dim, **r}


@router.get("/compliance", summary="The dashboard's aggregates: rates per scanner and profile by week or month")
def compliance_view(request: Request, by: Literal["week", "month"] = "week", format: Format = "json",
                    scanner: str | None = None, profile: str | None = None, start: str | None = None,
                    end: str | None = None, _: Principal = Depends(require("read"))) -> Any:
    try:
        f = compliance.Filters.parse(_query(request))
        with _ctx(request).db.session() as s:
            out = _ctx(request).dashboards.dashboard(s, f, by)
    except compliance.FilterError as exc:
        raise _bad(exc) from None
    if format == "csv":
        return csv_response(_compliance_rows(out), COMPLIANCE_COLUMNS, "compliance")
    # Plain JSON types already: the same bytes FastAPI would send, without its per-value encoder walk
    # (~15 ms for a month's dashboard at 100,000 studies).
    return JSONResponse(out)


DUE_COLUMNS = ["patient", "patient_id", "purpose", "profile", "earliest", "target", "latest", "status", "recall",
               "worklist_item", "sps_status"]


@router.get("/patients/due", summary="Due, overdue and recall exams (the open worklist items)")
def due(request: Request, page: int = 1, per_page: int = Query(100, le=5000), format: Format = "json",
        profile: str | None = None, status: str | None = None, sort: str = "latest",
        _: Principal = Depends(require("read"))) -> Any:
    try:
        f = patients.DueFilters.parse(_query(request))
        with _ctx(request).db.session() as s:
            out = patients.due_list(s, f, _ctx(request).today(), page, per_page)
    except patients.PatientError as exc:
        raise _bad(exc) from None
    if format == "csv":
        return csv_response(out["items"], DUE_COLUMNS, "due")
    return out


def _rules(request: Request) -> Any:
    try:
        return load_interval_rules(_ctx(request).cfg.validation.protocols_dir)
    except IntervalRulesError as exc:
        raise HTTPException(500, str(exc)) from None


@router.get("/patients/{ref}", summary="One patient: plan, history, due exams with rules, exams, worklist")
def patient(request: Request, ref: int, _: Principal = Depends(require("read"))) -> Any:
    ctx = _ctx(request)
    try:
        with ctx.db.session() as s:
            return patients.patient_page(s, ref, ctx.today(), _rules(request))
    except patients.PatientError as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/patients/{ref}/plan", summary="Change the monitoring plan (same keys and checks as `patient set`)")
def set_plan(request: Request, ref: int, changes: dict[str, Any] = Body(...),
             who: Principal = Depends(require("plan.edit"))) -> Any:
    ctx = _ctx(request)
    try:
        with ctx.db.session() as s:
            return patients.update_plan(s, ref, changes, who.name, ctx.cfg, ctx.today(), _rules(request))
    except patients.PatientError as exc:
        raise HTTPException(404, str(exc)) from None
    except PlanError as exc:
        raise HTTPException(422, str(exc)) from None


WORKLIST_COLUMNS = ["id", "patient", "patient_id", "accession_number", "purpose", "profile", "recall", "station_ae",
                    "start_date", "earliest", "latest", "sps_status"]


@router.get("/worklist", summary="Open worklist items")
def worklist_view(request: Request, page: int = 1, per_page: int = Query(100, le=5000), format: Format = "json",
                  _: Principal = Depends(require("read"))) -> Any:
    with _ctx(request).db.session() as s:
        out = operations.worklist_items(s, page, per_page)
    if format == "csv":
        return csv_response(out["items"], WORKLIST_COLUMNS, "worklist")
    return out


@router.post("/worklist/{item_id}/cancel", summary="Cancel an open worklist item, with a reason")
def cancel(request: Request, item_id: int, body: Reason, who: Principal = Depends(require("worklist.cancel"))) -> Any:
    try:
        with _ctx(request).db.session() as s:
            operations.cancel_item(s, item_id, body.reason, who.name, client_host(request))
    except operations.OperationError as exc:
        raise HTTPException(404 if str(exc).startswith("no worklist") else 409, str(exc)) from None
    return {"ok": True}


@router.get("/deliveries", summary="SR deliveries (the outbox), newest first")
def deliveries(request: Request, state: str | None = None, _: Principal = Depends(require("read"))) -> Any:
    with _ctx(request).db.session() as s:
        return {"items": operations.deliveries(s, state)}


@router.get("/audit", summary="The audit trail, newest first")
def audit_view(request: Request, action: str | None = None, user: str | None = None,
               _: Principal = Depends(require("audit.read"))) -> Any:
    with _ctx(request).db.session() as s:
        return {"items": operations.audit_events(s, action, user)}


@router.get("/system", summary="Version, health and a configuration summary without secrets")
def system(request: Request, _: Principal = Depends(require("read"))) -> Any:
    from msfollowup.web.context import system_summary

    return system_summary(_ctx(request))


@router.get("/me", summary="Who the token or session belongs to")
def me(who: Principal = Depends(require("read"))) -> Any:
    return {"name": who.name, "role": who.role, "version": __version__}
