"""The lean data-transfer path for storage associations (net/compat/lean.py) against raw and pynetdicom peers.

The node serves a storage-only association's data-transfer phase itself instead of through pynetdicom's
state machine. These tests hold it to what pynetdicom would answer (the same statuses and comments for
the same requests, with `[node] lean_storage` on and off), and to what a raw peer can do that a
well-behaved library never does: a tiny maximum PDU length, a command on the wrong service, data
without a command, an abort in the middle of a data set, silence.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hostileutil import GOOD_HOST, closed_by_peer, mr_dataset, raw, store, store_answers
from nodeutil import RunningNode, spool_left

MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"
IDLE = 2.0  # node.network_timeout here


class _Node(RunningNode):
    def __init__(self, tmp: Path, **node: object) -> None:
        super().__init__(tmp, sections={"node": {"network_timeout": IDLE, "acse_timeout": 5, **node}})


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Node]:
    n = _Node(tmp_path_factory.mktemp("lean"))
    n.start()
    try:
        yield n
    finally:
        n.stop()


# --- a raw peer ----------------------------------------------------------------------------------


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _uid(value: str) -> bytes:
    return value.encode()


def association_rq(called: str, calling: str, contexts: list[tuple[int, str]], max_pdu: int) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing explicit VR little endian for each (id, abstract syntax)."""
    items = _item(0x10, _uid("1.2.840.10008.3.1.1.1"))
    for cid, abstract in contexts:
        sub = _item(0x30, _uid(abstract)) + _item(0x40, _uid(ExplicitVRLittleEndian))
        items += _item(0x20, bytes([cid, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, _uid("1.2.826.0.1.3680043.9.3811.0.1"))
    items += _item(0x50, user)
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32) + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    sock.settimeout(timeout)

    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    pdu_type, _, length = struct.unpack(">BBI", exactly(6))
    return pdu_type, exactly(length)


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def command(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(element(t, v) for t, v in elements)
    return element(0x0000, struct.pack("<I", len(body))) + body


def ui(value: str) -> bytes:
    raw_value = value.encode()
    return raw_value + b"\0" if len(raw_value) % 2 else raw_value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def store_rq(sop: str, message_id: int = 7) -> bytes:
    return command([(0x0002, ui(MR)), (0x0100, us(0x0001)), (0x0110, us(message_id)), (0x0700, us(0)),
                    (0x0800, us(0x0000)), (0x1000, ui(sop))])


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def encoded(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def open_association(node: RunningNode, contexts: list[tuple[int, str]], max_pdu: int = 16384) -> socket.socket:
    sock = raw(node, host=GOOD_HOST)
    sock.sendall(association_rq(node.ae_title, "PYNETDICOM", contexts, max_pdu))
    pdu_type, _ = read_pdu(sock)
    assert pdu_type == 0x02, f"expected A-ASSOCIATE-AC, got PDU type 0x{pdu_type:02X}"
    return sock


def read_command(sock: socket.socket) -> tuple[dict[int, bytes], list[int]]:
    """One command set, however many P-DATA PDUs it came in: its elements and the PDU lengths seen."""
    data, lengths = b"", []
    while True:
        pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x04, f"expected P-DATA-TF, got 0x{pdu_type:02X}"
        lengths.append(len(body))
        offset = 0
        last = False
        while offset < len(body):
            length = struct.unpack(">I", body[offset:offset + 4])[0]
            control = body[offset + 5]
            assert control & 1, "a command fragment"
            data += body[offset + 6:offset + 4 + length]
            last = bool(control & 2)
            offset += 4 + length
        if last:
            break
    out, offset = {}, 0
    while offset < len(data):
        _, tag, length = struct.unpack("<HHI", data[offset:offset + 8])
        out[tag] = data[offset + 8:offset + 8 + length]
        offset += 8 + length
    return out, lengths


def release(sock: socket.socket) -> int:
    sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    pdu_type, _ = read_pdu(sock)
    sock.close()
    return pdu_type


def _indexed(node: RunningNode, sop: str) -> bool:
    from msfollowup.files.store import Instance

    with node.db.session() as s:
        return s.get(Instance, sop) is not None


def _half_a_data_set(sock: socket.socket, ds: Dataset) -> None:
    """A C-STORE-RQ and the first half of its data set, in a P-DATA that is not the last."""
    data = encoded(ds)
    sock.sendall(p_data(1, 0x03, store_rq(ds.SOPInstanceUID)) + p_data(1, 0x00, data[: len(data) // 2]))


def _nothing_kept(node: RunningNode, sop: str) -> None:
    """The partial data set's spool file goes (within 5 s) and nothing is indexed."""
    deadline = time.monotonic() + 5
    while spool_left(node.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not spool_left(node.data_dir), "the partial data set's spool file was removed"
    assert not _indexed(node, sop)


# --- tests ---------------------------------------------------------------------------------------


def test_a_response_longer_than_the_peers_maximum_pdu_comes_in_fragments_that_each_fit(node: _Node) -> None:
    """PS3.8 9.3.1: no PDU we send may exceed the maximum length the peer announced (here 64 bytes; the
    C-STORE-RSP command set alone is ~150). The instance is stored and answered Success."""
    ds = mr_dataset()
    sock = open_association(node, [(1, MR)], max_pdu=64)
    try:
        sock.sendall(p_data(1, 0x03, store_rq(ds.SOPInstanceUID)) + p_data(1, 0x02, encoded(ds)))
        rsp, lengths = read_command(sock)
        assert len(lengths) > 1 and max(lengths) <= 64, lengths
        assert struct.unpack("<H", rsp[0x0100])[0] == 0x8001 and struct.unpack("<H", rsp[0x0120])[0] == 7
        assert struct.unpack("<H", rsp[0x0900])[0] == 0x0000
        assert rsp[0x1000].rstrip(b"\0").decode() == ds.SOPInstanceUID
        assert release(sock) == 0x06  # A-RELEASE-RP
    finally:
        sock.close()
    assert _indexed(node, ds.SOPInstanceUID)


def test_echo_on_a_storage_association_is_answered(node: _Node) -> None:
    sock = open_association(node, [(1, MR), (3, VERIFICATION)])
    try:
        echo = command([(0x0002, ui(VERIFICATION)), (0x0100, us(0x0030)), (0x0110, us(9)), (0x0800, us(0x0101))])
        sock.sendall(p_data(3, 0x03, echo))
        rsp, _ = read_command(sock)
        assert struct.unpack("<H", rsp[0x0100])[0] == 0x8030
        assert struct.unpack("<H", rsp[0x0120])[0] == 9 and struct.unpack("<H", rsp[0x0900])[0] == 0
        assert release(sock) == 0x06
    finally:
        sock.close()


@pytest.mark.parametrize("what", ["find-on-storage", "data-without-command", "unknown-context"])
def test_what_the_storage_service_cannot_take_is_aborted_and_others_are_still_served(node: _Node, what: str) -> None:
    sock = open_association(node, [(1, MR)])
    try:
        if what == "find-on-storage":  # a C-FIND-RQ on the MR storage context
            find = command([(0x0002, ui(MWL_FIND)), (0x0100, us(0x0020)), (0x0110, us(1)), (0x0700, us(0)),
                            (0x0800, us(0x0000))])
            sock.sendall(p_data(1, 0x03, find))
        elif what == "data-without-command":
            sock.sendall(p_data(1, 0x02, b"\x08\x00\x16\x00\x02\x00\x00\x00AB"))
        else:
            sock.sendall(p_data(5, 0x03, store_rq(generate_uid())))
        pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x07, f"expected A-ABORT, got 0x{pdu_type:02X}"
        assert body[2] == 0x02  # source: service provider
        assert closed_by_peer(sock, 5)
    finally:
        sock.close()
    assert store(node, [mr_dataset()]) == [0x0000]


def test_an_abort_in_the_middle_of_a_data_set_leaves_nothing_behind(node: _Node) -> None:
    ds = mr_dataset()
    sock = open_association(node, [(1, MR)])
    try:
        _half_a_data_set(sock, ds)
        time.sleep(0.3)
        sock.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-ABORT, service user
        assert closed_by_peer(sock, 5)
    finally:
        sock.close()
    _nothing_kept(node, ds.SOPInstanceUID)
    assert store(node, [mr_dataset()]) == [0x0000]


def test_a_silent_association_is_aborted_after_the_network_timeout(node: _Node) -> None:
    sock = open_association(node, [(1, MR)])
    started = time.monotonic()
    try:
        pdu_type, _ = read_pdu(sock, timeout=IDLE + 10)
        assert pdu_type == 0x07
        assert IDLE - 0.5 <= time.monotonic() - started < IDLE + 5
    finally:
        sock.close()


def test_silence_in_the_middle_of_a_data_set_is_aborted_after_the_network_timeout(node: _Node) -> None:
    """Within a message the node reads the next PDU without first waiting for the socket (issue 17):
    a peer that stops between two PDUs of a data set is still aborted after the network timeout,
    and nothing of the data set is kept."""
    ds = mr_dataset()
    sock = open_association(node, [(1, MR)])
    started = time.monotonic()
    try:
        _half_a_data_set(sock, ds)
        pdu_type, _ = read_pdu(sock, timeout=IDLE + 10)
        assert pdu_type == 0x07, "A-ABORT"
        assert IDLE - 0.5 <= time.monotonic() - started < IDLE + 5
    finally:
        sock.close()
    _nothing_kept(node, ds.SOPInstanceUID)


def test_an_answer_larger_than_the_socket_buffer_waits_for_the_peer_to_read(tmp_path: Path) -> None:
    """The lean loop sends without waiting first (MSG_DONTWAIT); what does not fit in the socket's
    buffer is sent as before, waiting for the peer (a real socket pair, a small send buffer)."""
    import threading
    from types import SimpleNamespace

    from msfollowup.net.compat.lean import LeanStorage

    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than the buffer holds
    assoc = SimpleNamespace(requestor=SimpleNamespace(maximum_length=0), _accepted_cx={})
    lean = LeanStorage(assoc, SimpleNamespace(socket=ours), None, 5.0)  # type: ignore[arg-type]
    received = bytearray()

    def reader() -> None:
        time.sleep(0.3)  # the first send finds the buffer full
        theirs.settimeout(5)
        while len(received) < len(payload):
            chunk = theirs.recv(1 << 16)
            if not chunk:
                break
            received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert lean._send(payload)
        thread.join(10)
        assert bytes(received) == payload
        assert lean._send(b"small")  # and the next one, which fits, at once
        theirs.settimeout(5)
        assert theirs.recv(16) == b"small"
    finally:
        ours.close()
        theirs.close()


def test_lean_and_pynetdicom_paths_give_the_same_answers(tmp_path: Path) -> None:
    """The same requests (a good instance, its duplicate with other content, an invalid Study Instance
    UID, the first again) to a node with and without the lean path: the same statuses and comments."""
    study = generate_uid()
    first = mr_dataset(study_uid=study)
    changed = mr_dataset(study_uid=study, sop_uid=first.SOPInstanceUID)
    changed.SeriesInstanceUID = first.SeriesInstanceUID
    changed.InstanceNumber = 2
    bad = mr_dataset()
    bad.StudyInstanceUID = "1.2.abc"
    answers = {}
    for lean in (True, False):
        n = _Node(tmp_path / f"lean-{lean}", lean_storage=lean)
        n.start()
        try:
            got = store_answers(n, [first, changed, bad, first])
            answers[lean] = [(int(r.Status), str(r.get("ErrorComment", ""))) for r in got]
        finally:
            n.stop()
    assert answers[True] == answers[False]
    statuses = [status for status, _ in answers[True]]
    assert statuses == [0x0000, 0xB006, 0xC000, 0x0000], answers
    assert "first kept" in answers[True][1][1] and "StudyInstanceUID" in answers[True][2][1]


def test_an_announced_pdu_length_is_not_allocated_before_its_bytes_arrive(tmp_path: Path) -> None:
    """With `max_pdu = 0` (no limit, as a site may configure) a peer may announce a P-DATA of 1 GiB and
    send a few bytes: the node must not set that memory aside up front. It aborts the association after
    the network timeout, stays small and serves the next peer."""
    n = _Node(tmp_path, max_pdu=0).start()
    try:
        baseline = n.peak_rss_mb()
        sock = open_association(n, [(1, MR)])
        try:
            sock.sendall(struct.pack(">BBI", 0x04, 0, 1 << 30) + struct.pack(">IBB", (1 << 30) - 4, 1, 0x01))
            sock.settimeout(IDLE + 10)
            try:
                while sock.recv(65536):  # the node cuts the connection once the PDU is overdue
                    pass
            except (ConnectionError, socket.timeout):
                pass
        finally:
            sock.close()
        assert n.peak_rss_mb() < baseline + 100, "memory set aside for bytes that never came"
        assert store(n, [mr_dataset()]) == [0x0000]
    finally:
        n.stop()
