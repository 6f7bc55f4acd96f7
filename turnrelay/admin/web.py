# -*- test-case-name: tests.test_admin_metrics -*-
"""
What the relay's small HTTP side doors share: a quiet site with one page,
and a service that listens for it and, when stopped, closes its open
connections too (a scraper's keep-alive connection would otherwise outlive
the relay).
"""

from __future__ import annotations

from typing import Any, List, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from turnrelay.config import ListenerConfig
from turnrelay.listening import ListeningService
from turnrelay.logs import Logger


class NotFound(Resource):
    """
    A plain-text 404 for every path under it.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found\n"


class PagesRoot(Resource):
    """
    A site root with a few pages, each at C{/NAME}, and 404 everywhere else,
    the root itself included.
    """

    def __init__(self, pages: Mapping[bytes, IResource]) -> None:
        super().__init__()
        self._pages = dict(pages)

    def getChild(self, path: bytes, request: Request) -> IResource:
        page = self._pages.get(path)
        if page is not None and not request.postpath:
            return page
        return NotFound()

    def render(self, request: Request) -> bytes:
        return NotFound().render(request)


class OnePageRoot(PagesRoot):
    """
    A site root with one page at C{/NAME} and 404 everywhere else, the root
    itself included.
    """

    def __init__(self, name: bytes, page: IResource) -> None:
        super().__init__({name: page})


class QuietSite(Site):
    """
    A L{Site} that writes no access log and no "Starting factory" lines (an
    admin endpoint scraped every few seconds would otherwise flood the log
    at info level, and URLs may carry user ids), and sends no C{Server}
    header.
    """

    noisy = False

    def getResourceFor(self, request: Request) -> IResource:
        # Nor does it say which Twisted it runs on (the Server header).
        request.responseHeaders.removeHeader(b"server")
        return super().getResourceFor(request)

    def startFactory(self) -> None:
        # HTTPFactory would open the access log and start a timer for it.
        pass

    def log(self, request: http.Request) -> None:
        pass


class _TrackedConnection(ProtocolWrapper):
    """
    An HTTP connection that tells when it is gone.
    """

    def __init__(self, factory: WrappingFactory[_TrackedConnection], wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._closedWaiters: List[Deferred[None]] = []

    def whenClosed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)


class AdminWebService(ListeningService):
    """
    Serves a L{Site} on a TCP port while running, and closes every open
    connection when stopped, so that stopping the relay inside a running
    application leaves no HTTP connection (Prometheus keeps them alive)
    behind.

    @ivar listener: where to listen.
    @ivar site: the site served.
    """

    log = Logger()

    def __init__(self, reactor: Any, listener: ListenerConfig, site: Site, name: str) -> None:
        """
        @param name: the service's name in its parent, and in the log line
            saying where it listens.
        """
        self._reactor = reactor
        self.listener = listener
        self.site = site
        self.name = name
        self._connections: WrappingFactory[_TrackedConnection] = WrappingFactory(site)
        self._connections.protocol = _TrackedConnection
        self._connections.noisy = False

    def listen(self) -> IListeningPort:
        port: IListeningPort = self._reactor.listenTCP(
            self.listener.port, self._connections, interface=self.listener.interface
        )
        return port

    def startService(self) -> None:
        super().startService()
        self.log.info("{name} listening on {address}", name=self.name, address=self.address)

    def closeConnections(self) -> List[Deferred[Any]]:
        closing: List[Deferred[Any]] = []
        for connection in list(self._connections.protocols):
            assert isinstance(connection, _TrackedConnection)
            closing.append(connection.whenClosed())
            connection.transport.abortConnection()  # type: ignore[union-attr]
        return closing
