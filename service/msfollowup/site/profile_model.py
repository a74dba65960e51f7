"""The protocol profile models (pydantic): limits, regions, sequence rules, profiles, and their errors.

Loading them from protocols/ is msfollowup.site.profiles; composing several into one is
msfollowup.site.compose (both import these models, so neither imports the other at module level).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONSTRAINTS_FILE = "constraints.toml"
_PROFILE_MARKERS = ("id", "title", "sequences", "loinc", "needs_contrast")

# The classifier's kinds that can be required; LOCALIZER and OTHER never satisfy a requirement.
RequiredKind = Literal["T2_FLAIR", "T2", "PD", "T1", "DWI", "ADC", "TRACE", "STIR", "SWI"]


class ProfileError(Exception):
    """A profile or constraints file that cannot be used; the message names file, key and problem."""


class UnknownProfileError(ProfileError):
    """The requested profile id is not defined in any protocols folder."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
    """Technical limits (GUIDELINES.md section 2); units are in the key names."""

    field_strength_min_t: float = Field(gt=0)
    field_strength_tolerance_t: float = Field(ge=0)
    slice_thickness_2d_max_mm: float = Field(gt=0)
    pixel_spacing_2d_max_mm: float = Field(gt=0)
    tolerance_2d_mm: float = Field(ge=0)
    voxel_edge_3d_max_mm: float = Field(gt=0)
    # Floating-point representation only (002: "1 mm3"): a larger tolerance would pass 1.1 mm voxels.
    tolerance_3d_mm: float = Field(ge=0, le=0.02)
    contrast_delay_min_minutes: float = Field(ge=0)
    reference_field_strength_tolerance_t: float = Field(ge=0)
    reference_voxel_tolerance_mm: float = Field(ge=0)
    exam_length_expected_min_minutes: float = Field(ge=0)
    exam_length_expected_max_minutes: float = Field(gt=0)

    @model_validator(mode="after")
    def _exam_range(self) -> Limits:
        if self.exam_length_expected_min_minutes > self.exam_length_expected_max_minutes:
            raise ValueError("exam_length_expected_min_minutes is larger than exam_length_expected_max_minutes")
        return self


class Loinc(_Model):
    code: str = Field(pattern=r"^\d{1,7}-\d$")
    meaning: str = Field(min_length=1)


class Region(_Model):
    """How a series shows which body region it covers (used by spine profiles)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    label: str = Field(min_length=1)
    body_parts: tuple[str, ...] = ()  # BodyPartExamined values, compared case-insensitively
    description_pattern: str | None = None  # regular expression on SeriesDescription

    @field_validator("description_pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    def matches(self, body_part: str | None, description: str | None) -> bool | None:
        """True/False when the headers say which region this is, None when they do not."""
        bp = (body_part or "").strip().upper()
        if bp and bp in {b.upper() for b in self.body_parts}:
            return True
        if self.description_pattern and description and re.search(self.description_pattern, description):
            return True
        if bp in ("", "SPINE"):  # absent, or "some part of the spine": undecided
            return None
        return False


class SequenceRule(_Model):
    """One required sequence: any of these kinds, with optional contrast/orientation/region conditions."""

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    label: str = Field(min_length=1)
    any_of: tuple[RequiredKind, ...] = Field(min_length=1)  # in order of preference
    contrast: Literal["pre", "post"] | None = None
    orientation: tuple[Literal["AX", "SAG", "COR", "OBL"], ...] = ()  # empty: any orientation
    regions: tuple[str, ...] = ()  # each region needs its own series
    prefer_acquisition: Literal["2D", "3D"] | None = None
    allow_derived: bool = False  # e.g. ADC/trace maps, which are derived by nature
    resolution: Literal["required", "informational", "off"] = "required"
    # required: a failure makes the study non-compliant; recommended: a warning in every report.
    severity: Literal["required", "recommended"] = "required"


class Constraints(_Model):
    version: str = Field(min_length=1)
    source: tuple[str, ...] = ()
    limits: Limits
    regions: tuple[Region, ...] = ()
    severity: Mapping[str, Literal["required", "recommended"]] = Field(default_factory=dict)


class Profile(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(min_length=1)
    title: str = Field(min_length=1)
    applies_to: str = ""
    source: tuple[str, ...] = Field(min_length=1)
    # Code Value of the worklist's Scheduled Protocol Code (DICOM SH: at most 16 characters, and the
    # attribute modalities read; Long Code Value is newer and often ignored). Default: the id.
    protocol_code: str = Field(default="", max_length=16, pattern=r"^[A-Za-z0-9._-]*$")
    needs_contrast: bool
    region: str | None = None  # body region of the exam: series clearly of another region do not count
    loinc: tuple[Loinc, ...] = Field(min_length=1)
    sequences: tuple[SequenceRule, ...]
    regions: tuple[Region, ...] = ()
    limits: Limits
    # Severity of the checks that are not sequences (e.g. "reference.scanner" = "recommended": 002
    # says the same scanner is "ideally" used). Keys are requirement id prefixes; default required.
    severity: Mapping[str, Literal["required", "recommended"]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if not self.sequences:
            raise ValueError("no [[sequences]]: a profile must require at least one sequence")
        ids = [s.id for s in self.sequences]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"sequence id(s) used twice: {', '.join(dupes)}")
        names = {r.name for r in self.regions}
        if self.region is not None and self.region not in names:
            raise ValueError(f"region {self.region!r} is not defined in [[regions]] (nor in {CONSTRAINTS_FILE})")
        for s in self.sequences:
            unknown = [r for r in s.regions if r not in names]
            if unknown:
                raise ValueError(f"sequence {s.id!r} names undefined region(s) {', '.join(unknown)}")
            if s.contrast == "post" and not self.needs_contrast:
                raise ValueError(f"sequence {s.id!r} is post-contrast but needs_contrast is false")
        if not self.protocol_code and len(self.id) > 16:
            raise ValueError("protocol_code (at most 16 characters) is required when the id is longer than 16")
        return self

    @property
    def worklist_code(self) -> str:
        """Code Value of the profile on the worklist (ScheduledProtocolCodeSequence)."""
        return self.protocol_code or self.id

    def get_region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    def summary(self) -> dict[str, Any]:
        """The profile block of a result: enough for a report writer to name what was checked."""
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "loinc": [l.model_dump() for l in self.loinc],
            "source": list(self.source),
            "limits": self.limits.model_dump(),
        }


# --- loading ----------------------------------------------------------------------------------
