"""Reports of one checked study version (SR, JSON, HTML): the names other modules import.

The code lives in the `reports` package (content, codes, evidence, sr, model, html, files); this
module keeps the import path `msfollowup.report` working until the lead moves the callers.
"""

from __future__ import annotations

from msfollowup.reports.codes import (
    ACQUISITION_CODES,
    ACQUISITION_DIM,
    COLUMN_SPACING,
    CONTRAST_CODES,
    CONTRAST_PHASE,
    FIELD_STRENGTH,
    KIND_CODES,
    LOCAL,
    LOCAL_SCHEME_NAME,
    MM,
    PROTOCOL_NOT_FOLLOWED,
    QUALITY_ASSESSMENT,
    QUALITY_FINDING,
    REQUIREMENT_ID,
    REQUIREMENT_STATUS,
    ROW_SPACING,
    SLICE_THICKNESS,
    STATUS_CODES,
    TESLA,
    UNUSABLE,
    USABLE_DOES_NOT_MEET,
    USABLE_MEETS,
    VERDICT_CODES,
    VERDICT_NAME,
)
from msfollowup.reports.content import (
    NOT_COUNTING_KINDS,
    VERDICTS,
    ReportError,
    UnknownStudyReport,
    counted_series,
    open_requirements,
    result_dict,
)
from msfollowup.reports.evidence import _drop_unparseable
from msfollowup.reports.files import Report, ReportRecord, latest_report, list_reports, report_dir, write_reports
from msfollowup.reports.html import build_html
from msfollowup.reports.model import SCHEMA_ID, SCHEMA_NAME, SCHEMA_VERSION, ReportDocument, build_json, json_schema
from msfollowup.reports.sr import MANUFACTURER, SR_SERIES_DESCRIPTION, SR_SERIES_NUMBER, build_sr

__all__ = [
    "ACQUISITION_CODES", "ACQUISITION_DIM", "COLUMN_SPACING", "CONTRAST_CODES", "CONTRAST_PHASE", "FIELD_STRENGTH",
    "KIND_CODES", "LOCAL", "LOCAL_SCHEME_NAME", "MANUFACTURER", "MM", "NOT_COUNTING_KINDS", "PROTOCOL_NOT_FOLLOWED",
    "QUALITY_ASSESSMENT", "QUALITY_FINDING", "REQUIREMENT_ID", "REQUIREMENT_STATUS", "ROW_SPACING", "SCHEMA_ID",
    "SCHEMA_NAME", "SCHEMA_VERSION", "SLICE_THICKNESS", "SR_SERIES_DESCRIPTION", "SR_SERIES_NUMBER", "STATUS_CODES",
    "TESLA", "UNUSABLE", "USABLE_DOES_NOT_MEET", "USABLE_MEETS", "VERDICTS", "VERDICT_CODES", "VERDICT_NAME",
    "Report", "ReportDocument", "ReportError", "ReportRecord", "UnknownStudyReport", "_drop_unparseable",
    "build_html", "build_json", "build_sr", "counted_series", "json_schema", "latest_report", "list_reports",
    "open_requirements", "report_dir", "result_dict", "write_reports",
]
