"""The dashboard's HTTP side: the page at ``/``, its script and style, and the
JSON snapshot it polls. Read-only: every route is a GET (HEAD works too);
any other method gets 405, an unknown path 404.

    GET /                    the page (p2pnet/dashboard/static/dashboard.html)
    GET /dashboard/app.js    its script; app.css its style; icon.svg its icon
    GET /dashboard/state     the snapshot (p2pnet.dashboard.service)

Every asset is served from the package: the page works with no internet
access. Each answer forbids framing, sniffing and referrers, and the page's
Content-Security-Policy allows only its own script and style, so even a
string from the network that reached the page as markup could run nothing
(the script writes every such string as text anyway).

A node whose API needs a key (one bound beyond loopback) lets a browser in
through a dashboard token, ``HMAC-SHA256(api key, "p2pnet dashboard v1")``,
which `p2pnet node start` and `p2pnet dashboard` print in the URL
(``/?token=...``). ``GET /?token=...`` sets it as an HttpOnly,
SameSite=Strict cookie and redirects to ``/``, so the token leaves the
address bar. The token and its cookie open only the dashboard's GET routes,
never the rest of the API; the key itself never appears in a URL or a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from importlib import resources
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit, urlunsplit

from p2pnet.api.errors import HttpError
from p2pnet.api.http import Headers, Request, Response, Router

_TOKEN_CONTEXT = b"p2pnet dashboard v1"
STATE_PATH = "/dashboard/state"
_ASSETS = {  # path -> (file in p2pnet/dashboard/static, content type)
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/icon.svg": ("icon.svg", "image/svg+xml"),
}
PATHS = frozenset((*_ASSETS, STATE_PATH))
"""Every dashboard path: the only ones a dashboard token opens."""
_SEGMENTS = frozenset(tuple(part for part in path.split("/") if part) for path in PATHS)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_COMMON: Headers = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
)


def dashboard_token(api_key: str) -> str:
    return hmac.new(api_key.encode(), _TOKEN_CONTEXT, hashlib.sha256).hexdigest()


def dashboard_url(api_url: str, api_key: Optional[str] = None) -> str:
    """The URL to open: the API's, with a wildcard bind address (0.0.0.0,
    ::) replaced by loopback, and ``?token=`` when the API needs a key."""
    parts = urlsplit(api_url.rstrip("/"))
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = f"token={dashboard_token(api_key)}" if api_key else ""
    return urlunsplit((parts.scheme or "http", netloc, "/", query, ""))


def _cookie_values(headers: Headers, name: str) -> list[str]:
    out = []
    for key, value in headers:
        if key != "cookie":
            continue
        for item in value.split(";"):
            cname, eq, cvalue = item.strip().partition("=")
            if eq and cname == name:
                out.append(cvalue.strip().strip('"'))
    return out


class DashboardAuth:
    """The dashboard token of a node whose API needs a key (see the module doc)."""

    def __init__(self, api_key: str) -> None:
        self.token = dashboard_token(api_key)
        # named after the token, so that nodes on one host (cookies ignore the port) keep theirs apart
        self.cookie = "p2pnet_dashboard_" + hashlib.sha256(self.token.encode()).hexdigest()[:12]

    def _matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode("latin-1", "replace"), self.token.encode())

    def query_token_ok(self, query: dict) -> bool:
        values = query.get("token") or ()
        return len(values) == 1 and self._matches(values[0])

    def allows(self, method: str, target: str, headers: Headers) -> bool:
        """For the server's ``extra_auth``: a GET or HEAD of a dashboard path
        with the token's cookie (or, for ``/``, the token in the query).
        Raises 401 with a hint for a dashboard path without either."""
        if method not in ("GET", "HEAD"):
            return False
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            path, query = parts.path, parts.query
        else:
            path, _, query = target.partition("?")
        # the router matches the still percent-encoded segments: so does this
        segments = tuple(part for part in path.split("/") if part)
        if segments not in _SEGMENTS:
            return False
        if any(self._matches(value) for value in _cookie_values(headers, self.cookie)):
            return True
        if not segments and self.query_token_ok(parse_qs(query, keep_blank_values=True)):
            return True
        raise HttpError(401, "this node's API needs a key: open the dashboard at the URL that "
                             "`p2pnet node start` or `p2pnet dashboard` prints (it holds a dashboard token)",
                        code="invalid_api_key", headers=(("www-authenticate", "Bearer"), *_COMMON))


def _asset(name: str) -> bytes:
    return resources.files("p2pnet.dashboard").joinpath("static", name).read_bytes()


def mount_dashboard(router: Router, snapshot: Callable[[], dict], *, api_key: Optional[str] = None) -> None:
    """Register the dashboard's routes; ``snapshot()`` gives the state JSON."""
    auth = DashboardAuth(api_key) if api_key else None
    files = {path: (_asset(name), ctype) for path, (name, ctype) in _ASSETS.items()}

    def serve(path: str):
        body, ctype = files[path]
        extra: Headers = (("content-security-policy", CSP),) if path == "/" else ()

        async def handler(request: Request) -> Response:
            if path == "/" and auth is not None and auth.query_token_ok(request.query):
                # the server admitted the token; keep it as a cookie and out of the address bar
                cookie = f"{auth.cookie}={auth.token}; Path=/; HttpOnly; SameSite=Strict"
                return Response(303, (("location", "/"), ("set-cookie", cookie), *_COMMON))
            return Response(200, (("content-type", ctype), *extra, *_COMMON), body)

        return handler

    async def state(request: Request) -> Response:
        return Response.json(200, snapshot(), _COMMON)

    for path in _ASSETS:
        router.add("GET", path, serve(path))
    router.add("GET", STATE_PATH, state)
