"""Composed protocol profiles: what several applicable rules need together (issue 10 item 4).

A composed id names its parts, so the worklist item, the check and the report all rebuild the same
profile from the id alone (no table of generated profiles):

    ms-brain-pml-screening+ms-brain-routine   the union of both profiles' required series
    ms-brain-routine@t1_pre,t1_post           only these series of a profile (a recall for what was missing)
    ms-spine-new-deficit~nogd                 every contrast requirement removed (gadolinium contraindicated)

The union keeps one requirement per sequence id; where both parts name it, the stricter (fewer accepted
kinds) wins. Parts whose requirements another part already covers are dropped, so ids stay short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from msfollowup.site.profile_model import Profile, ProfileError, SequenceRule, UnknownProfileError

NO_GADOLINIUM = "~nogd"
MAX_ID = 64  # StudyCheck.profile_id and the worklist's profile_id columns


def _covers(a: SequenceRule, b: SequenceRule) -> bool:
    """Does requirement `a` satisfy everything `b` asks for?"""
    return (a.id == b.id and set(a.any_of) <= set(b.any_of) and a.contrast == b.contrast
            and set(b.regions) <= set(a.regions) and set(a.orientation) <= set(b.orientation or a.orientation))


def _covered(p: Profile, others: Iterable[Profile]) -> bool:
    return any(all(any(_covers(x, s) for x in o.sequences) for s in p.sequences) for o in others)


def minimal_parts(parts: Sequence[Profile]) -> list[Profile]:
    """Drop parts another part already covers (routine inside PML-suspected); of two equal parts the
    first (richer) stays."""
    kept: list[Profile] = []
    for i, p in enumerate(parts):
        later = [q for q in parts[i + 1:] if not _covered(q, [p])]
        if not _covered(p, kept + later):
            kept.append(p)
    return kept or list(parts[:1])


def _merge_sequences(parts: Sequence[Profile]) -> tuple[SequenceRule, ...]:
    by_id: dict[str, SequenceRule] = {}
    for p in parts:
        for s in p.sequences:
            cur = by_id.get(s.id)
            if cur is None:
                by_id[s.id] = s
            elif cur.contrast != s.contrast or cur.regions != s.regions:
                by_id[f"{s.id}_{p.id.rsplit('-', 1)[-1]}"] = s.model_copy(update={"id": f"{s.id}_{p.id.rsplit('-', 1)[-1]}"})
            else:
                kinds = tuple(k for k in cur.any_of if k in s.any_of) or cur.any_of
                by_id[s.id] = cur.model_copy(update={"any_of": kinds, "severity": "required" if "required" in
                                                     (cur.severity, s.severity) else "recommended"})
    return tuple(by_id.values())


def _code(profile_id: str) -> str:
    """Worklist Code Value (<= 16 characters) of a composed profile: stable for the same id."""
    return "MSX-" + hashlib.sha256(profile_id.encode()).hexdigest()[:10].upper()


def compose(parts: Sequence[Profile], only: Mapping[str, Sequence[str]] | None = None, no_gadolinium: bool = False
            ) -> Profile:
    """One profile with every requirement of `parts` (restricted per part by `only`), optionally without contrast."""
    if not parts:
        raise ProfileError("a composed profile needs at least one part")
    restricted = []
    for p in parts:
        keep = (only or {}).get(p.id)
        seqs = p.sequences if not keep else tuple(s for s in p.sequences if s.id in keep)
        if keep and not seqs:
            raise ProfileError(f"profile {p.id!r} has none of the sequences {', '.join(keep)}")
        restricted.append(p if not keep else p.model_copy(update={"sequences": seqs}))
    sequences = _merge_sequences(restricted)
    needs_contrast = any(p.needs_contrast for p in restricted)
    if no_gadolinium:
        # 004 FAQ / 002: without contrast. Pre-contrast T1 only exists to be compared with the post-contrast one.
        sequences = tuple(s for s in sequences if s.contrast is None)
        needs_contrast = False
    elif not any(s.contrast == "post" for s in sequences):
        needs_contrast = False
    pid = "+".join(p.id + (f"@{','.join((only or {})[p.id])}" if (only or {}).get(p.id) else "") for p in parts)
    pid += NO_GADOLINIUM if no_gadolinium else ""
    if not sequences:
        raise ProfileError(f"composed profile {pid!r} requires no series")
    first = restricted[0]
    if len(parts) == 1 and not only and not no_gadolinium:
        return first
    title = " + ".join(p.title for p in parts) + (" (recall: missing part)" if only else "")
    title += " (without contrast)" if no_gadolinium else ""
    regions = {r.name: r for p in restricted for r in p.regions}
    loinc = tuple({x.code: x for p in restricted for x in p.loinc}.values())
    return first.model_copy(update={
        "id": pid, "version": "+".join(p.version for p in parts), "title": title, "sequences": sequences,
        "needs_contrast": needs_contrast, "regions": tuple(regions.values()), "loinc": loinc,
        "source": tuple(dict.fromkeys(x for p in restricted for x in p.source)), "protocol_code": _code(pid),
        "applies_to": "; ".join(p.applies_to for p in parts if p.applies_to),
    })


def parse_id(profile_id: str) -> tuple[list[str], dict[str, list[str]], bool]:
    """`a@x,y+b~nogd` -> (["a", "b"], {"a": ["x", "y"]}, True)."""
    no_gd = profile_id.endswith(NO_GADOLINIUM)
    body = profile_id.removesuffix(NO_GADOLINIUM)
    names: list[str] = []
    only: dict[str, list[str]] = {}
    for part in body.split("+"):
        name, _, seqs = part.partition("@")
        if not name:
            raise UnknownProfileError(f"composed profile {profile_id!r}: empty part")
        names.append(name)
        if seqs:
            only[name] = [s for s in seqs.split(",") if s]
    return names, only, no_gd


def compose_id(profile_id: str, profiles: Mapping[str, Profile]) -> Profile:
    names, only, no_gd = parse_id(profile_id)
    unknown = [n for n in names if n not in profiles]
    if unknown:
        raise UnknownProfileError(f"composed profile {profile_id!r}: unknown profile {unknown[0]!r}; known profiles: "
                                  f"{', '.join(sorted(profiles))}")
    return compose([profiles[n] for n in names], only, no_gd)


def compose_ids(ids: Sequence[str], profiles: Mapping[str, Profile], no_gadolinium: bool = False) -> str:
    """The shortest composed id for requirements of `ids` (richest first); a single part keeps its own id."""
    kept = minimal_parts([profiles[i] for i in dict.fromkeys(ids)])
    pid = "+".join(p.id for p in kept)
    if no_gadolinium and any(s.contrast for p in kept for s in p.sequences):
        pid += NO_GADOLINIUM
    if len(pid) > MAX_ID:
        raise ProfileError(f"composed profile id longer than {MAX_ID} characters: {pid}")
    return pid
