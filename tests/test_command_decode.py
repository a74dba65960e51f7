"""The C-STORE-RQ command set decoder in net/compat/dimse.py against pynetdicom's own decode (through pydicom):
same message class, same primitive field for field (values and types), same spooled file bytes, same
exception where pynetdicom raises; and the fast path is really taken for ordinary requests."""

from __future__ import annotations

import random
import struct
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config, dimse_messages
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.pdu_primitives import P_DATA

from msfollowup.net.compat import dimse as compat

CT = b"1.2.840.10008.5.1.4.1.1.2\x00"  # odd UID, NUL padded
MR = b"1.2.840.10008.5.1.4.1.1.4\x00"
SOP = b"1.2.826.0.1.3680043.8.498.12345678901234567890.1"  # even length
DATA = b"\x08\x00\x16\x00\x1a\x00\x00\x00" + MR  # any bytes: the data set is only spooled
ASSOC = SimpleNamespace(_accepted_cx={1: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])})
FIELDS = ("MessageID", "MessageIDBeingRespondedTo", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
          "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "Status", "_context_id")


def us(v: int) -> bytes:
    return struct.pack("<H", v)


def command(elements: list[tuple[int, bytes]], group_length: bool = True) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in elements)
    return (struct.pack("<HHII", 0, 0, 4, len(body)) if group_length else b"") + body


def store_rq(*, sop_class: bytes = CT, sop: bytes = SOP, msg_id: int = 7, priority: int = 0,
             mover: bytes | None = None, mover_id: int | None = None, extra: list[tuple[int, bytes]] = ()) -> bytes:
    elements = [(0x0002, sop_class), (0x0100, us(1)), (0x0110, us(msg_id)), (0x0700, us(priority)),
                (0x0800, us(0x0000)), (0x1000, sop)]
    if mover is not None:
        elements.append((0x1030, mover))
    if mover_id is not None:
        elements.append((0x1031, us(mover_id)))
    return command(sorted([*elements, *extra]))


@pytest.fixture(autouse=True)
def _chunked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What stream_datasets_to switches on, confined to this test."""
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile",
                        lambda **kw: tempfile.NamedTemporaryFile(dir=tmp_path, **kw))
    monkeypatch.setattr(dimse_messages, "create_file_meta", compat._file_meta_values)
    monkeypatch.setattr(dimse_messages, "write_file_meta_info", compat._write_file_meta)


def decode(decoder: Any, pdvs: list[list[Any]]) -> tuple[Any, ...]:
    """Decode the P-DATA items as pynetdicom's receive_primitive would; what an observer could see."""
    msg = DIMSEMessage()
    primitive = P_DATA()
    primitive.presentation_data_value_list = pdvs
    try:
        done = decoder(msg, primitive, ASSOC)
        prim = msg.message_to_primitive() if done else None
    except Exception as exc:  # noqa: BLE001 - pynetdicom's reaction is compared, whatever it is
        return ("raised", type(exc).__name__)
    values = tuple((getattr(prim, k, None), type(getattr(prim, k, None))) for k in FIELDS) if prim else None
    path = msg._data_set_path
    spooled = Path(path).read_bytes() if path else None
    fast = type(msg) is compat.FastStoreRQ
    cls = "C_STORE_RQ" if fast else type(msg).__name__
    if fast:  # its lazily decoded command set is pydicom's
        assert msg.command_set == dimse_messages.decode(msg.encoded_command_set, True, True)
    return (done, cls, type(prim).__name__, values, spooled), fast


def compare(pdvs: list[list[Any]]) -> bool:
    """Both decoders agree; True when the fast path was taken."""
    ours = decode(compat._decode_msg, pdvs)
    theirs = decode(compat._original_decode_msg, pdvs)
    if ours[0] == "raised" or theirs[0] == "raised":
        assert ours == theirs
        return False
    assert ours[0] == theirs[0]
    assert theirs[1] is False
    return bool(ours[1])


def pdvs_for(cmd: bytes) -> list[list[Any]]:
    return [[1, b"\x03" + cmd], [1, b"\x02" + DATA]]


@pytest.mark.parametrize("cmd", [
    store_rq(),
    store_rq(sop_class=MR, msg_id=65535, priority=1),
    store_rq(priority=2),
    store_rq(mover=b"MOVESCU ", mover_id=3),
    store_rq(mover=b" PACS 1 ", mover_id=0),
    store_rq(mover=b"MOVE"),
    store_rq(mover_id=12),
    store_rq(sop=SOP[:-2] + b"1 "),  # space padded
    store_rq(sop=b"1.2.3.4\x00\x00\x00"),  # NUL run
    command([(0x0002, CT), (0x0100, us(1)), (0x0110, us(1)), (0x0700, us(0)), (0x0800, us(0xFEFE)),
             (0x1000, SOP)], group_length=False),
])
def test_ordinary_requests_take_the_fast_path_with_the_same_result(cmd: bytes) -> None:
    assert compare(pdvs_for(cmd))


def test_command_set_over_several_fragments() -> None:
    cmd = store_rq(mover=b"AE", mover_id=9)
    assert compare([[1, b"\x01" + cmd[:13]], [1, b"\x01" + cmd[13:40]], [1, b"\x03" + cmd[40:]],
                    [1, b"\x00" + DATA[:5]], [1, b"\x02" + DATA[5:]]])


@pytest.mark.parametrize("cmd", [
    store_rq(sop=SOP + b"1"),  # odd-length UID, not padded
    store_rq(sop_class=CT[:-1]),
    store_rq(sop=b"1.2.3\\1.2.4\x00"),  # multi-valued
    store_rq(mover=b"A\\B "),
    store_rq(priority=3),  # pynetdicom's setter refuses it
    store_rq(extra=[(0x0600, b"DEST")]),  # unknown to a C-STORE-RQ
    store_rq(extra=[(0x0902, b"comment ")]),
    command([(0x0100, us(1)), (0x0002, CT), (0x0110, us(1)), (0x0700, us(0)), (0x0800, us(0)), (0x1000, SOP)]),
    command([(0x0002, CT), (0x0100, us(1)), (0x0110, us(1)), (0x0700, us(0)), (0x0800, us(0))]),  # no SOP UID
    command([(0x0002, CT), (0x0100, us(1)), (0x0110, us(1)), (0x0700, us(0)), (0x0800, us(0x0101)),
             (0x1000, SOP)]),  # says: no data set
    command([(0x0002, CT), (0x0100, us(1)), (0x0110, b"\x01\x00\x02\x00"), (0x0700, us(0)), (0x0800, us(0)),
             (0x1000, SOP)]),  # VM 2
    command([(0x0002, b""), (0x0100, us(1)), (0x0110, us(1)), (0x0700, us(0)), (0x0800, us(0)), (0x1000, SOP)]),
    command([(0x0002, CT), (0x0100, us(0x0020)), (0x0110, us(1)), (0x0700, us(0)), (0x0800, us(0)),
             (0x1000, SOP)]),  # C-FIND-RQ
    command([(0x0002, b"1.2.840.10008.1.1\x00"), (0x0100, us(0x0030)), (0x0110, us(1)), (0x0800, us(0x0101))]),
])
def test_anything_unusual_goes_through_pynetdicom(cmd: bytes) -> None:
    assert not compare(pdvs_for(cmd))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the corrupted UIDs
def test_random_corruptions_agree_with_pynetdicom() -> None:
    rng = random.Random(17)
    base = store_rq(mover=b"MOVESCU ", mover_id=3)
    fast = 0
    for _ in range(400):
        cmd = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            cmd[rng.randrange(len(cmd))] = rng.randrange(256)
        fast += compare(pdvs_for(bytes(cmd)))
    assert fast > 0  # some corruptions (values inside UIDs, IDs) still decode


def test_decoder_refuses_what_it_does_not_know() -> None:
    assert compat.decode_store_rq(store_rq()) is not None
    assert compat.decode_store_rq(store_rq()[:-1]) is None  # truncated
    assert compat.decode_store_rq(store_rq(extra=[(0x0600, b"DEST")])) is None
    assert compat.decode_store_rq(b"") is None
