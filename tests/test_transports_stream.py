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

from turnrelay.interfaces import IReplyChannel
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import StreamFramer, encodeChannelData
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.transports.stream import STUNStreamFactory, STUNStreamProtocol
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

    def test_providesReplyChannel(self) -> None:
        """
        A connection is its own reply channel and knows its 5-tuple.
        """
        protocol, _ = self.connect(TURNServer(Clock()))
        self.assertTrue(verifyObject(IReplyChannel, protocol))
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
