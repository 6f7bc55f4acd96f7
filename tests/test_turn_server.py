"""
Tests for L{turnrelay.turn.server.TURNServer}, without sockets.
"""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from turnrelay.interfaces import IClientLink
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import ErrorCode
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.testing import FakeClientLink, FakeUDPReactor
from turnrelay.turn.policy import OWN_SERVICE, PeerPolicy
from turnrelay.turn.relay import RelayPortPool
from turnrelay.turn.server import TURNServer

TID = bytes(range(12))
VECTORS = os.path.join(os.path.dirname(__file__), "vectors", "rfc5769.json")


def bindingRequest(*attributes: tuple[int, object]) -> STUNMessage:
    return STUNMessage(Method.BINDING, MessageClass.REQUEST, TID, list(attributes))


class BindingTests(SynchronousTestCase):
    """
    Binding requests get the client's reflexive address (RFC 8489 section 12).
    """

    def setUp(self) -> None:
        self.server = TURNServer(Clock())
        self.link = FakeClientLink()

    def answer(self, data: bytes, link: FakeClientLink | None = None) -> STUNMessage:
        link = link or self.link
        self.server.stunReceived(data, link)
        sent = link.popSent()
        assert sent is not None, "no response"
        self.assertEqual(link.sent, [])
        return decodeMessage(sent)

    def test_fakeChannelProvidesInterface(self) -> None:
        """
        The test client link provides IClientLink.
        """
        self.assertTrue(verifyObject(IClientLink, self.link))

    def test_xorMappedAddressIPv4(self) -> None:
        """
        The success response carries XOR-MAPPED-ADDRESS with the client's address (item 21).
        """
        response = self.answer(bindingRequest().encode())
        self.assertEqual(response.method, Method.BINDING)
        self.assertEqual(response.messageClass, MessageClass.SUCCESS_RESPONSE)
        self.assertEqual(response.transactionID, TID)
        self.assertEqual(
            response.attributes, [(A.XOR_MAPPED_ADDRESS, TransportAddress("192.0.2.1", 32853))]
        )

    def test_xorMappedAddressIPv6(self) -> None:
        """
        An IPv6 client gets its IPv6 address back.
        """
        link = FakeClientLink(TransportAddress("2001:db8::1", 4444))
        response = self.answer(bindingRequest().encode(), link)
        self.assertEqual(response.get(A.XOR_MAPPED_ADDRESS), TransportAddress("2001:db8::1", 4444))

    def test_noFingerprintUnlessAsked(self) -> None:
        """
        A request without FINGERPRINT gets a response without one.
        """
        self.assertIsNone(self.answer(bindingRequest().encode()).fingerprint)

    def test_fingerprintEchoed(self) -> None:
        """
        A request with FINGERPRINT gets a response with a valid FINGERPRINT (item 19).
        """
        response = self.answer(bindingRequest().encode(fingerprint=True))
        self.assertIsNotNone(response.fingerprint)

    def test_softwareOffByDefault(self) -> None:
        """
        No SOFTWARE attribute is sent unless configured (security notes section 4).
        """
        self.assertNotIn(A.SOFTWARE, self.answer(bindingRequest().encode()))

    def test_softwareConfigured(self) -> None:
        """
        A configured SOFTWARE value is added to responses.
        """
        self.server.software = "turnrelay test"
        response = self.answer(bindingRequest().encode())
        self.assertEqual(response.get(A.SOFTWARE), "turnrelay test")

    def test_unknownComprehensionRequired(self) -> None:
        """
        A Binding request with an unknown comprehension-required attribute gets
        420 listing it (item 12).
        """
        response = self.answer(bindingRequest((0x7FF0, b"x"), (0x7FF1, b"")).encode())
        self.assertEqual(response.messageClass, MessageClass.ERROR_RESPONSE)
        self.assertEqual(response.get(A.ERROR_CODE), ErrorCode(420, "Unknown Attribute"))
        self.assertEqual(response.get(A.UNKNOWN_ATTRIBUTES), (0x7FF0, 0x7FF1))

    def test_unknownComprehensionOptionalIgnored(self) -> None:
        """
        Unknown comprehension-optional attributes are ignored (item 12).
        """
        response = self.answer(bindingRequest((0xC001, b"x")).encode())
        self.assertEqual(response.messageClass, MessageClass.SUCCESS_RESPONSE)

    def test_rfc5769SampleRequest(self) -> None:
        """
        The RFC 5769 sample request, which carries ICE's PRIORITY, gets 420
        listing 0x0024 (test-vectors.md, practical notes).
        """
        with open(VECTORS) as f:
            vector = json.load(f)["vectors"][0]
        response = self.answer(bytes.fromhex(vector["message_hex"]))
        self.assertEqual(response.get(A.ERROR_CODE).code, 420)
        self.assertEqual(response.get(A.UNKNOWN_ATTRIBUTES), (A.PRIORITY,))
        self.assertIsNotNone(response.fingerprint)

    def assertSilent(self, data: bytes) -> None:
        self.server.stunReceived(data, self.link)
        self.assertEqual(self.link.sent, [])

    def test_indicationIsKeepAlive(self) -> None:
        """
        A Binding indication gets no response (item 23).
        """
        self.assertSilent(STUNMessage(Method.BINDING, MessageClass.INDICATION, TID).encode())

    def test_responsesIgnored(self) -> None:
        """
        Responses sent to the server are dropped.
        """
        for messageClass in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE):
            self.assertSilent(STUNMessage(Method.BINDING, messageClass, TID).encode())

    def test_unknownMethodDropped(self) -> None:
        """
        A message with an unknown method is silently discarded (item 8).
        """
        self.assertSilent(STUNMessage(0x0FF, MessageClass.REQUEST, TID).encode())

    def test_disallowedClassDropped(self) -> None:
        """
        A method sent with a class it does not allow is silently discarded (item 8).
        """
        self.assertSilent(STUNMessage(Method.SEND, MessageClass.REQUEST, TID).encode())
        self.assertSilent(STUNMessage(Method.ALLOCATE, MessageClass.INDICATION, TID).encode())

    def test_malformedDropped(self) -> None:
        """
        Malformed messages are never answered (item 6).
        """
        good = bindingRequest().encode(fingerprint=True)
        for data in (b"", good[:19], good[:-1], good + b"\0\0\0\0", b"\x80" + good[1:]):
            self.assertSilent(data)
        flipped = bytearray(good)
        flipped[-1] ^= 1
        self.assertSilent(bytes(flipped))

    def test_malformedLoggedAtDebug(self) -> None:
        """
        A dropped message is logged at debug level with the client and the reason.
        """
        self.server.logLevels.setLevel("debug")
        with capturedLogs() as events:
            self.server.stunReceived(b"\x00\x01\x00\x00", self.link)
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(event["client"], self.link.clientAddress)
        self.assertIn("shorter than a STUN header", str(event["reason"]))

    def test_debugOffByDefault(self) -> None:
        """
        At the default level, dropped messages log nothing: debug events are
        filtered before they reach any observer.
        """
        with capturedLogs() as events:
            self.server.stunReceived(b"\x00\x01\x00\x00", self.link)
        self.assertEqual(list(events), [])

    def test_channelDataWithoutAllocationDropped(self) -> None:
        """
        ChannelData on a 5-tuple with no allocation is silently ignored (item 84).
        """
        self.server.channelDataReceived(b"\x40\x00\x00\x00", self.link)
        self.assertEqual(self.link.sent, [])


class PeerPolicyWiringTests(SynchronousTestCase):
    """
    The controller tells its peer policy its relay addresses, and keeps the
    own services across policy changes (configuration reloads).
    """

    def makeServer(self, policy: PeerPolicy) -> TURNServer:
        reactor = FakeUDPReactor()
        return TURNServer(
            clock=reactor,
            peerPolicy=policy,
            relayPorts=RelayPortPool(reactor, "198.51.100.1", 50000, 50099),
            relayPorts6=RelayPortPool(reactor, "2001:db8::1", 50000, 50099),
            externalIP="203.0.113.9",
        )

    def test_relayAddresses(self) -> None:
        """
        The relay and external addresses are relay addresses of the policy,
        with the relay port range.
        """
        server = self.makeServer(PeerPolicy(allow=["198.51.100.0/24"]))
        ports = range(50000, 50100)
        self.assertEqual(
            server.peerPolicy.relayAddresses,
            (("198.51.100.1", ports), ("2001:db8::1", ports), ("203.0.113.9", ports)),
        )
        reason = server.peerPolicy.peerDenialReason(TransportAddress("::ffff:198.51.100.1", 22))
        self.assertEqual(reason, "own address outside the relay port range")

    def test_reloadKeepsOwnServices(self) -> None:
        """
        A new policy put in force keeps the own services the old one knew,
        and learns the relay addresses.
        """
        server = self.makeServer(PeerPolicy())
        service = TransportAddress("127.0.0.1", 3478)
        server.peerPolicy.addOwnService(service)
        server.setPeerPolicy(PeerPolicy(allowLoopback=True))
        self.assertEqual(server.peerPolicy.ownServices, (service,))
        self.assertEqual(len(server.peerPolicy.relayAddresses), 3)
        self.assertEqual(server.peerPolicy.peerDenialReason(service), OWN_SERVICE)
