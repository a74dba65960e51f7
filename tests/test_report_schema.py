"""The JSON report's schema is generated from its pydantic model: the committed file must be exactly
what the model generates (regenerate: python -m msfollowup.reports.model > protocols/report-schema.json)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from msfollowup.reports.model import SCHEMA_ID, ReportDocument, json_schema, schema_text

SCHEMA = Path(__file__).resolve().parents[1] / "protocols" / "report-schema.json"


def test_committed_schema_equals_the_generated_one() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == schema_text()


def test_generated_schema_is_a_valid_2020_12_schema_with_a_closed_envelope() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == SCHEMA_ID and schema["additionalProperties"] is False
    assert set(schema["required"]) == {"$schema", "schema", "report", "study", "result"}


def _doc() -> dict[str, object]:
    return {
        "$schema": SCHEMA_ID, "schema": {"id": "msfollowup-report", "version": "1.0.0"},
        "report": {"generated_at": "2026-11-20T09:00:00+00:00", "msfollowup_version": "0.1.0",
                   "study_instance_uid": "1.2.3", "study_version": 1, "sr_sop_instance_uid": "1.2.4",
                   "sr_series_instance_uid": "1.2.5", "predecessor_sr_sop_instance_uid": None},
        "study": {"patient_id": "X"},
        "result": {"study_instance_uid": "1.2.3", "profile": {"id": "p", "version": "1"}, "verdict": "compliant",
                   "series": [], "requirements": [], "reference_study_uid": None,
                   "checked_at": "2026-11-20T09:00:00+00:00", "a_later_key": {"kept": True}},
    }


def test_model_and_schema_agree_on_good_and_bad_documents() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    good = _doc()
    validator.validate(good)
    assert ReportDocument.model_validate(good).to_json() == good  # passed through unchanged, extras kept
    for path, value in ((("result", "verdict"), "fine"), (("report", "study_version"), 0),
                        (("study", "patient_weight"), "80"), (("report", "sr_sop_instance_uid"), "1.2.x")):
        bad = json.loads(json.dumps(good))
        bad[path[0]][path[1]] = value
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)
        with pytest.raises(ValidationError):
            ReportDocument.model_validate(bad)
