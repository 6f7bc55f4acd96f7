# -*- test-case-name: tests.test_turn_tcp -*-
"""
RFC 6062 TCP allocations: the TCP connections between a relayed transport
address and its peers.

A peer connection is opened by a Connect request or accepted on the relayed
address; either way it waits, with reading paused so that the peer's TCP
window holds its data, until the client opens a data connection and sends
ConnectionBind.  Then the two connections are spliced: bytes flow as they
are, each side's transport the producer of the other's, so a slow reader
slows its peer down instead of filling our memory.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress

# Seconds to wait for the ConnectionBind that claims a connection (RFC 6062
# section 5.3; coturn uses 30 s).
BIND_TIMEOUT = 30.0

# What a peer may send before the connection is bound and reading is paused.
_MAX_EARLY_BYTES = 65536


class PeerConnection(Protocol):
    """
    One TCP connection with a peer of a TCP allocation.

    @ivar allocation: the allocation whose relayed address it belongs to.
    @ivar peer: the peer's address.
    @ivar connectionID: its CONNECTION-ID, unique while it lives.
    @ivar state: C{"connecting"}, C{"pending"} (waiting for ConnectionBind),
        C{"bound"} or C{"closed"}.
    @ivar dataConnection: the client's data connection once bound.

    What it relays counts toward its allocation's usage (C{bytesToPeer},
    C{bytesFromPeer}; a "packet" is one read or one write).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        allocation: Any,
        peer: TransportAddress,
        connectionID: int,
        onConnected: Callable[[PeerConnection], None],
        onClosed: Callable[[PeerConnection], None],
    ) -> None:
        """
        @param onConnected: called when the TCP connection is up (to answer
            Connect, or to send ConnectionAttempt).
        @param onClosed: called once when the connection is gone, whatever
            the reason, including a failed connect.
        """
        self._clock = clock
        self.allocation = allocation
        self.peer = peer
        self.connectionID = connectionID
        self.state = "connecting"
        self.dataConnection: Any = None
        self.failure: Optional[Failure] = None
        self._onConnected = onConnected
        self._onClosed = onClosed
        self._early: List[bytes] = []
        self._earlySize = 0
        self._bindTimer: Optional[IDelayedCall] = None

    def __repr__(self) -> str:
        return f"<PeerConnection {self.connectionID:08x} {self.peer} {self.state}>"

    def connectionMade(self) -> None:
        # Keep the peer's data in its TCP window until a client claims it.
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self.state = "pending"
        self._bindTimer = self._clock.callLater(BIND_TIMEOUT, self._bindTimedOut)
        self._onConnected(self)

    def _bindTimedOut(self) -> None:
        self._bindTimer = None
        self.log.info(
            "TCP connection {connectionID:08x} with {peer} closed: no ConnectionBind in time",
            connectionID=self.connectionID,
            peer=str(self.peer),
        )
        self.close()

    def dataReceived(self, data: bytes) -> None:
        allocation = self.allocation
        allocation.packetsFromPeer += 1
        allocation.bytesFromPeer += len(data)
        if self.state == "bound":
            self.dataConnection.transport.write(data)
            return
        # Pausing leaves at most one read in flight; bound it anyway.
        self._early.append(data)
        self._earlySize += len(data)
        if self._earlySize > _MAX_EARLY_BYTES:
            self.close()

    def bind(self, dataConnection: Any) -> None:
        """
        Splice this connection with the client's data connection, which has
        just been answered ConnectionBind success (RFC 6062 section 5.4).
        """
        self.state = "bound"
        self.dataConnection = dataConnection
        if self._bindTimer is not None:
            self._bindTimer.cancel()
            self._bindTimer = None
        clientTransport = dataConnection.transport
        for data in self._early:
            clientTransport.write(data)
        self._early = []
        clientTransport.registerProducer(self.transport, True)
        self.transport.registerProducer(clientTransport, True)  # type: ignore[union-attr]
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        """
        Relay bytes from the client's data connection to the peer.
        """
        allocation = self.allocation
        allocation.packetsToPeer += 1
        allocation.bytesToPeer += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        """
        Close this connection (and so, when bound, its data connection).
        """
        if self.transport is not None and self.state != "closed":
            self.transport.loseConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._finish()
        if self.dataConnection is not None:
            self.dataConnection.transport.loseConnection()

    def connectFailed(self, reason: Failure) -> None:
        """
        The outgoing connection could not be made (or timed out).
        """
        self.failure = reason
        self._finish()

    def _finish(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._bindTimer is not None:
            self._bindTimer.cancel()
            self._bindTimer = None
        self._onClosed(self)


class OutgoingPeerFactory(ClientFactory):
    """
    Connects one L{PeerConnection}, for a Connect request.
    """

    noisy = False

    def __init__(
        self, connection: PeerConnection, onFailed: Callable[[PeerConnection, Failure], None]
    ) -> None:
        """
        @param onFailed: called when the connection could not be made.
        """
        self.connection = connection
        self._onFailed = onFailed

    def buildProtocol(self, addr: Any) -> PeerConnection:
        return self.connection

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.connection.connectFailed(reason)
        self._onFailed(self.connection, reason)


class IncomingPeerFactory(Factory):
    """
    Accepts peers' connections on a TCP relayed address (RFC 6062 section
    5.3): whether to take one is the controller's call.
    """

    noisy = False

    def __init__(self, accept: Callable[[Any], Optional[PeerConnection]]) -> None:
        """
        @param accept: given the peer's address, returns a connection for it,
            or L{None} to close it at once (no permission).
        """
        self._accept = accept

    def buildProtocol(self, addr: Any) -> Optional[PeerConnection]:
        return self._accept(addr)
