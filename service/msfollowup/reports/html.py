"""The stand-alone HTML page of a report, rendered by Jinja2 from templates/report.html with
autoescaping: every value from the images or the result is escaped by the template engine; the
only markup built in Python is `display`'s joining of already-escaped parts (Markup)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from msfollowup.core.dicomtime import iso_from_da
from msfollowup.reports.content import counted_series, open_requirements

VERDICT_TEXT = {
    "compliant": ("COMPLIANT", "The study follows the protocol."),
    "non-compliant": ("NOT COMPLIANT", "The study does not follow the protocol: see the failed requirements below."),
    "unverifiable": ("CANNOT BE VERIFIED", "Some requirements could not be checked from the images' headers."),
}
STATUS_TEXT = {"pass": "Pass", "fail": "FAIL", "unverifiable": "Cannot verify", "info": "Info"}
_STATUS_ORDER = {"fail": 0, "unverifiable": 1, "pass": 2, "info": 3}
_DASH = Markup("&ndash;")


def escape(text: str) -> Markup:
    """The stdlib's escaping (quotes as &quot;, as the pages always had), marked safe for Jinja."""
    return Markup(html.escape(text, quote=True))


def display(value: Any) -> Markup:
    """Display text for a radiographer: None -> a dash, numbers short, lists joined, mappings as
    'key: value' lines (measured values and limits are often small objects). Always escaped."""
    if value is None or value == "":
        return _DASH
    if isinstance(value, bool):
        return Markup("yes" if value else "no")
    if isinstance(value, float):
        return escape(f"{value:g}")
    if isinstance(value, (list, tuple)):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        joined = Markup(" x " if numeric and len(value) in (2, 3) else ", ").join(display(v) for v in value)
        return joined or _DASH
    if isinstance(value, Mapping):
        return Markup("<br>").join(
            escape(str(k).replace("_", " ")) + Markup(": ") + display(v) for k, v in value.items()
        )
    return escape(str(value))


def person_name(value: str | None) -> str | None:
    """DICOM PN 'Family^Given^Middle^Prefix^Suffix' as 'Family, Given Middle' (first group only)."""
    if not value:
        return value
    parts = value.split("=")[0].split("^")
    family, rest = parts[0], " ".join(p for p in parts[1:4] if p)
    return f"{family}, {rest}" if rest else family


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("msfollowup.reports", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["display"] = display
    return env


def _requirements(data: Mapping[str, Any], numbers: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in data["requirements"]:
        status = "info" if r.get("informational") else str(r.get("status"))
        rows.append({
            "status": status,
            "status_text": STATUS_TEXT.get(status, status),
            "label": r.get("label"),
            "message": r.get("message"),
            "id": r.get("id"),
            "measured": r.get("measured"),
            "limit": r.get("limit"),
            "series": ", ".join(str(numbers.get(u, u)) for u in r.get("series") or ()),
        })
    return sorted(rows, key=lambda row: _STATUS_ORDER.get(row["status"], 4))


def _series(data: Mapping[str, Any], counted_uids: set[str]) -> list[dict[str, Any]]:
    ordered = sorted(data["series"], key=lambda s: (s.get("series_number") is None, s.get("series_number") or 0))
    return [
        {**s, "facts": s.get("facts") or {}, "counts": s.get("series_instance_uid") in counted_uids,
         "evidence_items": sorted((s.get("evidence") or {}).items())}
        for s in ordered
    ]


def build_html(doc: Mapping[str, Any]) -> str:
    """The stand-alone page: verdict first, then requirements, then series (evidence on demand)."""
    data = doc["result"]
    meta = doc["report"]
    who = doc["study"]
    verdict = data["verdict"]
    headline, explanation = VERDICT_TEXT[verdict]
    numbers = {s["series_instance_uid"]: s.get("series_number") for s in data["series"]}
    counted_uids = {s["series_instance_uid"] for s in counted_series(data)}
    profile = data["profile"]
    counted_reqs = sum(1 for r in data["requirements"] if not r.get("informational"))
    return _environment().get_template("report.html").render(
        verdict=verdict,
        headline=headline,
        explanation=explanation,
        open_count=f"{len(open_requirements(data))} of {counted_reqs} requirements not met or not verifiable",
        patient_name=person_name(who.get("patient_name")),
        patient_id=who.get("patient_id"),
        birth_date=iso_from_da(who.get("patient_birth_date")),
        study_date=iso_from_da(who.get("study_date")),
        accession=who.get("accession_number"),
        study_description=who.get("study_description"),
        profile=f"{profile.get('title') or profile.get('id')} ({profile.get('id')} v{profile.get('version')})",
        requirements=_requirements(data, numbers),
        series=_series(data, counted_uids),
        study_uid=data["study_instance_uid"],
        study_version=meta["study_version"],
        reference=data.get("reference_study_uid"),
        checked_at=data.get("checked_at"),
        generated_at=meta["generated_at"],
        sr_uid=meta["sr_sop_instance_uid"],
        predecessor=meta.get("predecessor_sr_sop_instance_uid"),
        software=f"msfollowup {meta['msfollowup_version']}",
    )
