"""Who may talk to the server from a browser: the Host a request names, and where a state-changing one comes from.

A web page in any browser that can reach the server could otherwise use it: a form or ``fetch`` POST
needs no CORS preflight, so without an API key (the default) a page could enroll its own face under
someone's name, and a DNS name pointed at 127.0.0.1 (DNS rebinding) would let a page read answers too.

- **Host.** Every request must name a host the server answers to: the loopback names, the address it
  listens on when that is a specific one, and ``--allowed-hosts``. Otherwise 400, naming the header.
  A server listening on every address (0.0.0.0) answers any Host unless ``--allowed-hosts`` is given;
  such a server needs API keys (``pdsn serve`` refuses to start one without them unless told
  ``--insecure-no-auth``), which a page does not have.
- **Origin.** A request that changes state (POST, PUT, PATCH, DELETE) is refused (403) when the
  browser says it comes from another site: ``Sec-Fetch-Site: cross-site``, or an ``Origin`` that is
  neither the server's own (the same scheme, host and port as the request's Host) nor one of
  ``--allowed-origins``. Clients that are not browsers send neither header and are not affected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from pdsn.serve.config import LOOPBACK_HOSTS
from pdsn.serve.limits import header_value, refuse

ANY_HOST = "*"
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def allowed_hosts(listen_host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The host names a server listening on ``listen_host`` answers to (``("*",)``: any)."""
    extra = tuple(name.strip().lower().strip("[]") for name in extra if name.strip())
    if ANY_HOST in extra:
        return (ANY_HOST,)
    listen = listen_host.strip().lower().strip("[]")
    if is_wildcard(listen) and not extra:
        return (ANY_HOST,)
    own = () if is_wildcard(listen) else (listen,)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, *own, *extra)))


def is_loopback(host: str) -> bool:
    host = host.strip().lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip().strip("[]") in ("0.0.0.0", "::", "")


class HostOriginMiddleware:
    """400 for a Host the server does not answer to; 403 for a cross-site state-changing request."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...], origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        self.origins = frozenset(origin.rstrip("/").lower() for origin in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = header_value(scope, b"host")
        name = _host_name(host)
        if ANY_HOST not in self.hosts and name not in self.hosts:
            message = (
                f"Host {host!r} is not a name this server answers to ({', '.join(sorted(self.hosts))}); "
                f"start it with --allowed-hosts NAME to add one"
            )
            await refuse(scope, receive, send, 400, message, {}, field="Host")
            return
        if scope["method"] in STATE_CHANGING and (problem := self._cross_site(scope, host)):
            await refuse(scope, receive, send, 403, problem, {}, field="Origin")
            return
        await self.app(scope, receive, send)

    def _cross_site(self, scope: Scope, host: str | None) -> str | None:
        """Why a state-changing request comes from another site, or None."""
        if (header_value(scope, b"sec-fetch-site") or "").lower() == "cross-site":
            return "cross-site requests may not change state (the browser sent Sec-Fetch-Site: cross-site)"
        origin = header_value(scope, b"origin")
        if origin is None:
            return None
        own = f"{scope.get('scheme', 'http')}://{host}".lower() if host else None
        if origin.rstrip("/").lower() in (own, *self.origins):
            return None
        return (
            f"a request from the web page at Origin {origin!r} may not change state on this server; start it with "
            f"--allowed-origins {origin} to allow that site"
        )


def _host_name(host: str | None) -> str | None:
    """The host of a Host header without its port (``[::1]:8000`` -> ``::1``), lower-case."""
    if not host:
        return None
    parsed = urlsplit(f"//{host}")
    try:
        return (parsed.hostname or "").lower() or None
    except ValueError:
        return None
