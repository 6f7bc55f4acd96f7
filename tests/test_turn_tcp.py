"""
RFC 6062 TCP allocations on a fake reactor: Connect, ConnectionBind,
ConnectionAttempt, the 30-second timers, and splicing.  Item numbers refer
to shared/spec/turn-checklist.md (section 18).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests._assertions import TURNTestCase
from tests._relays import DENIED_PEER, PEER_6, PEER_A, RELAY_IP, FakeRelay
from turnrelay.stun import attributes as A
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.transports.stream import StreamLimits, STUNStreamProtocol
from turnrelay.turn.descriptors import DescriptorBudget
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.tcprelay import PeerConnection


class TCPAllocationTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.relay = FakeRelay()
        self.reactor = self.relay.reactor
        self.client = self.relay.client(transport="tcp")
        self.response = self.client.request(
            Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_TCP)]
        )
        self.allocation = self.client.link.allocation

    def connect(self, peer: Any = PEER_A) -> STUNMessage | None:
        """
        Send Connect; return its response if one came at once.
        """
        data = self.client.build(Method.CONNECT, [(A.XOR_PEER_ADDRESS, peer)])
        return self.client.send(data)

    def peerConnected(self, index: int = -1) -> tuple[PeerConnection, StringTransport]:
        """
        Complete the outgoing connection the server asked for.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        connection = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert isinstance(connection, PeerConnection)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        connection.makeConnection(transport)
        return connection, transport

    def dataConnection(self) -> tuple[STUNStreamProtocol, StringTransport]:
        """
        A second client connection, as RFC 6062 data connections are.
        """
        protocol = STUNStreamProtocol(self.relay.server, "tcp", StreamLimits(self.reactor))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "192.0.2.1", 3478),
            peerAddress=IPv4Address("TCP", "192.0.2.50", 41234),
        )
        protocol.makeConnection(transport)
        return protocol, transport

    def connectionBind(
        self,
        protocol: STUNStreamProtocol,
        transport: StringTransport,
        connectionID: int,
        tail: bytes = b"",
    ) -> STUNMessage:
        # The data connection's port differs from the control connection's;
        # the nonce, bound to the host, serves both.
        data = self.client.build(Method.CONNECTION_BIND, [(A.CONNECTION_ID, connectionID)])
        protocol.dataReceived(data + tail)
        # Take the response; leave whatever follows it (spliced bytes).
        value = transport.value()
        size = 20 + int.from_bytes(value[2:4], "big")
        transport.clear()
        transport.write(value[size:])
        return decodeMessage(value[:size])


class AllocateTCPTests(TCPAllocationTestCase):
    """
    Allocate with REQUESTED-TRANSPORT TCP (item 108).
    """

    def test_success(self) -> None:
        """
        A TCP Allocate over TCP gets a relayed address listening for peers, and
        no RESERVATION-TOKEN.
        """
        response = self.assertSuccess(self.response)
        relayed = response.get(A.XOR_RELAYED_ADDRESS)
        self.assertEqual(relayed.host, RELAY_IP)
        self.assertNotIn(A.RESERVATION_TOKEN, response)
        [port] = self.reactor.tcpPorts
        self.assertEqual((port.host, port.portNumber), (RELAY_IP, relayed.port))
        self.assertEqual(self.allocation.transport, A.TRANSPORT_TCP)

    def test_overUDP(self) -> None:
        """
        A TCP Allocate over UDP gets 400.
        """
        client = self.relay.client()
        response = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_TCP)])
        self.assertErrorCode(response, 400)

    def test_forbiddenAttributes(self) -> None:
        """
        DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN in a TCP Allocate get 400.
        """
        for extra in (
            (A.DONT_FRAGMENT, True),
            (A.EVEN_PORT, False),
            (A.RESERVATION_TOKEN, b"12345678"),
        ):
            client = self.relay.client(transport="tcp")
            response = client.request(
                Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_TCP), extra]
            )
            self.assertErrorCode(response, 400)

    def test_channelsAreForUDP(self) -> None:
        """
        ChannelBind on a TCP allocation gets 400 (item 114).
        """
        response = self.client.request(
            Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, PEER_A)]
        )
        self.assertErrorCode(response, 400)

    def test_closesWithControlConnection(self) -> None:
        """
        The allocation ends when its control connection closes, and its
        listening socket with it (item 66).
        """
        self.relay.server.linkClosed(self.client.link, "closed with its connection")
        self.assertEqual(len(self.relay.server.registry), 0)
        self.assertFalse(self.reactor.tcpPorts[0].listening)


class ConnectTests(TCPAllocationTestCase):
    """
    Connect (RFC 6062 section 5.2, item 109).
    """

    def test_connects(self) -> None:
        """
        Connect opens a TCP connection from the relayed address to the peer,
        and answers with a CONNECTION-ID once it is up.
        """
        self.assertIsNone(self.connect())
        [(host, port, _, timeout, bindAddress)] = self.reactor.tcpClients
        binding: Any = bindAddress
        self.assertEqual((host, port), PEER_A)
        self.assertGreaterEqual(timeout, 30)
        relayed = self.response.get(A.XOR_RELAYED_ADDRESS)
        self.assertEqual((binding._address, binding._port), (RELAY_IP, relayed.port))
        self.assertTrue(binding._reusePort)
        connection, _ = self.peerConnected()
        response = self.assertSuccess(decodeMessage(self.client.link.popSent() or b""))
        self.assertEqual(response.get(A.CONNECTION_ID), connection.connectionID)
        self.assertEqual(connection.state, "pending")

    def test_noAllocation(self) -> None:
        """
        Connect without an allocation gets 437.
        """
        other = self.relay.client(transport="tcp")
        self.assertErrorCode(other.request(Method.CONNECT, [(A.XOR_PEER_ADDRESS, PEER_A)]), 437)

    def test_udpAllocation(self) -> None:
        """
        Connect on a UDP allocation gets 400.
        """
        client = self.relay.client(transport="tcp")
        client.allocate()
        self.assertErrorCode(client.request(Method.CONNECT, [(A.XOR_PEER_ADDRESS, PEER_A)]), 400)

    def test_badPeer(self) -> None:
        """
        A missing XOR-PEER-ADDRESS gets 400, a denied peer 403, a peer of
        another family 443 (items 109, 115).
        """
        self.assertErrorCode(self.client.request(Method.CONNECT), 400)
        self.assertErrorCode(self.connect(DENIED_PEER), 403)
        self.assertErrorCode(self.connect(PEER_6), 443)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_duplicate(self) -> None:
        """
        A second Connect to the same peer, pending or connected, gets 446.
        """
        self.connect()
        self.assertErrorCode(self.connect(), 446)
        self.peerConnected()
        self.client.link.popSent()
        self.assertErrorCode(self.connect(), 446)

    def test_failure(self) -> None:
        """
        A connection that fails or times out gets 447, and the peer may be
        tried again.
        """
        self.connect()
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
        self.assertErrorCode(decodeMessage(self.client.link.popSent() or b""), 447)
        self.assertEqual(self.relay.server.peerConnections, {})
        self.assertIsNone(self.connect())

    def test_bindTimeout(self) -> None:
        """
        Without a ConnectionBind within 30 s the peer connection is closed
        (items 112, 115).
        """
        self.connect()
        connection, transport = self.peerConnected()
        self.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)
        connection.connectionLost(None)
        self.assertEqual(self.relay.server.peerConnections, {})

    def test_allocationEndClosesConnections(self) -> None:
        """
        Deleting the allocation closes its peer connections (item 113).
        """
        self.connect()
        _, transport = self.peerConnected()
        self.client.link.popSent()
        self.client.request(Method.REFRESH, [(A.LIFETIME, 0)])
        self.assertTrue(transport.disconnecting)


class ConnectionBindTests(TCPAllocationTestCase):
    """
    ConnectionBind and the spliced data connection (RFC 6062 section 5.4,
    item 111).
    """

    def setUp(self) -> None:
        super().setUp()
        self.connect()
        self.peer, self.peerTransport = self.peerConnected()
        self.client.link.popSent()

    def test_bind(self) -> None:
        """
        ConnectionBind on a new connection succeeds; then bytes flow raw both
        ways, including what the peer sent before and what followed the
        request.
        """
        self.peer.dataReceived(b"early bytes")
        protocol, transport = self.dataConnection()
        response = self.connectionBind(protocol, transport, self.peer.connectionID, b"pipelined")
        self.assertSuccess(response)
        self.assertEqual(self.peerTransport.value(), b"pipelined")
        protocol.dataReceived(b"\xff not STUN at all")
        self.assertEqual(self.peerTransport.value(), b"pipelined\xff not STUN at all")
        self.peer.dataReceived(b"from the peer")
        self.assertEqual(transport.value(), b"early bytesfrom the peer")
        self.assertEqual(self.peer.state, "bound")
        self.assertFalse(transport.disconnecting)
        # Neither the bind timer nor an idle timeout touches a bound pair.
        self.reactor.advance(120)
        self.assertFalse(self.peerTransport.disconnecting)
        self.assertFalse(transport.disconnecting)

    def test_backpressure(self) -> None:
        """
        Spliced connections are each other's producers.
        """
        protocol, transport = self.dataConnection()
        self.connectionBind(protocol, transport, self.peer.connectionID)
        self.assertIs(transport.producer, self.peerTransport)
        self.assertIs(self.peerTransport.producer, transport)

    def test_closeEitherSide(self) -> None:
        """
        When one side of the pair closes, so does the other (item 113).
        """
        protocol, transport = self.dataConnection()
        self.connectionBind(protocol, transport, self.peer.connectionID)
        protocol.connectionLost(None)
        self.assertTrue(self.peerTransport.disconnecting)

    def test_peerCloses(self) -> None:
        """
        When the peer closes, the data connection is closed.
        """
        protocol, transport = self.dataConnection()
        self.connectionBind(protocol, transport, self.peer.connectionID)
        self.peer.connectionLost(None)
        self.assertTrue(transport.disconnecting)

    def test_unknownConnectionID(self) -> None:
        """
        A bogus CONNECTION-ID gets 400 (item 115).
        """
        protocol, transport = self.dataConnection()
        self.assertErrorCode(self.connectionBind(protocol, transport, 12345), 400)

    def test_twice(self) -> None:
        """
        A connection can be bound only once.
        """
        protocol, transport = self.dataConnection()
        self.connectionBind(protocol, transport, self.peer.connectionID)
        other, otherTransport = self.dataConnection()
        self.assertErrorCode(
            self.connectionBind(other, otherTransport, self.peer.connectionID), 400
        )

    def test_otherUser(self) -> None:
        """
        ConnectionBind by another user gets 441.
        """
        protocol, transport = self.dataConnection()
        self.client = self.relay.client("bob", transport="tcp")
        self.client.challenge()
        response = self.connectionBind(protocol, transport, self.peer.connectionID)
        self.assertErrorCode(response, 441)

    def test_overUDP(self) -> None:
        """
        ConnectionBind over UDP gets 400.
        """
        client = self.relay.client()
        response = client.request(
            Method.CONNECTION_BIND, [(A.CONNECTION_ID, self.peer.connectionID)]
        )
        self.assertErrorCode(response, 400)

    def test_onControlConnection(self) -> None:
        """
        ConnectionBind on the connection that holds the allocation gets 400.
        """
        response = self.client.request(
            Method.CONNECTION_BIND, [(A.CONNECTION_ID, self.peer.connectionID)]
        )
        self.assertErrorCode(response, 400)


class IncomingConnectionTests(TCPAllocationTestCase):
    """
    Peers connecting to a TCP relayed address (RFC 6062 section 5.3, item 110).
    """

    def accept(self, host: str) -> tuple[Any, StringTransport]:
        factory = self.reactor.tcpPorts[0].factory
        connection = factory.buildProtocol(IPv4Address("TCP", host, 5555))
        transport = StringTransport()
        if connection is not None:
            connection.makeConnection(transport)
        return connection, transport

    def test_noPermission(self) -> None:
        """
        A peer without a permission is refused at once.
        """
        connection, _ = self.accept(PEER_A.host)
        self.assertIsNone(connection)
        self.assertIsNone(self.client.link.popSent())

    def test_connectionAttempt(self) -> None:
        """
        A permitted peer's connection is announced with a ConnectionAttempt
        indication carrying XOR-PEER-ADDRESS and CONNECTION-ID, and can be bound.
        """
        self.client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        connection, transport = self.accept(PEER_A.host)
        message = decodeMessage(self.client.link.popSent() or b"")
        self.assertEqual(
            (message.method, message.messageClass),
            (Method.CONNECTION_ATTEMPT, MessageClass.INDICATION),
        )
        self.assertEqual(message.get(A.XOR_PEER_ADDRESS).host, PEER_A.host)
        self.assertEqual(message.get(A.CONNECTION_ID), connection.connectionID)
        protocol, dataTransport = self.dataConnection()
        self.assertSuccess(self.connectionBind(protocol, dataTransport, connection.connectionID))

    def test_bindTimeout(self) -> None:
        """
        An announced connection nobody binds within 30 s is closed.
        """
        self.client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        _, transport = self.accept(PEER_A.host)
        self.reactor.advance(30)
        self.assertTrue(transport.disconnecting)


class PeerConnectionLimitTests(TCPAllocationTestCase):
    """
    Peer connections are held to max-peer-connections per allocation and to
    the descriptor budget.
    """

    def setUp(self) -> None:
        super().setUp()
        self.relay.server.limits = RelayLimits(maxPeerConnections=2)
        self.client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])

    def accept(self) -> Any:
        factory = self.reactor.tcpPorts[0].factory
        connection = factory.buildProtocol(IPv4Address("TCP", PEER_A.host, 5555))
        if connection is not None:
            connection.makeConnection(StringTransport())
        return connection

    def test_incomingBeyondCap(self) -> None:
        """
        A peer's connection beyond max-peer-connections is refused at once,
        counted, and announces nothing to the client.
        """
        self.assertIsNotNone(self.accept())
        self.assertIsNotNone(self.accept())
        self.client.link.sent.clear()
        self.assertIsNone(self.accept())
        self.assertIsNone(self.client.link.popSent())
        self.assertEqual(self.relay.server.peerConnectionsRefused["max-peer-connections"], 1)

    def test_connectBeyondCap(self) -> None:
        """
        Connect beyond max-peer-connections, pending ones included, gets 508.
        """
        self.accept()
        self.accept()
        self.client.link.sent.clear()  # the ConnectionAttempts
        self.assertErrorCode(self.connect(PEER_A), 508)

    def test_descriptorsShort(self) -> None:
        """
        While descriptors are within the reserve, Connect and a new TCP
        Allocate get 508 and peers' connections are refused.
        """
        budget = DescriptorBudget(self.reactor, reserve=10, limit=20, countOpen=lambda: 15)
        self.addCleanup(budget.stop)
        self.relay.server.descriptors = budget
        self.assertErrorCode(self.connect(PEER_A), 508)
        self.assertIsNone(self.accept())
        other = self.relay.client(transport="tcp")
        response = other.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_TCP)])
        self.assertErrorCode(response, 508)
        self.assertEqual(dict(budget.refused), {"connect": 1, "peer": 1, "allocate": 1})


class TCPUsageTests(TCPAllocationTestCase):
    """
    What a TCP allocation relays counts in its usage, as for UDP.
    """

    def test_usageCounted(self) -> None:
        """
        Bytes spliced each way count toward the allocation's usage.
        """
        self.connect()
        self.peer, _ = self.peerConnected()
        protocol, transport = self.dataConnection()
        self.connectionBind(protocol, transport, self.peer.connectionID)
        protocol.dataReceived(b"12345")
        self.peer.dataReceived(b"abc")
        usage = self.allocation.usage()
        self.assertEqual((usage["bytesToPeer"], usage["bytesFromPeer"]), (5, 3))
        self.assertEqual((usage["packetsToPeer"], usage["packetsFromPeer"]), (1, 1))


class TCPPortSharingTests(TURNTestCase):
    """
    TCP relayed ports listen with SO_REUSEPORT; pools of one process must
    still never hand out the same one twice.
    """

    def test_processWide(self) -> None:
        """
        Two pools with the same one-port range: the second gets no port while
        the first holds it, and gets it once released.
        """
        from turnrelay.testing import FakeUDPReactor
        from turnrelay.turn.relay import NoRelayPort, RelayPortPool

        first = RelayPortPool(FakeUDPReactor(), RELAY_IP, 50555, 50555)
        second = RelayPortPool(FakeUDPReactor(), RELAY_IP, 50555, 50555)
        listening = first.openTCP(object())
        self.assertRaises(NoRelayPort, second.openTCP, object())
        first.closeTCP(listening)
        second.closeTCP(second.openTCP(object()))
