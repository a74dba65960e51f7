"""Validation engine, requirement by requirement, on classifications built by hand.

Classifications are constructed directly (the classifier is tested elsewhere), so each test states exactly
which header facts a study has and which result the engine must give.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from msfollowup.dicom.classify import SeriesClassification, SeriesFacts
from msfollowup.site.profiles import Profile, get_profile
from msfollowup.check.validate import RequirementResult, ValidationResult, validate_study

T0 = dt.datetime(2026, 3, 2, 9, 0, 0)
STUDY = "1.2.826.0.1.3680043.8.498.1"
_counter = iter(range(1, 10_000))


def mk(kind: str, *, acquisition: str | None = "2D", derived: bool = False, contrast: str | None = "pre",
       thick: float | None = 3.0, px: tuple[float, float] | None = (0.9, 0.9), fs: float | None = 1.5,
       freq: float | None = None, orientation: str | None = "AX", body_part: str | None = "BRAIN",
       minute: float = 0.0, bolus: dt.datetime | None = None, serial: str | None = "SN-1",
       station: str | None = "MR1", description: str | None = None, study: str = STUDY,
       number: int | None = None, confidence: float = 0.9, spacing: float | None = None) -> SeriesClassification:
    n = next(_counter)
    facts = SeriesFacts(
        study_instance_uid=study, series_instance_uid=f"{study}.{n}", series_number=number or n,
        description=description or f"{kind} {acquisition or ''}".strip(), modality="MR", instance_count=20,
        device_serial_number=serial, station_name=station, field_strength_t=fs, imaging_frequency_mhz=freq,
        mr_acquisition_type=acquisition, slice_thickness_mm=thick, spacing_between_slices_mm=spacing,
        pixel_spacing_mm=px, orientation=orientation, body_part=body_part,  # type: ignore[arg-type]
        acquisition_datetime=T0 + dt.timedelta(minutes=minute), contrast_bolus_start=bolus,
        contrast_bolus_agent="gadobutrol" if bolus else None)
    return SeriesClassification(facts, kind, acquisition, derived, contrast,  # type: ignore[arg-type]
                                "test" if contrast else None, {}, confidence, "physics")


def v3d(kind: str, **kw: Any) -> SeriesClassification:
    kw.setdefault("thick", 1.0)
    kw.setdefault("px", (1.0, 1.0))
    kw.setdefault("orientation", "SAG")
    return mk(kind, acquisition="3D", **kw)


BOLUS = T0 + dt.timedelta(minutes=6)


def routine(**over: SeriesClassification | None) -> list[SeriesClassification]:
    """A compliant routine study; keyword arguments replace (or with None remove) one series."""
    parts: dict[str, SeriesClassification | None] = {
        "loc": mk("LOCALIZER", thick=8.0, minute=0),
        "t1_pre": v3d("T1", minute=2),
        "flair": v3d("T2_FLAIR", minute=7, contrast="post", bolus=BOLUS),
        "t2": mk("T2", minute=12, contrast="post", bolus=BOLUS),
        "t1_post": v3d("T1", minute=15, contrast="post", bolus=BOLUS),
    }
    parts.update(over)
    return [s for s in parts.values() if s is not None]


def req(result: ValidationResult, rid: str) -> RequirementResult:
    found = [r for r in result.requirements if r.id == rid]
    assert found, f"no requirement {rid!r} in {[r.id for r in result.requirements]}"
    return found[0]


@pytest.fixture(scope="module")
def prof() -> Profile:
    return get_profile("ms-brain-routine")


def with_limits(profile: Profile, **limits: float) -> Profile:
    return profile.model_copy(update={"limits": profile.limits.model_copy(update=limits)})


# --- verdict and sequences ---------------------------------------------------------------------


def test_compliant_routine_study(prof: Profile) -> None:
    result = validate_study(routine(), prof)
    assert result.verdict == "compliant", [r.message for r in result.missing_requirements]
    ids = {r.id for r in result.requirements}
    assert {"sequence.t2", "sequence.t2_flair", "sequence.t1_pre", "sequence.t1_post", "field_strength",
            "contrast_delay", "resolution.t2_flair", "exam_length"} <= ids
    assert result.profile_id == "ms-brain-routine" and result.profile_version == prof.version
    assert result.study_instance_uid == STUDY and result.reference_study_uid is None


def test_missing_flair_fails_with_message(prof: Profile) -> None:
    result = validate_study(routine(flair=None), prof)
    r = req(result, "sequence.t2_flair")
    assert r.status == "fail" and r.series == ()
    assert "T2 FLAIR (or PD) missing" in r.message
    assert result.verdict == "non-compliant"
    assert r in result.missing_requirements


def test_derived_only_flair_does_not_count(prof: Profile) -> None:
    mpr = v3d("T2_FLAIR", derived=True, minute=8, contrast="post", description="FLAIR MPR tra")
    r = req(validate_study(routine(flair=mpr), prof), "sequence.t2_flair")
    assert r.status == "fail"
    assert "only a derived MPR of T2 FLAIR was found" in r.message
    assert '"FLAIR MPR tra"' in r.message


def test_pd_satisfies_flair_alternative(prof: Profile) -> None:
    pd = mk("PD", minute=8, contrast="post")
    r = req(validate_study(routine(flair=pd), prof), "sequence.t2_flair")
    assert r.status == "pass" and r.series == (pd.facts.series_instance_uid,) and r.measured == "PD"


def test_3d_flair_preferred_over_2d(prof: Profile) -> None:
    flair2d = mk("T2_FLAIR", minute=5, contrast="post")
    flair3d = v3d("T2_FLAIR", minute=8, contrast="post")
    result = validate_study(routine(flair=flair3d, extra=flair2d), prof)
    assert req(result, "sequence.t2_flair").series == (flair3d.facts.series_instance_uid,)
    assert req(result, "resolution.t2_flair").measured["acquisition"] == "3D"


def test_chosen_series_is_the_one_that_passes(prof: Profile) -> None:
    """A thick 3D FLAIR and a good 2D FLAIR: the 2D one counts and the study is compliant."""
    thick3d = v3d("T2_FLAIR", thick=2.0, minute=5, contrast="post")
    good2d = mk("T2_FLAIR", minute=8, contrast="post")
    result = validate_study(routine(flair=thick3d, extra=good2d), prof)
    assert req(result, "sequence.t2_flair").series == (good2d.facts.series_instance_uid,)
    assert result.verdict == "compliant"


def test_localizer_and_other_never_count(prof: Profile) -> None:
    study = [mk("LOCALIZER", minute=0), mk("OTHER", minute=1)]
    result = validate_study(study, prof)
    assert all(req(result, f"sequence.{k}").status == "fail" for k in ("t2", "t2_flair", "t1_pre", "t1_post"))
    assert result.verdict == "non-compliant"


def test_post_t1_missing_says_only_pre_found(prof: Profile) -> None:
    r = req(validate_study(routine(t1_post=None), prof), "sequence.t1_post")
    assert r.status == "fail" and "only before contrast was found" in r.message


def test_unknown_contrast_phase_is_unverifiable(prof: Profile) -> None:
    unknown = v3d("T1", minute=15, contrast=None, bolus=BOLUS)
    result = validate_study(routine(t1_post=unknown), prof)
    r = req(result, "sequence.t1_post")
    assert r.status == "unverifiable" and "before or after contrast is unknown" in r.message
    assert r.series == (unknown.facts.series_instance_uid,)
    assert result.verdict == "unverifiable"


# --- field strength ----------------------------------------------------------------------------


def _all(study: list[SeriesClassification], **changes: Any) -> list[SeriesClassification]:
    return [dataclasses.replace(s, facts=dataclasses.replace(s.facts, **changes)) for s in study]


def test_field_strength_1_0_T_fails(prof: Profile) -> None:
    result = validate_study(_all(routine(), field_strength_t=1.0), prof)
    r = req(result, "field_strength")
    assert r.status == "fail" and r.measured == 1.0 and r.limit["min_t"] == 1.5
    assert "1 T" in r.message and "at least 1.5 T" in r.message
    assert result.verdict == "non-compliant"


def test_field_strength_from_imaging_frequency(prof: Profile) -> None:
    r = req(validate_study(_all(routine(), field_strength_t=None, imaging_frequency_mhz=63.87), prof),
            "field_strength")
    assert r.status == "pass" and r.measured == pytest.approx(1.5, abs=0.01)
    assert "ImagingFrequency 63.87 MHz" in r.message


def test_field_strength_1_494_counts_as_1_5(prof: Profile) -> None:
    assert req(validate_study(_all(routine(), field_strength_t=1.494), prof), "field_strength").status == "pass"
    strict = with_limits(prof, field_strength_tolerance_t=0.0)
    assert req(validate_study(_all(routine(), field_strength_t=1.494), strict), "field_strength").status == "fail"


def test_field_strength_unknown_is_unverifiable(prof: Profile) -> None:
    result = validate_study(_all(routine(), field_strength_t=None, imaging_frequency_mhz=None), prof)
    r = req(result, "field_strength")
    assert r.status == "unverifiable" and r.measured is None and "unknown" in r.message
    assert result.verdict == "unverifiable"


def test_field_strength_only_judges_series_that_count(prof: Profile) -> None:
    """A 1.0 T localizer (e.g. an imported old scout) does not fail a 1.5 T study."""
    study = routine(loc=mk("LOCALIZER", fs=1.0))
    assert req(validate_study(study, prof), "field_strength").status == "pass"


# --- resolution --------------------------------------------------------------------------------


def test_5mm_slices_fail(prof: Profile) -> None:
    t2 = mk("T2", thick=5.0, minute=12, contrast="post")
    result = validate_study(routine(t2=t2), prof)
    r = req(result, "resolution.t2")
    assert r.status == "fail" and r.measured["slice_thickness_mm"] == 5.0
    assert "5 mm thick; at most 3 mm allowed" in r.message and r.series == (t2.facts.series_instance_uid,)
    assert result.verdict == "non-compliant"


def test_1_3mm_pixel_fails(prof: Profile) -> None:
    r = req(validate_study(routine(t2=mk("T2", px=(1.3, 1.3), minute=12, contrast="post")), prof), "resolution.t2")
    assert r.status == "fail" and "1.3 x 1.3 mm; at most 1 x 1 mm" in r.message


def test_header_rounding_pixel_passes(prof: Profile) -> None:
    r = req(validate_study(routine(t2=mk("T2", px=(1.0156, 1.0156), minute=12, contrast="post")), prof),
            "resolution.t2")
    assert r.status == "pass"


def test_3d_voxel_tolerance(prof: Profile) -> None:
    def flair_result(edge: float, profile: Profile) -> RequirementResult:
        flair = v3d("T2_FLAIR", thick=edge, minute=7, contrast="post")
        return req(validate_study(routine(flair=flair), profile), "resolution.t2_flair")

    assert flair_result(1.1, prof).status == "fail"  # 002 "1 mm3": the tolerance is rounding only (0.02 mm)
    assert flair_result(1.01, prof).status == "pass"
    assert flair_result(1.2, prof).status == "fail"
    assert "1 x 1 x 1.2 mm" in flair_result(1.2, prof).message
    assert flair_result(1.1, with_limits(prof, tolerance_3d_mm=0.0)).status == "fail"


def test_missing_slice_thickness_is_unverifiable(prof: Profile) -> None:
    r = req(validate_study(routine(t2=mk("T2", thick=None, minute=12, contrast="post")), prof), "resolution.t2")
    assert r.status == "unverifiable" and "slice thickness not recorded" in r.message


def test_unknown_acquisition_type_decided_when_both_rules_agree(prof: Profile) -> None:
    fine = mk("T2", acquisition=None, thick=1.0, px=(0.9, 0.9), minute=12, contrast="post")
    coarse = mk("T2", acquisition=None, thick=5.0, minute=12, contrast="post")
    between = mk("T2", acquisition=None, thick=2.0, minute=12, contrast="post")
    assert req(validate_study(routine(t2=fine), prof), "resolution.t2").status == "pass"
    assert req(validate_study(routine(t2=coarse), prof), "resolution.t2").status == "fail"
    assert req(validate_study(routine(t2=between), prof), "resolution.t2").status == "unverifiable"


# --- contrast delay ----------------------------------------------------------------------------


def test_contrast_2_min_fails(prof: Profile) -> None:
    early = v3d("T1", minute=8, contrast="post", bolus=BOLUS)
    result = validate_study(routine(t1_post=early), prof)
    r = req(result, "contrast_delay")
    assert r.status == "fail" and r.measured == {"delay_s": 120} and r.limit == {"min_delay_s": 300}
    assert "Post-contrast T1 acquired 2 min 0 s after contrast start; at least 5 min required" in r.message
    assert result.verdict == "non-compliant"


def test_contrast_start_unknown_is_unverifiable(prof: Profile) -> None:
    study = _all(routine(), contrast_bolus_start=None)
    result = validate_study(study, prof)
    r = req(result, "contrast_delay")
    assert r.status == "unverifiable" and "ContrastBolusStartTime" in r.message and "not recorded" in r.message
    assert result.verdict == "unverifiable"


def test_contrast_start_taken_from_another_series(prof: Profile) -> None:
    t1 = v3d("T1", minute=15, contrast="post", bolus=None)
    r = req(validate_study(routine(t1_post=t1), prof), "contrast_delay")
    assert r.status == "pass" and r.measured == {"delay_s": 540} and "another series" in r.message


def test_best_post_t1_chosen_for_delay(prof: Profile) -> None:
    """An early post T1 and a later one: the later one satisfies the 5 minutes."""
    early = v3d("T1", minute=7, contrast="post", bolus=BOLUS)
    late = v3d("T1", minute=15, contrast="post", bolus=BOLUS)
    result = validate_study(routine(t1_post=early, extra=late), prof)
    assert req(result, "contrast_delay").status == "pass"
    assert req(result, "sequence.t1_post").series == (late.facts.series_instance_uid,)


def test_site_contrast_delay_limit(prof: Profile) -> None:
    strict = with_limits(prof, contrast_delay_min_minutes=10.0)
    assert req(validate_study(routine(), strict), "contrast_delay").status == "fail"


# --- reference study ---------------------------------------------------------------------------


REF = "1.2.826.0.1.3680043.8.498.2"


def ref_study(**over: Any) -> list[SeriesClassification]:
    return [dataclasses.replace(s, facts=dataclasses.replace(s.facts, study_instance_uid=REF, **over))
            for s in routine()]


def test_reference_same_scanner_passes(prof: Profile) -> None:
    result = validate_study(routine(), prof, reference=ref_study())
    assert result.reference_study_uid == REF
    for rid in ("reference.scanner", "reference.field_strength", "reference.t2_flair", "reference.t2"):
        assert req(result, rid).status == "pass", req(result, rid).message
    assert result.verdict == "compliant"


def test_reference_different_scanner_fails(prof: Profile) -> None:
    result = validate_study(routine(), prof, reference=ref_study(device_serial_number="SN-9", station_name="MR9"))
    r = req(result, "reference.scanner")
    assert r.status == "fail" and "serial SN-1" in r.message and "serial SN-9" in r.message
    # 002 "ideally" on the same scanner: recommended severity, a warning that does not fail the study.
    assert r.severity == "recommended" and r.informational
    assert result.verdict == "compliant"


def test_reference_station_used_when_no_serial(prof: Profile) -> None:
    cur = _all(routine(), device_serial_number=None)
    assert req(validate_study(cur, prof, reference=ref_study(device_serial_number=None)),
               "reference.scanner").status == "pass"
    assert req(validate_study(cur, prof, reference=ref_study(device_serial_number=None, station_name="MR2")),
               "reference.scanner").status == "fail"
    nothing = _all(cur, station_name=None)
    assert req(validate_study(nothing, prof, reference=ref_study()), "reference.scanner").status == "unverifiable"


def test_reference_field_strength_mismatch_fails(prof: Profile) -> None:
    r = req(validate_study(routine(), prof, reference=ref_study(field_strength_t=3.0)), "reference.field_strength")
    assert r.status == "fail" and "1.5 T differs from the reference study (3 T)" in r.message


def test_reference_resolution_mismatch_fails(prof: Profile) -> None:
    ref = ref_study()
    ref_t2 = next(s for s in ref if s.kind == "T2")
    ref = [dataclasses.replace(s, facts=dataclasses.replace(s.facts, slice_thickness_mm=2.0)) if s is ref_t2 else s
           for s in ref]
    r = req(validate_study(routine(), prof, reference=ref), "reference.t2")
    assert r.status == "fail" and "slice thickness 3 mm here, 2 mm in the reference" in r.message


def test_reference_acquisition_type_mismatch_fails(prof: Profile) -> None:
    ref = [s for s in ref_study() if s.kind != "T2_FLAIR"]
    ref.append(dataclasses.replace(mk("T2_FLAIR", minute=7, contrast="post"),
                                   facts=dataclasses.replace(mk("T2_FLAIR").facts, study_instance_uid=REF)))
    r = req(validate_study(routine(), prof, reference=ref), "reference.t2_flair")
    assert r.status == "fail" and "3D here, 2D in the reference" in r.message


def test_reference_without_the_sequence_is_unverifiable(prof: Profile) -> None:
    ref = [s for s in ref_study() if s.kind != "T2"]
    r = req(validate_study(routine(), prof, reference=ref), "reference.t2")
    assert r.status == "unverifiable" and "reference study has no such series" in r.message


def test_brain_profile_ignores_series_of_another_region(prof: Profile) -> None:
    def t2_status(body_part: str | None, description: str = "t2_tse_tra") -> RequirementResult:
        t2 = mk("T2", minute=12, contrast="post", body_part=body_part, description=description)
        return req(validate_study(routine(t2=t2), prof), "sequence.t2")

    assert t2_status("BRAIN").status == "pass"
    assert t2_status(None).status == "pass"  # BodyPartExamined is often empty on brain exams
    assert t2_status("HEADNECK").status == "pass"
    assert t2_status("ABDOMEN").status == "pass"  # unknown to the regions: not clearly elsewhere
    spine = t2_status("CSPINE")
    assert spine.status == "fail" and "only other regions were found (CSPINE" in spine.message
    assert t2_status("SPINE").status == "fail"
    assert t2_status(None, "T2 SAG HWS").status == "fail"
    assert t2_status("CSPINE", "T2 brain tra").status == "pass"  # the description names the brain


# --- informational items, spine, diffusion, JSON ----------------------------------------------------


def test_long_exam_is_informational(prof: Profile) -> None:
    study = routine(extra=mk("SWI", minute=40))
    result = validate_study(study, prof)
    r = req(result, "exam_length")
    assert r.informational and r.status == "fail" and r.measured == {"minutes": 40.0}
    assert result.verdict == "compliant" and r not in result.missing_requirements


def _spine(**over: SeriesClassification | None) -> list[SeriesClassification]:
    b = T0 + dt.timedelta(minutes=20)
    parts: dict[str, SeriesClassification | None] = {
        "t2_c": mk("T2", orientation="SAG", body_part="CSPINE", minute=1),
        "stir_c": mk("STIR", orientation="SAG", body_part="CSPINE", minute=4),
        "t2_t": mk("T2", orientation="SAG", body_part="TSPINE", minute=7),
        "stir_t": mk("STIR", orientation="SAG", body_part="TSPINE", minute=10),
        "t1_c": mk("T1", orientation="SAG", body_part="CSPINE", minute=13),
        "t1_t": mk("T1", orientation="SAG", body_part="TSPINE", minute=16),
        "t1p_c": mk("T1", orientation="SAG", body_part="CSPINE", minute=27, contrast="post", bolus=b),
        "t1p_t": mk("T1", orientation="SAG", body_part="TSPINE", minute=30, contrast="post", bolus=b),
    }
    parts.update(over)
    return [s for s in parts.values() if s is not None]


def test_spine_needs_cervical_and_thoracic() -> None:
    spine = get_profile("ms-spine-new-deficit")
    ok = validate_study(_spine(), spine)
    assert ok.verdict == "compliant", [r.message for r in ok.missing_requirements]
    assert {"sequence.sag_t2.cervical", "sequence.sag_t2.thoracic", "contrast_delay.t1_post.cervical",
            "contrast_delay.t1_post.thoracic"} <= {r.id for r in ok.requirements}
    lumbar = mk("T2", orientation="SAG", body_part="LSPINE", minute=7)
    r = req(validate_study(_spine(t2_t=lumbar), spine), "sequence.sag_t2.thoracic")
    assert r.status == "fail" and "LSPINE" in r.message


def test_spine_region_from_description_or_unknown() -> None:
    spine = get_profile("ms-spine-new-deficit")
    by_text = mk("T2", orientation="SAG", body_part=None, description="T2 TSE SAG BWS", minute=7)
    assert req(validate_study(_spine(t2_t=by_text), spine), "sequence.sag_t2.thoracic").status == "pass"
    vague = mk("T2", orientation="SAG", body_part="SPINE", description="t2_tse_sag", minute=7)
    r = req(validate_study(_spine(t2_t=vague), spine), "sequence.sag_t2.thoracic")
    assert r.status == "unverifiable" and "body region" in r.message


def test_spine_stir_must_be_sagittal() -> None:
    spine = get_profile("ms-spine-new-deficit")
    axial = mk("STIR", orientation="AX", body_part="CSPINE", minute=4)
    r = req(validate_study(_spine(stir_c=axial), spine), "sequence.sag_stir.cervical")
    assert r.status == "fail" and "only AX orientation" in r.message


def test_pml_screening_counts_derived_trace_and_adc() -> None:
    pml = get_profile("ms-brain-pml-screening")
    study = [v3d("T2_FLAIR", minute=1), mk("T2", minute=6),
             mk("TRACE", derived=True, thick=5.0, px=(1.8, 1.8), minute=9),
             mk("ADC", derived=True, thick=5.0, px=(1.8, 1.8), minute=9)]
    result = validate_study(study, pml)
    assert req(result, "sequence.dwi").status == "pass" and req(result, "sequence.adc").status == "pass"
    res = req(result, "resolution.dwi")
    assert res.informational and res.status == "fail"  # coarse DWI is reported, not held against the study
    assert result.verdict == "compliant"
    no_adc = validate_study(study[:3], pml)
    assert req(no_adc, "sequence.adc").status == "fail" and no_adc.verdict == "non-compliant"


def test_to_json_is_complete_and_serialisable(prof: Profile) -> None:
    result = validate_study(routine(t2=mk("T2", thick=5.0, minute=12, contrast="post")), prof,
                            reference=ref_study(), now=dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.timezone.utc))
    d = json.loads(json.dumps(result.to_json()))
    assert d["study_instance_uid"] == STUDY and d["verdict"] == "non-compliant"
    assert d["profile"]["id"] == "ms-brain-routine" and d["profile"]["version"] == prof.version
    assert d["profile"]["title"] and d["profile"]["loinc"][0]["code"] == "24587-8"
    assert d["profile"]["limits"]["slice_thickness_2d_max_mm"] == 3.0
    assert d["reference_study_uid"] == REF and d["checked_at"] == "2026-03-02T12:00:00+00:00"
    assert len(d["series"]) == len(result.series)
    assert {"series_instance_uid", "series_number", "kind", "derived", "contrast"} <= set(d["series"][0])
    failing = [r for r in d["requirements"] if r["status"] == "fail"]
    assert [r["id"] for r in failing] == ["resolution.t2", "reference.t2"]
    assert {"id", "status", "measured", "limit", "series", "message", "informational", "label"} <= set(failing[0])
    assert d["summary"]["fail"] == 2


# --- properties: whatever the headers hold, a pass is backed by a value -----------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_maybe = st.one_of(st.none(), st.floats(min_value=0.3, max_value=8.0, allow_nan=False))


@st.composite
def _series(draw: st.DrawFn) -> SeriesClassification:
    pxv = draw(_maybe)
    return mk(draw(st.sampled_from(["T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "LOCALIZER",
                                    "OTHER"])),
              acquisition=draw(st.sampled_from([None, "2D", "3D"])), derived=draw(st.booleans()),
              contrast=draw(st.sampled_from([None, "pre", "post"])), thick=draw(_maybe),
              px=None if pxv is None else (pxv, pxv), fs=draw(st.sampled_from([None, 1.0, 1.494, 3.0])),
              orientation=draw(st.sampled_from([None, "AX", "SAG"])),
              body_part=draw(st.sampled_from([None, "BRAIN", "CSPINE", "TSPINE", "SPINE"])),
              minute=draw(st.integers(0, 40)), bolus=draw(st.sampled_from([None, BOLUS])))


@settings(max_examples=60, deadline=None)
@given(st.lists(_series(), max_size=8), st.sampled_from(["ms-brain-routine", "ms-brain-pml-suspected",
                                                          "ms-spine-new-deficit"]))
def test_pass_is_always_backed_by_a_measured_value(study: list[SeriesClassification], profile_id: str) -> None:
    result = validate_study(study, get_profile(profile_id))
    by_uid = {s.facts.series_instance_uid: s for s in study}
    for r in result.requirements:
        if r.status != "pass":
            continue
        if r.id.startswith("sequence."):
            (uid,) = r.series
            s = by_uid[uid]
            assert s.kind == r.measured and s.kind not in ("LOCALIZER", "OTHER")
            assert not s.derived or s.kind in ("DWI", "ADC", "TRACE")  # allow_derived in the DWI profiles
        elif r.id.startswith("resolution."):
            assert r.measured["slice_thickness_mm"] is not None and r.measured["pixel_spacing_mm"] is not None
        elif r.id.startswith("contrast_delay"):
            assert r.measured["delay_s"] >= 300
        elif r.id == "field_strength":
            assert r.measured is not None and r.measured >= 1.45
    statuses = {r.status for r in result.requirements if not r.informational}
    expected = "non-compliant" if "fail" in statuses else ("unverifiable" if "unverifiable" in statuses
                                                            else "compliant")
    assert result.verdict == expected
    json.dumps(result.to_json())


def test_a_lone_t1_of_unknown_contrast_cannot_answer_both_t1_requirements() -> None:
    """GUIDELINES.md 1: routine needs "T1-weighted **pre** and **post** gadolinium" -- two series. One T1
    whose contrast state is unknown (issue 13: never "pre" from silence) leaves the pre-contrast requirement
    unverifiable, but the study is non-compliant: the post-contrast T1 is surely missing."""
    from dicom_fixtures import generate_study
    import tempfile
    from pathlib import Path as _P

    from msfollowup.dicom.classify import classify_study, read_headers

    with tempfile.TemporaryDirectory() as d:
        study = generate_study(_P(d), profile="ms-brain-routine", defects=["missing_t1_post"], slices=2)
        series, _, _ = read_headers(study.files)
        result = validate_study(classify_study(list(series.values())), "ms-brain-routine")
    by = {r.id: r for r in result.requirements}
    assert by["sequence.t1_pre"].status == "unverifiable"
    assert by["sequence.t1_post"].status == "fail" and "cannot be both" in by["sequence.t1_post"].message
    assert result.verdict == "non-compliant"
