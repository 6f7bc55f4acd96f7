# -*- test-case-name: tests.test_service -*-
"""
Build a relay as a Twisted service, for twistd and for embedders.

An application that already runs a reactor (a SIP stack, say) attaches the
relay to its own service tree::

    from turnrelay.config import RelayConfig, parseListen
    from turnrelay.service import makeRelayService

    config = RelayConfig(listeners=(parseListen("udp:3478:interface=0.0.0.0"),))
    makeRelayService(config, reactor).setServiceParent(application)

Nothing here installs log observers or signal handlers, or picks a reactor.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from turnrelay.config import ListenerConfig, RelayConfig
from turnrelay.stun.address import TransportAddress
from turnrelay.transports.stream import STUNStreamFactory
from turnrelay.transports.udp import STUNDatagramProtocol
from turnrelay.turn.server import TURNServer

# Large enough for any STUN message or ChannelData frame.
MAX_DATAGRAM = 65535


class ListenerService(Service):
    """
    Keeps one listening socket open while the service runs.

    Listening happens synchronously in L{startService}, so a port that is in
    use stops twistd (or the embedder's startup) with the OS's reason.

    @ivar listener: what to listen on.
    @ivar port: the listening port while running, else L{None}.
    """

    log = Logger()

    def __init__(self, reactor: Any, listener: ListenerConfig, server: TURNServer) -> None:
        self._reactor = reactor
        self.listener = listener
        self._server = server
        self.port: Optional[IListeningPort] = None

    def startService(self) -> None:
        listener = self.listener
        if listener.transport == "udp":
            self.port = self._reactor.listenUDP(
                listener.port,
                STUNDatagramProtocol(self._server),
                interface=listener.interface,
                maxPacketSize=MAX_DATAGRAM,
            )
        else:
            self.port = self._reactor.listenTCP(
                listener.port, STUNStreamFactory(self._server), interface=listener.interface
            )
        super().startService()
        self.log.info(
            "listening for {transport} on {address}",
            transport=listener.transport,
            address=self.address,
        )

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    @property
    def address(self) -> Optional[TransportAddress]:
        """
        The bound address while listening (the real port when 0 was asked).
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        return TransportAddress(host.host, host.port)  # type: ignore[attr-defined]


class RelayService(MultiService):
    """
    A TURN relay: the controller and its listeners.

    @ivar config: the configuration it was built from.
    @ivar server: the controller all listeners share.
    """

    def __init__(self, config: RelayConfig, server: TURNServer) -> None:
        super().__init__()
        self.config = config
        self.server = server

    def listeningAddresses(self) -> List[Tuple[str, TransportAddress]]:
        """
        @return: C{(transport, address)} for every open listener.
        """
        addresses = []
        for child in self:
            if isinstance(child, ListenerService) and child.address is not None:
                addresses.append((child.listener.transport, child.address))
        return addresses


def makeRelayService(config: RelayConfig, reactor: Any) -> RelayService:
    """
    Build a relay from a configuration.

    @param config: a validated configuration.
    @param reactor: the reactor to listen and schedule with.
    @return: a service to start, or to attach to a parent service.
    """
    server = TURNServer(clock=reactor, software=config.software)
    relay = RelayService(config, server)
    for listener in config.listeners:
        ListenerService(reactor, listener, server).setServiceParent(relay)
    return relay
