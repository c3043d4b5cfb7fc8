"""Who may talk to the ingress, and the pages it serves: API-key auth, the Host and Origin checks, the CSRF
rule, security headers, the login page and the static chat page.

Authentication (when an API key is configured) covers every route but /health:
- HTTP: `Authorization: Bearer <key>`.
- WebSocket: `Authorization: Bearer <key>` (non-browser clients), or the subprotocol
  `raychat.bearer.<key>` (browsers cannot set headers on a WebSocket; offer it together with `raychat.v1`,
  which the server selects), or `?api_key=<key>`, or the page cookie (below, same-origin only).
- The page: open `/?api_key=<key>` once; the server answers with an HttpOnly SameSite=Strict cookie and
  redirects to the same path on this site (so the key leaves the address bar). Static files and the page's
  WebSocket then authenticate with the cookie; the /v1 API never accepts it.

Without a key (the default, for a model on the operator's own machine) any web page the operator visits could
otherwise drive the model, so these hold whether or not a key is set:
- Host check (DNS rebinding: evil.example re-resolving to 127.0.0.1 sends `Host: evil.example`): the Host header
  must be one of `allowed_hosts` (ServeConfig; default: the loopback names and the bind address when no key is
  set and the bind address is not a wildcard, else any host).
- Origin check: a WebSocket or POST whose Origin is another site is refused unless that origin is listed in
  `allowed_origins` (with a key set, an explicit key - header, subprotocol, query - is accepted from anywhere;
  the cookie only from the same origin).
- CSRF: a POST to /v1 with a Content-Type must be JSON (none is read as JSON, as FastAPI does); a browser cannot
  send JSON cross-site without a CORS preflight, which this server never grants, so the `text/plain` and form
  posts a foreign page can make are refused with 415 (and any cross-site POST carries an Origin: 403 above).
- Headers on every answer: a Content-Security-Policy with `frame-ancestors 'none'` (no clickjacking; a <meta>
  CSP cannot set frame-ancestors), X-Frame-Options, nosniff, no-referrer.
"""

from __future__ import annotations

import hmac
import mimetypes
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from raychat.serve.protocol import ApiError
from raychat.serve.stream import record_failure

COOKIE = "raychat_api_key"
WS_SUBPROTOCOL = "raychat.v1"
BEARER_PREFIX = "raychat.bearer."
OPEN_PATHS = ("/health",)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-src 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer"}


def key_ok(config, candidate: str | None) -> bool:
    key = config.api_key
    return key is None or (candidate is not None and hmac.compare_digest(candidate.encode(), key.encode()))


def bearer(headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def allowed_hosts(config) -> tuple[str, ...]:
    """The Host names this server answers to ("*" = any)."""
    if config.allowed_hosts is not None:
        return tuple(h.lower() for h in config.allowed_hosts)
    if config.api_key is None and config.host not in ("0.0.0.0", "::", ""):
        return (*LOOPBACK_HOSTS, config.host.lower())
    return ("*",)


def _host_name(netloc: str) -> str:
    """'Example.com:8000' -> 'example.com', '[::1]:80' -> '::1' (urlsplit knows the brackets)."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:  # a malformed port or bracket: matches nothing
        return ""


def host_ok(config, host_header: str | None) -> bool:
    hosts = allowed_hosts(config)
    if "*" in hosts:
        return True
    name = _host_name(host_header or "")
    return bool(name) and any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in hosts)


def origin_ok(config, headers) -> bool:
    """No Origin (not a browser, or a same-origin GET) or the same origin as Host, or an allowed origin."""
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin.lower() in (o.lower() for o in config.allowed_origins):
        return True
    host = headers.get("host")
    return host is not None and origin.split("://", 1)[-1].lower() == host.lower()


def _refuse(api, e: ApiError):
    record_failure(api.metrics, e)
    return api.error_response(e)


def install_http_guard(app, api) -> None:
    """The middleware in front of every HTTP route (WebSockets are checked by `ws_admission`)."""
    config = api.config

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if path not in OPEN_PATHS and not host_ok(config, request.headers.get("host")):
            return _refuse(api, ApiError("this server does not answer to that Host name (set allowed_hosts to add "
                                         "it)", code="invalid_host", status=403))
        if request.method == "POST":
            if not origin_ok(config, request.headers):
                return _refuse(api, ApiError("cross-origin requests are not allowed (set allowed_origins to add "
                                             "that origin)", code="invalid_origin", status=403))
            ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if path.startswith("/v1/") and ctype and ctype != "application/json" and not ctype.endswith("+json"):
                return _refuse(api, ApiError(f"Content-Type must be application/json, got {ctype or 'none'!r}",
                                             code="unsupported_media_type", status=415))
        response = await _authenticated(request, call_next)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _authenticated(request: Request, call_next):
        path = request.url.path
        if config.api_key is None or path in OPEN_PATHS or key_ok(config, bearer(request.headers)):
            return await call_next(request)
        if request.method in ("GET", "HEAD") and not path.startswith(("/v1/", "/metrics", "/ready")):
            qkey = request.query_params.get("api_key")
            if qkey is not None and key_ok(config, qkey):
                # always this site: "//evil.example/x" (or "/\evil.example") would be an off-site redirect
                resp = RedirectResponse(url="/" + path.lstrip("/\\"), status_code=303)
                resp.set_cookie(COOKIE, qkey, httponly=True, samesite="strict", max_age=30 * 86400)
                return resp
            if key_ok(config, request.cookies.get(COOKIE)):
                return await call_next(request)
            if path == "/":
                return HTMLResponse(LOGIN_PAGE, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return _refuse(api, ApiError("missing or invalid API key: send `Authorization: Bearer <key>`",
                                     code="invalid_api_key", status=401))


def ws_admission(api, ws) -> tuple[ApiError | None, str | None]:
    """-> (the refusal or None, the subprotocol to select). The subprotocol must be echoed when the client
    offered one, or browsers fail the handshake."""
    config = api.config
    offered = list(ws.scope.get("subprotocols") or [])
    chosen = WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else next(
        (p for p in offered if p.startswith(BEARER_PREFIX)), offered[0] if offered else None)
    if not host_ok(config, ws.headers.get("host")):
        return ApiError("this server does not answer to that Host name", code="invalid_host", status=403), chosen
    if config.api_key is None:
        if not origin_ok(config, ws.headers):
            return ApiError("cross-origin WebSockets are not allowed (set allowed_origins to add that origin)",
                            code="invalid_origin", status=403), chosen
        return None, chosen
    candidates = [bearer(ws.headers), ws.query_params.get("api_key")]
    candidates += [p[len(BEARER_PREFIX):] for p in offered if p.startswith(BEARER_PREFIX)]
    if any(key_ok(config, c) for c in candidates if c):
        return None, chosen
    cookie = ws.cookies.get(COOKIE)
    if cookie is not None and ws.headers.get("origin") is not None and origin_ok(config, ws.headers) \
            and key_ok(config, cookie):
        return None, chosen
    return ApiError("missing or invalid API key", code="invalid_api_key", status=401), chosen


def add_page_routes(app, api) -> None:
    """The chat page and its static files (whatever web/ holds). Registered last: it is the catch-all."""

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def static(path: str, request: Request):
        if request.method not in ("GET", "HEAD"):
            raise ApiError(f"no route {request.method} /{path}", code="not_found", status=404)
        root = api.web_dir.resolve()
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            if not path:
                return HTMLResponse(NO_PAGE.format(web=root), status_code=200)
            raise ApiError(f"no route GET /{path}", code="not_found", status=404)
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(target, media_type=media, headers={"Cache-Control": "no-cache"})


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>raychat: API key</title></head>
<body>
<h1>raychat</h1><p>This server needs an API key.</p>
<form method="get" action="/"><label>API key <input name="api_key" type="password" autofocus required></label>
<button type="submit">Open chat</button></form></body></html>"""

NO_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>raychat</title></head>
<body>
<h1>raychat</h1><p>The chat page was not found ({web}/index.html). The API is up:
<code>/v1/chat/completions</code>, <code>/ws/chat</code>, <code>/v1/models</code>, <code>/metrics</code>.</p>
</body></html>"""
