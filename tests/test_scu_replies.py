"""A pynetdicom SCU gets the reply it waits for, however fast the peer answers (compat item 12).

pynetdicom 3.0's reactor could take a reply off the queue just after a send_*() call had paused it
(upstream symptom: "Received unexpected C-... service message", pydicom/pynetdicom#875). A full test
run met it as a C-STORE to msfollowup's own node that got no status although the node had stored it.
The interleaving is forced here: the reactor is held just past its checkpoint, the checkpoint is
cleared as send_*() clears it, and the reply is queued before the reactor goes on.
"""

from __future__ import annotations

import threading
import time

from pynetdicom import AE
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification

from msfollowup.net.compat import keep_replies_for_their_caller
from nodeutil import RunningNode


class _HeldCheckpoint(threading.Event):
    """The reactor's checkpoint; the first time the reactor passes it, it is held just past it."""

    def __init__(self, reactor: threading.Thread) -> None:
        super().__init__()
        self.set()
        self.reactor = reactor  # a pynetdicom Association is the thread its reactor runs in
        self.passed, self.resume = threading.Event(), threading.Event()
        self._armed = True

    def wait(self, timeout: float | None = None) -> bool:
        ok = super().wait(timeout)
        if self._armed and threading.current_thread() is self.reactor:
            self._armed = False
            self.passed.set()
            assert self.resume.wait(10)
        return ok


def test_a_reply_arriving_while_the_reactor_is_being_paused_stays_for_its_caller(node: RunningNode) -> None:
    keep_replies_for_their_caller()  # as the node and conftest do; idempotent
    ae = AE(ae_title="PYNETDICOM")  # a calling AE title the test node allows
    ae.add_requested_context(Verification)
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 10
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    held = _HeldCheckpoint(assoc)
    try:
        assoc._reactor_checkpoint = held  # taken by the reactor on its next turn
        assert held.passed.wait(5), "the reactor never reached its checkpoint"
        held.clear()  # what send_c_echo() does first ...
        assert assoc._is_paused, "the reactor must still look paused here: that is the race"
        reply = C_ECHO()
        reply.MessageIDBeingRespondedTo, reply.Status = 1, 0x0000
        assoc.dimse.msg_queue.put((1, reply))  # ... then the peer's answer arrives at once
        held.resume.set()
        time.sleep(0.3)  # the reactor's next turns
        assert assoc.dimse.msg_queue.qsize() == 1, "the reactor took the reply its caller waits for"
        assert assoc.dimse.get_msg(block=True)[1] is reply
        held.set()
        status = assoc.send_c_echo()
        assert status is not None and int(status.Status) == 0, "the association did not recover"
    finally:
        held.resume.set()  # a failed assertion above must not leave the reactor held
        held.set()
        assoc.release()
