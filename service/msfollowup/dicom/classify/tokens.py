"""The description words the classifier reads as evidence (protocols/classify-tokens.toml), loaded once."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

TOKENS_FILE = "classify-tokens.toml"


@dataclass(frozen=True)
class Tokens:
    contrast_negated: tuple[re.Pattern[str], ...]
    contrast_pre: tuple[re.Pattern[str], ...]
    contrast_post: tuple[re.Pattern[str], ...]
    anatomy: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]  # region -> patterns, in order
    body_parts: dict[str, str]


def _compile(values: object, where: str) -> tuple[re.Pattern[str], ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{TOKENS_FILE}: {where} must be a list of regular expressions")
    try:
        return tuple(re.compile(v, re.I) for v in values)
    except re.error as exc:
        raise ValueError(f"{TOKENS_FILE}: {where}: invalid regular expression ({exc})") from None


@cache
def tokens() -> Tokens:
    """Parsed once per process; a broken file stops with a message naming the key."""
    data = tomllib.loads((files("msfollowup.protocols") / TOKENS_FILE).read_text(encoding="utf-8"))
    contrast = data.get("contrast", {})
    anatomy = dict(data.get("anatomy", {}))
    body_parts = anatomy.pop("body_parts", {})
    return Tokens(
        contrast_negated=_compile(contrast.get("negated", []), "contrast.negated"),
        contrast_pre=_compile(contrast.get("pre", []), "contrast.pre"),
        contrast_post=_compile(contrast.get("post", []), "contrast.post"),
        anatomy=tuple((region, _compile(v, f"anatomy.{region}")) for region, v in anatomy.items()),
        body_parts={str(k).upper(): str(v) for k, v in body_parts.items()},
    )


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> re.Match[str] | None:
    for p in patterns:
        m = p.search(text)
        if m:
            return m
    return None


def contrast_said(text: str) -> tuple[str, str] | None:
    """("pre" | "post", the words that said it) from one description, None when it says neither or both.

    A negating phrase ("without contrast") is evidence for pre and is removed before post words are
    looked for, so "MRI BRAIN WITHOUT CONTRAST" is not read as post."""
    t = tokens()
    negated = _first(t.contrast_negated, text)
    rest = text
    for p in t.contrast_negated:
        rest = p.sub(" ", rest)
    post = _first(t.contrast_post, rest)
    pre = negated or _first(t.contrast_pre, rest)
    if post and not pre:
        return "post", post.group(0).strip()
    if pre and not post:
        return "pre", pre.group(0).strip()
    return None


def anatomy_said(text: str) -> tuple[str, str] | None:
    """(region, the words that said it) from one description."""
    for region, patterns in tokens().anatomy:
        m = _first(patterns, text)
        if m:
            return region, m.group(0).strip()
    return None
