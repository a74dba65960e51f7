"""Series classification from DICOM headers: what each series is, and the evidence for it.

CONTRACT (shared with validate.py, report.py, pipeline.py, cli.py): the names re-exported here.

Modules, in reading order:
- `header`: the typed header record (`Header`) the classifier reads;
- `reader`: the fast byte-level header reader (`read_header`, `read_headers`), pydicom as fallback;
- `access`: attribute access that tolerates what scanners write;
- `model`: `SeriesFacts` and `SeriesClassification`;
- `facts`: `summarize`, the facts of one series;
- `features`: the values the rules look at, and the physics predicates;
- `rules`: the ordered rule chain deciding the kind;
- `tokens`: description words read as evidence (protocols/classify-tokens.toml);
- `contrast`: pre / post / unknown with its evidence, per series and across the study;
- `anatomy`: brain / cervical / thoracic / lumbar spine per series, and `study_anatomy` per study;
- `study`: `classify_series` and `classify_study` (derived, 2D/3D, then the study-level inference,
  `infer_study`).
"""

from msfollowup.dicom.classify.access import study_uid
from msfollowup.dicom.classify.anatomy import ANATOMIES, REGIONS, Region, StudyAnatomy, regions_of, study_anatomy
from msfollowup.dicom.classify.contrast import Contrast
from msfollowup.dicom.classify.facts import summarize
from msfollowup.dicom.classify.header import Header, as_header
from msfollowup.dicom.classify.model import KINDS, Basis, Kind, Orientation, SeriesClassification, SeriesFacts
from msfollowup.dicom.classify.reader import HEADER_KEYWORDS, DamagedFileError, read_header, read_headers
from msfollowup.dicom.classify.study import classify_series, classify_study, infer_study

__all__ = [
    "ANATOMIES", "REGIONS", "Contrast", "Region", "StudyAnatomy", "regions_of", "study_anatomy",
    "HEADER_KEYWORDS", "KINDS", "Basis", "DamagedFileError", "Header", "Kind", "Orientation", "SeriesClassification",
    "SeriesFacts", "as_header", "classify_series", "classify_study", "infer_study", "read_header", "read_headers", "study_uid",
    "summarize",
]
