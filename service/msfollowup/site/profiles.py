"""Protocol profiles: declarative TOML files (protocols/*.toml) loaded into immutable, schema-checked models.

Where the data comes from, in order (later wins):
1. the packaged folder `msfollowup.protocols` (the repository's `protocols/`),
2. a site folder (`[validation] protocols_dir`): its `constraints.toml` overrides single limits for every
   profile, and a profile file there replaces the packaged profile with the same id or adds a new one.

A profile's effective limits are constraints.toml `[limits]`, updated by the profile's own `[limits]`.
A bad file raises ProfileError naming the file, the key and the problem, so a site can fix it alone.
"""

from __future__ import annotations

import os
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import ValidationError

from msfollowup.site.profile_model import (  # noqa: F401 - the models are part of this module's API
    _PROFILE_MARKERS, CONSTRAINTS_FILE, Constraints, Limits, Loinc, Profile, ProfileError, Region, SequenceRule, UnknownProfileError,
)

PACKAGE = "msfollowup.protocols"
# Top-level keys that make a TOML file a profile; other data files (e.g. intervals.toml) are not ours.
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
    if isinstance(folder, Path):  # the usual case: the folder's entries say which are files (no stat each)
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".toml") and e.is_file())
        return [folder / name for name in names]
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


T = TypeVar("T")
_memo: dict[tuple[str, str], tuple[tuple[tuple[str, bytes], ...], Any]] = {}
_memo_lock = threading.Lock()


def protocol_files(directory: Path | None) -> tuple[tuple[str, bytes], ...] | None:
    """Name and content of every TOML file protocol data is read from (packaged folder, then the site
    folder); None when a folder cannot be read (the loader itself then reports the problem)."""
    try:
        return tuple((str(e), _content(e)) for folder in _folders(directory) for e in _toml_files(folder))
    except (OSError, ProfileError):
        return None


# A file's bytes as last read, with its identity then (inode, size, mtime, ctime) and when they were read.
_read_before: dict[str, tuple[tuple[int, int, int, int], int, bytes]] = {}
RACY_NS = 2_000_000_000  # a change this close to the read may share its timestamps (coarse clocks, FAT)


def _content(entry: Traversable) -> bytes:
    """The file's bytes: those read before when its identity is unchanged and it was last changed well
    before that read (one stat instead of open, read and close: the live check asks on every study
    check, issue 17), otherwise read again. As git's racy-clean rule: any write after the read moves
    ctime past the read, and a write close to it (timestamps are coarse) is always read again, so an
    edit is never missed; a copy keeping old times (cp -p, rsync -t) still moves ctime or the inode."""
    if not isinstance(entry, Path):
        return entry.read_bytes()
    st = os.stat(entry)
    identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    name = str(entry)
    before = _read_before.get(name)
    if before is not None and before[0] == identity and max(st.st_mtime_ns, st.st_ctime_ns) < before[1] - RACY_NS:
        return before[2]
    read_at = time.time_ns()
    data = entry.read_bytes()
    _read_before[name] = (identity, read_at, data)  # (threads racing here only read once more)
    return data


def memoized(kind: str, directory: Path | None, load: Callable[[], T]) -> T:
    """`load()`, parsed again only when a protocol file's content changed. The live check and the
    pipeline ask for profiles and interval rules on every study check; parsing the TOML and validating
    the models each time cost ~2 ms of CPU per received instance in benchmarks/ingest.py. Keyed by the
    files' bytes, not their times, so an edit is always seen. The results are frozen models."""
    key = protocol_files(directory)
    if key is None:
        return load()
    slot = (kind, str(directory))
    with _memo_lock:
        hit = _memo.get(slot)
    if hit is not None and hit[0] == key:
        return cast(T, hit[1])
    value = load()
    with _memo_lock:
        _memo[slot] = (key, value)
    return value


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """Every profile, by id: the packaged ones, replaced or extended by those in `directory`."""
    return dict(memoized("profiles", directory, lambda: _load_profiles(directory)))


def _load_profiles(directory: Path | None) -> dict[str, Profile]:
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
        from msfollowup.site.compose import compose_id

        return compose_id(profile_id, profiles)
    try:
        return profiles[profile_id]
    except KeyError:
        known = ", ".join(sorted(profiles)) or "(none)"
        raise UnknownProfileError(f"unknown profile {profile_id!r}; known profiles: {known}") from None
