"""Protocol profiles: declarative TOML files (protocols/*.toml) loaded into immutable, schema-checked models.

Where the data comes from, in order (later wins):
1. the packaged folder `msfollowup.protocols` (the repository's `protocols/`),
2. a site folder (`[validation] protocols_dir`): its `constraints.toml` overrides single limits for every
   profile, and a profile file there replaces the packaged profile with the same id or adds a new one.

A profile's effective limits are constraints.toml `[limits]`, updated by the profile's own `[limits]`.
A bad file raises ProfileError naming the file, the key and the problem, so a site can fix it alone.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PACKAGE = "msfollowup.protocols"
CONSTRAINTS_FILE = "constraints.toml"
# Top-level keys that make a TOML file a profile; other data files (e.g. intervals.toml) are not ours.
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


def _key(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _format(name: str, err: ValidationError, prefix: tuple[int | str, ...] = ()) -> str:
    lines = [f"{name}: invalid profile data"]
    for item in err.errors():
        key = _key((*prefix, *item["loc"]))
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _read(entry: Traversable) -> dict[str, Any]:
    try:
        return tomllib.loads(entry.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ProfileError(f"{entry}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{entry}: not valid TOML: {exc}") from None


def _toml_files(folder: Traversable) -> list[Traversable]:
    return sorted((e for e in folder.iterdir() if e.is_file() and e.name.endswith(".toml")), key=lambda e: e.name)


def packaged_dir() -> Traversable:
    return files(PACKAGE)


def _merge(entry: Traversable, base: Mapping[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with limits updated key by key, and regions replaced or added by name, over `base`."""
    limits, regions = data.get("limits", {}), data.get("regions", [])
    if not isinstance(limits, dict):
        raise ProfileError(f"{entry}: invalid profile data\n  limits: must be a table of limits")
    if not isinstance(regions, list):
        raise ProfileError(f"{entry}: invalid profile data\n  regions: must be an array of tables [[regions]]")
    by_name = {r["name"]: r for r in base.get("regions", [])}
    for i, r in enumerate(regions):
        try:  # checked here so the message points into this file's own [[regions]]
            by_name[Region.model_validate(r).name] = r
        except ValidationError as exc:
            raise ProfileError(_format(str(entry), exc, ("regions", i))) from None
    severity = data.get("severity", {})
    if not isinstance(severity, dict):
        raise ProfileError(f"{entry}: invalid profile data\n  severity: must be a table of requirement = severity")
    return {**data, "limits": {**base.get("limits", {}), **limits}, "regions": list(by_name.values()),
            "severity": {**base.get("severity", {}), **severity}}


def _constraints(folders: list[Traversable]) -> dict[str, Any]:
    """Limits and regions every profile starts from: packaged constraints.toml, then each site's overrides."""
    base: dict[str, Any] = {}
    for folder in folders:
        entry = folder / CONSTRAINTS_FILE
        if not entry.is_file():
            continue
        try:
            merged = Constraints.model_validate(_merge(entry, base, _read(entry)))
        except ValidationError as exc:
            raise ProfileError(_format(str(entry), exc)) from None
        base = {"limits": merged.limits.model_dump(), "regions": [r.model_dump() for r in merged.regions],
                "severity": dict(merged.severity)}
    if not base:
        raise ProfileError(f"no {CONSTRAINTS_FILE} found in {', '.join(map(str, folders))}")
    return base


def _profile(entry: Traversable, base: Mapping[str, Any]) -> Profile:
    data = _merge(entry, base, _read(entry))
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format(str(entry), exc)) from None
    stem = entry.name.removesuffix(".toml")
    if profile.id != stem:
        raise ProfileError(f"{entry}: id {profile.id!r} does not match the file name (expected id = {stem!r})")
    return profile


def _folders(directory: Path | None) -> list[Traversable]:
    folders: list[Traversable] = [packaged_dir()]
    if directory is not None:
        if not Path(directory).is_dir():
            raise ProfileError(f"{directory}: protocols folder does not exist or is not a folder")
        folders.append(Path(directory))
    return folders


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """Every profile, by id: the packaged ones, replaced or extended by those in `directory`."""
    folders = _folders(directory)
    base = _constraints(folders)
    profiles: dict[str, Profile] = {}
    for folder in folders:
        for entry in _toml_files(folder):
            if entry.name == CONSTRAINTS_FILE:
                continue
            data = _read(entry)
            if not any(k in data for k in _PROFILE_MARKERS):
                continue  # another component's data file (e.g. intervals.toml)
            profiles[entry.name.removesuffix(".toml")] = _profile(entry, base)
    return profiles


def get_profile(profile_id: str, directory: Path | None = None) -> Profile:
    """A profile file by id, or a composed id (see compose.py: `a+b`, `a@seq,seq`, `~nogd`)."""
    profiles = load_profiles(directory)
    if any(c in profile_id for c in "+@~"):
        from msfollowup.compose import compose_id

        return compose_id(profile_id, profiles)
    try:
        return profiles[profile_id]
    except KeyError:
        known = ", ".join(sorted(profiles)) or "(none)"
        raise UnknownProfileError(f"unknown profile {profile_id!r}; known profiles: {known}") from None
