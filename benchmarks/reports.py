"""Benchmark: SR + JSON + HTML of one 500-instance study (target < 1 s).

    python benchmarks/reports.py [--instances 500] [--repeat 3]

Builds a real setup first (generated study ingested into a store and index, classified and validated:
not timed), then times `write_reports` for fresh study versions, each writing all three files with
the SR referencing every instance. Prints the seconds of each run and the best.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The generator is a repository package; make it importable however the script is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_fixtures import generate_study  # noqa: E402
from msfollowup.dicom.classify import classify_study, read_headers  # noqa: E402
from msfollowup.site.config import Config, StorageConfig  # noqa: E402
from msfollowup.db import Database  # noqa: E402
from msfollowup.reports.files import write_reports  # noqa: E402
from msfollowup.files.store import InstanceStore  # noqa: E402
from msfollowup.check.validate import validate_study  # noqa: E402


def _setup(root: Path, instances: int) -> tuple[Config, Database, str, object]:
    cfg = Config(storage=StorageConfig(data_dir=root / "data", fsync=True))
    cfg.storage.data_dir.mkdir(parents=True)
    db = Database(cfg.storage.database_url)
    probe = generate_study(root / "probe", slices=1, rows=16, columns=16)
    fixed = len(probe.files) - (len(probe.series) - 1)  # the localizer's images do not scale with slices
    per_series = max(1, (instances - fixed + 1) // (len(probe.series) - 1))
    gen = generate_study(root / "gen", slices=per_series, rows=16, columns=16)
    store = InstanceStore(cfg.storage.data_dir, db, fsync=False)
    for i, f in enumerate(gen.files):
        tmp = store.tmp / f"{i}.part"
        shutil.copyfile(f, tmp)
        store.ingest_file(tmp)
        tmp.unlink()
    files = [p for paths in store.series_files(gen.study_uid).values() for p in paths]
    by_series, _, _ = read_headers(files)
    result = validate_study(classify_study(list(by_series.values())), "ms-brain-routine")
    print(f"study: {len(gen.files)} instances in {len(by_series)} series, verdict {result.verdict}")
    return cfg, db, gen.study_uid, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, db, study_uid, result = _setup(Path(tmp), args.instances)
        times = []
        for version in range(1, args.repeat + 1):
            t0 = time.perf_counter()
            rec = write_reports(db, cfg, study_uid, version, result)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
            size = rec.sr_path.stat().st_size
            print(f"v{version}: {times[-1]:.3f} s (SR {size // 1024} KiB, fsync on)")
        print(f"best: {min(times):.3f} s for SR + JSON + HTML (target < 1 s)")
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
