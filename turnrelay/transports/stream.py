# -*- test-case-name: tests.test_transports_stream -*-
"""
TURN over a byte stream: TCP, and TLS over TCP.

Streams cost the server a socket and buffers for as long as they stay open,
so connections are held to limits a UDP client never needs: one without an
allocation is closed after a quiet spell, a TLS handshake must finish in
time, only so many connections may be without an allocation at once, and
relayed data that a slow reader cannot take is dropped instead of queued.
"""

from __future__ import annotations

from typing import Any, Optional

import attr
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from turnrelay.interfaces import IReplyChannel
from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress, unmapIPv4
from turnrelay.stun.channeldata import StreamFramer
from turnrelay.stun.errors import STUNDecodeError
from turnrelay.turn.allocation import Allocation, FiveTuple
from turnrelay.turn.server import TURNServer


@attr.define
class StreamLimits:
    """
    Limits shared by every stream listener of a relay.

    @ivar clock: the time source for the timers below.
    @ivar idleTimeout: seconds a connection without an allocation may stay
        silent before it is closed.
    @ivar handshakeTimeout: seconds a TLS handshake may take.
    @ivar maxUnallocated: how many connections may be open without an
        allocation at once; more are closed as they arrive.
    @ivar unallocated: how many are open now.
    """

    clock: IReactorTime
    idleTimeout: float = 60.0
    handshakeTimeout: float = 10.0
    maxUnallocated: int = 1000
    unallocated: int = 0


@implementer(IReplyChannel, IPushProducer, IHandshakeListener)
class STUNStreamProtocol(Protocol):
    """
    One client connection carrying STUN messages and padded ChannelData back
    to back (RFC 8489 section 6.2.2, RFC 8656 section 12.5).

    Anything that cannot be STUN or ChannelData ends this connection, and
    only this one: a stream cannot be resynchronised.

    The protocol is the producer of what it writes to its transport: when
    the transport's buffer fills because the client reads slowly, relayed
    data is dropped (and counted) until it drains.  Responses still go out.
    That holds about 64 KB for a slow reader over TCP; over TLS about twice
    that, as Twisted's TLS layer keeps its own buffer above TCP's.

    @ivar server: the controller the messages go to.
    @ivar clientAddress: the client's address.
    @ivar serverAddress: our address the client connected to.
    @ivar droppedRelayed: relayed frames dropped for a slow reader.
    """

    log = Logger()

    def __init__(self, server: TURNServer, transportProtocol: str, limits: StreamLimits) -> None:
        """
        @param transportProtocol: C{"tcp"}, or C{"tls"} when wrapped in TLS.
        """
        self.server = server
        self.transportProtocol = transportProtocol
        self._limits = limits
        self._framer = StreamFramer()
        self._closing = False
        self._counted = False
        self._paused = False
        self._idleTimer: Optional[IDelayedCall] = None
        self._handshakeTimer: Optional[IDelayedCall] = None
        self._peerConnection: Any = None
        self.droppedRelayed = 0
        self.clientAddress = TransportAddress("0.0.0.0", 0)
        self.serverAddress = TransportAddress("0.0.0.0", 0)
        self.fiveTuple = FiveTuple(self.transportProtocol, self.clientAddress, self.serverAddress)
        self.allocation: Optional[Allocation] = None

    # Connection life -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        host = transport.getHost()
        assert isinstance(peer, (IPv4Address, IPv6Address))
        assert isinstance(host, (IPv4Address, IPv6Address))
        self.clientAddress = TransportAddress(unmapIPv4(peer.host), peer.port)
        self.serverAddress = TransportAddress(unmapIPv4(host.host), host.port)
        self.fiveTuple = FiveTuple(self.transportProtocol, self.clientAddress, self.serverAddress)
        limits = self._limits
        if limits.unallocated >= limits.maxUnallocated:
            self.log.warn(
                "refused {transport} connection from {client}: {count} connections "
                "are already open without an allocation",
                transport=self.transportProtocol,
                client=self.clientAddress,
                count=limits.unallocated,
            )
            self._closing = True
            transport.abortConnection()
            return
        self._count()
        if self.transportProtocol == "tls":
            self._handshakeTimer = limits.clock.callLater(
                limits.handshakeTimeout, self._close, "TLS handshake took too long"
            )
        transport.registerProducer(self, True)

    def handshakeCompleted(self) -> None:
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None

    def connectionLost(self, reason: object = None) -> None:
        self._closing = True
        self._uncount()
        if self._peerConnection is not None:
            self._peerConnection.close()
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self.server.channelClosed(self, "closed with its connection")

    def _close(self, why: str) -> None:
        self.log.info(
            "closing {transport} connection from {client}: {reason}",
            transport=self.transportProtocol,
            client=self.clientAddress,
            reason=why,
        )
        self._closing = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    # Connections without an allocation ----------------------------------------

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            self._limits.unallocated += 1
            self._idleTimer = self._limits.clock.callLater(
                self._limits.idleTimeout, self._close, "idle without an allocation"
            )

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._limits.unallocated -= 1
            assert self._idleTimer is not None
            if self._idleTimer.active():
                self._idleTimer.cancel()
            self._idleTimer = None

    def attach(self, allocation: Allocation) -> None:
        self.allocation = allocation
        self._uncount()

    def detach(self, allocation: Allocation) -> None:
        if self.allocation is allocation:
            self.allocation = None
            if not self._closing:
                self._count()

    # Receiving -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._peerConnection is not None:
            self._peerConnection.write(data)
            return
        if self._closing:
            return
        if self._idleTimer is not None:
            self._idleTimer.reset(self._limits.idleTimeout)
        try:
            frames = self._framer.feed(data)
        except STUNDecodeError as e:
            self._close(e.reason)
            return
        server = self.server
        for index, frame in enumerate(frames):
            try:
                if frame[0] < 0x40:
                    server.stunReceived(frame, self)
                else:
                    server.channelDataReceived(frame, self)
            except Exception:
                self.log.failure("while handling a frame from {client}", client=self.clientAddress)
            if self._peerConnection is not None:
                # ConnectionBind succeeded: what follows is the peer's, raw.
                rest = b"".join(frames[index + 1 :]) + self._framer.takePending()
                if rest:
                    self._peerConnection.write(rest)
                return

    def startRelayingTo(self, peerConnection: Any) -> None:
        """
        Become an RFC 6062 data connection: raw bytes to and from the peer.
        The peer connection then owns the transport's producer slot.
        """
        self._peerConnection = peerConnection
        self._uncount()
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self.transport.unregisterProducer()  # type: ignore[union-attr]

    # Sending -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """
        Write a response to the client.
        """
        if not self._closing:
            self.transport.write(data)  # type: ignore[union-attr]

    def relay(self, data: bytes) -> bool:
        """
        Write relayed data to the client, unless it is not keeping up.
        """
        if self._paused or self._closing:
            if not self.droppedRelayed:
                self.log.warn(
                    "{client} reads too slowly over {transport}: dropping relayed data "
                    "until it catches up",
                    client=self.clientAddress,
                    transport=self.transportProtocol,
                )
            self.droppedRelayed += 1
            return False
        self.transport.write(data)  # type: ignore[union-attr]
        return True

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False

    def stopProducing(self) -> None:
        self._closing = True


class STUNStreamFactory(Factory):
    """
    Builds a L{STUNStreamProtocol} for each connection, all sharing one
    controller and one set of limits.
    """

    noisy = False

    def __init__(
        self,
        server: TURNServer,
        transportProtocol: str = "tcp",
        limits: Optional[StreamLimits] = None,
    ) -> None:
        self.server = server
        self.transportProtocol = transportProtocol
        self.limits = limits if limits is not None else StreamLimits(server.clock)

    def buildProtocol(self, addr: object) -> STUNStreamProtocol:
        protocol = STUNStreamProtocol(self.server, self.transportProtocol, self.limits)
        protocol.factory = self
        return protocol
