"""`msfollowup check` as a user runs it: a subprocess on synthetic DICOM studies written to disk.

Each broken variant of a compliant exam (dicom_fixtures defects) must exit 1 with the right requirement
failing; compliant exams of every profile must exit 0; bad usage exits 2 with a message on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dicom_fixtures import PROFILES, generate_study

SMALL: dict[str, Any] = {"slices": 2, "rows": 16, "columns": 16}  # headers are checked; tiny pixels
VENDORS = ("siemens", "ge", "philips")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MSFOLLOWUP_CONFIG"}
    return subprocess.run([sys.executable, "-m", "msfollowup.cli", "check", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def run_json(*args: str | Path) -> tuple[int, Any, str]:
    proc = run(*args, "--json")
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def by_id(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in result["requirements"]}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check")


def make(base: Path, name: str, **kw: Any) -> Path:
    out = base / name
    if not out.exists():
        generate_study(out, **SMALL, **kw)
    return out


# --- compliant exams ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_compliant_study_of_each_profile_exits_0(studies: Path, profile: str) -> None:
    vendor = VENDORS[PROFILES.index(profile) % len(VENDORS)]
    folder = make(studies, f"ok-{profile}-{vendor}", profile=profile, vendor=vendor)
    rc, out, err = run_json(folder, "--profile", profile)
    bad = [r["message"] for r in out["requirements"] if r["status"] != "pass" and not r["informational"]]
    assert (rc, out["verdict"], bad) == (0, "compliant", []), err
    assert out["profile"]["id"] == profile


def test_enhanced_multiframe_study_is_checked(studies: Path) -> None:
    folder = make(studies, "ok-enhanced", profile="ms-brain-routine", vendor="philips", enhanced=True)
    rc, out, err = run_json(folder)
    assert (rc, out["verdict"]) == (0, "compliant"), [r["message"] for r in out["requirements"]]


def test_default_profile_and_human_output(studies: Path) -> None:
    folder = make(studies, "ok-ms-brain-routine-siemens", profile="ms-brain-routine", vendor="siemens")
    proc = run(folder)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("COMPLIANT  study ") and "profile ms-brain-routine v" in lines[0]
    assert any(l.split()[:1] == ["STATUS"] for l in lines) and any("DESCRIPTION" in l for l in lines)
    assert any(l.startswith("pass ") and "sequence.t2_flair" in l for l in lines)
    assert "DOE^JANE" not in proc.stdout and "MSF0001" not in proc.stdout  # no patient identity on screen


# --- broken variants ----------------------------------------------------------------------------

DEFECT_CASES = [
    ("missing_flair", "ms-brain-routine", "sequence.t2_flair", "fail", "T2 FLAIR (or PD) missing"),
    ("missing_t2", "ms-brain-routine", "sequence.t2", "fail", "T2-weighted missing"),
    # no contrast attributes, no repeated T1, no words: the lone T1's contrast state is unknown, never pre
    # from silence (issue 13); but one series cannot be both the pre- and the post-contrast T1, so one of
    # them is surely missing: non-compliant, the post-contrast T1 named (validate._one_series_cannot_be_both)
    ("missing_t1_post", "ms-brain-routine", "sequence.t1_post", "fail", "one series cannot be both"),
    ("missing_dwi", "ms-brain-pml-screening", "sequence.dwi", "fail", "DWI missing"),
    ("field_1_0T", "ms-brain-routine", "field_strength", "fail", "at least 1.5 T required"),
    ("thick_slices_5mm", "ms-brain-routine", "resolution.t2", "fail", "5 mm thick; at most 3 mm"),
    ("pixel_1_3mm", "ms-brain-routine", "resolution.t2", "fail", "1.3 x 1.3 mm; at most 1 x 1 mm"),
    ("contrast_2min", "ms-brain-routine", "contrast_delay", "fail", "2 min 0 s after contrast start"),
    ("no_contrast_start", "ms-brain-routine", "contrast_delay", "unverifiable", "ContrastBolusStartTime"),
    ("flair_derived_mpr_only", "ms-brain-routine", "sequence.t2_flair", "fail", "only a derived MPR"),
    ("localizer_only", "ms-brain-routine", "sequence.t1_pre", "fail", "Pre-contrast T1 missing"),
    ("thick_slices_5mm", "ms-spine-new-deficit", "resolution.sag_t2.thoracic", "fail", "5 mm thick"),
    ("contrast_2min", "ms-spine-new-deficit", "contrast_delay.t1_post.cervical", "fail", "2 min"),
]


@pytest.mark.parametrize(("defect", "profile", "rid", "status", "text"), DEFECT_CASES)
def test_broken_variant_exits_1_with_the_right_requirement(studies: Path, defect: str, profile: str, rid: str,
                                                           status: str, text: str) -> None:
    folder = make(studies, f"{defect}-{profile}", profile=profile, defects=[defect])
    rc, out, err = run_json(folder, "--profile", profile)
    assert rc == 1, err
    req = by_id(out).get(rid)
    assert req is not None, sorted(by_id(out))
    assert req["status"] == status and text in req["message"], req
    assert out["verdict"] == ("non-compliant" if status == "fail" else "unverifiable")


def test_localizer_only_fails_every_sequence(studies: Path) -> None:
    folder = make(studies, "localizer_only-ms-brain-routine", profile="ms-brain-routine", defects=["localizer_only"])
    _, out, _ = run_json(folder)
    seq = {k: v["status"] for k, v in by_id(out).items() if k.startswith("sequence.")}
    assert seq and set(seq.values()) == {"fail"}


def test_spine_study_does_not_satisfy_a_brain_profile(studies: Path) -> None:
    vendor = VENDORS[PROFILES.index("ms-spine-new-deficit") % len(VENDORS)]
    folder = make(studies, f"ok-ms-spine-new-deficit-{vendor}", profile="ms-spine-new-deficit", vendor=vendor)
    rc, out, _ = run_json(folder, "--profile", "ms-brain-routine")
    t2 = by_id(out)["sequence.t2"]
    assert rc == 1 and t2["status"] == "fail" and "only other regions were found" in t2["message"]


def test_lying_description_is_not_believed(studies: Path) -> None:
    folder = make(studies, "lying", profile="ms-brain-routine", defects=["lying_description"])
    rc, out, err = run_json(folder)
    liar = next(s for s in out["series"] if s["description"] == "AX FLAIR")
    assert liar["kind"] == "T1"
    assert rc == 0 and out["verdict"] == "compliant", err


def test_missing_field_strength_falls_back_to_imaging_frequency(studies: Path) -> None:
    folder = make(studies, "nofield", profile="ms-brain-routine", defects=["no_field_strength"])
    rc, out, _ = run_json(folder)
    fs = by_id(out)["field_strength"]
    assert rc == 0 and fs["status"] == "pass" and "ImagingFrequency" in fs["message"]


# --- JSON, reference, several studies, input accounting ----------------------------------------------


def test_json_structure(studies: Path) -> None:
    folder = make(studies, "contrast_2min-ms-brain-routine", profile="ms-brain-routine", defects=["contrast_2min"])
    _, out, _ = run_json(folder, "--profile", "ms-brain-routine")
    assert set(out) >= {"study_instance_uid", "profile", "verdict", "series", "requirements", "reference_study_uid",
                        "checked_at", "input"}
    assert set(out["profile"]) >= {"id", "version", "title", "loinc"}
    assert out["reference_study_uid"] is None
    for s in out["series"]:
        assert set(s) >= {"series_instance_uid", "series_number", "description", "kind", "acquisition", "derived",
                          "contrast", "confidence"}
    for r in out["requirements"]:
        assert set(r) >= {"id", "status", "measured", "limit", "series", "message"}
        assert r["status"] in ("pass", "fail", "unverifiable")
    uids = {s["series_instance_uid"] for s in out["series"]}
    assert set(by_id(out)["contrast_delay"]["series"]) <= uids and by_id(out)["contrast_delay"]["series"]


def test_reference_on_another_scanner_fails(studies: Path) -> None:
    ref = make(studies, "reference", profile="ms-brain-routine", study_date="20250115", seed=1)
    same = make(studies, "ok-ms-brain-routine-siemens", profile="ms-brain-routine", vendor="siemens")
    other = make(studies, "other-scanner", profile="ms-brain-routine", defects=["different_scanner"])
    rc, out, err = run_json(same, "--reference", ref)
    assert rc == 0, err
    assert out["reference_study_uid"] and out["reference_study_uid"] != out["study_instance_uid"]
    assert by_id(out)["reference.scanner"]["status"] == "pass"
    rc, out, _ = run_json(other, "--reference", ref)
    # 002 "ideally" the same scanner: a change is a recommended-severity warning, not a failed study (issue 10).
    assert rc == 0 and by_id(out)["reference.scanner"]["status"] == "fail"
    assert by_id(out)["reference.scanner"]["severity"] == "recommended"
    assert "Different scanner" in by_id(out)["reference.scanner"]["message"]


def test_non_dicom_files_counted_and_unreadable_named(studies: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(make(studies, "ok-ms-brain-routine-siemens", profile="ms-brain-routine", vendor="siemens"),
                    folder / "study")
    (folder / "README.txt").write_text("scanned at night\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "thumbs.db").write_bytes(b"\x00" * 300)
    donor = next(p for p in sorted((folder / "study").rglob("*")) if p.is_file())
    (folder / "sub" / "broken.dcm").write_bytes(donor.read_bytes()[:400])
    rc, out, err = run_json(folder)
    assert out["input"]["non_dicom_skipped"] == 2
    assert out["input"]["files"] == len([p for p in folder.rglob("*") if p.is_file()])
    assert any("broken.dcm" in u for u in out["input"]["unreadable"]) and "broken.dcm" in err
    assert rc == 0 and out["verdict"] == "compliant"


def test_several_studies_checked_each(studies: Path) -> None:
    good = make(studies, "ok-ms-brain-routine-siemens", profile="ms-brain-routine", vendor="siemens")
    bad = make(studies, "missing_flair-ms-brain-routine", profile="ms-brain-routine", defects=["missing_flair"])
    rc, out, _ = run_json(good, bad)
    assert rc == 1 and isinstance(out, list) and len(out) == 2
    assert sorted(d["verdict"] for d in out) == ["compliant", "non-compliant"]
    human = run(good, bad)
    assert human.stdout.count("profile ms-brain-routine v") == 2


def test_site_config_changes_limit_and_default_profile(studies: Path, tmp_path: Path) -> None:
    site = tmp_path / "site-protocols"
    site.mkdir()
    (site / "constraints.toml").write_text('version = "site"\n[limits]\nslice_thickness_2d_max_mm = 5.0\n')
    cfg = tmp_path / "msfollowup.toml"
    cfg.write_text('[validation]\ndefault_profile = "ms-brain-routine"\nprotocols_dir = "site-protocols"\n')
    folder = make(studies, "thick_slices_5mm-ms-brain-routine", profile="ms-brain-routine",
                  defects=["thick_slices_5mm"])
    rc, out, err = run_json(folder, "--config", cfg)
    assert rc == 0, err
    assert out["profile"]["limits"]["slice_thickness_2d_max_mm"] == 5.0
    assert by_id(out)["resolution.t2"]["status"] == "pass"


# --- usage and input errors ----------------------------------------------------------------------------


def test_unknown_profile_exits_2(studies: Path) -> None:
    folder = make(studies, "ok-ms-brain-routine-siemens", profile="ms-brain-routine", vendor="siemens")
    proc = run(folder, "--profile", "ms-knee")
    assert proc.returncode == 2 and "unknown profile 'ms-knee'" in proc.stderr and not proc.stdout


def test_missing_path_exits_2(tmp_path: Path) -> None:
    proc = run(tmp_path / "nowhere")
    assert proc.returncode == 2 and "nowhere: no such file or folder" in proc.stderr


def test_no_dicom_exits_2(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("not dicom")
    proc = run(tmp_path)
    assert proc.returncode == 2 and "no DICOM files found" in proc.stderr and "1 non-DICOM" in proc.stderr


def test_reference_with_two_studies_exits_2(studies: Path, tmp_path: Path) -> None:
    both = tmp_path / "both"
    shutil.copytree(make(studies, "ok-ms-brain-routine-siemens", profile="ms-brain-routine", vendor="siemens"),
                    both / "a")
    shutil.copytree(make(studies, "reference", profile="ms-brain-routine", study_date="20250115", seed=1), both / "b")
    proc = run(both / "a", "--reference", both)
    assert proc.returncode == 2 and "holds 2 studies" in proc.stderr


def test_bad_site_profile_exits_2(studies: Path, tmp_path: Path) -> None:
    site = tmp_path / "p"
    site.mkdir()
    (site / "ms-brain-routine.toml").write_text('id = "ms-brain-routine"\nversion = 1\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[validation]\nprotocols_dir = "{site}"\n')
    proc = run(tmp_path, "--config", cfg)
    assert proc.returncode == 2 and "ms-brain-routine.toml" in proc.stderr and "version" in proc.stderr


def test_no_arguments_is_usage_error() -> None:
    proc = run()
    assert proc.returncode == 2 and "usage" in proc.stderr
