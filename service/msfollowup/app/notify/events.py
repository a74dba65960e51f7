"""Notification events: what each carries and which destinations want it (pure: no DB, no network).

Payloads carry no patient name, ID or birth date unless the destination sets include_patient_data:
the scanner, the verdict, what is missing or failing, and a link to the study page. The patient block
is added per destination, so one event becomes differently filtered payloads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from msfollowup.site.notify_config import NotifyConfig, NotifyDestination

STUDY_NON_COMPLIANT = "study.non_compliant"
STUDY_UNVERIFIABLE = "study.unverifiable"
PATIENT_OVERDUE = "patient.overdue"
DELIVERY_FAILED = "delivery.failed"
NODE_UNHEALTHY = "node.unhealthy"
VERDICT_EVENTS = {"non-compliant": STUDY_NON_COMPLIANT, "unverifiable": STUDY_UNVERIFIABLE}


@dataclass(frozen=True)
class Occurrence:
    """One thing that happened, before it is filtered for a destination."""

    event: str
    dedup_key: str  # the same occurrence seen twice (a retried pass) is enqueued once
    body: dict[str, Any]
    scanners: tuple[str, ...] = ()  # calling AE and station name; empty: not about a scanner
    profile_id: str | None = None
    study_uid: str | None = None
    patient: dict[str, Any] = field(default_factory=dict)  # only for destinations with include_patient_data

    def wanted_by(self, dest: NotifyDestination) -> bool:
        if self.event not in dest.events:
            return False
        if dest.scanners and self.scanners and not {s.upper() for s in self.scanners} & {s.upper() for s in dest.scanners}:
            return False
        if dest.profiles and self.profile_id is not None and self.profile_id not in dest.profiles:
            return False
        return True

    def payload(self, dest: NotifyDestination, occurred_at: dt.datetime) -> dict[str, Any]:
        out = {"event": self.event, "occurred_at": occurred_at.isoformat(), **self.body}
        if dest.include_patient_data and self.patient:
            out["patient"] = dict(self.patient)
        return out


def _link(cfg: NotifyConfig, study_uid: str) -> str | None:
    return f"{cfg.base_url.rstrip('/')}/studies/{quote(study_uid)}" if cfg.base_url else None


def _items(result: dict[str, Any], status: str, missing: bool | None = None) -> list[dict[str, Any]]:
    out = []
    for r in result.get("requirements", []):
        if r.get("informational") or r.get("status") != status:
            continue
        is_missing = str(r.get("id", "")).startswith("sequence.") and not r.get("series")
        if missing is not None and is_missing != missing:
            continue
        out.append({"id": r.get("id"), "label": r.get("label", ""), "message": r.get("message", "")})
    return out


def study_checked(cfg: NotifyConfig, result: dict[str, Any], study: dict[str, Any], version: int,
                  patient: dict[str, Any]) -> Occurrence | None:
    """A final study check (pipeline): non-compliant or unverifiable studies notify; compliant ones do not.

    `study`: study_instance_uid, accession_number, study_date, scanner (calling AE), station_name.
    """
    event = VERDICT_EVENTS.get(str(result.get("verdict")))
    if event is None:
        return None
    uid = str(study["study_instance_uid"])
    profile = result.get("profile") or {}
    # A combined brain + spine session is one check per purpose: each purpose's verdict is its own event.
    purpose = str((result.get("purpose") or {}).get("purpose") or "brain")
    body = {
        "study": {**study, "version": version, "link": _link(cfg, uid)},
        "purpose": purpose,
        "profile": {"id": profile.get("id"), "version": profile.get("version"), "title": profile.get("title")},
        "verdict": result.get("verdict"),
        "missing": _items(result, "fail", missing=True),
        "failing": _items(result, "fail", missing=False),
        "unverifiable": _items(result, "unverifiable"),
    }
    scanners = tuple(s for s in (study.get("scanner"), study.get("station_name")) if s)
    key = f"{event}|{uid}|v{version}" + ("" if purpose == "brain" else f"|{purpose}")
    return Occurrence(event, key, body, scanners, profile.get("id"), uid, patient)


def patient_overdue(cfg: NotifyConfig, patient_id: str, purpose: str, profile_id: str, target: dt.date,
                    latest: dt.date, today: dt.date) -> Occurrence:
    """A patient past the latest date of their window: once per (patient, purpose, window)."""
    body: dict[str, Any] = {"overdue": {"purpose": purpose, "profile_id": profile_id, "target": target.isoformat(),
                        "latest": latest.isoformat(), "days_overdue": (today - latest).days}}
    if cfg.base_url:
        body["link"] = f"{cfg.base_url.rstrip('/')}/overdue"
    return Occurrence(PATIENT_OVERDUE, f"{PATIENT_OVERDUE}|{patient_id}|{purpose}|{latest.isoformat()}", body,
                      (), profile_id, None, {"id": patient_id})


def delivery_failed(delivery_id: int, study_uid: str, version: int, destination: str, attempts: int,
                    last_error: str | None, cfg: NotifyConfig) -> Occurrence:
    body = {"delivery": {"id": delivery_id, "destination": destination, "attempts": attempts,
                         "last_error": last_error},
            "study": {"study_instance_uid": study_uid, "version": version, "link": _link(cfg, study_uid)}}
    return Occurrence(DELIVERY_FAILED, f"{DELIVERY_FAILED}|report|{delivery_id}", body, (), None, study_uid)


def node_unhealthy(parts: list[str], since: dt.datetime, node: str) -> Occurrence:
    body = {"node": node, "stopped": sorted(parts), "since": since.isoformat()}
    return Occurrence(NODE_UNHEALTHY, f"{NODE_UNHEALTHY}|{node}|{since.isoformat()}", body)


def subject(payload: dict[str, Any]) -> str:
    """E-mail subject: event, scanner, accession (no patient data)."""
    study = payload.get("study") or {}
    bits = [str(x) for x in (study.get("scanner"), study.get("accession_number")) if x]
    verdict = payload.get("verdict")
    return f"[msfollowup] {payload['event']}" + (f": {' '.join(bits)}" if bits else "") + (
        f" ({verdict})" if verdict else "")


def text_body(payload: dict[str, Any]) -> str:
    """Plain-text e-mail body a reader understands without the JSON."""
    lines = [subject(payload).removeprefix("[msfollowup] "), ""]
    study = payload.get("study") or {}
    for key in ("study_instance_uid", "accession_number", "study_date", "scanner", "station_name", "link"):
        if study.get(key):
            lines.append(f"{key.replace('_', ' ')}: {study[key]}")
    if payload.get("profile"):
        lines.append(f"profile: {payload['profile'].get('title') or payload['profile'].get('id')}")
    for section in ("missing", "failing", "unverifiable"):
        items = payload.get(section) or []
        if items:
            lines += ["", f"{section.capitalize()}:"] + [f"  - {i['message']}" for i in items]
    for section in ("overdue", "delivery"):
        if payload.get(section):
            lines += ["", f"{section}:"] + [f"  {k}: {v}" for k, v in payload[section].items()]
    if payload.get("stopped"):
        lines.append(f"stopped: {', '.join(payload['stopped'])} (since {payload.get('since')})")
    if payload.get("patient"):
        lines += ["", "patient:"] + [f"  {k}: {v}" for k, v in payload["patient"].items()]
    return "\n".join(lines) + "\n"
