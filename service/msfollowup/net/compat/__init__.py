"""Every use of pynetdicom internals, in one place (pyproject pins the pynetdicom versions they fit).

pynetdicom trusts its peer: it counts a connection against `maximum_associations` from the TCP accept
on, waits without a deadline for a PDU that was started, and allocates whatever PDU length the peer
announces before any access control. A port scan, a health check or one slow peer could lock every
sender out, and 4 bytes could make it allocate 4 GiB. The server here closes those holes:

* the A-ASSOCIATE-RQ is read by us before pynetdicom sees the connection, within an ARTIM-style
  deadline and a length bound (a real request is a few KiB); a connection that does not deliver one
  never becomes an association, so it holds no slot and no pynetdicom threads;
* connections still in that phase (TLS handshake included) are capped per peer host and in total;
* after that every PDU, once its first byte arrived, must be complete within a deadline, and a
  P-DATA PDU may not exceed the negotiated maximum (other PDUs: the association bound). A violation
  is logged (host and numbers, no data) and the association aborted before the body is read;
* at shutdown every connection can be cut, whatever state its peer left it in.

Everything else pynetdicom offers only through private names (the chunked-receive hook, the received
data set's spool file, the A-ASSOCIATE-RJ primitive) is wrapped here too.

The parts: `transport` (limits, bounded PDU reads, immediate ACKs), `server` (the guarded acceptor),
`reactor` (event-driven association and DUL threads) and `dimse` (messages without pydicom on the hot
path, and the accessors for pynetdicom's private names). What the rest of msfollowup uses is here.
"""

from __future__ import annotations

from msfollowup.net.compat.dimse import (
    dataset_path,
    dataset_spool,
    keep_replies_for_their_caller,
    partial_spool,
    raw_socket,
    reject,
    stream_datasets_to,
)
from msfollowup.net.compat.lean import VERIFICATION, LeanConfig, StoreRequest
from msfollowup.net.compat.server import GuardedServer, make_guarded_server
from msfollowup.net.compat.transport import Limits, PeerViolation

__all__ = ["VERIFICATION", "GuardedServer", "LeanConfig", "Limits", "StoreRequest", "PeerViolation", "dataset_path", "dataset_spool",
           "keep_replies_for_their_caller", "make_guarded_server",
           "partial_spool", "raw_socket", "reject", "stream_datasets_to"]
