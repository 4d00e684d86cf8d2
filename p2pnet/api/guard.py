"""Who may talk to the node's API: the Host, Origin and Content-Type checks
that keep web pages out. No I/O; the server (server.py) asks before it reads
a request's body or runs a handler.

What a page in the operator's browser could otherwise do, and what stops it:

- send a "simple" cross-origin POST (text/plain, form bodies: no CORS
  preflight) that publishes signed gossip or runs a query. Refused twice: a
  body must be ``application/json`` (415), and a request whose ``Origin`` is
  another site is refused (403) whatever its method, preflights included;
- read answers through DNS rebinding (its own name, re-pointed at
  127.0.0.1, so that its requests are same-origin to the browser). Refused:
  the ``Host`` header must name this node (421); a rebinding page's Host is
  always its own DNS name.

No permissive CORS header is ever sent; an origin the operator lists
(``allowed_origins``) gets its own origin echoed back, nothing wider.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable
from urllib.parse import urlsplit

from p2pnet.api.errors import HttpError
from p2pnet.api.http import Headers, Response

JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Requests that must carry a JSON body (any request with a body must, too)."""

_CORS_METHODS = "GET, POST"
_CORS_HEADERS = "authorization, content-type"
_CORS_MAX_AGE_S = "600"


def _is_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Example.org:8700"`` -> ("example.org", 8700); ``"[::1]"`` -> ("::1", None).

    The name lower-cased, without a trailing dot; None if it is not a
    host[:port] at all."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if _is_ip(host) is None or ":" not in host:
            return None
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = value.partition(":")
        if not colon:
            port_text = None
        if ":" in (port_text or ""):
            return None  # a bare IPv6 address: it must be in brackets
    if port_text is not None:
        if not (port_text.isdigit() and port_text.isascii() and len(port_text) <= 5 and int(port_text) <= 65535):
            return None
    host = host.lower().rstrip(".")
    if not host or any(ch in host for ch in "/\\@?# \t"):
        return None
    return host, int(port_text) if port_text else None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class RequestGuard:
    """Host, Origin and Content-Type checks for one server.

    - Host: loopback names (``localhost``, ``*.localhost``, 127.0.0.0/8,
      ``[::1]``), the bound address, and ``allowed_hosts``; any port, so that
      an SSH tunnel (``-L 9000:127.0.0.1:8700``) still works. Bound to a
      wildcard address (0.0.0.0, ::), any IP literal is accepted too: DNS
      rebinding always comes with a DNS name, and such a server needs an API
      key anyway. Otherwise 421.
    - Origin: absent (not a browser, or a same-origin GET), equal to
      ``http://`` + the request's own (checked) Host, or listed in
      ``allowed_origins``; otherwise 403, for every method.
    - Content-Type: POST, PUT, PATCH and any request with a body must say
      ``application/json`` (a ``charset`` of UTF-8 may follow); otherwise 415.
    """

    def __init__(self, bind_host: str, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = ()) -> None:
        bound = split_host(f"[{bind_host}]" if ":" in bind_host else bind_host)
        self._bound = bound[0] if bound else bind_host.lower()
        bound_ip = _is_ip(self._bound)
        self._wildcard = bound_ip is not None and bound_ip.is_unspecified
        names = set()
        for name in allowed_hosts:
            parsed = split_host(name)
            if parsed is None or parsed[1] is not None:
                raise ValueError(f"allowed host {name!r} is not a host name or address (no port, no scheme)")
            names.add(parsed[0])
        self._names = frozenset(names)
        origins = set()
        for origin in allowed_origins:
            normal = normalize_origin(origin)
            if normal is None:
                raise ValueError(f"allowed origin {origin!r} is not scheme://host[:port]")
            origins.add(normal)
        self._origins = frozenset(origins)

    def host_allowed(self, host: str) -> bool:
        if host == "localhost" or host.endswith(".localhost") or host == self._bound or host in self._names:
            return True
        ip = _is_ip(host)
        return ip is not None and (ip.is_loopback or self._wildcard)

    def check(self, method: str, target: str, headers: Headers) -> tuple[Headers, Response | None]:
        """Host and Origin of a request whose head has arrived.

        Returns the CORS headers to add to its answer (only for a listed
        origin) and, for a listed origin's preflight, the whole answer.
        Raises HttpError 421 (Host) or 403 (Origin)."""
        hosts = [value for name, value in headers if name == "host"]
        host = self._checked_host(hosts[0] if len(hosts) == 1 else None, len(hosts))
        if target.startswith(("http://", "https://")):  # absolute form: it names the host too
            authority = split_host(urlsplit(target).netloc) if urlsplit(target).netloc else None
            if authority is None or not self.host_allowed(authority[0]):
                raise HttpError(421, f"the request target {target[:100]!r} names another host than this node",
                                code="host_not_allowed")
        origins = [value for name, value in headers if name == "origin"]
        if not origins:
            return (), None
        origin = normalize_origin(origins[0]) if len(origins) == 1 else None
        if origin is not None and origin == normalize_origin(f"http://{host}"):
            return (), None  # same origin
        if origin is None or origin not in self._origins:
            shown = origins[0][:100] if origins else ""
            raise HttpError(403, f"cross-origin requests are refused (Origin {shown!r}); a web page may not "
                                 "use this node's API unless the operator allows its origin",
                            code="origin_not_allowed")
        cors = (("access-control-allow-origin", origins[0].strip()), ("vary", "Origin"))
        if method == "OPTIONS" and any(name == "access-control-request-method" for name, _ in headers):
            return cors, Response(204, (*cors,
                                        ("access-control-allow-methods", _CORS_METHODS),
                                        ("access-control-allow-headers", _CORS_HEADERS),
                                        ("access-control-max-age", _CORS_MAX_AGE_S)))
        return cors, None

    def _checked_host(self, value: str | None, count: int) -> str:
        """The Host header as sent (trimmed), if it names this node."""
        if value is None:
            what = "no Host header" if count == 0 else "more than one Host header"
            raise HttpError(421, f"the request has {what}; it must name this node (e.g. Host: 127.0.0.1)",
                            code="host_not_allowed")
        parsed = split_host(value)
        if parsed is None or not self.host_allowed(parsed[0]):
            raise HttpError(421, f"the Host header {value[:100]!r} does not name this node; it answers to "
                                 f"{self.describe_hosts()}", code="host_not_allowed")
        return value.strip()

    def describe_hosts(self) -> str:
        names = ["localhost", "127.0.0.1", "[::1]"]
        extra = {self._bound, *self._names} - {"localhost", "127.0.0.1", "::1"}
        names += sorted(_bracketed(name) for name in extra)
        if self._wildcard:
            names.append("any IP address")
        return ", ".join(names)


def normalize_origin(value: str) -> str | None:
    """``"HTTP://LocalHost:8700/"`` -> "http://localhost:8700"; None if it is
    not scheme://host[:port] (``null`` included). A default port is dropped."""
    value = value.strip()
    try:
        parts = urlsplit(value.rstrip("/"))
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    authority = split_host(parts.netloc)
    if authority is None:
        return None
    host, port = authority
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{_bracketed(host)}"
    return f"{scheme}://{_bracketed(host)}:{port}"


def check_content_type(method: str, headers: Headers, has_body: bool) -> None:
    """HttpError 415 unless a request that carries (or should carry) a body says it is JSON."""
    if method not in JSON_METHODS and not has_body:
        return
    values = [value for name, value in headers if name == "content-type"]
    refused = HttpError(
        415,
        f"a {method} body must be JSON, sent with `Content-Type: application/json` "
        f"(got {values[0][:100]!r})" if len(values) == 1 else
        f"a {method} body must be JSON, sent with one `Content-Type: application/json` header",
        code="unsupported_media_type",
    )
    if len(values) != 1:
        raise refused
    media_type, *params = values[0].split(";")
    if media_type.strip().lower() != "application/json":
        raise refused
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise refused
