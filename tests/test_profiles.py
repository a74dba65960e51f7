"""Profile files: the shipped ones load; broken site files are named precisely; site overrides work."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydantic
import pytest

from msfollowup.dicom.classify import SeriesClassification, SeriesFacts
from msfollowup.site.profiles import (CONSTRAINTS_FILE, ProfileError, UnknownProfileError, get_profile, load_profiles,
                                 packaged_dir)
from msfollowup.check.validate import validate_study

SHIPPED = ("ms-brain-routine", "ms-brain-pml-screening", "ms-brain-pml-suspected", "ms-brain-no-contrast",
           "ms-brain-new-deficit", "ms-spine-new-deficit")
PACKAGED = Path(str(packaged_dir()))

SITE_PROFILE = """
id = "site-brain-quick"
version = "2026.1"
title = "Site quick brain"
source = ["local policy"]
needs_contrast = false

[[loinc]]
code = "30657-1"
meaning = "MR Brain WO contrast"

[[sequences]]
id = "t2_flair"
label = "T2 FLAIR"
any_of = ["T2_FLAIR"]
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_profile_loads() -> None:
    profiles = load_profiles()
    assert set(SHIPPED) <= set(profiles)
    for pid in SHIPPED:
        p = profiles[pid]
        assert p.id == pid and p.version and p.title and p.source and p.loinc and p.sequences
        assert p.limits.field_strength_min_t == 1.5 and p.limits.slice_thickness_2d_max_mm == 3.0
        assert p.limits.voxel_edge_3d_max_mm == 1.0 and p.limits.contrast_delay_min_minutes == 5.0


def test_shipped_profile_content() -> None:
    routine = get_profile("ms-brain-routine")
    assert routine.needs_contrast and [l.code for l in routine.loinc] == ["24587-8"]
    flair = next(s for s in routine.sequences if s.id == "t2_flair")
    assert flair.any_of == ("T2_FLAIR", "PD") and flair.prefer_acquisition == "3D"
    assert {(s.id, s.contrast) for s in routine.sequences if s.any_of == ("T1",)} == {("t1_pre", "pre"),
                                                                                      ("t1_post", "post")}
    for pid in ("ms-brain-pml-screening", "ms-brain-no-contrast"):
        p = get_profile(pid)
        assert not p.needs_contrast and [l.code for l in p.loinc] == ["30657-1"]
        assert all(s.contrast != "post" for s in p.sequences)
    spine = get_profile("ms-spine-new-deficit")
    assert sorted(l.code for l in spine.loinc) == ["24937-5", "24981-3"]
    stir = next(s for s in spine.sequences if s.id == "sag_stir")
    assert stir.any_of == ("STIR", "PD") and stir.orientation == ("SAG",)
    assert all(s.regions == ("cervical", "thoracic") for s in spine.sequences)


def test_profiles_are_immutable() -> None:
    p = get_profile("ms-brain-routine")
    with pytest.raises(pydantic.ValidationError):
        p.version = "9"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        p.limits.slice_thickness_2d_max_mm = 9.0  # type: ignore[misc]


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProfileError, match="unknown profile 'ms-brain-nope'.*ms-brain-routine"):
        get_profile("ms-brain-nope")


def test_site_folder_adds_a_profile(tmp_path: Path) -> None:
    write(tmp_path, "site-brain-quick.toml", SITE_PROFILE)
    profiles = load_profiles(tmp_path)
    assert set(SHIPPED) <= set(profiles)
    assert profiles["site-brain-quick"].version == "2026.1"
    assert profiles["site-brain-quick"].limits.slice_thickness_2d_max_mm == 3.0  # inherited


def test_other_data_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "intervals.toml", '[[rules]]\nid = "stable"\nmonths = 12\n')
    assert set(load_profiles(tmp_path)) == set(SHIPPED)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("colour = 'blue'\n" + SITE_PROFILE, "colour", "unknown key"),
        (SITE_PROFILE + "colour = 'blue'\n", "sequences[0].colour", "unknown key"),
        (SITE_PROFILE.replace("needs_contrast = false", "needs_contrast = 'sometimes'"), "needs_contrast",
         "valid boolean"),
        (SITE_PROFILE.replace('id = "site-brain-quick"\n', ""), "id", "Field required"),
        ('id = "site-brain-quick"\nversion = 1\n', "version", "valid string"),
        (SITE_PROFILE.replace("needs_contrast = false", 'needs_contrast = false\nregion = "knee"'), "(top level)",
         "region 'knee' is not defined"),
        (SITE_PROFILE + '[[regions]]\nname = "knee"\nlabel = "knee"\ndescription_pattern = "(unclosed"\n',
         "regions[0].description_pattern", "not a valid regular expression"),
        (SITE_PROFILE.replace('any_of = ["T2_FLAIR"]', 'any_of = ["FLAIR"]'), "sequences[0].any_of[0]", "T2_FLAIR"),
        (SITE_PROFILE + "[limits]\nslice_thickness_2d_max_mm = 'thin'\n", "limits.slice_thickness_2d_max_mm",
         "valid number"),
        (SITE_PROFILE + "[limits]\nslice_thicknes_2d_max_mm = 4\n", "limits.slice_thicknes_2d_max_mm", "unknown key"),
        (SITE_PROFILE.replace('any_of = ["T2_FLAIR"]', 'any_of = ["T2_FLAIR"]\ncontrast = "post"'), "(top level)",
         "needs_contrast is false"),
        (SITE_PROFILE.replace("needs_contrast", 'protocol_code = "SITE-BRAIN-QUICK1"\nneeds_contrast'),
         "protocol_code", "at most 16 characters"),
    ],
)
def test_broken_site_file_names_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, "site-brain-quick.toml", text)
    with pytest.raises(ProfileError) as err:
        load_profiles(tmp_path)
    message = str(err.value)
    assert str(path) in message
    line = next((l for l in message.splitlines() if l.strip().startswith(f"{key}:")), None)
    assert line is not None, message
    assert problem in line


def test_long_id_needs_a_short_worklist_protocol_code(tmp_path: Path) -> None:
    long_id = "site-brain-quick-extended"
    write(tmp_path, f"{long_id}.toml", SITE_PROFILE.replace("site-brain-quick", long_id))
    with pytest.raises(ProfileError, match="protocol_code"):
        load_profiles(tmp_path)
    write(tmp_path, f"{long_id}.toml", SITE_PROFILE.replace("site-brain-quick", long_id)
          .replace("needs_contrast", 'protocol_code = "SITE-QUICK-EXT"\nneeds_contrast'))
    assert load_profiles(tmp_path)[long_id].worklist_code == "SITE-QUICK-EXT"
    assert load_profiles(tmp_path)["ms-brain-pml-screening"].worklist_code == "MSBR-PMLSCREEN"


def test_not_toml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "site-brain-quick.toml", "id = [unclosed\n")
    with pytest.raises(ProfileError, match=f"{path}: not valid TOML"):
        load_profiles(tmp_path)


def test_id_must_match_file_name(tmp_path: Path) -> None:
    write(tmp_path, "other-name.toml", SITE_PROFILE)
    with pytest.raises(ProfileError, match="other-name.toml: id 'site-brain-quick' does not match the file name"):
        load_profiles(tmp_path)


def test_missing_protocols_dir(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(tmp_path / "nowhere")


def test_bad_site_constraints_named(tmp_path: Path) -> None:
    path = write(tmp_path, CONSTRAINTS_FILE, 'version = "site"\n[limits]\nfield_strength_min_t = -1\n')
    with pytest.raises(ProfileError) as err:
        load_profiles(tmp_path)
    assert str(path) in str(err.value) and "limits.field_strength_min_t" in str(err.value)


def _study_with_4mm_t2(profile_id: str) -> list[SeriesClassification]:
    """Only what the test needs: a 4 mm 2D T2, judged by the resolution check."""
    facts = SeriesFacts(study_instance_uid="1.2.3", series_instance_uid="1.2.3.1", series_number=3,
                        description="T2 TSE AX", field_strength_t=1.5, mr_acquisition_type="2D",
                        slice_thickness_mm=4.0, pixel_spacing_mm=(0.9, 0.9), orientation="AX",
                        acquisition_datetime=dt.datetime(2026, 1, 1, 9, 0))
    return [SeriesClassification(facts, "T2", "2D", False, "pre", "no contrast", {}, 0.9, "physics")]


def test_site_constraints_override_a_limit_for_all_profiles(tmp_path: Path) -> None:
    write(tmp_path, CONSTRAINTS_FILE, 'version = "site-1"\n[limits]\nslice_thickness_2d_max_mm = 4.0\n')
    profiles = load_profiles(tmp_path)
    assert all(p.limits.slice_thickness_2d_max_mm == 4.0 for p in profiles.values())
    assert profiles["ms-brain-routine"].limits.pixel_spacing_2d_max_mm == 1.0  # other keys kept
    study = _study_with_4mm_t2("ms-brain-routine")
    res = {r.id: r for r in validate_study(study, profiles["ms-brain-routine"]).requirements}
    assert res["resolution.t2"].status == "pass"
    default = {r.id: r for r in validate_study(study, get_profile("ms-brain-routine")).requirements}
    assert default["resolution.t2"].status == "fail"


def test_site_copy_of_a_profile_overrides_it(tmp_path: Path) -> None:
    text = (PACKAGED / "ms-brain-routine.toml").read_text(encoding="utf-8")
    text = text.replace('version = "1.0.0"', 'version = "1.0.0-site"')
    write(tmp_path, "ms-brain-routine.toml", text + "\n[limits]\nslice_thickness_2d_max_mm = 4.0\n")
    site = get_profile("ms-brain-routine", tmp_path)
    assert site.version == "1.0.0-site" and site.limits.slice_thickness_2d_max_mm == 4.0
    assert get_profile("ms-brain-no-contrast", tmp_path).limits.slice_thickness_2d_max_mm == 3.0
    result = validate_study(_study_with_4mm_t2("ms-brain-routine"), site)
    assert result.profile_version == "1.0.0-site"
    assert {r.id: r.status for r in result.requirements}["resolution.t2"] == "pass"


def test_packaged_folder_is_the_repository_protocols() -> None:
    names = {p.name for p in PACKAGED.iterdir()}
    assert {f"{pid}.toml" for pid in SHIPPED} | {CONSTRAINTS_FILE, "README.md"} <= names


def test_site_constraints_extend_a_region(tmp_path: Path) -> None:
    write(tmp_path, CONSTRAINTS_FILE, 'version = "site"\n[[regions]]\nname = "brain"\nlabel = "brain"\n'
          'body_parts = ["BRAIN", "HEAD", "SKULL"]\n')
    profiles = load_profiles(tmp_path)
    assert profiles["ms-brain-routine"].get_region("brain").body_parts == ("BRAIN", "HEAD", "SKULL")
    assert profiles["ms-brain-routine"].get_region("cervical").body_parts  # the other regions are kept
    assert profiles["ms-brain-routine"].limits.slice_thickness_2d_max_mm == 3.0


# --- issue 17: the protocol files are looked at with one stat each, and an edit is never missed ------


def _one_profile_folder(tmp_path: Path, limit: str) -> Path:
    """A site folder with one profile, the routine one with its own minimum field strength `limit`."""
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    routine = (Path(__file__).parents[1] / "protocols" / "ms-brain-routine.toml").read_text()
    (folder / "site-brain.toml").write_text(routine.replace('id = "ms-brain-routine"', 'id = "site-brain"')
                                            + "\n[limits]\nfield_strength_min_t = " + limit + "\n")
    return folder


def test_an_edit_right_after_a_read_is_seen_even_with_the_same_size(tmp_path: Path) -> None:
    """Within the racy window the file is read again: same size, same coarse timestamp, new bytes."""
    folder = _one_profile_folder(tmp_path, "1.5")
    assert get_profile("site-brain", folder).limits.field_strength_min_t == 1.5
    _one_profile_folder(tmp_path, "3.0")  # same length
    assert get_profile("site-brain", folder).limits.field_strength_min_t == 3.0


def test_an_unchanged_file_is_not_read_again_and_a_later_edit_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                       ) -> None:
    import os

    from msfollowup.site import profiles

    monkeypatch.setattr(profiles, "RACY_NS", 0)  # as if the read had been long after the last change
    folder = _one_profile_folder(tmp_path, "1.5")
    path = folder / "site-brain.toml"
    assert profiles._content(path) == path.read_bytes()
    reads: list[Path] = []
    real = Path.read_bytes

    def counted(self: Path) -> bytes:
        reads.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counted)
    before = path.read_bytes()
    reads.clear()
    assert profiles._content(path) == before and reads == [], "unchanged: the bytes read before"
    stat = os.stat(path)
    path.write_text(path.read_text().replace("1.5", "3.0"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time kept (cp -p)
    assert b"3.0" in profiles._content(path) and reads == [path], "ctime moved: read again"
