"""The guarded acceptor: the A-ASSOCIATE-RQ read by us within a deadline and a bound, half-open
connections capped, every connection cuttable at shutdown.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.transport import RequestHandler

from msfollowup.net.compat.lean import LeanConfig
from msfollowup.net.compat.reactor import EventAssociation
from msfollowup.net.compat.transport import (
    _A_ASSOCIATE_RQ,
    ASSOCIATION_PDU_LIMIT,
    PDU_HEADER,
    BoundedSocket,
    Limits,
    PeerViolation,
    _host,
    _read_exactly,
    cut,
)
from msfollowup.net.tls import AssociationServer

log = logging.getLogger(__name__)


class _GuardedHandler(RequestHandler):
    """Reads the A-ASSOCIATE-RQ within the deadline, then hands the connection to pynetdicom."""

    server: GuardedServer

    def handle(self) -> None:
        server = self.server
        host = _host(self.client_address)
        try:
            first = read_association_request(self.request, server.limits)
        except PeerViolation as exc:
            server.note_refused(host, str(exc))
            cut(self.request, abort="limit" in str(exc))
            self.request.close()
            return
        assoc = self._associate(first, host)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.on_end = server.finished_one
        assoc.start()
        server.association_started()  # from here its thread's end counts the connection as ended

    def _associate(self, first: bytes, host: str) -> EventAssociation:
        """pynetdicom's RequestHandler._create_association with our transport."""
        server = self.server
        assoc = EventAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        sock = BoundedSocket(assoc, self.request, first, server.limits, host)
        server.track(sock)
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # pynetdicom deep-copies the ~160 supported contexts (all transfer syntaxes each) for every
        # association, ~60 ms of CPU; negotiation only reads them, so one copy made at start is shared.
        assoc.acceptor.supported_contexts = server.shared_contexts()
        assoc.requestor.address_info = self.remote
        assoc.lean = server.lean
        for event in server._handlers:
            if event.is_intervention and server._handlers[event]:
                assoc.bind(event, *server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def read_association_request(sock: socket.socket, limits: Limits) -> bytes:
    """The first PDU, which must be an A-ASSOCIATE-RQ of bounded length, complete within the ARTIM time."""
    deadline = time.monotonic() + limits.artim_seconds
    try:
        header = _read_exactly(sock, PDU_HEADER, deadline)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type != _A_ASSOCIATE_RQ:
            raise PeerViolation(f"first PDU is not an A-ASSOCIATE-RQ (type 0x{pdu_type:02X})")
        if length > ASSOCIATION_PDU_LIMIT:
            raise PeerViolation(f"A-ASSOCIATE-RQ of {length} bytes (limit {ASSOCIATION_PDU_LIMIT})")
        return header + _read_exactly(sock, length, deadline)
    except PeerViolation as exc:
        if str(exc) == "timed out":
            raise PeerViolation(f"no complete A-ASSOCIATE-RQ within {limits.artim_seconds:g} s") from None
        raise


class GuardedServer(AssociationServer):
    """The TLS-aware association server with the limits above (see the module docstring)."""

    def __init__(self, *args: Any, limits: Limits, lean: LeanConfig | None = None, **kwargs: Any) -> None:
        self.limits = limits
        self.lean = lean
        self._lock = threading.Lock()
        self._half_open: dict[str, int] = {}
        self._sockets: set[BoundedSocket] = set()
        self._refused = 0
        self._last_refusal_log = 0.0
        # Several receiving processes (runtime/ingest_workers.py): the main process's acceptor may hand
        # a connection to another process (`handoff` returns True once it did), and that process serves
        # it with `serve_handed`; `on_finished` runs when a connection served here ends.
        self.handoff: Callable[[socket.socket], bool] | None = None
        self.on_finished: Callable[[], None] | None = None
        self.serving = 0  # connections served by this process right now (accepted or handed, not ended)
        self._request_thread = threading.local()  # does this request thread's connection have an association?
        super().__init__(*args, request_handler=_GuardedHandler, **kwargs)
        # One deep copy of the supported contexts, read by every association's negotiation (see
        # `shared_contexts`). Made here, before the node reports it listens: made at the first
        # association it cost that association ~60 ms of CPU (~170 contexts, every transfer syntax each),
        # in every process, after every start.
        self._contexts_copy: list[Any] = deepcopy(self.contexts)

    # -- half-open connections: counted from accept to a complete A-ASSOCIATE-RQ (or its failure)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = _host(client_address)
        with self._lock:
            total = sum(self._half_open.values())
            if self._half_open.get(host, 0) >= self.limits.half_open_per_host:
                reason = f"more than {self.limits.half_open_per_host} connections of this host without an A-ASSOCIATE-RQ"
            elif total >= self.limits.half_open_total:
                reason = f"more than {self.limits.half_open_total} connections without an A-ASSOCIATE-RQ"
            else:
                self._half_open[host] = self._half_open.get(host, 0) + 1
                return True
        self.note_refused(host, reason)
        return False  # socketserver closes it

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            super().finish_request(request, client_address)
        finally:
            self._release_half_open(_host(client_address))

    def _release_half_open(self, host: str) -> None:
        with self._lock:
            n = self._half_open.get(host, 1) - 1
            if n > 0:
                self._half_open[host] = n
            else:
                self._half_open.pop(host, None)

    # -- connections served by another process of the service

    def process_request(self, request: Any, client_address: Any) -> None:
        handoff = self.handoff
        if handoff is not None and handoff(request):
            self._release_half_open(_host(client_address))  # the other process counts it from here
            request.close()  # this process's descriptor only: the connection lives on over there
            return
        with self._lock:
            self.serving += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """A connection ends here unless it became an association (then when the association's thread
        ends): a refused handshake or A-ASSOCIATE-RQ, or an error, ends it now."""
        self._request_thread.association = False
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            if not self._request_thread.association:
                self.finished_one()

    def association_started(self) -> None:
        self._request_thread.association = True

    def finished_one(self) -> None:
        """A connection served by this process ended (its association's thread, or before one started)."""
        with self._lock:
            self.serving -= 1
        if self.on_finished is not None:
            self.on_finished()

    def serve_handed(self, request: socket.socket) -> None:
        """Serve a connection that another process of this service accepted and handed over, exactly
        as one accepted here (the same bounds and half-open counts apply from now on)."""
        try:
            client_address = request.getpeername()
        except OSError:  # the peer is already gone
            request.close()
            self._ended_unserved()
            return
        if self.verify_request(request, client_address):
            self.process_request(request, client_address)
        else:
            self.shutdown_request(request)
            self._ended_unserved()

    def _ended_unserved(self) -> None:
        """A handed connection that ends before it is served: the process that handed it over still
        hears that it ended."""
        if self.on_finished is not None:
            self.on_finished()

    def shared_contexts(self) -> list[Any]:
        """The deep copy of the supported contexts made at start, read by every association."""
        return self._contexts_copy

    def half_open(self) -> int:
        with self._lock:
            return sum(self._half_open.values())

    def note_refused(self, host: str, reason: str) -> None:
        """One warning per connection refused, at most one line a second (a port scan is no log flood)."""
        if reason == "closed":  # connect and close: a port scan or a TCP health check, nothing to say
            log.debug("connection closed before an A-ASSOCIATE-RQ host=%s", host)
            return
        now = time.monotonic()
        with self._lock:
            self._refused += 1
            if now - self._last_refusal_log < 1.0:
                return
            self._last_refusal_log, count, self._refused = now, self._refused, 0
        log.warning("connection refused host=%s reason=%s (%d refused since the last such line)", host, reason, count)

    # -- shutdown

    def track(self, sock: BoundedSocket) -> None:
        with self._lock:
            self._sockets = {s for s in self._sockets if s.socket is not None and not s._done}
            self._sockets.add(sock)

    def cut_all(self) -> None:
        """Cut every association's connection: blocked reads return, pynetdicom unwinds them."""
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            s.cut()


def make_guarded_server(ae: Any, address: tuple[str, int], handlers: list[Any], ssl_context: Any,
                        handshake_timeout: float, limits: Limits, lean: LeanConfig | None = None) -> GuardedServer:
    """What `ae.start_server(block=False)` does, with the guarded server; AE.shutdown() finds it.
    `lean`: storage associations serve their data-transfer phase in compat.lean."""
    server = cast(GuardedServer, ae.make_server(
        address, evt_handlers=handlers, ssl_context=ssl_context, server_class=GuardedServer,
        handshake_timeout=handshake_timeout, limits=limits, lean=lean,
    ))
    ae._servers.append(server)
    return server

