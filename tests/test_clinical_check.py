"""Issue 10 item 7 through `msfollowup check`: the 3D voxel limit of 002 is 1 mm per edge.

Seed 002 (MAGNIMS part 2), "Standardized follow-up MRI protocol": "Voxels in 3D sequences should be 1 mm3".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom

from dicom_fixtures import generate_study


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MSFOLLOWUP_CONFIG"}
    return subprocess.run([sys.executable, "-m", "msfollowup.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def _set_3d_thickness(folder: Path, mm: float) -> int:
    changed = 0
    for f in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        if ds.get("MRAcquisitionType") == "3D":
            ds.SliceThickness = mm
            ds.SpacingBetweenSlices = mm
            ds.save_as(f)
            changed += 1
    return changed


def test_3d_voxel_of_1_1_mm_fails_the_1_mm_limit(tmp_path: Path) -> None:
    """002: "Voxels in 3D sequences should be 1 mm3" -- a 1.1 mm edge is not within the limit."""
    folder = tmp_path / "study"
    generate_study(folder, slices=2, rows=16, columns=16)
    assert _set_3d_thickness(folder, 1.1) > 0
    proc = run("check", folder, "--profile", "ms-brain-routine", "--json")
    assert proc.returncode == 1, proc.stderr
    reqs = {r["id"]: r for r in json.loads(proc.stdout)["requirements"]}
    assert reqs["resolution.t2_flair"]["status"] == "fail"
    assert "1.1" in reqs["resolution.t2_flair"]["message"]
    assert reqs["resolution.t2_flair"]["limit"]["tolerance_mm"] == 0.02


def test_3d_voxel_written_as_1_01_mm_passes(tmp_path: Path) -> None:
    """002 "1 mm3": header rounding (1.01 mm) is within the floating-point tolerance of 0.02 mm."""
    folder = tmp_path / "study"
    generate_study(folder, slices=2, rows=16, columns=16)
    _set_3d_thickness(folder, 1.01)
    proc = run("check", folder, "--profile", "ms-brain-routine", "--json")
    reqs = {r["id"]: r for r in json.loads(proc.stdout)["requirements"]}
    assert reqs["resolution.t2_flair"]["status"] == "pass", reqs["resolution.t2_flair"]


def test_site_tolerance_above_floating_point_is_refused(tmp_path: Path) -> None:
    """002 "1 mm3": a site may not widen the 3D tolerance to pass 1.1 mm voxels (limit 0.02 mm)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "constraints.toml").write_text('version = "site-1"\n[limits]\ntolerance_3d_mm = 0.1\n', encoding="utf-8")
    cfg = tmp_path / "msfollowup.toml"
    cfg.write_text(f'[validation]\nprotocols_dir = "{site}"\n', encoding="utf-8")
    folder = tmp_path / "study"
    generate_study(folder, slices=2, rows=16, columns=16)
    proc = run("check", folder, "--config", cfg)
    assert proc.returncode == 2
    assert "tolerance_3d_mm" in proc.stderr and "0.02" in proc.stderr
