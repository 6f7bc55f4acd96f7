"""
Tests for L{turnrelay.transports.proxy}: the PROXY protocol header read
before a stream, fed through L{StringTransport} in odd pieces.

The headers are built here as a load balancer writes them (L{proxyV1},
L{proxyV2}); L{tests.test_loopback_proxy} sends them over real sockets.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, List, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests._logs import LogRecorder
from tests._relays import FakeRelay
from turnrelay.transports.proxy import PROXYHeaderFactory, PROXYHeaderReceiver
from turnrelay.transports.stream import StreamLimits

# The prefix of every v2 header (the PROXY protocol specification, 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Where the load balancer is and where the header says the client is: only
# data in the header, no packet goes there.
BALANCER = IPv4Address("TCP", "10.0.0.2", 51000)
LISTENER = IPv4Address("TCP", "10.0.0.1", 443)
CLIENT = ("203.0.113.7", 4444)
PUBLIC = ("198.51.100.1", 443)


def proxyV1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """
    @return: a v1 (text) header for a TCP connection from C{source} to
        C{destination}.
    """
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (
        f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode()


def proxyV2(
    source: tuple[str, int], destination: tuple[str, int], command: int = 1, tlvs: bytes = b""
) -> bytes:
    """
    @param command: 1 for PROXY, 0 for LOCAL (the balancer's own health
        check).
    @param tlvs: type-length-value extensions after the addresses.
    @return: a v2 (binary) header for a TCP connection from C{source} to
        C{destination}.
    """
    if ":" in source[0]:
        family, addressFamily = 0x21, socket.AF_INET6
    else:
        family, addressFamily = 0x11, socket.AF_INET
    addresses = (
        socket.inet_pton(addressFamily, source[0])
        + socket.inet_pton(addressFamily, destination[0])
        + struct.pack("!HH", source[1], destination[1])
        + tlvs
    )
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, family])
        + struct.pack("!H", len(addresses))
        + addresses
    )


class Recorder(Protocol):
    """
    A stream's protocol that records what it was told.
    """

    def __init__(self) -> None:
        self.peer: Optional[IAddress] = None
        self.host: Optional[IAddress] = None
        self.received = b""
        self.lost: Optional[object] = None

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.host = self.transport.getHost()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost = reason


class RecordingFactory(Factory):
    """
    Builds L{Recorder}s, remembering them and the address each was built
    for.
    """

    def __init__(self) -> None:
        self.built: List[Recorder] = []
        self.addresses: List[Optional[IAddress]] = []

    def buildProtocol(self, addr: Optional[IAddress]) -> Recorder:
        self.addresses.append(addr)
        protocol = Recorder()
        self.built.append(protocol)
        return protocol


class PROXYHeaderReceiverTests(SynchronousTestCase):
    """
    Tests for L{PROXYHeaderReceiver}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limits = StreamLimits(self.clock, handshakeTimeout=5.0)
        self.inner = RecordingFactory()
        self.factory = PROXYHeaderFactory(self.inner, self.limits, "tcp")
        self.transport = StringTransport(hostAddress=LISTENER, peerAddress=BALANCER)
        self.receiver = self.factory.buildProtocol(BALANCER)
        self.assertIsInstance(self.receiver, PROXYHeaderReceiver)
        self.receiver.makeConnection(self.transport)

    def feed(self, data: bytes, size: int) -> None:
        for start in range(0, len(data), size):
            self.receiver.dataReceived(data[start : start + size])

    def assertConnectedAs(self, source: tuple[str, int], destination: tuple[str, int]) -> Recorder:
        [protocol] = self.inner.built
        peer, host = protocol.peer, protocol.host
        assert isinstance(peer, (IPv4Address, IPv6Address))
        assert isinstance(host, (IPv4Address, IPv6Address))
        self.assertEqual((peer.host, peer.port), source)
        self.assertEqual((host.host, host.port), destination)
        self.assertEqual(self.inner.addresses, [peer])
        self.assertFalse(self.transport.disconnecting)
        return protocol

    def assertRefused(self, reason: str) -> None:
        self.assertEqual(self.inner.built, [])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(dict(self.limits.closed), {reason: 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_v1InPieces(self) -> None:
        """
        A v1 header in any pieces connects the stream as from the client it
        names, to the address it names, with what follows the header.
        """
        for size in (1, 3, 7, 200):
            self.setUp()
            self.feed(proxyV1(CLIENT, PUBLIC) + b"after the header", size)
            protocol = self.assertConnectedAs(CLIENT, PUBLIC)
            self.assertEqual(protocol.received, b"after the header")
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_v2InPieces(self) -> None:
        """
        A v2 header (with TLVs) in any pieces connects the stream as from
        the client it names, with what follows the header.
        """
        header = proxyV2(CLIENT, PUBLIC, tlvs=b"\x04\x00\x02ok")
        for size in (1, 5, 13, 200):
            self.setUp()
            self.feed(header + b"after the header", size)
            protocol = self.assertConnectedAs(CLIENT, PUBLIC)
            self.assertEqual(protocol.received, b"after the header")

    def test_IPv6(self) -> None:
        """
        v1 and v2 headers may name IPv6 clients.
        """
        client, public = ("2001:db8::7", 4444), ("2001:db8::1", 443)
        for header in (proxyV1(client, public), proxyV2(client, public)):
            self.setUp()
            self.feed(header, 4)
            self.assertConnectedAs(client, public)

    def test_nothingBeforeTheHeader(self) -> None:
        """
        The stream's protocol is not even built before the header is
        complete, so it never sees the balancer's address.
        """
        header = proxyV2(CLIENT, PUBLIC)
        self.feed(header[:-1], 100)
        self.assertEqual(self.inner.built, [])
        self.receiver.dataReceived(header[-1:])
        self.assertConnectedAs(CLIENT, PUBLIC)

    def test_laterData(self) -> None:
        """
        Bytes after the header, in later reads, go to the stream unchanged.
        """
        self.feed(proxyV1(CLIENT, PUBLIC), 100)
        self.receiver.dataReceived(b"PROXY again")
        [protocol] = self.inner.built
        self.assertEqual(protocol.received, b"PROXY again")

    def test_local(self) -> None:
        """
        A v2 LOCAL header (the balancer's own health check) connects the
        stream as from the balancer.
        """
        self.feed(proxyV2(CLIENT, PUBLIC, command=0), 100)
        self.assertConnectedAs(("10.0.0.2", 51000), ("10.0.0.1", 443))

    def test_noHeader(self) -> None:
        """
        A connection that starts with anything but a PROXY header (a STUN
        message, a TLS ClientHello) is closed and counted.
        """
        for first in (b"\x00\x01\x00\x00\x21\x12\xa4\x42", b"\x16\x03\x01", b"GET / HTTP/1.1\r\n"):
            self.setUp()
            self.feed(first, 100)
            self.assertRefused("proxy-header")

    def test_malformed(self) -> None:
        """
        A header that is not well formed, or names no IP address, is refused
        and counted, never raised.
        """
        for header in (
            b"PROXY TCP4 203.0.113.7 198.51.100.1 abc 443\r\n",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 99999 443\r\n",
            b"PROXY TCP4 not.an.address 198.51.100.1 4444 443\r\n",
            b"PROXY SCTP 203.0.113.7 198.51.100.1 4444 443\r\n",
            b"PROXY TCP4 " + b"9" * 120,
            V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
            # AF_UNIX: no IP address to speak of.
            V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"/run/x".ljust(216, b"\x00"),
        ):
            self.setUp()
            self.feed(header, 100)
            self.assertRefused("proxy-header")

    def test_timeout(self) -> None:
        """
        A header not complete within the handshake timeout closes the
        connection, counted apart.
        """
        self.feed(b"PROXY TCP4 203.0", 100)
        self.clock.advance(4.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertRefused("proxy-timeout")

    def test_lostBeforeTheHeader(self) -> None:
        """
        A connection lost before its header stops the timer and tells no
        stream protocol, since none was built.
        """
        self.feed(b"PROXY", 100)
        self.receiver.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.inner.built, [])

    def test_lostAfterTheHeader(self) -> None:
        """
        A connection lost after its header is reported to the stream.
        """
        self.feed(proxyV1(CLIENT, PUBLIC), 100)
        [protocol] = self.inner.built
        self.receiver.connectionLost(Failure(Exception("gone")))
        self.assertIsNotNone(protocol.lost)


class TrustedBalancerTests(SynchronousTestCase):
    """
    Tests for C{proxy-from}: only the load balancers named may send
    headers.
    """

    def connect(self, trusted: List[str], balancer: IAddress) -> StreamLimits:
        limits = StreamLimits(Clock())
        self.inner = RecordingFactory()
        factory = PROXYHeaderFactory(self.inner, limits, "tls", trusted)
        self.transport = StringTransport(hostAddress=LISTENER, peerAddress=balancer)
        receiver = factory.buildProtocol(balancer)
        receiver.makeConnection(self.transport)
        receiver.dataReceived(proxyV2(CLIENT, PUBLIC))
        return limits

    def test_trusted(self) -> None:
        """
        A balancer in a named network, in any spelling of its address, may
        send a header.
        """
        for balancer in (BALANCER, IPv6Address("TCP", "::ffff:10.0.0.2", 51000)):
            limits = self.connect(["10.0.0.0/24", "2001:db8::/32"], balancer)
            self.assertEqual(len(self.inner.built), 1)
            self.assertFalse(self.transport.disconnecting)
            self.assertEqual(dict(limits.closed), {})

    def test_untrusted(self) -> None:
        """
        A connection from anywhere else is closed unread, and counted.
        """
        limits = self.connect(["192.0.2.0/24"], BALANCER)
        self.assertEqual(self.inner.built, [])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(dict(limits.closed), {"proxy-source": 1})

    def test_anyone(self) -> None:
        """
        Without named balancers, anyone may send a header.
        """
        self.connect([], BALANCER)
        self.assertEqual(len(self.inner.built), 1)


class ListenerWarningTests(SynchronousTestCase):
    """
    A proxy listener that anyone may reach is worth a warning.
    """

    def warnings(self, **settings: Any) -> List[str]:
        events = LogRecorder(self)
        FakeRelay(**settings).start(self)
        return [
            formatEvent(event)
            for event in events.matching(lambda event: event["log_level"] == LogLevel.warn)
            if "PROXY" in event["log_format"]
        ]

    def test_public(self) -> None:
        """
        A proxy listener on a public address without proxy-from is warned
        about, saying what to set.
        """
        [warning] = self.warnings(listen=["tcp:443:interface=192.0.2.1:proxy=yes"])
        self.assertIn("tcp listener on 192.0.2.1:443 takes PROXY headers from anyone", warning)
        self.assertIn("set proxy-from", warning)

    def test_quiet(self) -> None:
        """
        No warning with proxy-from, or on loopback.
        """
        self.assertEqual(
            self.warnings(
                listen=["tcp:443:interface=192.0.2.1:proxy=yes"], proxy_from=["10.0.0.0/24"]
            ),
            [],
        )
        self.assertEqual(self.warnings(listen=["tcp:443:interface=127.0.0.1:proxy=yes"]), [])
