"""The store's index rows, in-process on a real SQLite file and real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom

from dicom_fixtures import generate_study
from msfollowup.db import Database
from msfollowup.store import InstanceStore, Study


def test_multi_valued_character_set_is_indexed_in_dicom_backslash_form(tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", slices=1, seed=41)
    ds = pydicom.dcmread(study.files[0])
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    source = tmp_path / "one.dcm"
    ds.save_as(source)
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "var", db)
    temp = store.tmp / "one.part"
    shutil.copyfile(source, temp)
    store.ingest_file(temp)
    with db.session() as s:
        row = s.get(Study, study.study_uid)
        assert row is not None and row.specific_character_set == "ISO 2022 IR 6\\ISO 2022 IR 87"
