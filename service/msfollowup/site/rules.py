"""The interval rules (protocols/intervals.toml) as validated, immutable pydantic models.

Pure site policy: no database, network or clock. Every error names the file, the rule and the key, so a
site can fix its own file alone. The condition vocabulary (variables and their operators) is the
interface between the plan model and the data; it lives here, the rules themselves are data.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from msfollowup.core.dates import Unit, add_offset
from msfollowup.site.drugs import Vocabulary, load_vocabulary
from msfollowup.site.profiles import Profile, load_profiles, memoized

INTERVALS_FILE = "intervals.toml"
Severity = Literal["required", "recommended"]


class IntervalRulesError(ValueError):
    """An intervals file that cannot be used; the message names the file, the rule and the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Model):
    earliest: float = Field(ge=0)
    target: float = Field(ge=0)
    latest: float = Field(ge=0)
    unit: Unit = "months"

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if not self.earliest <= self.target <= self.latest:
            raise ValueError("must satisfy earliest <= target <= latest")
        return self

    def dates(self, anchor: dt.date) -> tuple[dt.date, dt.date, dt.date]:
        return (
            add_offset(anchor, self.earliest, self.unit),
            add_offset(anchor, self.target, self.unit),
            add_offset(anchor, self.latest, self.unit),
        )


class Condition(_Model):
    variable: str
    op: str
    value: Any


# variable -> (kind, allowed operators)
_STRING_OPS = ("eq", "ne", "in", "not_in")
_NUMBER_OPS = ("lt", "le", "gt", "ge")
VARIABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dmt": ("string", _STRING_OPS),
    "previous_dmt": ("string", _STRING_OPS),
    "dmt_pml_risk": ("string", _STRING_OPS),  # PML-risk class of the current drug (drugs.toml)
    "previous_dmt_pml_risk": ("string", _STRING_OPS),  # ... of the drug before the last switch
    "previous_dmt_infection_risk": ("string", _STRING_OPS),  # opportunistic-infection class of that drug
    "events": ("events", ("has", "lacks")),  # dated clinical events of these kinds were recorded
    "jcv": ("string", _STRING_OPS),
    "months_on_dmt": ("number", _NUMBER_OPS),
    "months_since_switch": ("number", _NUMBER_OPS),
    "months_since_diagnosis": ("number", _NUMBER_OPS),
    "flags": ("flags", ("has", "lacks")),
}
PLAN_DATES = ("dmt_start", "switch_date", "diagnosed", "dmt_stop")
# Dated events: recorded by a clinician (relapse-*, pml-suspected) or implied by the therapy courses
# (therapy-stop of a high infection-risk drug, therapy-start after such a switch).
EVENT_KINDS = ("relapse-brain", "relapse-spinal", "pml-suspected", "therapy-stop", "therapy-start-after-switch")
RECORDED_EVENTS = EVENT_KINDS[:3]


def _condition_value(kind: str, op: str, value: Any, flags: tuple[str, ...]) -> Any:
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        return float(value)
    if kind in ("flags", "events"):
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"must be a name or a list of names of {kind}")
        known = flags if kind == "flags" else EVENT_KINDS
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown {kind[:-1]} {unknown[0]!r} (known: {', '.join(known)})")
        return tuple(names)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings")
        return tuple(v.lower() for v in value)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value.lower()


def parse_conditions(raw: Any, flags: tuple[str, ...]) -> tuple[Condition, ...]:
    """`when` table -> conditions; a ValueError names `variable.operator` first."""
    if not isinstance(raw, dict):
        raise ValueError("must be a table of variable = { operator = value }")
    out: list[Condition] = []
    for var, ops in raw.items():
        if var not in VARIABLES:
            raise ValueError(f"{var}: unknown variable (known: {', '.join(VARIABLES)})")
        kind, allowed = VARIABLES[var]
        if not isinstance(ops, dict) or not ops:
            raise ValueError(f"{var}: must be a non-empty table of operators")
        for op, value in ops.items():
            if op not in allowed:
                raise ValueError(f"{var}.{op}: operator not allowed for {var} (allowed: {', '.join(allowed)})")
            try:
                out.append(Condition(variable=var, op=op, value=_condition_value(kind, op, value, flags)))
            except ValueError as exc:
                raise ValueError(f"{var}.{op}: {exc}") from None
    return tuple(out)


class Rule(_Model):
    """One monitoring rule: when it applies (conditions and period), its window, protocol and source."""

    id: str = Field(min_length=1)
    purpose: str = Field(min_length=1)
    profile: str = Field(min_length=1)
    source: str = Field(min_length=1)
    window: Window | None = None
    window_days: Window | None = None
    when: tuple[Condition, ...] = ()
    description: str = ""
    not_before: str | None = None  # plan date, flag or event kind: no window opens before it
    event: str | None = None  # event kind: one exam per event, its window counted from the event date
    # Period: the rule applies from the plan date `period_from` for `period_months`, then ends (no exam
    # of the rule is planned after the end, whatever the conditions said at the last exam).
    period_from: str | None = None
    period_months: float | None = Field(default=None, gt=0)
    # Fixed points counted from `not_before` (e.g. 6 and 12 months after treatment start). `window` is
    # the window of the first one and is shifted to the others; an exam before a point's earliest date
    # (an interim scan) does not answer it, so interim scans do not move the reference scan.
    milestones: tuple[float, ...] = ()
    overridable: bool = True
    # PML surveillance, new deficit, switch vigilance: a plan override never relaxes it, and setting an
    # override while it applies is refused with its name.
    safety: bool = False

    @field_validator("when", mode="before")
    @classmethod
    def _when(cls, raw: Any, info: ValidationInfo) -> tuple[Condition, ...]:
        flags = (info.context or {}).get("flags", ())
        return parse_conditions(raw, tuple(flags))

    @model_validator(mode="before")
    @classmethod
    def _units(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            raw = dict(raw)
            if isinstance(raw.get("window"), dict):
                raw["window"] = {**raw["window"], "unit": "months"}
            if isinstance(raw.get("window_days"), dict):
                raw["window_days"] = {**raw["window_days"], "unit": "days"}
        return raw

    @model_validator(mode="after")
    def _one_window(self) -> Rule:
        if (self.window is None) == (self.window_days is None):
            raise ValueError("needs exactly one of window (months) or window_days")
        if (self.period_from is None) != (self.period_months is None):
            raise ValueError("period_from and period_months go together")
        if self.milestones and (self.window is None or self.not_before not in PLAN_DATES):
            raise ValueError("milestones need a window in months and not_before naming a plan date")
        if self.event is not None and self.event not in EVENT_KINDS:
            raise ValueError(f"event must be one of {', '.join(EVENT_KINDS)}")
        if self.period_from is not None and self.period_from not in PLAN_DATES:
            raise ValueError(f"period_from must be one of {', '.join(PLAN_DATES)}")
        return self

    @property
    def fixed(self) -> bool:
        """Not suppressed by a plan override."""
        return self.safety or not self.overridable

    @property
    def interval(self) -> Window:
        window = self.window or self.window_days
        assert window is not None
        return window


class Substitution(_Model):
    id: str
    flag: str
    mapping: Mapping[str, str]
    source: str = ""


class IntervalRules(_Model):
    version: str
    rules: tuple[Rule, ...]
    site_default: tuple[str, ...]
    flags: tuple[str, ...]
    richness: tuple[str, ...]
    purposes: Mapping[str, str]
    substitutions: tuple[Substitution, ...]
    recall_window: Window
    unverifiable_recall_prefixes: tuple[str, ...]
    baseline_window: Window
    override_earliest_fraction: float
    override_latest_fraction: float
    source_path: str = ""
    drugs: Vocabulary = Field(default_factory=load_vocabulary)
    profiles: Mapping[str, Profile] = Field(default_factory=load_profiles)

    def purpose_of(self, profile_id: str) -> str:
        return self.purposes.get(profile_id.split("+")[0], "brain")

    def rank(self, profile_id: str) -> int:
        """Lower is richer; unknown profiles rank last so a known rich profile always wins."""
        return self.richness.index(profile_id) if profile_id in self.richness else len(self.richness)

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


def _err(where: str, msg: str) -> IntervalRulesError:
    return IntervalRulesError(f"{where}: {msg}")


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before")) or "(rule)"


def _rule(raw: Any, index: int, flags: tuple[str, ...], richness: tuple[str, ...],
          purposes: Mapping[str, str], where: str) -> Rule:
    name = f"rule {raw['id']!r}" if isinstance(raw, dict) and isinstance(raw.get("id"), str) else f"rule[{index}]"
    loc = f"{where}: {name}"
    if not isinstance(raw, dict):
        raise _err(loc, "must be a table")
    try:
        rule = Rule.model_validate(raw, context={"flags": flags})
    except ValidationError as exc:
        e = exc.errors()[0]
        msg = "unknown key" if e["type"] == "extra_forbidden" else str(e["msg"]).removeprefix("Value error, ")
        raise _err(f"{loc}.{_loc(e['loc'])}", msg) from None
    if rule.profile not in richness:
        raise _err(loc, f"profile {rule.profile!r} is not listed in [profiles].richness")
    if purposes.get(rule.profile, "brain") != rule.purpose:
        raise _err(loc, f"purpose {rule.purpose!r} does not match the purpose of profile {rule.profile!r}")
    if rule.not_before is not None and rule.not_before not in PLAN_DATES + EVENT_KINDS + flags:
        raise _err(loc, f"not_before must be a flag, an event kind or one of {', '.join(PLAN_DATES)}")
    return rule


def _str_list(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise _err(where, "must be a list of non-empty strings")
    return tuple(raw)


def _window(raw: Any, unit: Unit, where: str) -> Window:
    if not isinstance(raw, dict):
        raise _err(where, "must be a table with exactly earliest, target, latest")
    try:
        return Window.model_validate({**raw, "unit": unit})
    except ValidationError as exc:
        raise _err(where, str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None


def _fraction(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise _err(where, "must be a number > 0")
    return float(raw)


def parse_interval_rules(data: Mapping[str, Any], source: str = "<data>", directory: Path | None = None
                         ) -> IntervalRules:
    """Validate the parsed TOML; every error names `source` and the offending key."""

    def where(key: str) -> str:
        return f"{source}: {key}"

    flags = _str_list(data.get("flags"), where("flags"))
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        raise _err(where("profiles"), "table is required")
    richness = _str_list(profiles.get("richness"), where("profiles.richness"))
    purposes = profiles.get("purpose", {})
    if not isinstance(purposes, dict) or not all(isinstance(v, str) for v in purposes.values()):
        raise _err(where("profiles.purpose"), "must map profile ids to purpose names")
    raw_rules = data.get("rule")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise _err(where("rule"), "at least one [[rule]] is required")
    rules = tuple(_rule(r, i, flags, richness, purposes, source) for i, r in enumerate(raw_rules))
    ids = [r.id for r in rules]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise _err(where("rule"), f"duplicate rule id {dup!r}")
    site_default = _str_list(data.get("site_default"), where("site_default"))
    for rid in site_default:
        if rid not in ids:
            raise _err(where("site_default"), f"unknown rule id {rid!r}")
    recall, baseline, override = data.get("recall", {}), data.get("baseline", {}), data.get("override", {})
    if not all(isinstance(t, dict) for t in (recall, baseline, override)):
        raise _err(where("recall/baseline/override"), "must be tables")
    return IntervalRules(
        version=str(data.get("version", "")),
        rules=rules,
        site_default=site_default,
        flags=flags,
        richness=richness,
        purposes=dict(purposes),
        substitutions=_substitutions(data.get("substitutions", {}), flags, richness, source),
        recall_window=_window(recall.get("window_days"), "days", where("recall.window_days")),
        unverifiable_recall_prefixes=_str_list(
            recall.get("unverifiable_recall_prefixes", []) or ["sequence."], where("recall.unverifiable_recall_prefixes")
        ),
        baseline_window=_window(baseline.get("window_days"), "days", where("baseline.window_days")),
        override_earliest_fraction=_fraction(override.get("earliest_fraction", 0.9), where("override.earliest_fraction")),
        override_latest_fraction=_fraction(override.get("latest_fraction", 1.1), where("override.latest_fraction")),
        source_path=source,
        drugs=load_vocabulary(directory),
        profiles=load_profiles(directory),
    )


def _substitutions(raw: Any, flags: tuple[str, ...], richness: tuple[str, ...], source: str
                   ) -> tuple[Substitution, ...]:
    if not isinstance(raw, dict):
        raise _err(f"{source}: substitutions", "must be a table of flag -> substitution")
    out = []
    for flag, sub in raw.items():
        key = f"{source}: substitutions.{flag}"
        if flag not in flags:
            raise _err(key, "unknown flag")
        if not isinstance(sub, dict) or not isinstance(sub.get("map"), dict):
            raise _err(key, "needs a map = { profile = profile } table")
        for a, b in sub["map"].items():
            if a not in richness or b not in richness:
                raise _err(f"{key}.map", f"{a!r} -> {b!r}: both profiles must be listed in [profiles].richness")
        out.append(Substitution(id=str(sub.get("id", flag)), flag=flag, mapping=dict(sub["map"]),
                                source=str(sub.get("source", ""))))
    return tuple(out)


def load_interval_rules(directory: Path | None = None) -> IntervalRules:
    """Load intervals.toml from `directory` if the site put one there, else the packaged default.

    A site protocols_dir may hold only the files the site changed (see protocols/__init__.py).
    Parsed again only when a protocol file changed (they are all the rules depend on: intervals,
    drugs, profiles).
    """
    return memoized("intervals", directory, lambda: _load_interval_rules(directory))


def _load_interval_rules(directory: Path | None) -> IntervalRules:
    if directory is not None and (Path(directory) / INTERVALS_FILE).is_file():
        path = Path(directory) / INTERVALS_FILE
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IntervalRulesError(f"{path}: cannot read: {exc}") from None
    else:
        res = importlib.resources.files("msfollowup.protocols") / INTERVALS_FILE
        source, text = str(res), res.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IntervalRulesError(f"{source}: not valid TOML: {exc}") from None
    return parse_interval_rules(data, source, directory)
