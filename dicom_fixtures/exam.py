"""What an exam contains: sequence physics, the series list of each profile, the defects, the timeline.

Vendor-neutral. `vendors.py` turns a planned series into vendor-styled header values; the writers
(`classic.py`, `enhanced.py`) turn it into files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PROFILES: tuple[str, ...] = (
    "ms-brain-routine",
    "ms-brain-pml-screening",
    "ms-brain-pml-suspected",
    "ms-brain-no-contrast",
    "ms-brain-new-deficit",
    "ms-spine-new-deficit",
)

DEFECTS: tuple[str, ...] = (
    "missing_flair",
    "missing_t2",
    "missing_t1_post",
    "missing_dwi",
    "field_1_0T",
    "no_field_strength",
    "thick_slices_5mm",
    "pixel_1_3mm",
    "contrast_2min",
    "no_contrast_start",
    "flair_derived_mpr_only",
    "lying_description",
    "localizer_only",
    "different_scanner",
)


@dataclass(frozen=True)
class Technique:
    """Vendor-neutral physics of one sequence type (typical values of a clinical brain/spine protocol)."""

    name: str
    kind: str  # one of msfollowup.dicom.classify.KINDS
    acquisition: str  # "2D" / "3D"
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    tr: float
    te: float
    ti: float | None
    flip: float
    etl: int
    acquisition_contrast: str  # Enhanced MR defined terms
    echo_pulse: str  # SPIN / GRADIENT
    duration_s: int
    derived: bool = False
    epi: bool = False


TECHNIQUES: dict[str, Technique] = {
    t.name: t
    for t in (
        Technique("LOC", "LOCALIZER", "2D", ("GR",), ("SP",), (), 8.6, 4.0, None, 20, 1, "T1", "GRADIENT", 25),
        Technique("T2_TSE", "T2", "2D", ("SE",), ("SK",), (), 5000, 95, None, 150, 15, "T2", "SPIN", 150),
        Technique("FLAIR_2D", "T2_FLAIR", "2D", ("SE", "IR"), ("SK", "SP"), ("IR",), 9000, 85, 2500, 150, 16,
                  "FLUID_ATTENUATED", "SPIN", 190),
        Technique("FLAIR_3D", "T2_FLAIR", "3D", ("SE", "IR"), ("SK", "SP", "MP"), ("IR",), 5000, 388, 1800, 120,
                  240, "FLUID_ATTENUATED", "SPIN", 330),
        Technique("T1_3D", "T1", "3D", ("GR", "IR"), ("SK", "SP", "MP"), ("IR",), 2300, 2.3, 900, 8, 1, "T1",
                  "GRADIENT", 290),
        Technique("T1_SE", "T1", "2D", ("SE",), ("SK",), (), 600, 10, None, 90, 3, "T1", "SPIN", 140),
        Technique("STIR", "STIR", "2D", ("SE", "IR"), ("SK",), ("IR",), 4000, 40, 160, 150, 12, "STIR", "SPIN", 170),
        Technique("DWI", "DWI", "2D", ("EP", "SE"), ("SK", "SS"), (), 5000, 80, None, 90, 64, "DIFFUSION", "SPIN",
                  95, epi=True),
        Technique("ADC", "ADC", "2D", ("EP", "SE"), ("SK", "SS"), (), 5000, 80, None, 90, 64, "DIFFUSION", "SPIN",
                  0, derived=True, epi=True),
        Technique("TRACE", "TRACE", "2D", ("EP", "SE"), ("SK", "SS"), (), 5000, 80, None, 90, 64, "DIFFUSION",
                  "SPIN", 0, derived=True, epi=True),
    )
}


@dataclass(frozen=True)
class PlannedSeries:
    """One series as it will be written. Fields ending in the truth the classifier must find."""

    key: str  # stable role within the profile, e.g. "t1_post", "t2_sag_c"
    technique: Technique
    orientation: str  # AX / SAG / COR / LOC3 (three-plane localizer)
    body_part: str  # BRAIN / CSPINE / TSPINE
    contrast_phase: str  # "pre" / "post" (relative to the gadolinium injection, when there is one)
    slice_thickness: float
    pixel_spacing: float
    spacing_between_slices: float
    derived: bool = False
    mpr: bool = False  # a scanner reformat (DERIVED\SECONDARY\MPR)
    source_key: str | None = None  # derived series: the acquired series it is computed from
    description_override: str | None = None
    start: dt.datetime = dt.datetime(2000, 1, 1)
    contrast_given: bool = False  # header carries ContrastBolus* attributes
    bolus_start: dt.datetime | None = None  # written ContrastBolusStartTime (None: absent)
    b_values: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return self.technique.kind


def _s(key: str, tech: str, orientation: str = "AX", body: str = "BRAIN", phase: str = "pre",
       source: str | None = None) -> PlannedSeries:
    t = TECHNIQUES[tech]
    if t.acquisition == "3D":
        thick, pixel, spacing = 1.0, 1.0, 1.0
    else:
        thick, pixel, spacing = 3.0, 0.9, 3.3  # 10 % gap, as 2D protocols do
    if tech == "LOC":
        thick, pixel, spacing = 8.0, 1.0, 10.0
    b = (0, 1000) if tech == "DWI" else ((1000,) if tech == "TRACE" else ())
    return PlannedSeries(key, t, orientation, body, phase, thick, pixel, spacing, derived=t.derived,
                         source_key=source, b_values=b)


INJECT = "inject"  # marker in a plan: the gadolinium goes in here


def _brain_routine(dwi: bool) -> list[PlannedSeries | str]:
    plan: list[PlannedSeries | str] = [_s("loc", "LOC", "LOC3"), _s("t1_pre", "T1_3D", "SAG"), INJECT,
                                       _s("flair", "FLAIR_3D", "SAG", phase="post"),
                                       _s("t2", "T2_TSE", "AX", phase="post")]
    if dwi:
        plan += _dwi("post")
    plan.append(_s("t1_post", "T1_3D", "SAG", phase="post"))
    return plan


def _dwi(phase: str) -> list[PlannedSeries | str]:
    return [_s("dwi", "DWI", "AX", phase=phase), _s("adc", "ADC", "AX", phase=phase, source="dwi"),
            _s("trace", "TRACE", "AX", phase=phase, source="dwi")]


def _profile_plan(profile: str) -> list[PlannedSeries | str]:
    if profile in ("ms-brain-routine", "ms-brain-new-deficit"):
        return _brain_routine(dwi=profile == "ms-brain-new-deficit")
    if profile == "ms-brain-pml-screening":
        return [_s("loc", "LOC", "LOC3"), _s("flair", "FLAIR_3D", "SAG"), _s("t2", "T2_TSE"), *_dwi("pre")]
    if profile == "ms-brain-pml-suspected":
        return [_s("loc", "LOC", "LOC3"), _s("t1_pre", "T1_3D", "SAG"), INJECT,
                _s("flair", "FLAIR_3D", "SAG", phase="post"), _s("t2", "T2_TSE", phase="post"), *_dwi("post"),
                _s("t1_post", "T1_3D", "SAG", phase="post")]
    if profile == "ms-brain-no-contrast":
        return [_s("loc", "LOC", "LOC3"), _s("flair", "FLAIR_3D", "SAG"), _s("t2", "T2_TSE"),
                _s("t1_pre", "T1_3D", "SAG")]
    if profile == "ms-spine-new-deficit":
        return [_s("loc", "LOC", "LOC3", "CSPINE"),
                _s("t2_sag_c", "T2_TSE", "SAG", "CSPINE"), _s("stir_sag_c", "STIR", "SAG", "CSPINE"),
                _s("t2_sag_t", "T2_TSE", "SAG", "TSPINE"), _s("stir_sag_t", "STIR", "SAG", "TSPINE"),
                _s("t1_pre_c", "T1_SE", "SAG", "CSPINE"), _s("t1_pre_t", "T1_SE", "SAG", "TSPINE"), INJECT,
                _s("t2_ax_c", "T2_TSE", "AX", "CSPINE", phase="post"),
                _s("t1_post_c", "T1_SE", "SAG", "CSPINE", phase="post"),
                _s("t1_post_t", "T1_SE", "SAG", "TSPINE", phase="post")]
    raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")


Pred = Callable[[PlannedSeries], bool]


def _drop(plan: list[PlannedSeries | str], defect: str, pred: Pred) -> list[PlannedSeries | str]:
    kept = [p for p in plan if isinstance(p, str) or not pred(p)]
    if len(kept) == len(plan):
        raise ValueError(f"defect {defect!r} does not apply: the profile has no such series")
    return kept


def _map(plan: list[PlannedSeries | str], defect: str, pred: Pred, **changes: object
         ) -> list[PlannedSeries | str]:
    out: list[PlannedSeries | str] = []
    hit = False
    for p in plan:
        if not isinstance(p, str) and pred(p):
            p = dataclasses.replace(p, **changes)  # type: ignore[arg-type]
            hit = True
        out.append(p)
    if not hit:
        raise ValueError(f"defect {defect!r} does not apply: the profile has no such series")
    return out


def _counts(p: PlannedSeries) -> bool:
    return not p.derived and p.kind not in ("LOCALIZER", "OTHER")


def apply_structure_defects(plan: list[PlannedSeries | str], defects: Sequence[str]) -> list[PlannedSeries | str]:
    """Defects that change which series exist or what they are."""
    for d in defects:
        if d == "missing_flair":
            plan = _drop(plan, d, lambda p: p.kind == "T2_FLAIR")
        elif d == "missing_t2":
            plan = _drop(plan, d, lambda p: p.kind == "T2")
        elif d == "missing_dwi":
            plan = _drop(plan, d, lambda p: p.kind in ("DWI", "ADC", "TRACE"))
        elif d == "missing_t1_post":
            plan = _drop(plan, d, lambda p: p.kind == "T1" and p.contrast_phase == "post")
            # No post T1 because no gadolinium was given: the whole exam is unenhanced.
            plan = [p if isinstance(p, str) else dataclasses.replace(p, contrast_phase="pre")
                    for p in plan if p != INJECT]
        elif d == "localizer_only":
            plan = [p for p in plan if not isinstance(p, str) and p.kind == "LOCALIZER"]
        elif d == "flair_derived_mpr_only":
            plan = _map(plan, d, lambda p: p.kind == "T2_FLAIR", derived=True, mpr=True, orientation="AX")
        elif d == "lying_description":
            plan = _map(plan, d, lambda p: p.key in ("t1_pre", "t1_pre_c"), description_override="AX FLAIR")
        elif d in ("thick_slices_5mm",):
            plan = _map(plan, d, lambda p: _counts(p) and p.technique.acquisition == "2D",
                        slice_thickness=5.0, spacing_between_slices=5.5)
        elif d == "pixel_1_3mm":
            plan = _map(plan, d, _counts, pixel_spacing=1.3)
        elif d in ("contrast_2min", "no_contrast_start", "field_1_0T", "no_field_strength", "different_scanner"):
            pass  # timing (schedule) or header-wide (writer) defects
        else:
            raise ValueError(f"unknown defect {d!r}; known: {', '.join(DEFECTS)}")
    timing = [d for d in defects if d in ("contrast_2min", "no_contrast_start")]
    if timing and INJECT not in plan:
        raise ValueError(f"defect {timing[0]!r} does not apply: no contrast injection in this exam")
    # Derived series of a source that is gone cannot exist either.
    keys = {p.key for p in plan if not isinstance(p, str)}
    return [p for p in plan if isinstance(p, str) or p.source_key is None or p.source_key in keys]


@dataclass
class Timeline:
    study_start: dt.datetime
    series: list[PlannedSeries] = field(default_factory=list)
    bolus: dt.datetime | None = None


GAP = dt.timedelta(seconds=40)  # operator time between series
POST_DELAY = dt.timedelta(minutes=6, seconds=30)  # compliant: >= 5 min, with margin


def schedule(plan: list[PlannedSeries | str], start: dt.datetime, defects: Sequence[str]) -> Timeline:
    """Give every series its start time; the injection sets ContrastBolusStartTime."""
    tl = Timeline(start)
    t = start + dt.timedelta(minutes=2)  # patient positioning
    bolus: dt.datetime | None = None
    last_acquired: dict[str, dt.datetime] = {}
    for p in plan:
        if p == INJECT:
            bolus = t
            t += dt.timedelta(seconds=30)
            continue
        assert isinstance(p, PlannedSeries)
        if p.derived and p.source_key in last_acquired:
            begin = last_acquired[p.source_key]  # derived maps carry their source's acquisition time
        else:
            if bolus is not None and p.kind == "T1" and p.contrast_phase == "post":
                t = max(t, bolus + POST_DELAY)
            begin = t
            t = begin + dt.timedelta(seconds=p.technique.duration_s) + GAP
        last_acquired[p.key] = begin
        tl.series.append(dataclasses.replace(p, start=begin))
    if bolus is not None:
        if "contrast_2min" in defects:
            first_post_t1 = next(s.start for s in tl.series if s.kind == "T1" and s.contrast_phase == "post")
            bolus = first_post_t1 - dt.timedelta(minutes=2)
            # Series acquired before the (later) injection are pre-contrast, truthfully.
            tl.series = [dataclasses.replace(s, contrast_phase="pre") if s.start < bolus and s.kind != "T1"
                         else s for s in tl.series]
        tl.bolus = bolus
        written = None if "no_contrast_start" in defects else bolus
        tl.series = [dataclasses.replace(s, contrast_given=True, bolus_start=written)
                     if s.contrast_phase == "post" else s for s in tl.series]
    return tl


def plan_exam(profile: str, defects: Sequence[str], start: dt.datetime) -> Timeline:
    unknown = [d for d in defects if d not in DEFECTS]
    if unknown:
        raise ValueError(f"unknown defect(s) {', '.join(map(repr, unknown))}; known: {', '.join(DEFECTS)}")
    plan = apply_structure_defects(_profile_plan(profile), defects)
    return schedule(plan, start, defects)
