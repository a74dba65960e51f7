"""The real node (Service: DICOM listener, completion, pipeline, live worker) plus the live router on a
minimal FastAPI app served by uvicorn on loopback, in one process as the web app will run them.

Run as a script by the live tests and benchmarks/live.py:
    python tests/live_node.py CONFIG HTTP_PORT TOKEN
Routes require `Authorization: Bearer TOKEN` (standing in for the web app's require_role dependency).
Stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI, Header, HTTPException

from msfollowup.site.config import load_config
from msfollowup.web import live as live_http
from msfollowup.runtime.service import Service, setup_logging


def main(config_path: str, port: int, token: str) -> int:
    cfg = load_config(config_path)
    setup_logging(cfg.logging)
    service = Service(cfg)
    service.start()
    assert service.live is not None, "[live] enabled = false"

    def require_role(authorization: str = Header(default="")) -> None:
        if authorization != f"Bearer {token}":
            raise HTTPException(401, "bearer token required")

    app = FastAPI()
    app.include_router(live_http.router(service.live.broker, require_role))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True


    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server.run()
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
