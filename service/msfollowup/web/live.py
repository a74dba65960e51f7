"""HTTP side of the live checks: the SSE stream and the scanner-room page, as a FastAPI router.

Authentication belongs to the web application: it passes its dependency (e.g. `require_role(...)`) in,
and every route here depends on it. The page is server-rendered (readable without JavaScript) and then
kept current by static/live.js through EventSource; no inline script or style, so a strict
Content-Security-Policy works.

Mounting (one line, in the web app):  app.include_router(live_http.router(service.live.broker, dep))
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from fastapi.templating import Jinja2Templates

from msfollowup.app.live.broker import Broker, Event

HERE = Path(__file__).resolve().parent
STATIC = {"live.js": "text/javascript", "live.css": "text/css"}
HEARTBEAT_SECONDS = 15.0  # an SSE comment keeps proxies from closing an idle stream


def _visible(who: Any, event: Event) -> bool:
    """A kiosk sees its own station's panel only (by calling AE title or station name); users see all."""
    sees = getattr(who, "sees_station", None)
    return sees is None or bool(sees(event.get("scanner"), event.get("station_name")))


def panels(events: list[Event], who: Any = None) -> list[Event]:
    """One panel per scanner: its most recently computed study (of the stations `who` may see)."""
    latest: dict[str, Event] = {}
    for ev in events:
        if not _visible(who, ev):
            continue
        key = str(ev.get("scanner") or "unknown")
        if key not in latest or str(ev.get("computed_at", "")) > str(latest[key].get("computed_at", "")):
            latest[key] = ev
    return [latest[k] for k in sorted(latest)]


def _sse(event: Event) -> bytes:
    data = json.dumps(event, separators=(",", ":"), default=str)
    return f"event: provisional\nid: {event.get('study_instance_uid', '')}\ndata: {data}\n\n".encode()


def router(broker: Broker, require_role: Callable[..., Any], *, title: str = "Scanner room") -> APIRouter:
    """The live routes, each behind `require_role` (a FastAPI dependency the web app provides). What it
    returns (the principal) decides which panels are shown: one with a `station` (a kiosk) sees only
    that station's."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    r = APIRouter()

    @r.get("/api/v1/live/stream", name="live_stream")
    async def stream(request: Request, who: Any = Depends(require_role)) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        sub = broker.subscribe(loop=loop)

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                for ev in broker.snapshot():  # the current state first, then every change
                    if _visible(who, ev):
                        yield _sse(ev)
                while not await request.is_disconnected():
                    events = [ev for ev in await sub.wait(HEARTBEAT_SECONDS) if _visible(who, ev)]
                    if not events:
                        yield b": keep-alive\n\n"
                    for ev in events:
                        yield _sse(ev)
            finally:
                sub.close()

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    @r.get("/live", response_class=HTMLResponse, name="live_page", include_in_schema=False)
    async def page(request: Request, who: Any = Depends(require_role)) -> HTMLResponse:
        station = getattr(who, "station", None)
        heading = f"{title} · {station}" if station else title
        return templates.TemplateResponse(request, "live.html",
                                          {"title": heading, "panels": panels(broker.snapshot(), who)})

    @r.get("/live/static/{name}", name="live_static", include_in_schema=False)
    async def static(name: str, who: Any = Depends(require_role)) -> FileResponse:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                            headers={"Cache-Control": "no-cache"})

    return r
