"""The FastAPI application: security headers, an access log without PHI, /healthz, /metrics, and the
API and page routers."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from msfollowup import __version__
from msfollowup.web.context import HERE, SETUP_MINUTES, SetupToken, WebContext  # noqa: F401 - re-exported
from msfollowup.app.metrics import CONTENT_TYPE, run_checks

log = logging.getLogger("msfollowup.web")
access_log = logging.getLogger("msfollowup.web.access")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(ctx: WebContext) -> FastAPI:
    from msfollowup.web import api, pages, security

    app = FastAPI(title="msfollowup", version=__version__, openapi_url="/api/v1/openapi.json",
                  docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.state.throttle = security.Throttle()

    @app.middleware("http")
    async def headers_and_access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        # The route's template (/patients/{ref}), never the raw path or query: what a client typed
        # may hold anything, and query strings carry filter values.
        route = getattr(request.scope.get("route"), "path", None) or "(no route)"
        user = getattr(request.state, "user", None) or "-"
        access_log.info("%s %s %d %.1fms user=%s", request.method, route, response.status_code,
                        (time.perf_counter() - started) * 1000, user)
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        ok, results = run_checks(ctx.health_checks())
        body = {"status": "ok" if ok else "failing", "checks": results, "uptime_seconds": round(ctx.metrics.uptime(), 1)}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(ctx.metrics.render(ctx.db), media_type=None, headers={"Content-Type": CONTENT_TYPE})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return pages.error_response(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(security.LoginRequired)
    async def login_required(request: Request, exc: security.LoginRequired) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "authentication required: a session or 'Authorization: Bearer <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return RedirectResponse("/login", status_code=303)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    broker = ctx.extra.get("live_broker")
    if broker is not None:  # the scanner-room page and its event stream (issue 15), when [live] is enabled
        from msfollowup.web.live import router as live_router

        app.include_router(live_router(broker, security.require("live.view")))
    return app
