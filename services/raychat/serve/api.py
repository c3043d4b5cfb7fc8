"""The HTTP/WebSocket face of raychat: a FastAPI app built around an engine client.

    app = build_api(config, client)      # client: app.HandleEngineClient (Ray Serve) or LocalEngineClient

Routes: GET / and the files of web/ (the chat page), WS /ws/chat, POST /v1/chat/completions (SSE or JSON),
POST /v1/completions, GET /v1/models, GET /health (liveness, never authenticated), GET /ready (503 until an
engine replica has its model loaded), GET /metrics (Prometheus text).

The rooms: stream.py (the request gate and one generation's token stream), security.py (auth, Host/Origin/CSRF
checks, security headers, the login and static pages), openai_routes.py (/v1), ws_session.py (/ws/chat). This
file holds the state they share, the error handlers and the operational routes.

Every refusal is OpenAI-shaped ({"error": {...}}; over the WebSocket a typed {"type": "error"}) and bad
input never produces a 500 or a dropped socket without a reason. Overload (global in-flight bound, the
per-client bound, a second chat on one socket, Serve back-pressure) is 429 + Retry-After / "overloaded".
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from raychat.serve.config import ServeConfig
from raychat.serve.metrics import ServeMetrics
from raychat.serve.openai_routes import add_openai_routes
from raychat.serve.protocol import ApiError
from raychat.serve.security import add_page_routes, install_http_guard
from raychat.serve.stream import Gate, record_failure
from raychat.serve.ws_session import Connections, ws_session

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RaychatAPI:
    """State shared by the routes of one ingress replica."""

    def __init__(self, config: ServeConfig, client, metrics: ServeMetrics | None = None):
        self.config = config
        self.client = client
        self.metrics = metrics or ServeMetrics(config.model_name)
        self.gate = Gate(config.limits)
        self.connections = Connections(config.limits)
        self.web_dir = config.resolved_web_dir()
        self._info: dict | None = None
        self._stats: dict[str, tuple[float, dict]] = {}

    async def info(self) -> dict | None:
        if self._info is None:
            try:
                self._info = await asyncio.wait_for(self.client.info(), timeout=5.0)
            except Exception:  # noqa: BLE001 - not loaded yet: callers degrade (no max_model_len)
                return None
        return self._info

    def remember_stats(self, stats: dict) -> None:
        self._stats[str(stats.get("replica", "0"))] = (time.monotonic(), stats)

    async def engine_stats(self) -> list[dict]:
        """Fresh stats from every replica (broadcast); falls back to what the last requests reported."""
        try:
            fresh = await asyncio.wait_for(self.client.stats(), timeout=3.0)
            for s in fresh:
                self.remember_stats(s)
            live = {str(s.get("replica", "0")) for s in fresh}
            self._stats = {k: v for k, v in self._stats.items() if k in live}
        except Exception:  # noqa: BLE001 - a scrape must not fail because a replica is busy or restarting
            now = time.monotonic()
            self._stats = {k: v for k, v in self._stats.items() if now - v[0] < 60.0}
        return [v[1] for v in self._stats.values()]

    def error_response(self, e: ApiError) -> JSONResponse:
        headers = {}
        if e.status in (429, 503):
            headers["Retry-After"] = str(self.config.limits.retry_after_s)
        if e.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(e.body(), status_code=e.status, headers=headers)


def build_api(config: ServeConfig, client, metrics: ServeMetrics | None = None) -> FastAPI:
    api = RaychatAPI(config, client, metrics)
    app = FastAPI(title="raychat", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.raychat = api

    # ---- errors: always OpenAI-shaped -------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return api.error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        return api.error_response(ApiError(str(e.detail), code=code, status=e.status_code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {}
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return api.error_response(ApiError(f"{loc}: {err.get('msg', 'invalid request')}", param=loc or None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):  # a bug, not bad input: still a readable body
        err = ApiError(f"internal error: {type(e).__name__}", code="internal", status=500)
        record_failure(api.metrics, err)
        return api.error_response(err)

    install_http_guard(app, api)

    # ---- health, readiness, metrics -----------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        try:
            r = await asyncio.wait_for(client.ready(), timeout=5.0)
        except Exception as e:  # noqa: BLE001
            r = {"ready": False, "errors": [f"{type(e).__name__}: {e}"]}
        if r.get("ready"):
            return {"status": "ready", **{k: v for k, v in r.items() if k != "ready"}}
        body = ApiError("model is loading" if not r.get("errors") else f"model not ready: {r['errors'][0]}",
                        code="not_ready", status=503).body()
        body["status"] = "loading"
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(config.limits.retry_after_s)})

    @app.get("/metrics")
    async def metrics():
        api.metrics.set_engine_stats(await api.engine_stats())
        return Response(api.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    add_openai_routes(app, api)

    @app.websocket("/ws/chat")
    async def ws_chat(ws: WebSocket):
        await ws_session(api, ws)

    add_page_routes(app, api)
    return app


__all__ = ["build_api", "RaychatAPI"]
