# -*- test-case-name: tests.test_turn_tcp -*-
"""
RFC 6062 TCP allocations: Connect, ConnectionBind and ConnectionAttempt,
and the TCP connections between a relayed transport address and its peers.

A peer connection is opened by a Connect request or accepted on the relayed
address; either way it waits, with reading paused so that the peer's TCP
window holds its data, until the client opens a data connection and sends
ConnectionBind.  Then the two connections are spliced: bytes flow as they
are, each side's transport the producer of the other's, so a slow reader
slows its peer down instead of filling our memory.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional
from typing import Counter as CounterType

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from turnrelay.auth.longterm import AuthResult
from turnrelay.interfaces import IClientLink
from turnrelay.logs import Logger, LogLevels
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress, unmapIPv4
from turnrelay.stun.message import MessageClass, Method, STUNMessage
from turnrelay.turn.permissions import checkFamily, checkFilter, checkPeer
from turnrelay.turn.refusals import Refusal

if TYPE_CHECKING:
    from turnrelay.turn.allocation import Allocation
    from turnrelay.turn.server import TURNServer

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
        logLevels: Optional[LogLevels],
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
        self.logLevels = logLevels
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
    5.3): whether to take one is L{TCPRelaying.peerConnecting}'s call.

    @ivar accept: given the peer's address, returns a connection for it, or
        L{None} to close it at once; L{None} until the allocation exists.
    """

    noisy = False

    def __init__(self) -> None:
        self.accept: Optional[Callable[[Any], Optional[PeerConnection]]] = None

    def buildProtocol(self, addr: Any) -> Optional[PeerConnection]:
        if self.accept is None:
            return None
        return self.accept(addr)


class TCPRelaying:
    """
    The requests of RFC 6062 (Connect, ConnectionBind) and the peers'
    connections they make or claim, for the controller.

    @ivar peerConnections: every peer connection by CONNECTION-ID, for
        ConnectionBind, which arrives on a connection of its own.
    @ivar refused: peers' connections refused, by reason.
    """

    log = Logger()

    def __init__(self, server: TURNServer) -> None:
        self._server = server
        self.logLevels = server.logLevels
        self.peerConnections: Dict[int, PeerConnection] = {}
        self.refused: CounterType[str] = Counter()

    def _newConnectionID(self) -> int:
        while True:
            connectionID = int.from_bytes(os.urandom(4), "big")
            if connectionID not in self.peerConnections:
                return connectionID

    def _newPeerConnection(
        self,
        allocation: Allocation,
        peer: TransportAddress,
        onConnected: Callable[[PeerConnection], None],
    ) -> PeerConnection:
        connection = PeerConnection(
            self._server.logLevels,
            self._server.clock,
            allocation,
            peer,
            self._newConnectionID(),
            onConnected,
            self._peerConnectionClosed,
        )
        self.peerConnections[connection.connectionID] = connection
        allocation.peerConnections[connection.connectionID] = connection
        return connection

    def _peerConnectionClosed(self, connection: PeerConnection) -> None:
        self.peerConnections.pop(connection.connectionID, None)
        connection.allocation.peerConnections.pop(connection.connectionID, None)

    def connect(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult
    ) -> Optional[STUNMessage]:
        """
        Connect the relayed address to a peer; answer when connected (with
        CONNECTION-ID) or when that failed (447) (RFC 6062 section 5.2).
        """
        server = self._server
        allocation = link.allocation
        assert allocation is not None
        if allocation.transport != A.TRANSPORT_TCP:
            raise Refusal(400, "Connect needs a TCP allocation")
        peer = request.get(A.XOR_PEER_ADDRESS)
        if peer is None:
            raise Refusal(400, "no XOR-PEER-ADDRESS")
        checkFamily(allocation, peer)
        checkPeer(server.peerPolicy, peer, withPort=True)
        checkFilter(server.dataPath.peerFilter, allocation, peer)
        if any(c.peer == peer for c in allocation.peerConnections.values()):
            raise Refusal(446, f"a connection with {peer} exists already")
        if len(allocation.peerConnections) >= server.limits.maxPeerConnections:
            raise Refusal(508, "max-peer-connections reached on this allocation")
        budget = server.descriptors
        if budget is not None and not budget.take("connect"):
            raise Refusal(508, "out of file descriptors (descriptor-reserve)")

        def connected(connection: PeerConnection) -> None:
            response = request.successResponse([(A.CONNECTION_ID, connection.connectionID)])
            server.respond(request, response, link, auth)

        def failed(connection: PeerConnection, reason: Any) -> None:
            server.warnRefused(request, link, auth, 447, f"{peer}: {reason.getErrorMessage()}")
            server.respond(request, request.errorResponse(447), link, auth)

        connection = self._newPeerConnection(allocation, peer, connected)
        relayPort = allocation.relays[peer.family].address.port
        server.pools[peer.family].connectTCP(
            relayPort,
            peer,
            OutgoingPeerFactory(connection, failed),
            server.limits.tcpConnectTimeout,
        )
        return None

    def peerConnecting(self, allocation: Allocation, address: Any) -> Optional[PeerConnection]:
        """
        A peer connects to a TCP relayed address: take it only with a
        permission, within max-peer-connections and the descriptor budget,
        and tell the client with a ConnectionAttempt indication (RFC 6062
        section 5.3).
        """
        server = self._server
        peer = TransportAddress(unmapIPv4(address.host), address.port)
        # Peers are strangers who can connect as often as they like: count
        # what is refused, and log it only at debug level.
        refusal = None
        if peer.host not in allocation.permissions:
            refusal = "permission"
        elif len(allocation.peerConnections) >= server.limits.maxPeerConnections:
            refusal = "max-peer-connections"
        elif server.descriptors is not None and not server.descriptors.take("peer"):
            refusal = "descriptors"
        if refusal is not None:
            self.refused[refusal] += 1
            self.log.debug(
                "TCP connection from {peer} to {relayed} refused: {reason}",
                peer=str(peer),
                relayed=str(allocation.relayedAddress),
                reason=refusal,
            )
            return None

        def connected(connection: PeerConnection) -> None:
            indication = STUNMessage(
                Method.CONNECTION_ATTEMPT,
                MessageClass.INDICATION,
                os.urandom(12),
                [(A.XOR_PEER_ADDRESS, peer), (A.CONNECTION_ID, connection.connectionID)],
            )
            allocation.link.send(indication.encode())

        return self._newPeerConnection(allocation, peer, connected)

    def connectionBind(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult
    ) -> Optional[STUNMessage]:
        """
        Claim a peer connection on a new client connection, which then carries
        that peer's bytes as they are (RFC 6062 section 5.4).
        """
        if link.transportProtocol == "udp":
            raise Refusal(400, "ConnectionBind needs a TCP or TLS connection")
        if link.allocation is not None:
            raise Refusal(400, "ConnectionBind on a connection that holds an allocation")
        connection = self.peerConnections.get(request.get(A.CONNECTION_ID, -1))
        if connection is None or connection.state != "pending":
            raise Refusal(400, "no pending connection with that CONNECTION-ID")
        if connection.allocation.username != auth.username:
            raise Refusal(441, "the connection belongs to another user")
        # The success response is the last STUN on this connection: send it,
        # then splice.
        self._server.respond(request, request.successResponse(), link, auth)
        link.startRelayingTo(connection)
        connection.bind(link)
        self.log.info(
            "TCP connection {connectionID:08x} of {relayed} with {peer} bound to {client}",
            connectionID=connection.connectionID,
            relayed=str(connection.allocation.relayedAddress),
            peer=str(connection.peer),
            client=link.clientAddress,
        )
        return None
