"""Reports from the real chain: generated study -> store -> classify -> validate -> SR/JSON/HTML."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_report import _check_dicom_tools, _evaluations, _findings, _study_group  # noqa: E402
from test_report_fixtures import make_config, make_db  # noqa: E402

from dicom_fixtures import generate_study  # noqa: E402
from msfollowup.dicom.classify import classify_study, read_headers  # noqa: E402
from msfollowup.reports.codes import VERDICT_CODES, VERDICT_NAME  # noqa: E402
from msfollowup.reports.files import write_reports  # noqa: E402
from msfollowup.files.store import InstanceStore  # noqa: E402
from msfollowup.check.validate import validate_study  # noqa: E402


def _ingest(store: InstanceStore, files: list[Path]) -> None:
    for f in files:
        tmp = store.tmp / f"{f.stem}-{abs(hash(str(f)))}.part"
        shutil.copyfile(f, tmp)
        store.ingest_file(tmp, calling_ae="MODALITY")
        tmp.unlink()


@pytest.mark.parametrize(
    ("profile", "vendor", "enhanced", "defects"),
    [
        ("ms-brain-routine", "siemens", False, ()),
        ("ms-brain-routine", "ge", False, ("missing_flair", "contrast_2min")),
        ("ms-spine-new-deficit", "philips", True, ("no_contrast_start",)),
    ],
)
def test_sr_of_a_validated_generated_study(tmp_path: Path, profile: str, vendor: str, enhanced: bool,
                                           defects: tuple[str, ...]) -> None:
    cfg = make_config(tmp_path)
    db = make_db(cfg)
    gen = generate_study(tmp_path / "gen", profile=profile, vendor=vendor, enhanced=enhanced, defects=defects,
                         slices=6, rows=32, columns=32)
    store = InstanceStore(Path(cfg.storage.data_dir), db, fsync=False)
    _ingest(store, [Path(p) for p in gen.files])
    files = [p for paths in store.series_files(gen.study_uid).values() for p in paths]
    by_series, unreadable, _ = read_headers(files)
    assert not unreadable
    result = validate_study(classify_study(list(by_series.values())), profile)

    rec = write_reports(db, cfg, gen.study_uid, 1, result)
    _check_dicom_tools(rec.sr_path)
    sr = hd.sr.srread(rec.sr_path)
    study = _study_group(sr)
    assert _evaluations(study)[(VERDICT_NAME.value, "99MSFU")] == (VERDICT_CODES[result.verdict].value, "99MSFU")
    assert _findings(study) == [(r.id, r.message) for r in result.missing_requirements]
    assert {e[2] for e in sr.get_evidence()} == {u for s in result.series for u in s.facts.sop_instance_uids}
    assert str(sr.PatientName) == "DOE^JANE"
    page = rec.html_path.read_text(encoding="utf-8")
    headline: dict[str, Any] = {"compliant": "COMPLIANT", "non-compliant": "NOT COMPLIANT",
                                "unverifiable": "CANNOT BE VERIFIED"}
    assert headline[result.verdict] in page
    if defects:
        assert result.verdict != "compliant"
