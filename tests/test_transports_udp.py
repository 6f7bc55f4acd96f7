"""
Tests for L{turnrelay.transports.udp}, with a fake UDP port.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from turnrelay.interfaces import IClientLink
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.testing import FakeUDPReactor
from turnrelay.transports.udp import STUNDatagramProtocol, UDPClientLink
from turnrelay.turn.server import TURNServer

TID = b"udp-test-tid"
REQUEST = STUNMessage(Method.BINDING, MessageClass.REQUEST, TID).encode()


class RecordingServer(TURNServer):
    """
    A controller that records what the transport hands it.
    """

    def __init__(self) -> None:
        super().__init__(Clock())
        self.stun: list[tuple[bytes, Any]] = []
        self.channelData: list[tuple[bytes, Any]] = []

    def stunReceived(self, data: bytes, channel: Any) -> None:
        self.stun.append((data, channel))

    def channelDataReceived(self, data: bytes, channel: Any) -> None:
        self.channelData.append((data, channel))


class ExplodingServer(TURNServer):
    def stunReceived(self, data: bytes, channel: Any) -> None:
        raise RuntimeError("boom")


class DatagramProtocolTests(SynchronousTestCase):
    """
    Tests for L{STUNDatagramProtocol}.
    """

    def listen(self, server: TURNServer, interface: str = "127.0.0.1") -> STUNDatagramProtocol:
        self.reactor = FakeUDPReactor()
        protocol = STUNDatagramProtocol(server)
        self.port = self.reactor.listenUDP(3478, protocol, interface=interface)
        return protocol

    def test_serverAddress(self) -> None:
        """
        The protocol learns its bound address when it starts.
        """
        protocol = self.listen(TURNServer(Clock()))
        self.assertEqual(protocol.serverAddress, TransportAddress("127.0.0.1", 3478))

    def test_bindingAnswered(self) -> None:
        """
        A Binding request is answered to the address it came from.
        """
        protocol = self.listen(TURNServer(Clock()))
        protocol.datagramReceived(REQUEST, ("127.0.0.7", 5000))
        [(data, addr)] = self.port.written
        self.assertEqual(addr, ("127.0.0.7", 5000))
        response = decodeMessage(data)
        self.assertEqual(response.get(A.XOR_MAPPED_ADDRESS), TransportAddress("127.0.0.7", 5000))

    def test_dualStackMappedClient(self) -> None:
        """
        An IPv4 client seen on a dual-stack socket as ::ffff:a.b.c.d gets its
        IPv4 address in XOR-MAPPED-ADDRESS, and the reply goes to the address
        the socket reported.
        """
        protocol = self.listen(TURNServer(Clock()), interface="::")
        protocol.datagramReceived(REQUEST, ("::ffff:127.0.0.9", 6000))
        [(data, addr)] = self.port.written
        self.assertEqual(addr, ("::ffff:127.0.0.9", 6000))
        self.assertEqual(
            decodeMessage(data).get(A.XOR_MAPPED_ADDRESS), TransportAddress("127.0.0.9", 6000)
        )

    def test_ipv6Client(self) -> None:
        """
        An IPv6 client gets its IPv6 address back.
        """
        protocol = self.listen(TURNServer(Clock()), interface="::")
        protocol.datagramReceived(REQUEST, ("::1", 6001))
        [(data, addr)] = self.port.written
        self.assertEqual(addr, ("::1", 6001))
        self.assertEqual(
            decodeMessage(data).get(A.XOR_MAPPED_ADDRESS), TransportAddress("::1", 6001)
        )

    def test_demultiplexing(self) -> None:
        """
        The first byte sends STUN and ChannelData to the controller and drops
        everything else (RFC 7983, item 86).
        """
        server = RecordingServer()
        protocol = self.listen(server)
        client = ("127.0.0.1", 1)
        for datagram in (b"", b"\x04abc", b"\x3f" * 20, b"\x50\0\0\0", b"\x80" * 12, b"\xff"):
            protocol.datagramReceived(datagram, client)
        self.assertEqual(server.stun, [])
        self.assertEqual(server.channelData, [])
        protocol.datagramReceived(REQUEST, client)
        self.assertEqual([data for data, _ in server.stun], [REQUEST])
        [(_, channel)] = server.stun
        channel.attach(object())
        protocol.datagramReceived(b"\x40\x00\x00\x01x", client)
        protocol.datagramReceived(b"\x4f\xff\x00\x00", client)
        self.assertEqual(
            [data for data, _ in server.channelData], [b"\x40\x00\x00\x01x", b"\x4f\xff\x00\x00"]
        )
        self.assertTrue(all(c is channel for _, c in server.channelData))

    def test_channelDataWithoutAllocationDropped(self) -> None:
        """
        ChannelData from a client without an allocation never reaches the
        controller: there is nothing to relay it to (item 84).
        """
        server = RecordingServer()
        protocol = self.listen(server)
        protocol.datagramReceived(b"\x40\x00\x00\x01x", ("127.0.0.1", 1))
        self.assertEqual(server.channelData, [])

    def test_channelKeptWhileAllocated(self) -> None:
        """
        A client's link is kept, and found by address, only while it
        has an allocation.
        """
        server = RecordingServer()
        protocol = self.listen(server)
        protocol.datagramReceived(REQUEST, ("127.0.0.1", 1))
        [(_, channel)] = server.stun
        allocation = object()
        channel.attach(allocation)
        self.assertIs(protocol.clients[("127.0.0.1", 1)], channel)
        protocol.datagramReceived(REQUEST, ("127.0.0.1", 1))
        self.assertIs(server.stun[1][1], channel)
        channel.detach(allocation)
        self.assertEqual(protocol.clients, {})
        self.assertIsNone(channel.allocation)

    def test_replyChannel(self) -> None:
        """
        The client link handed over provides IClientLink and describes the 5-tuple.
        """
        server = RecordingServer()
        protocol = self.listen(server)
        protocol.datagramReceived(REQUEST, ("127.0.0.2", 7))
        [(_, channel)] = server.stun
        self.assertIsInstance(channel, UDPClientLink)
        self.assertTrue(verifyObject(IClientLink, channel))
        self.assertEqual(channel.transportProtocol, "udp")
        self.assertEqual(channel.clientAddress, TransportAddress("127.0.0.2", 7))
        self.assertEqual(channel.serverAddress, TransportAddress("127.0.0.1", 3478))
        channel.send(b"hello")
        self.assertEqual(self.port.written, [(b"hello", ("127.0.0.2", 7))])

    def test_controllerBugContained(self) -> None:
        """
        An exception in the controller is logged, not raised into the reactor.
        """
        protocol = self.listen(ExplodingServer(Clock()))
        protocol.datagramReceived(REQUEST, ("127.0.0.1", 1))
        [failure] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(failure.value), "boom")

    def test_sendErrorLogged(self) -> None:
        """
        An OS error while sending is logged, not raised.
        """
        protocol = self.listen(TURNServer(Clock()))

        def refuse(data: bytes, addr: Any = None) -> None:
            raise OSError(90, "Message too long")

        protocol.sendto = refuse
        protocol.datagramReceived(REQUEST, ("127.0.0.1", 1))
        self.assertEqual(self.flushLoggedErrors(), [])
