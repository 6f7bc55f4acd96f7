# -*- test-case-name: tests.test_e2e_demo -*-
"""
The demo page: C{demo-page = "tcp:8478:interface=127.0.0.1"} (C{make run}
sets it) serves, on loopback only, a page that makes a WebRTC call through
the running relay, so that a newcomer sees a browser relay through it::

    GET /             the page (turnrelay/admin/demo.html, self-contained)
    GET /credentials  {"urls": {"udp": "turn:127.0.0.1:3478?transport=udp",
                                "tcp": ..., "turns": ...},
                       "username": "1700000600:demo-page",
                       "credential": "...", "ttl": 600}

The page's two C{RTCPeerConnection}s, limited to relay candidates, reach
each other through their relayed addresses; on a loopback relay that takes
C{allowLoopbackRelays} in the peer policy, which C{demo-page} turns on (see
L{turnrelay.service}): the relay addresses on their relay ports, nothing
else of loopback.

C{/credentials} mints a TURN REST credential with the first
C{static-auth-secret} (the loopback demo makes one up) for whoever asks:
that is why the page listens on loopback only (the configuration refuses
anything else), and why requests naming another host than a loopback
address or C{localhost} are refused, so that a web site cannot read a
credential through DNS rebinding.  Credentials are never logged.
"""

from __future__ import annotations

import json
from ipaddress import ip_address
from typing import Any, Dict, List, Tuple

from twisted.python.filepath import FilePath
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from turnrelay.admin.web import AdminWebService, NotFound, QuietSite
from turnrelay.config import RelayConfig
from turnrelay.stun.address import TransportAddress
from turnrelay.urls import iceServerURLs

PAGE = FilePath(__file__).sibling("demo.html")
"""
The page, shipped in the package.
"""

DEMO_TTL = 600.0
"""
Seconds a credential the page gets stays valid (at most C{rest-max-ttl}).
"""

DEMO_USER = "demo-page"
"""
The user id in the REST usernames the page gets, as the relay logs them.
"""

# The page's names for the listener transports.
_TRANSPORTS = {"udp": "udp", "tcp": "tcp", "tls": "turns"}


def isLoopbackHost(host: bytes) -> bool:
    """
    Whether an HTTP C{Host} header names this machine's loopback:
    C{localhost}, C{127.x.y.z} or C{[::1]}, with or without a port.
    """
    text = host.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        name = text[1:].partition("]")[0]
    else:
        name = text.rpartition(":")[0] if text.count(":") == 1 else text
    if name == "localhost":
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False


def demoURLs(config: RelayConfig, listeners: List[Tuple[str, TransportAddress]]) -> Dict[str, str]:
    """
    The C{turn:} and C{turns:} URL the page uses for each transport it
    offers.

    @param listeners: C{(transport, address)} of each listener.
    @return: C{udp}, C{tcp} and C{turns}, each mapped to the URL of the
        first listener of its transport, those without a listener left out.
    """
    urls: Dict[str, str] = {}
    for transport, address in listeners:
        name = _TRANSPORTS[transport]
        if name not in urls:
            found = iceServerURLs(config, [(transport, address)])
            if found:
                urls[name] = found[0]
    return urls


class _LoopbackOnly(Resource):
    """
    Answers only requests addressed to a loopback host (no DNS rebinding).
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if not isLoopbackHost(request.getHeader(b"host") or b""):
            request.setResponseCode(421, b"Misdirected Request")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"The demo page answers requests for localhost or a loopback address only.\n"
        return super().render(request)


class DemoPage(_LoopbackOnly):
    """
    C{/}: the page.
    """

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self._html = html

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            b"frame-ancestors 'none'",
        )
        return self._html


class DemoCredentials(_LoopbackOnly):
    """
    C{/credentials}: a short-lived REST credential and the relay's URLs.

    @ivar relay: the L{turnrelay.service.RelayService} to mint with.
    """

    def __init__(self, relay: Any) -> None:
        super().__init__()
        self.relay = relay

    def render_GET(self, request: Request) -> bytes:
        config: RelayConfig = self.relay.config
        request.setHeader(b"content-type", b"application/json")
        urls = demoURLs(config, self.relay.listeningAddresses())
        ttl = min(DEMO_TTL, config.restMaxTTL)
        try:
            username, credential = self.relay.mintCredential(DEMO_USER, ttl)
        except ValueError:
            request.setResponseCode(503)
            body: Dict[str, Any] = {
                "error": "the demo page mints credentials with a static-auth-secret, "
                "and none is configured"
            }
        else:
            body = {"urls": urls, "username": username, "credential": credential, "ttl": int(ttl)}
        return json.dumps(body).encode("utf-8") + b"\n"


class DemoRoot(Resource):
    """
    The site: the page at C{/}, its credentials at C{/credentials}, 404
    elsewhere.
    """

    def __init__(self, relay: Any, html: bytes) -> None:
        super().__init__()
        self._page = DemoPage(html)
        self._credentials = DemoCredentials(relay)

    def getChild(self, path: bytes, request: Request) -> IResource:
        if request.postpath:
            return NotFound()
        if path == b"":
            return self._page
        if path == b"credentials":
            return self._credentials
        return NotFound()

    def render(self, request: Request) -> bytes:
        # "/" without a trailing segment (an HTTP/1.0 "GET /").
        return self._page.render(request)


def makeDemoService(relay: Any, config: RelayConfig, reactor: Any) -> AdminWebService:
    """
    Build the demo page of a relay, on C{config.demoPage}.

    @param relay: the L{turnrelay.service.RelayService} the page calls
        through and mints credentials with.
    @param reactor: the reactor to listen with.
    @return: an L{IService<twisted.application.service.IService>} named
        C{"demo-page"}, to attach to the relay.
    """
    assert config.demoPage is not None, "demo-page is not configured"
    site = QuietSite(DemoRoot(relay, PAGE.getContent()), reactor=reactor)
    return AdminWebService(reactor, config.demoPage, site, "demo-page")
