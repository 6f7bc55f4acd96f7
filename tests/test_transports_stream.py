"""
Tests for L{turnrelay.transports.stream}, fed through L{StringTransport}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from turnrelay.interfaces import IClientLink
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import StreamFramer, encodeChannelData
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.transports.stream import StreamLimits, STUNStreamFactory, STUNStreamProtocol
from turnrelay.turn.descriptors import DescriptorBudget
from turnrelay.turn.server import TURNServer


def request(n: int) -> bytes:
    return STUNMessage(Method.BINDING, MessageClass.REQUEST, b"%012d" % n).encode(fingerprint=True)


class RecordingServer(TURNServer):
    def __init__(self) -> None:
        super().__init__(Clock())
        self.frames: list[bytes] = []

    def stunReceived(self, data: bytes, channel: Any) -> None:
        self.frames.append(data)

    def channelDataReceived(self, data: bytes, channel: Any) -> None:
        self.frames.append(data)


class StreamProtocolTests(SynchronousTestCase):
    """
    Tests for L{STUNStreamProtocol}: framing, answers, junk.
    """

    def connect(
        self,
        server: TURNServer,
        peer: IPv4Address | IPv6Address = IPv4Address("TCP", "127.0.0.5", 40000),
    ) -> tuple[STUNStreamProtocol, StringTransport]:
        factory = STUNStreamFactory(server)
        protocol = factory.buildProtocol(peer)
        host = IPv4Address("TCP", "127.0.0.1", 3478)
        if isinstance(peer, IPv6Address):
            host = IPv6Address("TCP", "::", 3478)  # type: ignore[assignment]
        transport = StringTransport(hostAddress=host, peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_providesClientLink(self) -> None:
        """
        A connection is its own client link and knows its 5-tuple.
        """
        protocol, _ = self.connect(TURNServer(Clock()))
        self.assertTrue(verifyObject(IClientLink, protocol))
        self.assertEqual(protocol.transportProtocol, "tcp")
        self.assertEqual(protocol.clientAddress, TransportAddress("127.0.0.5", 40000))
        self.assertEqual(protocol.serverAddress, TransportAddress("127.0.0.1", 3478))

    def test_mappedPeer(self) -> None:
        """
        An IPv4 client on a dual-stack listener is seen as IPv4.
        """
        protocol, _ = self.connect(
            TURNServer(Clock()), IPv6Address("TCP", "::ffff:127.0.0.5", 40000)
        )
        self.assertEqual(protocol.clientAddress, TransportAddress("127.0.0.5", 40000))

    def test_oddChunks(self) -> None:
        """
        Frames split across and packed into reads of every size reach the
        controller whole and in order (checklist item 88).
        """
        frames = [
            request(1),
            encodeChannelData(0x4000, b"abc", pad=True),
            request(2),
            encodeChannelData(0x4FFF, b"", pad=True),
            encodeChannelData(0x4001, b"12345678", pad=True),
        ]
        stream = b"".join(frames)
        for size in range(1, len(stream) + 1):
            server = RecordingServer()
            protocol, transport = self.connect(server)
            for start in range(0, len(stream), size):
                protocol.dataReceived(stream[start : start + size])
            self.assertEqual(server.frames, frames, f"chunk size {size}")
            self.assertFalse(transport.disconnecting)

    def test_answers(self) -> None:
        """
        Binding requests on one connection are each answered on it.
        """
        protocol, transport = self.connect(TURNServer(Clock()))
        protocol.dataReceived(request(1) + request(2))
        responses = StreamFramer().feed(transport.value())
        self.assertEqual(
            [decodeMessage(r).transactionID for r in responses], [b"%012d" % 1, b"%012d" % 2]
        )
        for response in responses:
            self.assertEqual(
                decodeMessage(response).get(A.XOR_MAPPED_ADDRESS),
                TransportAddress("127.0.0.5", 40000),
            )

    def test_junkClosesOnlyThisConnection(self) -> None:
        """
        Junk on a stream closes that connection, and another connection on the
        same controller keeps being served (checklist item 87).
        """
        server = TURNServer(Clock())
        good, goodTransport = self.connect(server)
        bad, badTransport = self.connect(server)
        bad.dataReceived(request(1)[:10])
        bad.dataReceived(b"\xff" * 50)
        self.assertTrue(badTransport.disconnecting)
        good.dataReceived(request(2))
        self.assertFalse(goodTransport.disconnecting)
        self.assertEqual(len(StreamFramer().feed(goodTransport.value())), 1)

    def test_junkVariants(self) -> None:
        """
        A first byte that is neither STUN nor ChannelData, a STUN length that
        is not a multiple of 4 and a missing magic cookie all close the connection.
        """
        junk = [b"\x80\x00\x00\x00", b"\x00\x01\x00\x03", b"\x00\x01\x00\x00\xde\xad\xbe\xef"]
        for data in junk:
            protocol, transport = self.connect(TURNServer(Clock()))
            protocol.dataReceived(data)
            self.assertTrue(transport.disconnecting, data)

    def test_nothingAfterJunk(self) -> None:
        """
        Once junk has been seen, later bytes on that connection are ignored
        and nothing more is written.
        """
        server = RecordingServer()
        protocol, transport = self.connect(server)
        protocol.dataReceived(b"\xc0\x00\x00\x00")
        protocol.dataReceived(request(1))
        protocol.send(b"late")
        self.assertEqual(server.frames, [])
        self.assertEqual(transport.value(), b"")

    def test_malformedMessageKeepsConnection(self) -> None:
        """
        A well-framed but malformed STUN message is dropped and the connection stays.
        """
        protocol, transport = self.connect(TURNServer(Clock()))
        bad = bytearray(request(1))
        bad[-1] ^= 0xFF  # breaks FINGERPRINT, not the framing
        protocol.dataReceived(bytes(bad) + request(2))
        self.assertFalse(transport.disconnecting)
        [response] = StreamFramer().feed(transport.value())
        self.assertEqual(decodeMessage(response).transactionID, b"%012d" % 2)


class StreamLimitTests(SynchronousTestCase):
    """
    Limits on TCP and TLS connections: idle and handshake timeouts, the cap
    on connections without an allocation, and dropping relayed data for slow
    readers.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = TURNServer(self.clock)
        self.limits = StreamLimits(
            self.clock,
            idleTimeout=60,
            handshakeTimeout=10,
            allocateTimeout=3600,
            maxUnallocated=2,
            maxUnallocatedPerSource=2,
            maxUnsent=1000,
        )

    def connect(
        self,
        transportProtocol: str = "tcp",
        peer: IPv4Address | IPv6Address = IPv4Address("TCP", "127.0.0.5", 40000),
    ) -> tuple[STUNStreamProtocol, StringTransport]:
        factory = STUNStreamFactory(self.server, transportProtocol, self.limits)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 3478), peerAddress=peer
        )
        protocol.makeConnection(transport)
        self.addCleanup(self.close, protocol, transport)
        return protocol, transport

    def close(self, protocol: STUNStreamProtocol, transport: StringTransport) -> None:
        if not getattr(transport, "lost", False):
            transport.lost = True  # type: ignore[attr-defined]
            protocol.connectionLost(None)

    def test_idleTimeout(self) -> None:
        """
        A connection without an allocation is closed after a quiet spell;
        every frame restarts the count.
        """
        protocol, transport = self.connect()
        self.clock.advance(59)
        protocol.dataReceived(request(1))
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_partialFrameTimesOut(self) -> None:
        """
        A connection stuck in the middle of a frame (an HTTP request, say) is
        closed by the idle timeout.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(60)
        self.assertTrue(transport.disconnecting)

    def test_allocationStopsIdleTimeout(self) -> None:
        """
        A connection with an allocation is not timed out; when the allocation
        ends, the idle count starts again.
        """
        protocol, transport = self.connect()
        allocation = object()
        protocol.attach(allocation)  # type: ignore[arg-type]
        self.assertEqual(self.limits.unallocated, 0)
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        protocol.detach(allocation)  # type: ignore[arg-type]
        self.assertEqual(self.limits.unallocated, 1)
        self.clock.advance(60)
        self.assertTrue(transport.disconnecting)

    def test_handshakeTimeout(self) -> None:
        """
        A TLS connection whose handshake does not finish in time is closed.
        """
        protocol, transport = self.connect("tls")
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_handshakeCompleted(self) -> None:
        """
        A finished handshake cancels the handshake timer.
        """
        protocol, transport = self.connect("tls")
        protocol.handshakeCompleted()
        self.clock.advance(10)
        self.assertFalse(transport.disconnecting)

    def test_maxUnallocatedShedsLargestSource(self) -> None:
        """
        When max-unallocated-connections are open, a newcomer still gets in:
        the source holding the most connections loses its oldest.
        """
        self.limits.maxUnallocated = 3
        first, firstTransport = self.connect()
        second, secondTransport = self.connect()
        _, otherTransport = self.connect(peer=IPv4Address("TCP", "127.0.0.6", 40000))
        _, newcomerTransport = self.connect(peer=IPv4Address("TCP", "127.0.0.7", 40000))
        self.assertTrue(firstTransport.disconnecting)
        self.assertFalse(secondTransport.disconnecting)
        self.assertFalse(otherTransport.disconnecting)
        self.assertFalse(newcomerTransport.disconnecting)
        self.assertEqual(self.limits.unallocated, 3)
        self.assertEqual(self.limits.closed["shed"], 1)

    def test_maxUnallocatedPerSource(self) -> None:
        """
        Connections from a source beyond max-unallocated-per-source are
        closed as they arrive; closing one makes room.
        """
        self.limits.maxUnallocated = 10
        first, _ = self.connect()
        self.connect()
        _, thirdTransport = self.connect()
        self.assertTrue(thirdTransport.disconnecting)
        self.assertEqual(self.limits.closed["per-source"], 1)
        self.assertEqual(self.limits.unallocated, 2)
        _, elsewhereTransport = self.connect(peer=IPv4Address("TCP", "127.0.0.6", 40000))
        self.assertFalse(elsewhereTransport.disconnecting)
        first.connectionLost(None)
        _, fourthTransport = self.connect()
        self.assertFalse(fourthTransport.disconnecting)

    def test_perSourceIPv6By64(self) -> None:
        """
        IPv6 clients count by their /64: a host cannot escape the per-source
        cap by changing the low bits of its address.
        """
        self.limits.maxUnallocated = 10
        self.connect(peer=IPv6Address("TCP", "2001:db8::1", 40000))
        self.connect(peer=IPv6Address("TCP", "2001:db8::ffff:2", 40000))
        _, third = self.connect(peer=IPv6Address("TCP", "2001:db8::3", 40000))
        _, otherNet = self.connect(peer=IPv6Address("TCP", "2001:db8:0:1::1", 40000))
        self.assertTrue(third.disconnecting)
        self.assertFalse(otherNet.disconnecting)
        self.assertEqual(self.limits.sources(), 2)

    def test_allocateTimeoutIgnoresTraffic(self) -> None:
        """
        A connection must allocate within stream-allocate-timeout of its
        start: Binding traffic does not extend it.
        """
        self.limits.allocateTimeout = 30
        protocol, transport = self.connect()
        for _ in range(29):
            self.clock.advance(1)
            protocol.dataReceived(request(1))
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.limits.closed["allocate-timeout"], 1)

    def test_allocateTimeoutAfterAllocation(self) -> None:
        """
        When a connection's allocation ends, it has stream-allocate-timeout
        again to allocate, even if its source is at its cap.
        """
        self.limits.allocateTimeout = 30
        self.limits.maxUnallocated = 10
        protocol, transport = self.connect()
        allocation = object()
        protocol.attach(allocation)  # type: ignore[arg-type]
        self.clock.advance(3600)
        self.connect()
        self.connect()
        protocol.detach(allocation)  # type: ignore[arg-type]
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.limits.unallocated, 3)
        self.clock.advance(30)
        self.assertTrue(transport.disconnecting)

    def test_descriptorBudgetRefusesAccept(self) -> None:
        """
        Connections accepted while descriptors are within the reserve are
        closed at once and counted.
        """
        budget = DescriptorBudget(self.clock, reserve=10, limit=20, countOpen=lambda: 10)
        self.limits.descriptors = budget
        _, transport = self.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.limits.closed["descriptors"], 1)
        self.assertEqual(budget.refused["accept"], 1)
        self.assertEqual(self.limits.unallocated, 0)
        budget.stop()

    def test_countsBalance(self) -> None:
        """
        Closing connections gives back their places and leaves no timer.
        """
        for _ in range(2):
            protocol, transport = self.connect("tls")
            protocol.connectionLost(None)
            transport.lost = True  # type: ignore[attr-defined]
        self.assertEqual(self.limits.unallocated, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slowReaderDropsRelayed(self) -> None:
        """
        While the transport's buffer is full (the producer is paused), relayed
        data is dropped and counted, responses still go out, and relaying
        resumes when it drains.
        """
        protocol, transport = self.connect()
        self.assertIs(transport.producer, protocol)
        self.assertTrue(protocol.relay(b"one!"))
        protocol.pauseProducing()
        self.assertFalse(protocol.relay(b"two!"))
        self.assertFalse(protocol.relay(b"thr!"))
        protocol.send(b"resp")
        self.assertEqual(protocol.droppedRelayed, 2)
        protocol.resumeProducing()
        self.assertTrue(protocol.relay(b"four"))
        self.assertEqual(transport.value(), b"one!respfour")

    def test_fullBufferStopsReading(self) -> None:
        """
        While the client's buffer is full, nothing more is read from it;
        reading resumes when it drains.
        """
        protocol, transport = self.connect()
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_unsentBeyondBoundCloses(self) -> None:
        """
        A client that leaves more than stream-max-unsent bytes of responses
        unread after its buffer filled is closed.
        """
        protocol, transport = self.connect()
        protocol.pauseProducing()
        for n in range(100):
            protocol.dataReceived(request(n))
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(len(transport.value()), 1000)
        self.assertEqual(self.limits.closed["unsent"], 1)
