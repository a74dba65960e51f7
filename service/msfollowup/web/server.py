"""The one HTTP listener of the service: uvicorn serving the FastAPI app in a thread.

The socket is bound in `start()` on the caller's thread, so a port in use stops start-up with a
message naming it (as before) instead of failing later inside the server thread.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import uvicorn

from msfollowup.site.config import TLSConfig
from msfollowup.web.app import WebContext, create_app

log = logging.getLogger(__name__)


class TLSFileError(ValueError):
    """The [http.tls] certificate, key or CA cannot be read or does not match."""


class WebServer:
    def __init__(self, host: str, port: int, ctx: WebContext, tls: TLSConfig | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            raise
        self.ctx = ctx
        config = uvicorn.Config(
            create_app(ctx), log_config=None, access_log=False,  # our own access log, without query strings
            server_header=False, proxy_headers=False, lifespan="off", timeout_graceful_shutdown=3,
            ssl_certfile=str(tls.certificate) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
            ssl_ca_certs=str(tls.ca) if tls and tls.ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.ca else ssl.CERT_NONE,
        )
        if tls is not None:
            try:
                config.load()  # reads the certificate and key now: a bad one stops start-up, naming the key
            except (OSError, ssl.SSLError) as exc:
                self.sock.close()
                raise TLSFileError(f"http.tls: cannot use the certificate or key ({exc})") from None
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def _run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> tuple[str, int]:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.address

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=5)
        self.sock.close()
