"""Shared pytest fixtures: a running node on loopback, generated studies."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodeutil import RunningNode  # noqa: E402


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    """A started node (stable_seconds=1) with the default test allow-list; stopped afterwards."""
    n = RunningNode(tmp_path).start()
    yield n
    if n.proc is not None and n.proc.poll() is None:
        n.stop()
