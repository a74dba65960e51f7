"""The wildcard matcher (PS3.4 C.2.2.2.4): the same answers as a regex, in bounded time whatever the
pattern, and a node that keeps answering C-ECHO while it serves a many-wildcard C-FIND (issue 12)."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from msfollowup.app import worklist
from msfollowup.site.config import load_config
from msfollowup.site.profiles import get_profile
from msfollowup.app.worklist.find import _like_pattern
from msfollowup.followup.matching import wildcard
from nodeutil import RunningNode, due_exam


def _reference(pattern: str, value: str) -> bool:
    """The definition, as a (backtracking) regex: fine for the short inputs drawn here."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(body, value, re.DOTALL) is not None


@settings(max_examples=3000, derandomize=True, deadline=None)
@given(pattern=st.text(alphabet="ab?*^ ", max_size=9), value=st.text(alphabet="ab^ ", max_size=9))
def test_wildcard_agrees_with_the_regex_definition(pattern: str, value: str) -> None:
    assert wildcard(pattern).fullmatch(value) is _reference(pattern, value)


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("MÜLL*", "MÜLLER^ZOË", True),
    ("*^ZO?", "MÜLLER^ZOË", True),
    ("M*R*R", "MÜLLER^ZOË", False),
    ("a*a", "a", False),  # head and tail must not overlap
    ("*ab*ab*", "xabyab", True),
    ("?", "", False),
    ("", "", True),
    ("*", "", True),
])
def test_wildcard_examples(pattern: str, value: str, expected: bool) -> None:
    assert wildcard(pattern).fullmatch(value) is expected


@pytest.mark.parametrize("pattern", [
    "*" * 12 + "#",  # the query: ~50 s with the regex
    "*" * 26 + "#",
    "*a" * 60 + "#",
    "*?" * 200 + "#",
    "*" + "?" * 63 + "#",
    "a*" * 500,
])
def test_hostile_patterns_take_no_time(pattern: str) -> None:
    value = "a" * 64 + "b" * 260  # a long PN: 324 characters
    started = time.perf_counter()
    for _ in range(100):
        assert not wildcard(pattern).fullmatch(value) or pattern == "a*" * 500
    assert time.perf_counter() - started < 1.0  # 100 records; the regex took 50 s for one


def test_like_pattern_folds_runs_of_stars() -> None:
    assert _like_pattern("****ab**?_%") == "%ab%_\\_\\%"


def _find(port: int, query: Dataset, out: list[object]) -> None:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title="MSFOLLOWUP")
    assert assoc.is_established
    try:
        out.extend(int(status.Status) for status, _ in assoc.send_c_find(query, ModalityWorklistInformationFind))
    finally:
        assoc.release()


@pytest.mark.slow
def test_many_wildcard_query_answers_fast_while_echo_is_served(tmp_path: Path) -> None:
    node = RunningNode(tmp_path / "node").start()
    try:
        cfg = load_config(node.config_path)
        with node.db.session() as s:
            for i in range(40):
                worklist.schedule_due(s, due_exam(f"WILD{i:04d}", dt.date.today()), worklist.Demographics(
                    f"WILD{i:04d}", f"WILDCARD^PATIENT{i}", "19800101", "F", None), cfg,
                    profile=get_profile("ms-brain-routine"))
        query = Dataset()
        query.PatientID = ""
        query.RequestedProcedureDescription = "*" * 26 + "#"
        statuses: list[object] = []
        finder = threading.Thread(target=_find, args=(node.port, query, statuses))
        started = time.monotonic()
        finder.start()
        echoes = []
        while finder.is_alive() and time.monotonic() - started < 30:
            t0 = time.monotonic()
            assert node.echo(), "C-ECHO not answered while the wildcard C-FIND runs"
            echoes.append(time.monotonic() - t0)
        finder.join(60)
        elapsed = time.monotonic() - started
        assert statuses == [0x0000], statuses  # no description ends in "#": no match, success
        assert elapsed < 5, f"wildcard C-FIND took {elapsed:.1f} s"
        assert max(echoes, default=0) < 2
        # the same query with a pattern that matches every item answers all of them
        query.RequestedProcedureDescription = "*" * 26 + "?"
        statuses.clear()
        _find(node.port, query, statuses)
        assert statuses.count(0xFF00) == 40 and statuses[-1] == 0x0000
    finally:
        assert node.stop() == 0

