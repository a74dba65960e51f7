"""Event-driven reactors for accepted associations, instead of pynetdicom's polling loops.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
from collections.abc import Callable
from typing import Any, cast


from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket



from msfollowup.net.compat.lean import LeanConfig, LeanStorage, finish, raw_transport
from msfollowup.net.compat.transport import BoundedSocket

log = logging.getLogger(__name__)


# --- event-driven reactors ---------------------------------------------------------------------
#
# pynetdicom 3.0 runs two polling loops per association: the DUL thread sleeps 1 ms whenever it found
# nothing to do (and select()s the socket with timeout 0 on every turn), the association thread sleeps
# 1 ms on every turn. Each instance thus waits up to ~2 ms for nothing and both threads wake ~1000
# times a second. Here both block instead: the DUL in select() on the socket and a wake-up socket
# pair (poked when the association queues a PDU to send or stops it), with the ARTIM timer's rest as
# the timeout; the association on an Event set whenever the DUL queues a message or primitive for it,
# stops, or the association is killed, with the network (idle) timer's rest as the timeout. The loop
# bodies are pynetdicom's own, in the same order; only the waiting differs.

REACTOR_RECHECK = 0.5  # a blocked reactor looks again at least this often (a wake-up it missed costs
#                        latency, never a hang); timers are honoured to the instant by the timeouts


class _SignallingQueue(queue.Queue[Any]):
    """A queue that calls `notify` after every put, so whoever waits for it can block instead of poll."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


def _running_timer_rest(timer: Any) -> float | None:
    """Seconds until a started pynetdicom Timer expires (None: not running or no timeout)."""
    if timer.timeout is None or timer._start_time is None or timer._end_time is not None:
        return None
    return max(0.0, float(timer.remaining))


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL whose reactor blocks on the socket and a wake-up pair instead of sleeping 1 ms."""

    def __init__(self, assoc: Association, on_exit: Callable[[], None]) -> None:
        super().__init__(assoc)
        self._on_exit = on_exit
        self._waiting = False  # set while (about to be) blocked in select(): only then is a poke written
        self._wake_lock = threading.Lock()  # the pair is closed at exit: no write to a reused descriptor
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.finished = False
        self.handed_over = False  # stopped after the A-ASSOCIATE-AC for the lean data-transfer phase
        self.to_provider_queue = _SignallingQueue(self.wake)
        self.event_queue = _SignallingQueue(self.wake)  # the transport may queue Evt17 from elsewhere

    def wake(self) -> None:
        """Make a blocked reactor look at its queues (cheap no-op while it is running)."""
        if not self._waiting:
            return
        with self._wake_lock:
            if self._wake_w is not None:
                try:
                    self._wake_w.send(b"\0")
                except OSError:  # full: a wake-up is pending anyway
                    pass

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        """As pynetdicom's (stop once idle in Sta1), but woken and joined instead of polled."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if threading.current_thread() is not self and self.is_alive():
            self.join()
        return True

    def run_reactor(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._run_events()
        finally:
            with self._wake_lock:
                self._wake_w.close()
                self._wake_r.close()
                self._wake_w = None
            self.finished = True
            self._on_exit()

    def _run_events(self) -> None:
        """pynetdicom's DULServiceProvider.run_reactor with `time.sleep(0.001)` replaced by `_wait()`."""
        self._idle_timer.start()
        transport = cast(AssociationSocket, self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: bypass the state machine, A-ABORT, stop both reactors
                log.error("exception in the DUL reactor, aborting the association: %s", type(exc).__name__)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                transport.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False
            if event == "Evt7" and self.state_machine.current_state == "Sta6" \
                    and cast(EventAssociation, self.assoc)._lean_wanted():
                # The A-ASSOCIATE-AC is sent: the association's thread serves the rest (compat.lean). Stop
                # before reading another byte; the socket stays open.
                self.handed_over = True
                return

    def _wait(self) -> None:
        """Block until the peer sent something, a primitive or event is queued, a stop is asked for, or
        the ARTIM timer expires. Returns at once if any of these is already the case."""
        self._waiting = True  # before the checks: a put after them sees it and pokes
        try:
            if self._kill_thread or self.to_provider_queue.qsize() or self.event_queue.qsize():
                return
            transport = self.socket
            fds: list[Any] = [self._wake_r]
            if isinstance(transport, BoundedSocket):
                if transport.pending():
                    return
                raw = transport.selectable()
                if raw is not None:
                    fds.append(raw)
            elif transport is not None and transport.socket is not None:
                if transport.ready:
                    return
                fds.append(transport.socket)
            artim = _running_timer_rest(self.artim_timer)
            timeout = REACTOR_RECHECK if artim is None else min(REACTOR_RECHECK, artim)
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):  # the socket was closed meanwhile: the next turn reports it
                return
            wake_r = self._wake_r
            if wake_r is not None and wake_r in readable:
                try:
                    while wake_r.recv(4096):
                        pass
                except OSError:
                    pass
        finally:
            self._waiting = False


class EventAssociation(Association):
    """pynetdicom's Association with the event-driven DUL above, and a reactor that blocks on an Event
    (set by the DUL when it queues something for the association) instead of sleeping 1 ms a turn."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._wake = threading.Event()
        self.dul = EventDUL(self, self._wake.set)
        # The timeouts live in the DUL's timers: set them again on the new DUL.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dul.to_user_queue = _SignallingQueue(self._wake.set)
        self.dimse.msg_queue = _SignallingQueue(self._wake.set)
        self.lean: LeanConfig | None = None  # set by the server: storage associations may take compat.lean
        self._lean_server: LeanStorage | None = None
        self.on_end: Callable[[], None] | None = None  # set by the server: this association's thread ended

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.on_end is not None:
                self.on_end()

    def _lean_wanted(self) -> bool:
        """Every accepted context is one the lean path serves (known once the contexts are negotiated,
        before the A-ASSOCIATE-AC is queued: the DUL and this thread decide alike)."""
        return self.lean is not None and self.lean.eligible(self)

    def abort(self, block: bool = True) -> None:
        lean = self._lean_server
        if lean is not None:
            lean.abort()
            return
        super().abort(block)

    def _serve_lean(self) -> bool:
        """The data-transfer phase in compat.lean, when the DUL handed the socket over; False: it did not
        (its thread ended some other way) and pynetdicom's reactor sees to the rest."""
        dul = cast(EventDUL, self.dul)
        dul.join(max(float(self.acse_timeout or 0), REACTOR_RECHECK))  # it stops right after sending the AC
        transport = raw_transport(self)
        if not dul.handed_over or dul.is_alive() or transport is None or self.lean is None:
            return False
        self._lean_server = LeanStorage(self, transport, self.lean, self.network_timeout)
        how = self._lean_server.run()
        finish(self, how)
        return True

    def kill(self) -> None:
        self._kill = True
        self._wake.set()
        super().kill()

    def _wait_for_work(self) -> None:
        """Block until the DUL queued a message or primitive, stopped, the association is killed, or the
        network timer expires. Nothing is taken off a queue before the reactor checkpoint, so the
        reactor counts as paused meanwhile (a thread pausing it need not wait for the wake-up)."""
        self._wake.clear()
        dul = cast(EventDUL, self.dul)
        if self._kill or self.dimse.msg_queue.qsize() or dul.to_user_queue.qsize() or dul.idle_timer_expired():
            return
        if dul.finished or not dul.is_alive():
            dul.join(REACTOR_RECHECK)  # ending: is_alive() turns False within moments
            return
        idle = _running_timer_rest(dul._idle_timer)
        self._is_paused = True
        self._wake.wait(REACTOR_RECHECK if idle is None else min(REACTOR_RECHECK, idle))

    def _run_reactor(self) -> None:
        """pynetdicom's Association._run_reactor with `time.sleep(0.001)` replaced by `_wait_for_work()`,
        or compat.lean's loop for a storage association."""
        if self._lean_wanted() and self._serve_lean():
            return
        self._is_paused = False
        while not self._kill:
            self._wait_for_work()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                finish(self, "released")
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
                finish(self, "aborted")
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("network timeout reached, association %s", self.network_timeout_response)
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


