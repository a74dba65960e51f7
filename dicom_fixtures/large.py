"""placeholder"""
from pathlib import Path
def write_large_multiframe(path: Path, size_bytes: int, *, study_uid: str | None = None) -> Path:
    raise NotImplementedError
