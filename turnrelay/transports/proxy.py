# -*- test-case-name: tests.test_transports_proxy,tests.test_loopback_proxy -*-
"""
The PROXY protocol (v1 and v2) in front of TCP and TLS streams, for a relay
behind a load balancer.

A load balancer that passes TCP through (to TLS on 443, say) hides the
client: the relay would see the balancer's address, and XOR-MAPPED-ADDRESS,
permissions, per-source limits and logs would all be about the balancer.
With the PROXY protocol the balancer writes a header first on each
connection, naming the client.  A listener with C{proxy=yes} reads that
header, then hands the rest of the connection to the stream (for C{tls},
the handshake comes after the header) with the client's address as its
peer.

This is Twisted's L{twisted.protocols.haproxy} wrapper and parsers, with
three changes a relay needs: the stream's protocol is built and connected
only once the header is read (Twisted's wrapper connects it at once, so its
C{connectionMade} sees the balancer's address); a header may arrive in
pieces; and a connection is closed, and counted in L{StreamLimits.closed},
when its header is missing, malformed, names no IP address, or is not
complete within C{StreamLimits.handshakeTimeout}, and at once when it does
not come from a trusted load balancer (C{proxy-from}), if any are named.

Anyone who can reach such a listener can claim any address, so it must be
reachable only from the load balancers.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Optional, Sequence, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory

from turnrelay.logs import Logger, LogLevels
from turnrelay.transports.stream import StreamLimits
from turnrelay.turn.policy import canonicalIP

# What a header that Twisted's parsers cannot read may raise: they check
# the framing, not every field (a v1 port that is not a number).
_MALFORMED = (InvalidProxyHeader, ValueError, LookupError, struct.error)

# The 13th byte of a v2 header: version 2 in the high nibble.
_V2_VERSION = 0x20
# A v2 header's fixed part: the prefix, version and command, family and
# protocol, and the length of what follows.
_V2_FIXED = 16


class _AwaitingHeader(Protocol):
    """
    Stands in for the stream's protocol until the header is read: nothing
    is connected to it, so nothing is told of a connection that ends first.
    """

    def makeConnection(self, transport: Any) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        pass


def _parserFor(data: bytes) -> Union[V1Parser, V2Parser, None, bool]:
    """
    Choose the parser for a connection's first bytes.

    @return: the parser; C{True} while too few bytes have come to tell;
        L{None} if they cannot start a PROXY header.
    """
    if data.startswith(V2Parser.PREFIX):
        # Twisted's parser wants the fixed 16 bytes, length included, at once.
        if len(data) < _V2_FIXED:
            return True
        return V2Parser() if data[12] & 0xF0 == _V2_VERSION else None
    if data.startswith(V1Parser.PROXYSTR):
        return V1Parser()
    if V2Parser.PREFIX.startswith(data) or V1Parser.PROXYSTR.startswith(data):
        return True
    return None


def _canonical(address: Optional[IAddress]) -> Optional[IAddress]:
    """
    @return: C{address} with its host written the usual way (Twisted's v2
        parser writes IPv6 addresses uncompressed), or L{None} for a LOCAL
        or UNKNOWN header (the balancer's own connection).
    @raise ValueError: C{address} is not an IP address and port.
    """
    if address is None:
        return None
    if not isinstance(address, (IPv4Address, IPv6Address)):
        raise ValueError(f"not an IP address: {address!r}")
    if not 0 <= address.port <= 0xFFFF:
        raise ValueError(f"not a port: {address.port!r}")
    host = ipaddress.ip_address(address.host)
    if host.version == 4:
        return IPv4Address("TCP", str(host), address.port)
    return IPv6Address("TCP", str(host), address.port)


class PROXYHeaderReceiver(HAProxyProtocolWrapper):
    """
    Reads a connection's PROXY header, then builds the stream's protocol
    and connects it, with the header's source as its peer and the header's
    destination as its host.

    @ivar proxyInfo: the header, once read.
    """

    log = Logger()
    factory: PROXYHeaderFactory

    def __init__(self, factory: PROXYHeaderFactory) -> None:
        super().__init__(factory, _AwaitingHeader())  # type: ignore[arg-type]
        self.logLevels = factory.logLevels
        self.proxyInfo: Optional[ProxyInfo] = None
        self._headerParser: Union[V1Parser, V2Parser, None] = None
        self._early = b""
        self._timer: Optional[IDelayedCall] = None
        self._refused = False

    def connectionMade(self) -> None:
        if not self.factory.trusts(self.transport.getPeer()):  # type: ignore[union-attr]
            self._refuse("proxy-source")
            return
        limits = self.factory.limits
        self._timer = limits.clock.callLater(limits.handshakeTimeout, self._refuse, "proxy-timeout")

    def dataReceived(self, data: bytes) -> None:
        if self.proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        parser = self._headerParser
        if parser is None:
            data = self._early + data
            chosen = _parserFor(data)
            if chosen is True:
                self._early = data
                return
            if not isinstance(chosen, (V1Parser, V2Parser)):
                self._refuse("proxy-header")
                return
            self._early = b""
            self._headerParser = parser = chosen
        try:
            info, rest = parser.feed(data)
            if info is not None:
                info = ProxyInfo(info.header, _canonical(info.source), _canonical(info.destination))
        except _MALFORMED:
            self._refuse("proxy-header")
            return
        if info is not None:
            self._headerRead(info, rest or b"")

    def _headerRead(self, info: ProxyInfo, rest: bytes) -> None:
        self.proxyInfo = info
        self._stopTimer()
        protocol: Optional[IProtocol] = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.wrappedProtocol = protocol
        # This wrapper provides its transport's interfaces (directlyProvides).
        protocol.makeConnection(self)  # type: ignore[arg-type]
        if rest:
            protocol.dataReceived(rest)

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _refuse(self, reason: str) -> None:
        self._refused = True
        self._stopTimer()
        self.factory.limits.closed[reason] += 1
        self.log.debug(
            "closing {transport} connection from {balancer}: {reason}",
            transport=self.factory.transportProtocol,
            balancer=self.transport.getPeer(),  # type: ignore[union-attr]
            reason=reason,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self._stopTimer()
        super().connectionLost(reason)

    def getPeer(self) -> IAddress:
        """
        @return: the client the header names, else the balancer.
        """
        if self.proxyInfo is not None and self.proxyInfo.source is not None:
            return self.proxyInfo.source
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        """
        @return: the address the client connected to, as the header names
            it, else our own socket's.
        """
        if self.proxyInfo is not None and self.proxyInfo.destination is not None:
            return self.proxyInfo.destination
        return self.transport.getHost()  # type: ignore[union-attr]


class PROXYHeaderFactory(HAProxyWrappingFactory):
    """
    Puts a L{PROXYHeaderReceiver} in front of each connection of a stream
    listener: C{PROXYHeaderFactory(STUNStreamFactory)} for C{tcp},
    C{PROXYHeaderFactory(TLSMemoryBIOFactory(STUNStreamFactory))} for
    C{tls}, since the header comes before the handshake.

    @ivar limits: the stream limits: the header's deadline (the handshake
        timeout), and where refused connections are counted.
    @ivar transportProtocol: C{"tcp"} or C{"tls"}, for the logs.
    @ivar trusted: the networks of the load balancers, whose connections
        alone may carry a header; empty: any.
    """

    noisy = False

    def __init__(
        self,
        wrappedFactory: Factory,
        limits: StreamLimits,
        transportProtocol: str,
        trusted: Sequence[str] = (),
        logLevels: Optional[LogLevels] = None,
    ) -> None:
        """
        @param trusted: networks such as C{10.0.0.0/24}, or single addresses.
        @param logLevels: the relay's log levels.
        """
        super().__init__(wrappedFactory)
        self.logLevels = logLevels
        self.limits = limits
        self.transportProtocol = transportProtocol
        self.trusted = tuple(ipaddress.ip_network(network) for network in trusted)

    def trusts(self, address: IAddress) -> bool:
        """
        @return: whether a connection from C{address} may send a header: it
            is a load balancer's, or no balancers are named.
        """
        if not self.trusted:
            return True
        if not isinstance(address, (IPv4Address, IPv6Address)):
            return False
        host = canonicalIP(address.host)
        return any(host in network for network in self.trusted)

    def buildProtocol(self, addr: Optional[IAddress]) -> PROXYHeaderReceiver:
        return PROXYHeaderReceiver(self)
