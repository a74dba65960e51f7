"""Contrast state of every series: before or after gadolinium, or unknown, with the evidence.

Evidence, in this order (the first that decides wins, and `evidence["contrast_source"]` records which):
1. "attributes": the series' own Contrast/Bolus attributes, and across the study the moment of the
   first series that is post-contrast by its attributes (or a ContrastBolusStartTime): series acquired
   later are post, earlier ones pre;
2. "study": the study's pattern: a T1 series repeated with the same geometry later in the study, after
   other series, is the post-contrast repeat; the first of them is pre;
3. "description": the words of the series description / protocol name (protocols/classify-tokens.toml),
   then a study description saying the whole study is without contrast;
4. otherwise "unknown". Never "pre" from silence: a requirement that needs a post-contrast series is
   then unverifiable, with this reason, and a QA lead can accept it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from msfollowup.dicom.classify.access import _float, _group, _str
from msfollowup.dicom.classify.facts import _NO_AGENT, _agent
from msfollowup.dicom.classify.header import Header
from msfollowup.dicom.classify.model import SeriesClassification, SeriesFacts
from msfollowup.dicom.classify.tokens import contrast_said

Contrast = Literal["pre", "post", "unknown"]
Source = Literal["attributes", "study", "description", "none"]
UNKNOWN_BASIS = "no contrast attributes, no study pattern and no description says it"


def own_contrast(headers: Sequence[Header], facts: SeriesFacts) -> tuple[Literal["pre", "post"] | None, str]:
    """Contrast status from this series' own attributes."""
    start, acquired = facts.contrast_bolus_start, facts.acquisition_datetime
    if start and acquired and acquired < start:  # the console may copy contrast fields onto earlier series
        return "pre", "acquired before ContrastBolusStartTime"
    if facts.contrast_bolus_agent:
        return "post", f"ContrastBolusAgent present ({facts.contrast_bolus_agent})"
    h = headers[0]
    first = h.dataset
    for kw in ("ContrastBolusVolume", "ContrastBolusTotalDose"):
        v = _float(first, kw)
        if v is not None and v > 0:
            return "post", f"{kw} {v:g}"
    if _str(first, "ContrastBolusIngredient"):
        return "post", "ContrastBolusIngredient present"
    if facts.contrast_bolus_start:
        return "post", "ContrastBolusStartTime present"
    usage = _group(h, "ContrastBolusUsageSequence")
    flags = set(h.frame_contrast)
    if usage is not None:
        flag = _str(usage, "ContrastBolusAgentAdministered")
        if flag:
            flags.add(flag.upper())
    if "YES" in flags:
        return "post", "ContrastBolusUsageSequence: agent administered YES"
    if "NO" in flags:
        return "pre", "ContrastBolusUsageSequence: agent administered NO"
    agent = _agent(first)
    if agent and agent.upper() in _NO_AGENT:
        return "pre", f"ContrastBolusAgent says none ({agent})"
    return None, "no contrast attributes"


def series_contrast(headers: Sequence[Header], facts: SeriesFacts) -> tuple[Contrast, str, Source]:
    """(state, evidence, source) from the series alone: its attributes, else its own descriptions."""
    state, basis = own_contrast(headers, facts)
    if state is not None:
        return state, basis, "attributes"
    for source, text in (("SeriesDescription", facts.description), ("ProtocolName", facts.protocol_name)):
        said = contrast_said(text) if text else None
        if said:
            return said[0], f"{source} says {said[1]!r}", "description"  # type: ignore[return-value]
    return "unknown", UNKNOWN_BASIS, "none"


def _source(c: SeriesClassification) -> str:
    return str(c.evidence.get("contrast_source", "none"))


def _set(c: SeriesClassification, state: Contrast, basis: str, source: Source) -> SeriesClassification:
    return replace(c, contrast=state, contrast_basis=basis, evidence={**c.evidence, "contrast_source": source})


def _attribute_marks(results: Sequence[SeriesClassification]) -> list[tuple[dt.datetime, str]]:
    marks: list[tuple[dt.datetime, str]] = []
    for c in results:
        t = c.facts.acquisition_datetime
        if c.contrast == "post" and _source(c) == "attributes" and t and not (c.contrast_basis or "").startswith(
                "acquired"):
            name = f"series {c.facts.series_number}" if c.facts.series_number is not None else "a series"
            marks.append((t, f"acquired after a post-contrast series in the same study ({name})"))
        if c.facts.contrast_bolus_start:
            marks.append((c.facts.contrast_bolus_start, "acquired after the contrast injection "
                                                        "(ContrastBolusStartTime)"))
    return marks


def _geometry_key(c: SeriesClassification) -> tuple[object, ...]:
    f = c.facts
    pixel = tuple(round(p, 2) for p in f.pixel_spacing_mm) if f.pixel_spacing_mm else None
    return (f.orientation, c.acquisition, round(f.slice_thickness_mm or 0, 1), pixel, f.manufacturer)


def _t1_repeat(results: Sequence[SeriesClassification]) -> dict[str, tuple[Contrast, str]]:
    """Series UID -> (pre/post, why) from T1 series repeated with the same geometry after other series."""
    timed = [c for c in results if c.facts.acquisition_datetime is not None]
    groups: dict[tuple[object, ...], list[SeriesClassification]] = {}
    for c in timed:
        if c.kind == "T1" and not c.derived and _source(c) != "attributes":
            groups.setdefault(_geometry_key(c), []).append(c)
    out: dict[str, tuple[Contrast, str]] = {}
    for group in groups.values():
        group.sort(key=lambda c: c.facts.acquisition_datetime)  # type: ignore[arg-type, return-value]
        first = group[0]
        t0 = first.facts.acquisition_datetime
        assert t0 is not None
        for later in group[1:]:
            t1 = later.facts.acquisition_datetime
            assert t1 is not None
            between = [c for c in timed if c.counts and c not in group
                       and t0 < c.facts.acquisition_datetime < t1]  # type: ignore[operator]
            if between:
                name = f"series {first.facts.series_number}" if first.facts.series_number is not None else "the first"
                out[later.facts.series_instance_uid] = (
                    "post", f"T1 repeated with the same geometry after other series (repeat of {name})")
                out.setdefault(first.facts.series_instance_uid, (
                    "pre", "first of a T1 repeated with the same geometry later in the study"))
    return out


def study_contrast(results: list[SeriesClassification]) -> list[SeriesClassification]:
    """Contrast inferred across the study, in the order of evidence of this module's docstring."""
    marks = _attribute_marks(results)
    if marks:
        first_post, why = min(marks, key=lambda m: m[0])
        out = []
        for c in results:
            t = c.facts.acquisition_datetime
            if c.contrast is None or t is None or _source(c) == "attributes":
                out.append(c)
            elif t >= first_post:
                out.append(_set(c, "post", why, "attributes"))
            else:
                out.append(_set(c, "pre", "acquired before the first post-contrast series", "attributes"))
        results = out
    else:
        repeat = _t1_repeat(results)
        if repeat:
            results = _carry_repeat(results, repeat)
    return [_study_description(c) for c in results]


def _carry_repeat(results: list[SeriesClassification], repeat: dict[str, tuple[Contrast, str]]
                  ) -> list[SeriesClassification]:
    """Series of the pattern get its state; series after the first post repeat are post, before the
    first pre T1 pre (the injection happened between them)."""
    posts = [c.facts.acquisition_datetime for c in results
             if repeat.get(c.facts.series_instance_uid, ("",))[0] == "post"]
    pres = [c.facts.acquisition_datetime for c in results
            if repeat.get(c.facts.series_instance_uid, ("",))[0] == "pre"]
    first_post = min(t for t in posts if t is not None)
    first_pre = min(t for t in pres if t is not None)
    out = []
    for c in results:
        hit = repeat.get(c.facts.series_instance_uid)
        t = c.facts.acquisition_datetime
        if c.contrast is None:
            out.append(c)
        elif hit:
            out.append(_set(c, hit[0], hit[1], "study"))
        elif t is not None and t >= first_post:
            out.append(_set(c, "post", "acquired after the post-contrast repeat of a T1 (study pattern)", "study"))
        elif t is not None and t < first_pre:
            out.append(_set(c, "pre", "acquired before the pre-contrast T1 of a repeated T1 (study pattern)",
                            "study"))
        else:
            out.append(c)
    return out


def _study_description(c: SeriesClassification) -> SeriesClassification:
    """Last resort for a series still unknown: a study description saying the study has no contrast."""
    if c.contrast != "unknown":
        return c
    for source, text in (("StudyDescription", c.facts.study_description),
                         ("RequestedProcedureDescription", c.facts.requested_procedure_description)):
        said = contrast_said(text) if text else None
        if said and said[0] == "pre":
            return _set(c, "pre", f"{source} says {said[1]!r} (the whole study)", "description")
    return c
