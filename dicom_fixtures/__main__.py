"""python -m dicom_fixtures --out DIR [--profile P] [--vendor V] [--enhanced] [--defect D]... [--slices N]
[--seed S] [--large-multiframe BYTES]

Prints the StudyInstanceUID and the file count; exit 2 with a message on a bad argument combination.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dicom_fixtures.exam import DEFECTS, PROFILES
from dicom_fixtures.large import write_large_multiframe
from dicom_fixtures.study import generate_study
from dicom_fixtures.vendors import VENDORS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dicom_fixtures",
                                description="Write a synthetic MR study (DICOM Part 10) for tests.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--profile", default="ms-brain-routine", choices=PROFILES)
    p.add_argument("--vendor", default="siemens", choices=VENDORS)
    p.add_argument("--enhanced", action="store_true", help="one Enhanced MR multi-frame object per series")
    p.add_argument("--defect", action="append", default=[], choices=DEFECTS, help="repeatable")
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--columns", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patient-id", default="MSF0001")
    p.add_argument("--patient-name", default="DOE^JANE")
    p.add_argument("--study-date", default="20260115", help="YYYYMMDD")
    p.add_argument("--study-uid", default=None)
    p.add_argument("--accession", default="")
    p.add_argument("--character-set", default=None, help="SpecificCharacterSet, e.g. 'ISO_IR 192' (default ISO_IR 100)")
    p.add_argument("--large-multiframe", type=int, metavar="BYTES",
                   help="instead of a study, write OUT/large.dcm with about BYTES of pixel data")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.large_multiframe is not None:
            path = write_large_multiframe(args.out / "large.dcm", args.large_multiframe, study_uid=args.study_uid)
            print(f"{path}")
            return 0
        study = generate_study(args.out, profile=args.profile, vendor=args.vendor, enhanced=args.enhanced,
                               defects=args.defect, slices=args.slices, rows=args.rows, columns=args.columns,
                               patient_id=args.patient_id, patient_name=args.patient_name,
                               study_uid=args.study_uid, study_date=args.study_date, accession=args.accession,
                               seed=args.seed, character_set=args.character_set)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(study.study_uid)
    print(f"{len(study.files)} files in {len(study.series)} series under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
