"""Realistic synthetic MR studies (DICOM Part 10) for msfollowup tests.

    from dicom_fixtures import generate_study
    study = generate_study(tmp_path, profile="ms-brain-routine", vendor="ge", defects=["contrast_2min"])
    study.series[-1].expected_kind  # the truth a classifier must find

Every vendor style copies what real scanners write (see vendors.py); every defect is a deliberately
broken variant of a compliant exam (see exam.py).
"""

from dicom_fixtures.exam import DEFECTS, PROFILES
from dicom_fixtures.large import write_large_multiframe
from dicom_fixtures.study import GeneratedSeries, GeneratedStudy, generate_study
from dicom_fixtures.vendors import VENDORS

__all__ = ["DEFECTS", "PROFILES", "VENDORS", "GeneratedSeries", "GeneratedStudy", "generate_study",
           "write_large_multiframe"]
