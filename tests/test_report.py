"""Reports: the SR passes dciodvfy/dsrdump and reads back, JSON matches its schema, HTML renders."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import jsonschema
import pytest
from pydicom import dcmread
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_report_fixtures import (  # noqa: E402
    PATIENT_ID,
    PATIENT_NAME,
    ROUTINE,
    SeriesSpec,
    make_config,
    make_db,
    make_result,
    make_study,
)

from msfollowup import cli  # noqa: E402
from msfollowup.site.config import Destination  # noqa: E402
from msfollowup.db.deliveries import Delivery  # noqa: E402
from msfollowup.reports.codes import PROTOCOL_NOT_FOLLOWED, QUALITY_ASSESSMENT, QUALITY_FINDING, REQUIREMENT_ID, VERDICT_NAME  # noqa: E402
from msfollowup.reports.files import Report, write_reports  # noqa: E402
from msfollowup.reports.content import ReportError  # noqa: E402
from msfollowup.reports.html import build_html  # noqa: E402

SCHEMA = Path(__file__).resolve().parents[1] / "protocols" / "report-schema.json"
FAILURES = (
    ("contrast_delay", "fail", "The post-contrast T1 started 2 min after contrast; at least 5 min are required."),
    ("scanner", "unverifiable", "The scanner cannot be compared with the reference: no serial number."),
)


def _check_dicom_tools(path: Path) -> None:
    """The SR must be clean for dciodvfy (no Error lines) and readable by dsrdump."""
    v = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    errors = [line for line in (v.stdout + v.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors
    d = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    assert d.returncode == 0, d.stderr
    assert not [line for line in (d.stdout + d.stderr).splitlines() if line.startswith("E:")]


def _code(c: Any) -> tuple[str, str]:
    return (c.value, c.scheme_designator)


def _study_group(sr: Any) -> Any:
    groups = sr.content.get_image_measurement_groups()
    (study,) = [g for g in groups if g.tracking_identifier == "Study protocol compliance"]
    return study


def _evaluations(group: Any) -> dict[tuple[str, str], tuple[str, str]]:
    return {_code(q.name): _code(q.value) for q in group.get_qualitative_evaluations()}


def _findings(group: Any) -> list[tuple[str, str]]:
    out = []
    for item in group[0].ContentSequence:
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121071":
            rid = [c.TextValue for c in item.ContentSequence
                   if c.ConceptNameCodeSequence[0].CodeValue == REQUIREMENT_ID.value]
            out.append((rid[0], item.TextValue))
    return out


@pytest.fixture
def env(tmp_path: Path) -> tuple[Any, Any]:
    cfg = make_config(tmp_path)
    return cfg, make_db(cfg)


def test_non_compliant_sr_is_valid_and_reads_back(env: tuple[Any, Any]) -> None:
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    result = make_result(study_uid, series, "non-compliant", FAILURES)
    rec = write_reports(db, cfg, study_uid, 1, result)

    assert rec.sr_path == Path(cfg.storage.data_dir) / "reports" / study_uid / "v1.dcm"
    _check_dicom_tools(rec.sr_path)
    sr = hd.sr.srread(rec.sr_path)
    assert sr.SOPInstanceUID == rec.sr_sop_instance_uid
    assert sr.Manufacturer == "msfollowup"
    assert sr.StudyInstanceUID == study_uid and sr.PatientID == PATIENT_ID and str(sr.PatientName) == PATIENT_NAME
    assert sr.AccessionNumber == "ACC0815"
    assert sr.SeriesInstanceUID not in {s["series_instance_uid"] for s in series}
    # Procedure reported: the routine profile's LOINC code.
    procs = [i.ConceptCodeSequence[0] for i in sr.ContentSequence
             if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert [(p.CodeValue, p.CodingSchemeDesignator) for p in procs] == [("24587-8", "LN")]

    study = _study_group(sr)
    ev = _evaluations(study)
    assert ev[_code(QUALITY_ASSESSMENT)] == ("111236", "DCM")
    assert ev[_code(VERDICT_NAME)] == ("NONCOMPLIANT", "99MSFU")
    assert ev[_code(QUALITY_FINDING)] == _code(PROTOCOL_NOT_FOLLOWED)
    assert _findings(study) == [(rid, msg) for rid, _, msg in FAILURES]

    # One group per counting series (the localizer does not count), kinds coded, facts measured.
    series_groups = [g for g in sr.content.get_image_measurement_groups() if g is not study
                     and g.tracking_identifier != "Study protocol compliance"]
    assert len(series_groups) == len(ROUTINE) - 1
    flair = next(g for g in series_groups if g.finding_type.value == "T2FLAIR")
    values = {m.name.value: (m.value, m.unit.value) for m in flair.get_measurements()}
    assert values["112225"] == (1.0, "mm") and values["130542"] == (3.0, "T")
    assert values["111066"] == (0.9, "mm") and values["111026"] == (0.9, "mm")

    # Each series group names that series' instances as its source images.
    by_label = {f"Series {x['series_number']} {x['kind']}": set(x["facts"]["sop_instance_uids"]) for x in series}
    for g in series_groups:
        images = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in g[0].ContentSequence
                  if i.ValueType == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "121112"}
        assert images == by_label[g.tracking_identifier]

    # Evidence: every instance of every series (localizer included), with the store's SOP classes.
    evidence = {e[2] for e in sr.get_evidence()}
    assert evidence == {u for s in series for u in s["facts"]["sop_instance_uids"]}
    assert "PredecessorDocumentsSequence" not in sr


def test_compliant_sr_has_no_findings(env: tuple[Any, Any]) -> None:
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    rec = write_reports(db, cfg, study_uid, 1, make_result(study_uid, series, "compliant"))
    _check_dicom_tools(rec.sr_path)
    study = _study_group(hd.sr.srread(rec.sr_path))
    ev = _evaluations(study)
    assert ev[_code(QUALITY_ASSESSMENT)] == ("111237", "DCM")
    assert ev[_code(VERDICT_NAME)] == ("COMPLIANT", "99MSFU")
    assert _code(QUALITY_FINDING) not in ev
    assert _findings(study) == []


def test_unverifiable_only_is_not_protocol_not_followed(env: tuple[Any, Any]) -> None:
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    result = make_result(study_uid, series, "unverifiable", [FAILURES[1]])
    result["requirements"].append({"id": "exam_length", "status": "fail", "informational": True, "measured": 41,
                                   "limit": [20, 25], "series": [], "message": "The exam took 41 minutes."})
    rec = write_reports(db, cfg, study_uid, 1, result)
    _check_dicom_tools(rec.sr_path)
    study = _study_group(hd.sr.srread(rec.sr_path))
    ev = _evaluations(study)
    assert ev[_code(VERDICT_NAME)] == ("UNVERIFIABLE", "99MSFU")
    assert _code(QUALITY_FINDING) not in ev  # an informational "fail" does not make the protocol failed
    assert _findings(study) == [(FAILURES[1][0], FAILURES[1][2])]


def test_non_latin1_text_in_a_latin1_study(env: tuple[Any, Any]) -> None:
    """Images in ISO_IR 100 with an umlaut name; a finding with characters Latin-1 cannot hold."""
    cfg, db = env
    study_uid, series = make_study(cfg, db, ROUTINE[:2], patient_name="Müller^Jürgen")
    message = "Kontrastmittel: ≥ 5 min Wartezeit – nicht eingehalten (T1 → 2 min)."
    rec = write_reports(db, cfg, study_uid, 1,
                        make_result(study_uid, series, "non-compliant", [("contrast_delay", "fail", message)]))
    _check_dicom_tools(rec.sr_path)
    sr = hd.sr.srread(rec.sr_path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert str(sr.PatientName) == "Müller^Jürgen"
    assert _findings(_study_group(sr)) == [("contrast_delay", message)]
    page = rec.html_path.read_text(encoding="utf-8")
    assert "Müller, Jürgen" in page and "≥ 5 min" in page


def test_same_version_twice_is_one_sr(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, [Destination(ae_title="PACS", host="127.0.0.1", port=104)])
    db = make_db(cfg)
    study_uid, series = make_study(cfg, db)
    result = make_result(study_uid, series, "non-compliant", FAILURES)
    first = write_reports(db, cfg, study_uid, 1, result)
    again = write_reports(db, cfg, study_uid, 1, result)
    assert again.sr_sop_instance_uid == first.sr_sop_instance_uid
    assert sorted(p.name for p in first.sr_path.parent.iterdir()) == ["v1.dcm", "v1.html", "v1.json"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 1
        assert s.scalar(select(func.count()).select_from(Delivery)) == 1


def test_concurrent_writers_agree_on_one_sr(env: tuple[Any, Any]) -> None:
    """Two workers (threads, own engines) writing the same study version race to one SR."""
    from concurrent.futures import ThreadPoolExecutor

    from msfollowup.db import Database

    cfg, db = env
    study_uid, series = make_study(cfg, db)
    result = make_result(study_uid, series, "compliant")
    dbs = [db, Database(cfg.storage.database_url)]
    with ThreadPoolExecutor(2) as pool:
        recs = list(pool.map(lambda d: write_reports(d, cfg, study_uid, 1, result), dbs))
    assert recs[0].sr_sop_instance_uid == recs[1].sr_sop_instance_uid
    assert dcmread(recs[0].sr_path).SOPInstanceUID == recs[0].sr_sop_instance_uid
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 1


def test_retry_after_crash_reuses_the_reserved_uid(env: tuple[Any, Any]) -> None:
    """A crash after the reservation but before the files: the retry writes the same SR UID."""
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    result = make_result(study_uid, series, "compliant")
    first = write_reports(db, cfg, study_uid, 1, result)
    with db.session() as s:  # back to the state "reserved, nothing written"
        row = s.scalars(select(Report)).one()
        row.written_at, row.sr_path, row.json_path, row.html_path = None, None, None, None
    for p in first.sr_path.parent.iterdir():
        p.unlink()
    retry = write_reports(db, cfg, study_uid, 1, result)
    assert retry.sr_sop_instance_uid == first.sr_sop_instance_uid
    assert dcmread(retry.sr_path).SOPInstanceUID == first.sr_sop_instance_uid


def test_late_version_references_its_predecessor(env: tuple[Any, Any]) -> None:
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    v1 = write_reports(db, cfg, study_uid, 1, make_result(study_uid, series, "non-compliant", FAILURES[:1]))
    _, late = make_study(cfg, db, [SeriesSpec("T1", "t1_se_tra post repeat", contrast="post")], study_uid=study_uid)
    v2 = write_reports(db, cfg, study_uid, 2, make_result(study_uid, series + late, "compliant"))

    assert v1.sr_path.is_file() and v2.sr_path.is_file() and v1.sr_path != v2.sr_path
    _check_dicom_tools(v2.sr_path)
    sr2 = hd.sr.srread(v2.sr_path)
    (pre_series,) = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
    assert sr2.PredecessorDocumentsSequence[0].StudyInstanceUID == study_uid
    assert pre_series.SeriesInstanceUID == v1.sr_series_instance_uid
    assert pre_series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == v1.sr_sop_instance_uid
    assert sr2.SeriesInstanceUID == v1.sr_series_instance_uid and sr2.InstanceNumber == 2
    assert v2.predecessor_sop_instance_uid == v1.sr_sop_instance_uid
    assert len({e[2] for e in sr2.get_evidence()}) == sum(len(s["facts"]["sop_instance_uids"]) for s in series + late)
    doc = json.loads(v2.json_path.read_text())
    assert doc["report"]["predecessor_sr_sop_instance_uid"] == v1.sr_sop_instance_uid


def test_json_report_follows_its_schema(env: tuple[Any, Any]) -> None:
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    result = make_result(study_uid, series, "non-compliant", FAILURES)
    rec = write_reports(db, cfg, study_uid, 1, result)
    doc = json.loads(rec.json_path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()),
                                    format_checker=jsonschema.FormatChecker()).validate(doc)
    assert doc["result"] == json.loads(json.dumps(result))
    assert doc["report"]["sr_sop_instance_uid"] == rec.sr_sop_instance_uid == dcmread(rec.sr_path).SOPInstanceUID
    assert doc["report"]["study_version"] == 1 and doc["schema"]["id"] == "msfollowup-report"
    assert doc["study"]["patient_id"] == PATIENT_ID


def test_schema_rejects_a_broken_report(env: tuple[Any, Any]) -> None:
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    rec = write_reports(db, cfg, study_uid, 1, make_result(study_uid, series))
    doc = json.loads(rec.json_path.read_text(encoding="utf-8"))
    doc["result"]["verdict"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json.loads(SCHEMA.read_text()))


def test_html_escapes_everything(env: tuple[Any, Any]) -> None:
    cfg, db = env
    evil = '<script>alert("x")</script>'
    study_uid, series = make_study(cfg, db, [SeriesSpec("T2", evil)])
    result = make_result(study_uid, series, "non-compliant", [("sequence.t2_flair", "fail", f"No FLAIR & {evil}")])
    rec = write_reports(db, cfg, study_uid, 1, result)
    page = rec.html_path.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "No FLAIR &amp; " in page
    assert "NOT COMPLIANT" in page and "Testperson, Hildegard" in page
    assert "@media print" in page and "<details>" in page
    assert "http://" not in page and "https://" not in page  # stand-alone: nothing fetched


def test_html_renders_in_chromium(env: tuple[Any, Any], tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium): apt-get install -y chromium")
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    rec = write_reports(db, cfg, study_uid, 1, make_result(study_uid, series, "non-compliant", FAILURES))
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'prof'}",
         f"--screenshot={shot}", "--window-size=1200,1600", rec.html_path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    dump = subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'prof'}",
         "--dump-dom", rec.html_path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert "NOT COMPLIANT" in dump.stdout and FAILURES[0][2] in dump.stdout


def test_validation_result_object_and_profile_lookup(env: tuple[Any, Any]) -> None:
    """A ValidationResult (not a dict) works; LOINC codes come from the profile when the result has none."""
    from msfollowup.dicom.classify import SeriesClassification, SeriesFacts
    from msfollowup.check.validate import RequirementResult, ValidationResult

    cfg, db = env
    study_uid, series = make_study(cfg, db, ROUTINE[1:3])
    classes = tuple(
        SeriesClassification(
            facts=SeriesFacts(study_instance_uid=study_uid, series_instance_uid=s["series_instance_uid"],
                              series_number=s["series_number"], description=s["description"]),
            kind=s["kind"], acquisition=s["acquisition"], derived=False, contrast=None, contrast_basis=None,
            evidence={"why": "test"}, confidence=0.8,
        )
        for s in series
    )
    result = ValidationResult(
        study_instance_uid=study_uid, profile_id="ms-spine-new-deficit", profile_version="1", verdict="non-compliant",
        series=classes,
        requirements=(RequirementResult("sequence.stir", "fail", 0, 1, (), "No sagittal STIR of the cervical spine."),),
        reference_study_uid=None, checked_at=dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc),
    )
    rec = write_reports(db, cfg, study_uid, 1, result)
    _check_dicom_tools(rec.sr_path)
    sr = hd.sr.srread(rec.sr_path)
    procs = {i.ConceptCodeSequence[0].CodeValue for i in sr.ContentSequence
             if i.ConceptNameCodeSequence[0].CodeValue == "121058"}
    assert procs == {"24937-5", "24981-3"}
    assert len(sr.get_evidence()) == sum(s.n for s in ROUTINE[1:3])  # instances found via the index
    assert _findings(_study_group(sr)) == [("sequence.stir", "No sagittal STIR of the cervical spine.")]


def test_bad_input_is_named_without_patient_data(env: tuple[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    cfg, db = env
    study_uid, series = make_study(cfg, db)
    other = make_result("1.2.3.4", series)
    with pytest.raises(ReportError, match="validation result is for study 1.2.3.4"):
        write_reports(db, cfg, study_uid, 1, other)
    bad = make_result(study_uid, series, verdict="ok")
    with pytest.raises(ReportError, match="unknown verdict"):
        write_reports(db, cfg, study_uid, 1, bad)
    # A study whose images are not in the store: nothing to copy the identity from.
    ghost = make_result("1.2.826.0.1.99", [dict(series[1], facts=dict(series[1]["facts"], sop_instance_uids=["1.2.3"]))])
    with pytest.raises(ReportError) as exc:
        write_reports(db, cfg, "1.2.826.0.1.99", 1, ghost)
    assert "1.2.826.0.1.99" in str(exc.value)
    for text in [str(exc.value), caplog.text]:
        assert PATIENT_NAME not in text and "Testperson" not in text and PATIENT_ID not in text
    with pytest.raises(ReportError, match="not a valid Study Instance UID"):
        write_reports(db, cfg, "../etc", 1, make_result("../etc", series))


def test_report_command(env: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = env
    conf = tmp_path / "msfollowup.toml"
    conf.write_text(f'[storage]\ndata_dir = "{cfg.storage.data_dir}"\nfsync = false\n')
    study_uid, series = make_study(cfg, db)
    write_reports(db, cfg, study_uid, 1, make_result(study_uid, series, "non-compliant", FAILURES))
    rec2 = write_reports(db, cfg, study_uid, 2, make_result(study_uid, series, "compliant"))

    assert cli.main(["report", study_uid, "--config", str(conf)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"]["study_version"] == 2 and doc["result"]["verdict"] == "compliant"
    assert cli.main(["report", study_uid, "--format", "html", "--config", str(conf)]) == 0
    assert "COMPLIANT" in capsys.readouterr().out
    out = tmp_path / "copy.dcm"
    assert cli.main(["report", study_uid, "--format", "sr", "--output", str(out), "--config", str(conf)]) == 0
    assert dcmread(out).SOPInstanceUID == rec2.sr_sop_instance_uid
    assert cli.main(["report", study_uid, "--format", "sr", "--config", str(conf)]) == 2
    assert "--output" in capsys.readouterr().err
    assert cli.main(["report", "1.2.3.999", "--config", str(conf)]) == 2
    assert "no report for study 1.2.3.999" in capsys.readouterr().err


def test_build_html_marks_informational_items() -> None:
    doc = {
        "report": {"study_version": 1, "generated_at": "2026-11-20T09:00:00+00:00", "sr_sop_instance_uid": "1.2",
                   "predecessor_sr_sop_instance_uid": None, "msfollowup_version": "0.1.0"},
        "study": {"patient_name": None},
        "result": {"study_instance_uid": "1.2.3", "profile": {"id": "p", "version": "1"}, "verdict": "unverifiable",
                   "series": [], "reference_study_uid": None, "checked_at": None,
                   "requirements": [{"id": "exam_length", "status": "fail", "informational": True, "series": [],
                                     "message": "The exam took 41 minutes.", "measured": {"minutes": 41.0},
                                     "limit": {"expected_min_minutes": 20, "<b>": ["T2_FLAIR", "PD"]}}]},
    }
    page = build_html(doc)
    assert "CANNOT BE VERIFIED" in page and 'class="st-info"' in page and "0 of 0 requirements" in page
    assert "minutes: 41<" in page and "expected min minutes: 20" in page and "&lt;b&gt;: T2_FLAIR, PD" in page


@pytest.mark.parametrize("vr, value", [("SQ", b""), ("ZZ", b"20260115"), ("US", b"2026"), ("DA", b"2026-11 "),
                                       ("UN", b"20261399")])
def test_identity_attributes_with_a_wrong_vr_or_value_are_left_empty(vr: str, value: bytes, tmp_path: Path) -> None:
    """What the fuzz run stored: a StudyDate (and other copied attributes) with a foreign or unknown VR
    or an invalid value. highdicom must get a fresh empty element, never the bad one."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    from msfollowup.reports.evidence import _drop_unparseable  # noqa: E402

    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    for kw in ("StudyDate", "PatientBirthDate", "StudyTime"):
        ds[Tag(kw)] = RawDataElement(Tag(kw), vr, len(value), value, 0, False, True)
    ds.PatientName = "GOOD^NAME"
    ds[Tag("PatientID")] = RawDataElement(Tag("PatientID"), vr, len(value), value, 0, False, True)
    _drop_unparseable(ds, "1.2.3")
    for kw in ("StudyDate", "PatientBirthDate", "StudyTime", "PatientID"):
        if vr == "UN" and kw == "PatientID":
            assert ds.PatientID == value.decode()  # UN read as the dictionary VR (LO): a valid ID, kept
            continue
        assert ds[kw].VR == dictionary_VR(kw) and ds[kw].value in (None, ""), kw
    assert ds.PatientName == "GOOD^NAME"
    assert ds.AccessionNumber is None  # missing type 2 attributes are added empty


def test_html_shows_each_series_confidence_evidence_and_anatomy() -> None:
    """Issue 13: every label's confidence and deciding evidence, the contrast evidence and the anatomy are
    shown in the report a radiographer reads."""
    series = {"series_instance_uid": "1.2.3.4", "series_number": 7, "description": "t1 se tra", "kind": "T1",
              "acquisition": "2D", "derived": False, "contrast": "post", "contrast_basis": "study pattern",
              "anatomy": "brain", "anatomy_basis": "BodyPartExamined", "confidence": 0.75, "basis": "physics",
              "evidence": {"rule": "t1-spin-echo", "contrast_source": "repeated-geometry"}, "facts": {},
              "counts": True}
    doc = {
        "report": {"study_version": 1, "generated_at": "2026-11-20T09:00:00+00:00", "sr_sop_instance_uid": "1.2",
                   "predecessor_sr_sop_instance_uid": None, "msfollowup_version": "0.1.0"},
        "study": {"patient_name": None},
        "result": {"study_instance_uid": "1.2.3", "profile": {"id": "p", "version": "1"}, "verdict": "compliant",
                   "series": [series], "reference_study_uid": None, "checked_at": None, "requirements": []},
    }
    page = build_html(doc)
    assert "confidence 0.75" in page and "basis: physics" in page
    assert "repeated-geometry" in page and "study pattern" in page
    assert "<th>anatomy</th><td>brain (BodyPartExamined)</td>" in page
