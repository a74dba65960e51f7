"""Classification + validation benchmark (header reads included).

    python benchmarks/classify.py [--checks 1000] [--unique 40] [--big-instances 500] [--out DIR]

Generates `--unique` synthetic studies (vendors and profiles mixed, classic and enhanced) and checks
them round-robin until `--checks` study checks are done, each one reading every file's header from
disk (the page cache is warm after the first round, as it is for a node that just received the
study). Prints studies/s, the per-instance header read cost, and the time to check one study of
`--big-instances` instances (target: under 0.5 s for 500).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_fixtures import generate_study  # noqa: E402
from msfollowup.dicom.classify import classify_study, read_headers  # noqa: E402
from msfollowup.site.profiles import load_profiles  # noqa: E402
from msfollowup.check.validate import validate_study  # noqa: E402

VENDORS = ("siemens", "ge", "philips", "canon")
PROFILES = ("ms-brain-routine", "ms-brain-pml-screening", "ms-brain-no-contrast", "ms-spine-new-deficit")


def check(files: list[Path], profile: object) -> tuple[float, float, int]:
    """(seconds reading headers, seconds total, instances) for one study check."""
    t0 = time.perf_counter()
    series, _, _ = read_headers(files)
    t1 = time.perf_counter()
    result = validate_study(classify_study(list(series.values())), profile)
    assert result.verdict
    return t1 - t0, time.perf_counter() - t0, sum(len(v) for v in series.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=1000)
    ap.add_argument("--unique", type=int, default=40)
    ap.add_argument("--big-instances", type=int, default=500)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-classify-"))
    profiles = load_profiles()
    studies = []
    for i in range(args.unique):
        profile = PROFILES[i % len(PROFILES)]
        st = generate_study(root / f"s{i}", profile=profile, vendor=VENDORS[i % len(VENDORS)],
                            enhanced=(i % 5 == 4), slices=6, seed=1000 + i)
        studies.append((st.files, profiles[profile]))

    read_s = total_s = 0.0
    instances = 0
    start = time.perf_counter()
    for n in range(args.checks):
        files, profile = studies[n % len(studies)]
        r, t, k = check(files, profile)
        read_s, total_s, instances = read_s + r, total_s + t, instances + k
    wall = time.perf_counter() - start
    print(f"{args.checks} study checks ({args.unique} distinct studies, {instances / args.checks:.0f} instances "
          f"on average): {args.checks / wall:.1f} studies/s, header read {read_s / instances * 1e6:.0f} us/instance "
          f"({read_s / total_s:.0%} of the time)")

    big = generate_study(root / "big", slices=max(1, args.big_instances // 3), seed=7)
    files = big.files[: args.big_instances]  # 2D series grow with `slices`, 3D ones do not
    times = [check(files, profiles["ms-brain-routine"])[1] for _ in range(5)]
    print(f"one study of {len(files)} instances: median {statistics.median(times):.3f} s, "
          f"max {max(times):.3f} s over 5 checks (target < 0.5 s)")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
