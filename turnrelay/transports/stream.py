# -*- test-case-name: tests.test_transports_stream -*-
"""
TURN over a byte stream: TCP now, and TLS over TCP.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from turnrelay.interfaces import IReplyChannel
from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress, unmapIPv4
from turnrelay.stun.channeldata import StreamFramer
from turnrelay.stun.errors import STUNDecodeError
from turnrelay.turn.allocation import Allocation, FiveTuple
from turnrelay.turn.server import TURNServer


@implementer(IReplyChannel)
class STUNStreamProtocol(Protocol):
    """
    One client connection carrying STUN messages and padded ChannelData back
    to back (RFC 8489 section 6.2.2, RFC 8656 section 12.5).

    Anything that cannot be STUN or ChannelData ends this connection, and
    only this one: a stream cannot be resynchronised.

    @ivar server: the controller the messages go to.
    @ivar clientAddress: the client's address.
    @ivar serverAddress: our address the client connected to.
    """

    log = Logger()

    def __init__(self, server: TURNServer, transportProtocol: str = "tcp") -> None:
        """
        @param transportProtocol: C{"tcp"}, or C{"tls"} when wrapped in TLS.
        """
        self.server = server
        self.transportProtocol = transportProtocol
        self._framer = StreamFramer()
        self._closing = False
        self.clientAddress = TransportAddress("0.0.0.0", 0)
        self.serverAddress = TransportAddress("0.0.0.0", 0)
        self.fiveTuple = FiveTuple(self.transportProtocol, self.clientAddress, self.serverAddress)
        self.allocation: Optional[Allocation] = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = self.transport.getHost()  # type: ignore[union-attr]
        assert isinstance(peer, (IPv4Address, IPv6Address))
        assert isinstance(host, (IPv4Address, IPv6Address))
        self.clientAddress = TransportAddress(unmapIPv4(peer.host), peer.port)
        self.serverAddress = TransportAddress(unmapIPv4(host.host), host.port)
        self.fiveTuple = FiveTuple(self.transportProtocol, self.clientAddress, self.serverAddress)

    def connectionLost(self, reason: object = None) -> None:
        self._closing = True
        self.server.channelClosed(self, "closed with its connection")

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            frames = self._framer.feed(data)
        except STUNDecodeError as e:
            self.log.info(
                "closing {transport} connection from {client}: {reason}",
                transport=self.transportProtocol,
                client=self.clientAddress,
                reason=e.reason,
            )
            self._closing = True
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        server = self.server
        for frame in frames:
            try:
                if frame[0] < 0x40:
                    server.stunReceived(frame, self)
                else:
                    server.channelDataReceived(frame, self)
            except Exception:
                self.log.failure("while handling a frame from {client}", client=self.clientAddress)

    def send(self, data: bytes) -> None:
        """
        Write to the client.
        """
        if not self._closing:
            self.transport.write(data)  # type: ignore[union-attr]

    def attach(self, allocation: Allocation) -> None:
        self.allocation = allocation

    def detach(self, allocation: Allocation) -> None:
        if self.allocation is allocation:
            self.allocation = None


class STUNStreamFactory(Factory):
    """
    Builds a L{STUNStreamProtocol} for each connection, all sharing one
    controller.
    """

    noisy = False

    def __init__(self, server: TURNServer, transportProtocol: str = "tcp") -> None:
        self.server = server
        self.transportProtocol = transportProtocol

    def buildProtocol(self, addr: object) -> STUNStreamProtocol:
        protocol = STUNStreamProtocol(self.server, self.transportProtocol)
        protocol.factory = self
        return protocol
