"""docs/conformance.md against the running node: the tables are parsed and every documented SOP class /
transfer syntax pair is proposed to a real `msfollowup serve`, undocumented SOP classes must be
rejected, the documented preference order must be what the node picks, and the documented worklist
keys must be what a C-FIND returns and matches."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from dicom_fixtures import generate_study
from msfollowup.app import worklist
from msfollowup.site.config import load_config
from nodeutil import DCMTK, RunningNode, due_exam

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed (apt-get install dcmtk)")

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
MAX_CONTEXTS = 120  # per association (PS3.8 allows 128 presentation context IDs)
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_TAG_RE = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")


def parse_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every markdown table that follows a `<!-- table: NAME -->` marker, as rows of header -> cell."""
    tables: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^<!-- table: ([a-z0-9-]+) -->$", line.strip())
        if not m:
            continue
        body = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            body.append([c.strip().strip("`").strip() for c in row.strip().strip("|").split("|")])
        header, sep, *rows = body
        assert all(set(c) <= {"-", ":"} for c in sep), f"table {m.group(1)}: no header separator"
        assert m.group(1) not in tables, f"table {m.group(1)} twice"
        tables[m.group(1)] = [dict(zip(header, r, strict=True)) for r in rows]
    return tables


TABLES = parse_tables(DOC.read_text(encoding="utf-8"))


def _uids(table: str) -> list[str]:
    uids = [row["UID"] for row in TABLES[table]]
    assert uids and all(_UID_RE.match(u) for u in uids), f"{table}: bad UID cell"
    assert len(set(uids)) == len(uids), f"{table}: a UID listed twice"
    return uids


STORAGE = _uids("storage-sop-classes")
STORAGE_TS = _uids("storage-transfer-syntaxes")
OTHER = _uids("other-scp-sop-classes")
OTHER_TS = _uids("other-scp-transfer-syntaxes")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    n = RunningNode(tmp_path_factory.mktemp("conformance")).start()
    yield n
    if n.proc is not None and n.proc.poll() is None:
        assert n.stop() == 0


def _negotiate(node: RunningNode, contexts: list[tuple[str, list[str]]]) -> list[str | None]:
    """Propose the contexts in batches; per context the accepted transfer syntax, None if rejected."""
    out: list[str | None] = []
    for start in range(0, len(contexts), MAX_CONTEXTS - 1):
        batch = contexts[start:start + MAX_CONTEXTS - 1]
        ae = AE(ae_title="PYNETDICOM")
        ae.acse_timeout = ae.network_timeout = 30
        for abstract, syntaxes in batch:
            ae.add_requested_context(abstract, syntaxes)
        # pynetdicom as requestor aborts an association without any accepted context: keep one
        ae.add_requested_context(VERIFICATION, EXPLICIT_LE)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established, "association refused"
        accepted = {cx.context_id: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        assoc.release()
        assert accepted[2 * len(batch) + 1] == EXPLICIT_LE
        out += [accepted.get(2 * i + 1) for i in range(len(batch))]  # context IDs are 1, 3, 5 ... in order
    return out


def test_the_statement_lists_each_thing_once_and_in_the_node_s_terms() -> None:
    assert MR_IMAGE in STORAGE and "1.2.840.10008.5.1.4.1.1.4.1" in STORAGE  # MR and Enhanced MR
    assert not set(STORAGE) & set(OTHER)
    assert set(OTHER_TS) <= set(STORAGE_TS)
    assert [int(r["preference"]) for r in TABLES["storage-transfer-syntaxes"]] == list(range(1, len(STORAGE_TS) + 1))
    for table in ("mwl-indexed-keys", "mwl-return-keys"):
        for row in TABLES[table]:
            m = _TAG_RE.match(row["tag"])
            assert m, f"{table}: bad tag {row['tag']}"
            name = pydicom.datadict.dictionary_description(Tag(int(m.group(1), 16), int(m.group(2), 16)))
            assert name == row["attribute"].lstrip(">"), f"{table}: {row['tag']} is {name}"


def test_every_documented_storage_sop_class_is_accepted_with_every_documented_transfer_syntax(node: RunningNode) -> None:
    pairs = [(sop, [ts]) for sop in STORAGE for ts in STORAGE_TS]
    accepted = _negotiate(node, pairs)
    refused = [(sop, ts[0]) for (sop, ts), got in zip(pairs, accepted) if got != ts[0]]
    assert not refused, f"{len(refused)} documented pairs not accepted, e.g. {refused[:5]}"


def test_verification_worklist_and_mpps_take_the_documented_syntaxes_and_no_other(node: RunningNode) -> None:
    pairs = [(sop, [ts]) for sop in OTHER for ts in OTHER_TS]
    assert _negotiate(node, pairs) == [ts[0] for _, ts in pairs]
    compressed = [ts for ts in STORAGE_TS if ts not in OTHER_TS]
    assert _negotiate(node, [(sop, [ts]) for sop in OTHER for ts in compressed]) == [None] * (len(OTHER) * len(compressed))


def test_sop_classes_not_in_the_statement_are_rejected(node: RunningNode) -> None:
    documented = set(STORAGE) | set(OTHER)
    known = sorted(uid for uid, entry in UID_dictionary.items() if "SOP Class" in entry[1] and uid not in documented)
    assert len(known) > 50  # Query/Retrieve, Storage Commitment, Print, UPS ...
    undocumented = [*known, "1.2.826.0.1.3680043.2.1143.999.1", "1.2.3.4.5.6.7.8.9"]
    accepted = _negotiate(node, [(uid, [OTHER_TS[0]]) for uid in undocumented])
    assert [u for u, got in zip(undocumented, accepted) if got is not None] == []


@pytest.mark.parametrize(("sop", "order"), [(MR_IMAGE, STORAGE_TS), (OTHER[0], OTHER_TS)])
def test_the_documented_preference_order_is_what_the_node_picks(node: RunningNode, sop: str, order: list[str]) -> None:
    # Context i offers order[i:] reversed: the node must pick order[i] although it was offered last.
    contexts = [(sop, list(reversed(order[i:]))) for i in range(len(order))]
    assert _negotiate(node, contexts) == order
    # and a context offering everything in a shuffled order still gets the first preference
    shuffled = order[1::2] + order[0::2]
    assert _negotiate(node, [(sop, shuffled)]) == [order[0]]


# --- worklist keys ------------------------------------------------------------------------------


def _tag(cell: str) -> int:
    m = _TAG_RE.match(cell)
    assert m
    return int(Tag(int(m.group(1), 16), int(m.group(2), 16)))


def _query_all_return_keys() -> Dataset:
    query, sps = Dataset(), Dataset()
    for row in TABLES["mwl-return-keys"]:
        target = sps if row["attribute"].startswith(">") else query
        tag = _tag(row["tag"])
        vr = pydicom.datadict.dictionary_VR(tag)
        target.add_new(tag, vr, [] if vr == "SQ" else "")
    query.ScheduledProcedureStepSequence = [sps]
    del query[0x00080005]  # Specific Character Set is not a key of its own
    return query


def _find(node: RunningNode, queries: list[Dataset]) -> list[list[Dataset]]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    results = []
    for q in queries:
        matches: list[Dataset] = []
        for status, identifier in assoc.send_c_find(q, ModalityWorklistInformationFind):
            assert status and status.Status in (0xFF00, 0xFF01, 0x0000), status
            if status.Status in (0xFF00, 0xFF01):
                assert identifier is not None
                matches.append(identifier)
        results.append(matches)
    assoc.release()
    return results


@pytest.fixture(scope="module")
def item(node: RunningNode) -> Dataset:
    cfg = load_config(node.config_path)
    today = dt.date.today()
    with node.db.session() as s:
        step = worklist.schedule_due(
            s, due_exam("CONF0001", today + dt.timedelta(days=30), earliest=today, latest=today + dt.timedelta(days=90)),
            worklist.Demographics("CONF0001", "Conformance^Test", "19800101", "F", None),
            cfg, today=today,
        )
        return step.dataset()


def test_a_query_for_every_documented_return_key_gets_each_of_them_and_nothing_else(node: RunningNode, item: Dataset) -> None:
    (matches,) = _find(node, [_query_all_return_keys()])
    (got,) = matches
    documented_top = {_tag(r["tag"]) for r in TABLES["mwl-return-keys"] if not r["attribute"].startswith(">")}
    documented_top.remove(0x00080005)  # an ASCII item answering a query without one: no character set
    documented_sps = {_tag(r["tag"]) for r in TABLES["mwl-return-keys"] if r["attribute"].startswith(">")}
    assert {int(e.tag) for e in got} == documented_top
    (sps,) = got.ScheduledProcedureStepSequence
    assert {int(e.tag) for e in sps} == documented_sps
    assert got.StudyInstanceUID == item.StudyInstanceUID and sps.Modality == "MR"


def test_every_documented_indexed_key_matches_its_own_value_and_not_another(node: RunningNode, item: Dataset) -> None:
    queries = []
    for row in TABLES["mwl-indexed-keys"]:
        tag = _tag(row["tag"])
        in_sps = tag not in item
        source = item.ScheduledProcedureStepSequence[0] if in_sps else item
        value = str(source[tag].value)
        assert value, f"{row['attribute']}: the item holds no value to match"
        other = "9.9.9" if source[tag].VR == "UI" else "19000101" if source[tag].VR == "DA" else "ZZNOMATCH"[:16]
        for v in (value, other):
            q = Dataset()
            q.StudyInstanceUID = ""
            sps = Dataset()
            (sps if in_sps else q).add_new(tag, source[tag].VR, v)
            q.add_new(0x00400100, "SQ", [sps])
            queries.append(q)
    results = _find(node, queries)
    for i, row in enumerate(TABLES["mwl-indexed-keys"]):
        own, another = results[2 * i], results[2 * i + 1]
        assert [m.StudyInstanceUID for m in own] == [item.StudyInstanceUID], f"{row['attribute']}: own value"
        assert another == [], f"{row['attribute']}: another value matched"


# --- the SR the node sends ----------------------------------------------------------------------


def test_reports_are_the_documented_scu_sop_class_and_transfer_syntax(node: RunningNode, tmp_path: Path) -> None:
    study = generate_study(tmp_path / "gen", slices=4, rows=32, columns=32)
    assert node.storescu(study.files).returncode == 0
    node.wait_complete(study.study_uid)
    sr_path = node.data_dir / "reports" / study.study_uid / "v1.dcm"
    deadline = time.monotonic() + 60
    while not sr_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    sr = pydicom.dcmread(sr_path)
    (row,) = TABLES["scu-sop-classes"]
    assert sr.SOPClassUID == row["UID"]
    assert row["transfer syntax proposed"].endswith(sr.file_meta.TransferSyntaxUID)
