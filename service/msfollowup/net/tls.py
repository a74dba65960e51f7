"""DICOM TLS for the node: the server's SSL context and an association server that handshakes safely.

With `[node.tls]` the port speaks TLS only (DICOM PS3.15 B.9/B.11 style: TLS 1.2 or later, forward-secret
AEAD ciphers as in the BCP 195 profiles); with `ca` set every peer must present a certificate issued
under that CA (mutual TLS). A file that cannot be used is a configuration error found at start-up,
naming the key and the file, not a failed first association.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any, NoReturn

from pynetdicom.transport import ThreadedAssociationServer

from msfollowup.site.config import ConfigError, TLSConfig

log = logging.getLogger(__name__)

# TLS 1.2 suites (TLS 1.3 suites are all AEAD and not affected): ECDHE/DHE with AES-GCM or ChaCha20,
# the set RFC 9325 (BCP 195) recommends; DCMTK's default BCP 195 profiles negotiate these.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The node's SSL context; ConfigError when a file is missing, unreadable or does not fit."""
    for key in ("certificate", "key", "ca"):
        path: Path | None = getattr(tls, key)
        if path is not None:
            _check_readable(f"node.tls.{key}", path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # Client-initiated renegotiation only costs the server CPU; no DICOM peer needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.key), password=_no_passphrase(tls.key))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"node.tls: certificate {tls.certificate} and key {tls.key} cannot be used together: {_reason(exc)}"
        ) from None
    if tls.ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        # The configured file is the trust anchor even when it holds an intermediate CA, and the only one:
        # the system's public CAs are never loaded (a certificate bought anywhere must not get in).
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        try:
            ctx.load_verify_locations(cafile=str(tls.ca))
        except ssl.SSLError as exc:
            raise ConfigError(f"node.tls.ca {tls.ca}: no usable CA certificate: {_reason(exc)}") from None
    if tls.key.stat().st_mode & 0o004:
        log.warning("node.tls.key %s is readable by every user on this machine; chmod 0640 or 0600", tls.key)
    return ctx


def _check_readable(key: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{key} {path}: cannot read: {exc.strerror}") from None


def _no_passphrase(key: Path) -> Any:
    """OpenSSL would prompt on the terminal for an encrypted key; a service has none to answer."""
    def refuse() -> NoReturn:
        raise ConfigError(f"node.tls.key {key}: the key is encrypted; a service cannot type its passphrase "
                          "(store it unencrypted, readable only by the service: chmod 0640 root:msfollowup)")
    return refuse


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = str(exc.reason)
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
            return f"{reason} (the peer does not speak TLS: a plain DICOM client?)"
        return reason
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the peer's handshake"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the TLS handshake moved out of the accept loop.

    pynetdicom handshakes inside the accept loop, without a timeout: one peer that opens TCP and never
    says hello (a port scanner, a health check, a stuck modality) stalls every other association, and
    shutdown, for as long as it stays connected. Here each connection handshakes in its own thread,
    bounded by `handshake_timeout`, and a failed handshake is one log line naming the peer and why.
    Without an SSL context it behaves exactly like ThreadedAssociationServer.
    """

    daemon_threads = True  # a handshake still waiting must not hold up shutdown
    # socketserver listens with a backlog of 5. When the accept loop is late (a burst of connections, a
    # busy host), the kernel then drops the handshake's last ACK and the peer's connection waits for the
    # SYN-ACK to be resent: 1 s, then 2 s, 4 s ... A connection that waited so is accepted late, and
    # every timer of ours (ARTIM, half-open counts) starts late with it. 256 connections fit the
    # half-open bound (64) and the association slots with room; the kernel caps it at somaxconn.
    request_queue_size = 256

    def __init__(self, *args: Any, handshake_timeout: float = 30.0, **kwargs: Any) -> None:
        self.handshake_timeout = handshake_timeout
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            request = self._handshake(request, client_address)
            if request is None:
                return
        super().finish_request(request, client_address)

    def _handshake(self, sock: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        assert self.ssl_context is not None
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        sock.settimeout(self.handshake_timeout)
        try:
            tls = self.ssl_context.wrap_socket(sock, server_side=True)
        except OSError as exc:  # ssl.SSLError, TimeoutError and resets are all OSErrors
            log.warning("TLS handshake failed host=%s reason=%s", host, _reason(exc))
            sock.close()
            return None
        tls.settimeout(None)  # from here on pynetdicom's own timers apply, as for a plain connection
        log.debug("TLS established host=%s version=%s cipher=%s", host, tls.version(), (tls.cipher() or ("?",))[0])
        return tls
