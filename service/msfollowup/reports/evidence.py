"""The images a report is about: the instances referenced as evidence, and the one stored header
whose patient/study identity the SR and the JSON copy (made safe for highdicom first)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DA, TM
from sqlalchemy import select

from msfollowup.site.config import Config
from msfollowup.db import Database
from msfollowup.reports.content import ReportError

log = logging.getLogger("msfollowup.reports")

# Patient/study attributes highdicom reads from the first evidence item; type 2 -> may be empty.
_IDENTITY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


@dataclass(frozen=True)
class InstanceRef:
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def instance_index(db: Database, study_uid: str) -> dict[str, tuple[str, str, str]]:
    """sop_instance_uid -> (series_uid, sop_class_uid, path) for the study, from the store index."""
    from msfollowup.files.store import Instance

    with db.session() as s:
        rows = s.execute(
            select(Instance.sop_instance_uid, Instance.series_uid, Instance.sop_class_uid, Instance.path)
            .where(Instance.study_uid == study_uid)
        ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def evidence_refs(data: Mapping[str, Any], index: Mapping[str, tuple[str, str, str]]) -> list[InstanceRef]:
    """Every instance of every classified series: the verdict was decided over all of them.

    The series' facts list its instances; without them, the index's instances of that series.
    """
    study = data["study_instance_uid"]
    by_series: dict[str, list[str]] = {}
    for uid, (series_uid, _, _) in index.items():
        by_series.setdefault(series_uid, []).append(uid)
    refs: list[InstanceRef] = []
    seen: set[str] = set()
    for series in data["series"]:
        facts = series.get("facts") or {}
        series_uid = series["series_instance_uid"]
        classes = list(facts.get("sop_class_uids") or ())
        uids = facts.get("sop_instance_uids") or sorted(by_series.get(series_uid, ()))
        for uid in uids:
            if uid in seen:
                continue
            seen.add(uid)
            if uid in index:
                refs.append(InstanceRef(index[uid][0], index[uid][1], uid))
            elif len(classes) == 1:
                refs.append(InstanceRef(series_uid, classes[0], uid))
            else:
                raise ReportError(f"study {study}: instance {uid} is neither indexed nor of a known SOP class")
    if not refs:
        raise ReportError(f"study {study}: validation result references no instance")
    return refs


def identity_header(cfg: Config, study_uid: str, refs: Sequence[InstanceRef],
              index: Mapping[str, tuple[str, str, str]]) -> Dataset:
    """Header (no pixels) of the first stored evidence instance: the SR copies patient/study from it."""
    store = Path(cfg.storage.data_dir) / "store"
    for ref in refs:
        if ref.sop_instance_uid not in index:
            continue
        path = store / index[ref.sop_instance_uid][2]
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            log.warning("study %s: cannot read stored instance %s: %s", study_uid, ref.sop_instance_uid,
                        type(exc).__name__)
            continue
        if _value_or_none(ds, "StudyInstanceUID") != study_uid:
            raise ReportError(f"study {study_uid}: stored instance {ref.sop_instance_uid} is of another study")
        _drop_unparseable(ds, study_uid)
        return ds
    raise ReportError(f"study {study_uid}: no readable stored instance to copy patient/study identity from")


def _parses(kind: Callable[[str], object], value: str) -> bool:
    try:
        kind(value)
    except (ValueError, TypeError):
        return False
    return True


_PARSED_BY_HIGHDICOM: dict[str, Callable[[str], bool]] = {
    "PatientBirthDate": lambda v: _parses(DA, v),
    "StudyDate": lambda v: _parses(DA, v),
    "StudyTime": lambda v: _parses(TM, v),
    "PatientSex": lambda v: v in ("M", "F", "O"),
}


def _value_or_none(ds: Dataset, keyword: str) -> Any:
    """The element's value, None when absent or undecodable (an unknown VR makes pydicom raise)."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - NotImplementedError, ValueError ...: whatever the bytes provoke
        return None


def _drop_unparseable(ds: Dataset, study_uid: str) -> None:
    """Make the patient/study attributes highdicom copies safe to copy: present (type 2), with their
    dictionary VR and a value highdicom parses. A malformed one in the images (wrong VR, bad date ...)
    would fail every SR of the study with an error quoting the value; the SR leaves it empty instead
    and the log names the attribute only."""
    for kw in _IDENTITY_TYPE2:
        if kw not in ds:
            setattr(ds, kw, None)
            continue
        parses = _PARSED_BY_HIGHDICOM.get(kw, lambda v: True)
        try:
            elem = ds[kw]  # converting a raw element with an unknown VR raises
            good = elem.VR == dictionary_VR(kw) and (elem.value in (None, "") or parses(str(elem.value)))
        except Exception:  # noqa: BLE001 - NotImplementedError, ValueError ...: whatever the bytes provoke
            good = False
        if good:
            continue
        log.warning("study %s: %s in the images is not a valid value; left empty in the SR", study_uid, kw)
        del ds[kw]
        setattr(ds, kw, None)  # a fresh element: the dictionary VR, empty


def evidence_datasets(identity: Dataset, study_uid: str, refs: Sequence[InstanceRef]) -> list[Dataset]:
    """Minimal datasets (four UIDs each) for the evidence sequence; the identity header goes first."""
    out = [identity]
    first = identity.SOPInstanceUID
    for ref in refs:
        if ref.sop_instance_uid == first:
            continue
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ref.series_uid
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_instance_uid
        out.append(ds)
    return out

