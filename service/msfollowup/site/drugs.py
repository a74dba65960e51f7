"""The drug vocabulary (protocols/drugs.toml): generic and brand names with the risk classes rules read.

Site policy data; a drug name the vocabulary does not know is refused with the closest names, so a
brand name (Tysabri) can never silently fall out of PML surveillance.
"""

from __future__ import annotations

import difflib
import importlib.resources
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DRUGS_FILE = "drugs.toml"
UNLISTED = "unlisted:"


class DrugError(ValueError):
    """An unknown drug name, or a drugs file that cannot be used."""


class Drug(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    brands: tuple[str, ...] = ()
    pml_risk: Literal["natalizumab", "reported", "none"]
    infection_risk: Literal["high", "standard"]


class Vocabulary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = ""
    source: str = ""
    drug: tuple[Drug, ...]

    def _names(self) -> dict[str, Drug]:
        out: dict[str, Drug] = {}
        for d in self.drug:
            for n in (d.name, *d.brands):
                out[n.lower()] = d
        return out

    def lookup(self, name: str) -> Drug | None:
        return self._names().get(name.strip().lower())

    def normalize(self, name: str, field: str = "drug") -> str:
        """The generic name for a generic or brand name; `unlisted:<name>` kept as such; else DrugError."""
        text = " ".join(name.strip().lower().split())
        if text.startswith(UNLISTED) and text[len(UNLISTED):].strip():
            return UNLISTED + text[len(UNLISTED):].strip()
        found = self.lookup(text)
        if found is not None:
            return found.name
        close = difflib.get_close_matches(text, list(self._names()), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise DrugError(f"{field}: unknown drug {text[:40]!r}{hint} (or record it as 'unlisted:{text[:40]}')")

    def risk(self, name: str | None, kind: Literal["pml", "infection"]) -> str | None:
        """The risk class of a (normalized) drug name; 'unlisted' for an unlisted drug, None without a drug."""
        if not name:
            return None
        drug = self.lookup(name)
        if drug is None:
            return "unlisted"
        return drug.pml_risk if kind == "pml" else drug.infection_risk


def parse_vocabulary(data: Mapping[str, object], source: str) -> Vocabulary:
    try:
        vocab = Vocabulary.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise DrugError(f"{source}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    seen: dict[str, str] = {}
    for d in vocab.drug:
        for n in (d.name, *d.brands):
            if n.lower() in seen and seen[n.lower()] != d.name:
                raise DrugError(f"{source}: name {n!r} is listed for both {seen[n.lower()]!r} and {d.name!r}")
            seen[n.lower()] = d.name
    return vocab


def load_vocabulary(directory: Path | None = None) -> Vocabulary:
    if directory is not None and (Path(directory) / DRUGS_FILE).is_file():
        path = Path(directory) / DRUGS_FILE
        source, text = str(path), path.read_text(encoding="utf-8")
    else:
        res = importlib.resources.files("msfollowup.protocols") / DRUGS_FILE
        source, text = str(res), res.read_text(encoding="utf-8")
    try:
        return parse_vocabulary(tomllib.loads(text), source)
    except tomllib.TOMLDecodeError as exc:
        raise DrugError(f"{source}: not valid TOML: {exc}") from None
