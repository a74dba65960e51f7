"""Protocol validation: study + profile (+ reference study) -> one result per requirement.

CONTRACT (shared with report.py, plans.py, pipeline.py): RequirementResult, ValidationResult,
validate_study. Profiles come from profiles.py (declarative files in protocols/).

How a study is judged:
- each required sequence (per region, for spine profiles) picks its best candidate among the series that
  count (acquired, not derived, not localizer/OTHER; derived allowed only where the profile says so);
- the technical limits are checked on those chosen series only (a 2D FLAIR next to a good 3D FLAIR does
  not fail the study);
- a value the headers do not give makes the check "unverifiable" with the reason, never "pass";
- verdict: any fail -> non-compliant; else any unverifiable -> unverifiable; else compliant.
  Informational items (exam length, DWI resolution) are reported but never change the verdict.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from msfollowup.dicom.classify import SeriesClassification
from msfollowup.site.profiles import Limits, Profile, Region, get_profile

from msfollowup.check.reference import (  # noqa: F401
    _reference_field, _reference_scanner, _reference_sequence,
)
from msfollowup.check.results import (  # noqa: F401 - RequirementResult, ValidationResult are this module's API
    _RANK, GYROMAGNETIC_MHZ_PER_T, RequirementResult, Status, ValidationResult, Verdict, _acquisition, _duration,
    _Instance, _n, _name, _names, _worst, field_strength_t,
)


def _instances(profile: Profile) -> list[_Instance]:
    exam = profile.get_region(profile.region) if profile.region else None
    others = tuple(r for r in profile.regions if r.name != profile.region)
    out: list[_Instance] = []
    for rule in profile.sequences:
        regions: list[Region | None] = [profile.get_region(r) for r in rule.regions]
        out += [_Instance(rule, region, exam, others) for region in regions or [None]]
    return out


def _other_region(s: SeriesClassification, inst: _Instance) -> bool:
    """A brain profile ignores a series only when its headers clearly show another region (e.g. CSPINE)."""
    bp, desc = s.facts.body_part, s.facts.description
    if inst.exam is None or inst.exam.matches(bp, desc) is True:
        return False
    return any(o.matches(bp, desc) is True for o in inst.others)


def _match(s: SeriesClassification, inst: _Instance) -> tuple[bool | None, str]:
    """(True/False/None = unknown, the condition that decided it)."""
    rule = inst.rule
    if s.kind not in rule.any_of:
        return False, "kind"
    if s.derived and not rule.allow_derived:
        return False, "derived"
    if _other_region(s, inst):
        return False, "region"
    if rule.contrast and s.contrast != rule.contrast:
        return (None if s.contrast in (None, "unknown") else False), "contrast"
    if rule.orientation and s.facts.orientation not in rule.orientation:
        return (None if s.facts.orientation is None else False), "orientation"
    if inst.region is not None:
        hit = inst.region.matches(s.facts.body_part, s.facts.description)
        if hit is not True:
            return hit, "region"
    return True, ""


@dataclass(frozen=True)
class _Checks:
    """Technical checks of one candidate series for one instance."""

    resolution: RequirementResult | None
    delay: RequirementResult | None

    @property
    def rank(self) -> int:
        required = [r for r in (self.resolution, self.delay) if r is not None and not r.informational]
        return _RANK[_worst(r.status for r in required)]


@dataclass(frozen=True)
class _Context:
    profile: Profile
    series: Sequence[SeriesClassification]

    @property
    def limits(self) -> Limits:
        return self.profile.limits


def _candidate_checks(ctx: _Context, s: SeriesClassification, inst: _Instance, post_count: int) -> _Checks:
    res = None if inst.rule.resolution == "off" else _resolution(ctx.limits, s, inst)
    delay = _contrast_delay(ctx, s, inst, post_count) if inst.rule.contrast == "post" else None
    return _Checks(res, delay)


def _choose(ctx: _Context, inst: _Instance, post_count: int
            ) -> tuple[SeriesClassification | None, _Checks | None, RequirementResult]:
    """Pick the best candidate (passing checks first, then preferred kind and 2D/3D) and judge presence."""
    decided = [(s, _match(s, inst)) for s in ctx.series]
    candidates = [s for s, (ok, _) in decided if ok is True]
    if candidates:
        checked = [(s, _candidate_checks(ctx, s, inst, post_count)) for s in candidates]

        def order(item: tuple[SeriesClassification, _Checks]) -> tuple[int, int, int, float, int]:
            s, c = item
            prefer = inst.rule.prefer_acquisition
            return (c.rank, inst.rule.any_of.index(s.kind),  # type: ignore[arg-type]
                    0 if prefer is None or _acquisition(s) == prefer else 1,
                    -s.confidence, -(s.facts.series_number or 0))

        best, checks = min(checked, key=order)
        acq = _acquisition(best)
        msg = f"{inst.label} present: {_name(best)}" + (f" ({acq} {best.kind})" if acq else f" ({best.kind})")
        return best, checks, _presence(inst, "pass", best.kind, [best], msg)
    unknown = [(s, why) for s, (ok, why) in decided if ok is None]
    if unknown:
        return None, None, _presence(inst, "unverifiable", None, [s for s, _ in unknown], _undecided(inst, unknown))
    return None, None, _presence(inst, "fail", None, [], _missing(inst, decided))


def _presence(inst: _Instance, status: Status, measured: Any, series: Sequence[SeriesClassification],
              message: str) -> RequirementResult:
    limit: dict[str, Any] = {"any_of": list(inst.rule.any_of)}
    if inst.rule.contrast:
        limit["contrast"] = inst.rule.contrast
    if inst.rule.orientation:
        limit["orientation"] = list(inst.rule.orientation)
    if inst.region:
        limit["region"] = inst.region.name
    if inst.rule.prefer_acquisition:
        limit["preferred_acquisition"] = inst.rule.prefer_acquisition
    return RequirementResult(f"sequence.{inst.key}", status, measured, limit,
                             tuple(s.facts.series_instance_uid for s in series), message, label=inst.label)


_UNKNOWN_WHY = {"contrast": "whether it was acquired before or after contrast is unknown",
                "orientation": "its orientation is unknown",
                "region": "its body region (BodyPartExamined / description) is not recorded"}


def _undecided(inst: _Instance, unknown: list[tuple[SeriesClassification, str]]) -> str:
    s, why = unknown[0]
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    return f"{inst.label} cannot be confirmed: {_name(s)}{more} may qualify but {_UNKNOWN_WHY[why]}"


def _missing(inst: _Instance, decided: list[tuple[SeriesClassification, tuple[bool | None, str]]]) -> str:
    """Say what was there instead, so the radiographer knows what to repeat."""
    near = {why: [s for s, (ok, w) in decided if ok is False and w == why]
            for why in ("derived", "contrast", "orientation", "region")}
    head = f"{inst.label} missing"
    if near["derived"]:
        s = near["derived"][0]
        mpr = "MPR" in f"{s.evidence} {s.facts.description}".upper()
        what = "a derived MPR" if mpr else "a derived (reformatted or computed) series"
        return f"{head}: only {what} of {s.kind.replace('_', ' ')} was found ({_names(near['derived'])})"
    if near["contrast"]:
        other = "before" if inst.rule.contrast == "post" else "after"
        return f"{head}: only {other} contrast was found ({_names(near['contrast'])})"
    if near["orientation"]:
        got = sorted({s.facts.orientation or "?" for s in near["orientation"]})
        return (f"{head}: only {'/'.join(got)} orientation was found ({_names(near['orientation'])}); "
                f"{'/'.join(inst.rule.orientation)} required")
    if near["region"]:
        parts = sorted({s.facts.body_part or "?" for s in near["region"]})
        return f"{head}: only other regions were found ({', '.join(parts)}: {_names(near['region'])})"
    kinds = " or ".join(k.replace("_", " ") for k in inst.rule.any_of)
    return f"{head}: no {'' if inst.rule.allow_derived else 'acquired '}{kinds} series in the study"


# --- technical checks ------------------------------------------------------------------------------


def _resolution(limits: Limits, s: SeriesClassification, inst: _Instance) -> RequirementResult:
    f = s.facts
    acq = _acquisition(s)
    px = f.pixel_spacing_mm
    thick = f.slice_thickness_mm if f.slice_thickness_mm else f.spacing_between_slices_mm
    measured = {"acquisition": acq, "slice_thickness_mm": thick, "pixel_spacing_mm": list(px) if px else None}
    two = _res_2d(limits, thick, px)
    three = _res_3d(limits, thick, px)
    if acq == "2D":
        status, detail, limit = two
    elif acq == "3D":
        status, detail, limit = three
    else:  # 2D/3D unknown: decide only when both rule sets agree
        status = two[0] if two[0] == three[0] else "unverifiable"
        detail = two[1] if two[0] == three[0] else f"2D/3D not recorded; as 2D: {two[1]}; as 3D: {three[1]}"
        limit = {"2D": two[2], "3D": three[2]}
    info = inst.rule.resolution == "informational"
    msg = f"{inst.label} ({_name(s)}): {detail}" + (" (informational)" if info else "")
    return RequirementResult(f"resolution.{inst.key}", status, measured, limit, (f.series_instance_uid,), msg,
                             informational=info, label=inst.label)


def _res_2d(limits: Limits, thick: float | None, px: tuple[float, float] | None
            ) -> tuple[Status, str, dict[str, Any]]:
    tmax, pmax, tol = limits.slice_thickness_2d_max_mm, limits.pixel_spacing_2d_max_mm, limits.tolerance_2d_mm
    limit = {"slice_thickness_max_mm": tmax, "pixel_spacing_max_mm": pmax, "tolerance_mm": tol}
    fails, unknown = [], []
    if thick is None:
        unknown.append("slice thickness not recorded")
    elif thick > tmax + tol + 1e-9:
        fails.append(f"2D slices {_n(thick)} mm thick; at most {_n(tmax)} mm allowed")
    if px is None:
        unknown.append("pixel spacing not recorded")
    elif max(px) > pmax + tol + 1e-9:
        fails.append(f"in-plane pixel {_n(px[0])} x {_n(px[1])} mm; at most {_n(pmax)} x {_n(pmax)} mm allowed")
    if fails:
        return "fail", "; ".join(fails), limit
    if unknown:
        return "unverifiable", "; ".join(unknown), limit
    assert thick is not None and px is not None
    return "pass", f"2D {_n(thick)} mm slices, {_n(px[0])} x {_n(px[1])} mm pixels within limits", limit


def _res_3d(limits: Limits, thick: float | None, px: tuple[float, float] | None
            ) -> tuple[Status, str, dict[str, Any]]:
    vmax, tol = limits.voxel_edge_3d_max_mm, limits.tolerance_3d_mm
    limit = {"voxel_edge_max_mm": vmax, "tolerance_mm": tol}
    if thick is None or px is None:
        what = "slice thickness" if thick is None else "pixel spacing"
        return "unverifiable", f"3D voxel size unknown: {what} not recorded", limit
    edges = f"{_n(px[0])} x {_n(px[1])} x {_n(thick)} mm"
    if max(px[0], px[1], thick) > vmax + tol + 1e-9:
        return "fail", (f"3D voxel {edges}; each edge at most {_n(vmax)} mm "
                        f"(+{_n(tol)} mm tolerance) allowed"), limit
    return "pass", f"3D voxel {edges} within the {_n(vmax)} mm limit", limit


def _bolus_start(ctx: _Context, s: SeriesClassification) -> tuple[dt.datetime | None, str]:
    """This series' ContrastBolusStartTime, else the earliest one any series of the study records."""
    if s.facts.contrast_bolus_start is not None:
        return s.facts.contrast_bolus_start, ""
    others = [x.facts.contrast_bolus_start for x in ctx.series if x.facts.contrast_bolus_start is not None]
    return (min(others), " (start time taken from another series of the study)") if others else (None, "")


def _naive_pair(a: dt.datetime, b: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    if (a.tzinfo is None) != (b.tzinfo is None):  # both are scanner local time; drop a stray offset
        return a.replace(tzinfo=None), b.replace(tzinfo=None)
    return a, b


def _contrast_delay(ctx: _Context, s: SeriesClassification, inst: _Instance, post_count: int) -> RequirementResult:
    minimum = ctx.limits.contrast_delay_min_minutes
    rid = "contrast_delay" if post_count == 1 else f"contrast_delay.{inst.key}"
    limit = {"min_delay_s": round(minimum * 60)}
    start, note = _bolus_start(ctx, s)
    acq = s.facts.acquisition_datetime

    def result(status: Status, delay_s: float | None, msg: str) -> RequirementResult:
        measured = {"delay_s": None if delay_s is None else round(delay_s)}
        return RequirementResult(rid, status, measured, limit, (s.facts.series_instance_uid,), msg, label=inst.label)

    if start is None:
        return result("unverifiable", None, f"{inst.label} ({_name(s)}): contrast start time (ContrastBolusStartTime) "
                      f"not recorded, so the delay after contrast cannot be checked; at least {_n(minimum)} min "
                      "required")
    if acq is None:
        return result("unverifiable", None, f"Acquisition time of the {inst.label} ({_name(s)}) not recorded: "
                      f"the delay after contrast cannot be checked")
    a, b = _naive_pair(acq, start)
    delay = (a - b).total_seconds()
    if delay < 0:
        return result("unverifiable", delay, f"{inst.label} ({_name(s)}) is recorded {_duration(delay)} before the "
                      f"contrast start{note}: the times are inconsistent")
    status: Status = "pass" if delay >= minimum * 60 else "fail"
    word = "required" if status == "fail" else "required: met"
    return result(status, delay, f"{inst.label} acquired {_duration(delay)} after contrast start{note}; "
                  f"at least {_n(minimum)} min {word} ({_name(s)})")


def _field_strength(limits: Limits, used: Sequence[SeriesClassification]) -> RequirementResult:
    minimum, tol = limits.field_strength_min_t, limits.field_strength_tolerance_t
    limit = {"min_t": minimum, "tolerance_t": tol}
    values = [(s, *field_strength_t(s.facts)) for s in used]
    known = [(s, v, src) for s, v, src in values if v is not None]
    low = [(s, v, src) for s, v, src in known if v < minimum - tol - 1e-9]
    uids = tuple(s.facts.series_instance_uid for s in used)
    if low:
        s, v, src = min(low, key=lambda x: x[1])
        return RequirementResult("field_strength", "fail", round(v, 3), limit, tuple(x[0].facts.series_instance_uid
                                 for x in low), f"Field strength {_n(v)} T ({src}, {_name(s)}); at least "
                                 f"{_n(minimum)} T required", label="Field strength")
    missing = [s for s, v, _ in values if v is None]
    if missing or not used:
        why = f"not recorded for {_names(missing)}" if missing else "no series to measure"
        return RequirementResult("field_strength", "unverifiable", None, limit, uids,
                                 f"Field strength unknown: MagneticFieldStrength and ImagingFrequency {why}",
                                 label="Field strength")
    v = min(v for _, v, _ in known)
    srcs = sorted({src for _, _, src in known})
    return RequirementResult("field_strength", "pass", round(v, 3), limit, uids,
                             f"Field strength {_n(v)} T ({'; '.join(srcs)}); at least {_n(minimum)} T required: met",
                             label="Field strength")


def _exam_length(limits: Limits, series: Sequence[SeriesClassification]) -> RequirementResult:
    lo, hi = limits.exam_length_expected_min_minutes, limits.exam_length_expected_max_minutes
    limit = {"expected_min_minutes": lo, "expected_max_minutes": hi}
    times = sorted(s.facts.acquisition_datetime for s in series if s.facts.acquisition_datetime is not None)
    if len(times) < 2 or times[0] == times[-1]:
        return RequirementResult("exam_length", "unverifiable", None, limit, (), "Exam length unknown: fewer than two "
                                 "series record an acquisition time (informational)", True, "Exam length")
    first, last = _naive_pair(times[0], times[-1])
    minutes = (last - first).total_seconds() / 60
    status: Status = "pass" if minutes <= hi else "fail"
    return RequirementResult("exam_length", status, {"minutes": round(minutes, 1)}, limit, (),
                             f"Exam took at least {_duration(minutes * 60)} (first to last series start); a follow-up "
                             f"is expected to take {_n(lo)}-{_n(hi)} min (informational)", True, "Exam length")


# --- the engine --------------------------------------------------------------------------------------


_VERDICT: dict[Status, Verdict] = {"pass": "compliant", "fail": "non-compliant", "unverifiable": "unverifiable"}


def _verdict(results: Iterable[RequirementResult]) -> Verdict:
    return _VERDICT[_worst(r.status for r in results if not r.informational)]


def _chosen(profile: Profile, series: Sequence[SeriesClassification]
            ) -> list[tuple[_Instance, SeriesClassification | None, _Checks | None, RequirementResult]]:
    ctx = _Context(profile, series)
    instances = _instances(profile)
    post_count = sum(1 for i in instances if i.rule.contrast == "post")
    chosen = [(inst, *_choose(ctx, inst, post_count)) for inst in instances]
    return _one_series_cannot_be_both(chosen)


def _one_series_cannot_be_both(
    chosen: list[tuple[_Instance, SeriesClassification | None, _Checks | None, RequirementResult]],
) -> list[tuple[_Instance, SeriesClassification | None, _Checks | None, RequirementResult]]:
    """A pre- and a post-contrast requirement of the same kind and region both left unverifiable by the
    same single series of unknown contrast: that series can answer one of them at most, so one is surely
    missing and the study is non-compliant, not merely unverifiable (issue 13 keeps the contrast state
    "unknown"; this only counts series). The post-contrast one is called missing: a post-contrast series
    nearly always records its agent, so a lone T1 without contrast evidence is the pre-contrast one far more
    often, and the recall for the post-contrast T1 is what brings the patient back for what is needed."""
    def key(inst: _Instance) -> tuple[tuple[str, ...], str | None]:
        return tuple(inst.rule.any_of), inst.region.name if inst.region else None

    undecided = {(key(inst), inst.rule.contrast): r for inst, _, _, r in chosen
                 if inst.rule.contrast in ("pre", "post") and r.status == "unverifiable"}
    out = []
    for inst, best, checks, result in chosen:
        pre = undecided.get((key(inst), "pre"))
        if inst.rule.contrast == "post" and result.status == "unverifiable" and pre is not None \
                and len(set(result.series) | set(pre.series)) == 1:
            (lone,) = set(result.series)
            result = dataclasses.replace(result, status="fail", message=(
                f"{inst.label} missing: the only candidate ({lone}) may be the pre-contrast series, whether it "
                "was acquired before or after contrast is unknown, and one series cannot be both"))
        out.append((inst, best, checks, result))
    return out


def validate_study(
    series: Sequence[SeriesClassification],
    profile: Profile | str,
    reference: Sequence[SeriesClassification] | None = None,
    now: dt.datetime | None = None,
) -> ValidationResult:
    """Judge one study against a profile (a Profile, or a packaged profile id)."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    limits = profile.limits
    chosen = _chosen(profile, series)
    results: list[RequirementResult] = []
    for _, _, checks, presence in chosen:
        results.append(presence)
        if checks is not None:
            results += [r for r in (checks.resolution, checks.delay) if r is not None]
    used = list({s.facts.series_instance_uid: s for _, s, _, _ in chosen if s is not None}.values())
    if not used:  # nothing qualified: judge the field strength on whatever was acquired
        used = [s for s in series if s.counts] or list(series)
    results.append(_field_strength(limits, used))
    ref_uid = None
    if reference:
        ref_uid = reference[0].facts.study_instance_uid
        results += _reference_results(profile, series, reference, chosen)
    results.append(_exam_length(limits, series))
    results = [_with_severity(profile, r) for r in results]
    return ValidationResult(
        study_instance_uid=series[0].facts.study_instance_uid if series else "",
        profile_id=profile.id,
        profile_version=profile.version,
        verdict=_verdict(results),
        series=tuple(series),
        requirements=tuple(results),
        reference_study_uid=ref_uid,
        checked_at=now or dt.datetime.now(dt.timezone.utc),
        profile_summary=profile.summary(),
    )


def _severity(profile: Profile, requirement_id: str) -> str:
    """A sequence's own severity for its sequence/resolution/contrast/reference checks, else the profile's
    [severity] table by id prefix (longest match), else required."""
    parts = requirement_id.split(".")
    for seq in profile.sequences:
        if seq.id in parts[1:2] or (parts[0] == "contrast_delay" and seq.id in parts[1:2]):
            if seq.severity == "recommended":
                return "recommended"
    matches = [k for k in profile.severity if requirement_id == k or requirement_id.startswith(k + ".")]
    return profile.severity[max(matches, key=len)] if matches else "required"


def _with_severity(profile: Profile, r: RequirementResult) -> RequirementResult:
    if r.informational or _severity(profile, r.id) != "recommended":
        return r
    msg = r.message if r.status == "pass" else f"Recommended, not required: {r.message}"
    return dataclasses.replace(r, severity="recommended", informational=True, message=msg)


def _reference_results(profile: Profile, series: Sequence[SeriesClassification],
                       reference: Sequence[SeriesClassification],
                       chosen: Sequence[tuple[_Instance, SeriesClassification | None, Any, Any]]
                       ) -> list[RequirementResult]:
    counted = [s for s in series if s.counts] or list(series)
    ref_counted = [s for s in reference if s.counts] or list(reference)
    out = [_reference_scanner(counted, ref_counted), _reference_field(profile.limits, counted, ref_counted)]
    ref_chosen = {inst.key: s for inst, s, _, _ in _chosen(profile, reference)}
    for inst, cur, _, _ in chosen:
        if cur is not None:  # a missing sequence already failed; nothing to compare
            out.append(_reference_sequence(profile.limits, inst, cur, ref_chosen.get(inst.key)))
    return out
