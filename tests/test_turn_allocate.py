"""
Allocate and Refresh (RFC 8656 sections 6-8), on a fake reactor and clock.
Item numbers refer to the checklist in shared/spec/turn-checklist.md.
"""

from __future__ import annotations

import socket

from twisted.logger import capturedLogs

from tests._assertions import TURNTestCase
from tests._relays import PEER_A, RELAY_IP, FakeRelay
from tests._session import REALM
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.message import MessageClass, Method
from turnrelay.turn.relay import IP_MTU_DISCOVER, IP_PMTUDISC_DO


class AllocateTests(TURNTestCase):
    """
    Allocate requests and their checks, in the RFC's order.
    """

    def setUp(self) -> None:
        self.relay = FakeRelay()
        self.client = self.relay.client()

    def test_challenge(self) -> None:
        """
        An Allocate without integrity gets 401 with REALM and NONCE and creates
        nothing (items 27, 28).
        """
        response = self.client.challenge()
        self.assertErrorCode(response, 401)
        self.assertEqual(response.get(A.REALM), REALM)
        self.assertTrue(response.get(A.NONCE).startswith("obMatJos2"))
        self.assertIsNone(response.messageIntegrity)
        self.assertEqual(len(self.relay.server.registry), 0)
        self.assertEqual(self.relay.reactor.udpPorts, [])

    def test_success(self) -> None:
        """
        A valid Allocate gets XOR-RELAYED-ADDRESS, LIFETIME and XOR-MAPPED-ADDRESS,
        integrity-protected, on the same 5-tuple (item 59).
        """
        response = self.assertSuccess(self.client.allocate())
        relayed = response.get(A.XOR_RELAYED_ADDRESS)
        self.assertEqual(relayed.host, RELAY_IP)
        self.assertTrue(50000 <= relayed.port <= 50099)
        self.assertEqual(response.get(A.LIFETIME), 600)
        self.assertEqual(response.get(A.XOR_MAPPED_ADDRESS), self.client.link.clientAddress)
        self.assertIsNotNone(response.messageIntegrity)
        self.assertEqual(len(self.relay.server.registry), 1)
        port = self.relay.relayPort(self.client)
        self.assertEqual((port.host, port.portNumber), (RELAY_IP, relayed.port))

    def test_responseIntegrityMD5(self) -> None:
        """
        A request handled as MD5 gets a MESSAGE-INTEGRITY made with the same key
        (item 36).
        """
        self.client.allocate()
        response = self.relay.server.registry.get(self.client.link.fiveTuple)
        assert response is not None
        from turnrelay.stun.message import decodeMessage

        decoded = decodeMessage(response.allocateResponse)
        self.assertTrue(decoded.verifyMessageIntegrity(self.client.key()))
        self.assertIsNone(decoded.messageIntegritySHA256)

    def test_responseIntegritySHA256(self) -> None:
        """
        A request authenticated with MESSAGE-INTEGRITY-SHA256 gets a response
        carrying MESSAGE-INTEGRITY-SHA256 (item 36).
        """
        client = self.relay.client(sha256=True)
        response = self.assertSuccess(client.allocate())
        self.assertIsNotNone(response.messageIntegritySHA256)
        from turnrelay.stun.message import decodeMessage

        allocation = self.relay.server.registry.get(client.link.fiveTuple)
        assert allocation is not None
        decoded = decodeMessage(allocation.allocateResponse)
        self.assertTrue(decoded.verifyMessageIntegritySHA256(client.key()))

    def test_errorIntegrity(self) -> None:
        """
        An error to an authenticated request carries valid integrity (item 36).
        """
        self.client.allocate()
        response = self.assertErrorCode(self.client.allocate(), 437)
        self.assertIsNotNone(response.messageIntegrity)

    def test_wrongPassword(self) -> None:
        """
        A wrong password gets 401 and no allocation (item 34).
        """
        client = self.relay.client(password="wrong")
        self.assertErrorCode(client.allocate(), 401)
        self.assertEqual(len(self.relay.server.registry), 0)

    def test_unknownUser(self) -> None:
        """
        An unknown user gets 401 (item 33).
        """
        self.assertErrorCode(self.relay.client("mallory", "x").allocate(), 401)

    def test_lifetimeDefault(self) -> None:
        """
        Without LIFETIME, and with one below the default, the lifetime is 600 s (item 58).
        """
        self.assertEqual(self.client.allocate().get(A.LIFETIME), 600)
        other = self.relay.client()
        self.assertEqual(other.allocate((A.LIFETIME, 30)).get(A.LIFETIME), 600)

    def test_lifetimeCapped(self) -> None:
        """
        A LIFETIME above the maximum is capped at the maximum (item 58).
        """
        self.assertEqual(self.client.allocate((A.LIFETIME, 100000)).get(A.LIFETIME), 3600)
        other = self.relay.client()
        self.assertEqual(other.allocate((A.LIFETIME, 1200)).get(A.LIFETIME), 1200)

    def test_inUse(self) -> None:
        """
        A second Allocate with another transaction ID on an in-use 5-tuple gets 437
        (item 47).
        """
        self.client.allocate()
        self.assertErrorCode(self.client.allocate(), 437)
        self.assertEqual(len(self.relay.server.registry), 1)

    def test_retransmission(self) -> None:
        """
        A retransmitted Allocate (same 5-tuple and transaction ID) gets the same
        success response, not a second allocation or 437 (items 41-43).
        """
        self.client.allocate(tid=b"retransmit!!")
        first = self.client.lastRequest
        allocation = self.relay.server.registry.get(self.client.link.fiveTuple)
        assert allocation is not None
        self.relay.server.stunReceived(first, self.client.link)
        self.assertEqual(self.client.link.popSent(), allocation.allocateResponse)
        self.assertEqual(len(self.relay.server.registry), 1)
        self.assertEqual(len(self.relay.reactor.udpPorts), 1)

    def test_requestedTransportMissing(self) -> None:
        """
        An Allocate without REQUESTED-TRANSPORT gets 400 (item 48).
        """
        self.assertErrorCode(self.client.request(Method.ALLOCATE), 400)

    def test_unsupportedTransport(self) -> None:
        """
        REQUESTED-TRANSPORT other than UDP and TCP gets 442 (item 48).
        """
        for protocol in (1, 132, 255):
            response = self.client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, protocol)])
            self.assertErrorCode(response, 442)
        self.assertEqual(len(self.relay.server.registry), 0)

    def test_unknownAttribute(self) -> None:
        """
        An authenticated Allocate with an unknown comprehension-required
        attribute gets 420 listing it (item 12).
        """
        response = self.assertErrorCode(self.client.allocate((0x7FF0, b"??")), 420)
        self.assertEqual(response.get(A.UNKNOWN_ATTRIBUTES), (0x7FF0,))
        self.assertIsNotNone(response.messageIntegrity)

    def test_unknownAttributeUnauthenticated(self) -> None:
        """
        Without credentials, the 401 challenge comes before 420 (item 12).
        """
        from turnrelay.stun.message import STUNMessage

        data = STUNMessage(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            b"x" * 12,
            [(A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP), (0x7FF0, b"")],
        )
        self.assertErrorCode(self.client.send(data.encode()), 401)

    def test_dontFragment(self) -> None:
        """
        DONT-FRAGMENT makes the relay socket set DF where the OS allows it (item 49).
        """
        self.assertSuccess(self.client.allocate((A.DONT_FRAGMENT, True)))
        port = self.relay.relayPort(self.client)
        assert IP_MTU_DISCOVER is not None
        self.assertEqual(
            port.socket.options.get((socket.IPPROTO_IP, IP_MTU_DISCOVER)), IP_PMTUDISC_DO
        )

    def test_dontFragmentUnsupported(self) -> None:
        """
        DONT-FRAGMENT where DF cannot be set gets 420 listing 0x001A (item 49).
        """
        pool = self.relay.server.relayPorts
        assert pool is not None
        self.patch(type(pool), "dontFragmentSupported", property(lambda self: False))
        response = self.assertErrorCode(self.client.allocate((A.DONT_FRAGMENT, True)), 420)
        self.assertEqual(response.get(A.UNKNOWN_ATTRIBUTES), (A.DONT_FRAGMENT,))

    def test_reservationTokenWithEvenPort(self) -> None:
        """
        RESERVATION-TOKEN with EVEN-PORT, REQUESTED- or ADDITIONAL-ADDRESS-FAMILY
        gets 400 (item 50).
        """
        token = (A.RESERVATION_TOKEN, b"12345678")
        for other in (
            (A.EVEN_PORT, False),
            (A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4),
            (A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6),
        ):
            self.assertErrorCode(self.client.allocate(token, other), 400)

    def test_unknownReservationToken(self) -> None:
        """
        An unknown RESERVATION-TOKEN gets 508 (item 50).
        """
        self.assertErrorCode(self.client.allocate((A.RESERVATION_TOKEN, b"unknown!")), 508)

    def test_bothFamilies(self) -> None:
        """
        REQUESTED-ADDRESS-FAMILY with ADDITIONAL-ADDRESS-FAMILY gets 400 (item 51).
        """
        response = self.client.allocate(
            (A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4), (A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)
        )
        self.assertErrorCode(response, 400)

    def test_requestedFamilyIPv4(self) -> None:
        """
        REQUESTED-ADDRESS-FAMILY IPv4 is served (item 52).
        """
        response = self.client.allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4))
        self.assertEqual(self.assertSuccess(response).get(A.XOR_RELAYED_ADDRESS).family, 1)

    def test_requestedFamilyUnsupported(self) -> None:
        """
        REQUESTED-ADDRESS-FAMILY for a family not offered gets 440 (item 52).
        """
        for family in (FAMILY_IPV6, 3):
            self.assertErrorCode(self.client.allocate((A.REQUESTED_ADDRESS_FAMILY, family)), 440)

    def test_additionalFamilyIPv4(self) -> None:
        """
        ADDITIONAL-ADDRESS-FAMILY IPv4 gets 400: only IPv6 is meaningful (item 54).
        """
        self.assertErrorCode(self.client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV4)), 400)

    def test_additionalFamilyNotOffered(self) -> None:
        """
        A dual allocation where only IPv4 is offered succeeds with one relayed
        address and ADDRESS-ERROR-CODE 440 for IPv6 (item 54).
        """
        response = self.client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertSuccess(response)
        self.assertEqual(len(response.getAll(A.XOR_RELAYED_ADDRESS)), 1)
        error = response.get(A.ADDRESS_ERROR_CODE)
        self.assertEqual((error.family, error.code), (FAMILY_IPV6, 440))

    def test_evenPortWithAdditionalFamily(self) -> None:
        """
        EVEN-PORT with R set and ADDITIONAL-ADDRESS-FAMILY gets 400 (item 53).
        """
        response = self.client.allocate((A.EVEN_PORT, True), (A.ADDITIONAL_ADDRESS_FAMILY, 2))
        self.assertErrorCode(response, 400)

    def test_evenPort(self) -> None:
        """
        EVEN-PORT without R gets an even relay port (item 53).
        """
        for _ in range(5):
            response = self.relay.client().allocate((A.EVEN_PORT, False))
            self.assertEqual(response.get(A.XOR_RELAYED_ADDRESS).port % 2, 0)
            self.assertNotIn(A.RESERVATION_TOKEN, response)

    def test_evenPortReservation(self) -> None:
        """
        EVEN-PORT with R reserves the next port; an Allocate from another
        5-tuple with the token gets it (items 53, 57).
        """
        response = self.client.allocate((A.EVEN_PORT, True))
        port = response.get(A.XOR_RELAYED_ADDRESS).port
        self.assertEqual(port % 2, 0)
        token = response.get(A.RESERVATION_TOKEN)
        self.assertEqual(len(token), 8)
        self.relay.reactor.udpPort(port + 1)  # held open meanwhile
        other = self.relay.client("bob")
        second = self.assertSuccess(other.allocate((A.RESERVATION_TOKEN, token)))
        self.assertEqual(second.get(A.XOR_RELAYED_ADDRESS).port, port + 1)
        third = self.relay.client()
        self.assertErrorCode(third.allocate((A.RESERVATION_TOKEN, token)), 508)

    def test_reservationExpires(self) -> None:
        """
        An unused reservation is held 30 s, then released (item 53).
        """
        response = self.client.allocate((A.EVEN_PORT, True))
        port = response.get(A.XOR_RELAYED_ADDRESS).port
        token = response.get(A.RESERVATION_TOKEN)
        reserved = self.relay.reactor.udpPort(port + 1)
        self.relay.reactor.advance(29)
        self.assertTrue(reserved.listening)
        self.relay.reactor.advance(1)
        self.assertFalse(reserved.listening)
        self.assertErrorCode(self.relay.client().allocate((A.RESERVATION_TOKEN, token)), 508)

    def test_userQuota(self) -> None:
        """
        Allocations beyond the per-username quota get 486 (item 55).
        """
        self.relay = FakeRelay(user_quota=2)
        for _ in range(2):
            self.assertSuccess(self.relay.client("alice").allocate())
        self.assertErrorCode(self.relay.client("alice").allocate(), 486)
        self.assertSuccess(self.relay.client("bob").allocate())

    def test_totalQuota(self) -> None:
        """
        Allocations beyond the total quota get 486.
        """
        self.relay = FakeRelay(total_quota=2)
        self.assertSuccess(self.relay.client("alice").allocate())
        self.assertSuccess(self.relay.client("bob").allocate())
        self.assertErrorCode(self.relay.client("alice").allocate(), 486)

    def test_noRelayPort(self) -> None:
        """
        When no relay port is free, Allocate gets 508.
        """
        self.relay = FakeRelay(min_port=50000, max_port=50001)
        self.assertSuccess(self.relay.client().allocate())
        self.assertSuccess(self.relay.client().allocate())
        self.assertErrorCode(self.relay.client().allocate(), 508)

    def test_busyPortsSkipped(self) -> None:
        """
        Ports another program holds are skipped.
        """
        self.relay = FakeRelay(min_port=50000, max_port=50003)
        self.relay.reactor.busyUDPPorts.update({50000, 50001, 50003})
        response = self.assertSuccess(self.relay.client().allocate())
        self.assertEqual(response.get(A.XOR_RELAYED_ADDRESS).port, 50002)

    def test_externalIP(self) -> None:
        """
        Behind NAT, XOR-RELAYED-ADDRESS advertises the external IP with the
        relay port.
        """
        self.relay = FakeRelay(external_ip="198.51.100.99")
        client = self.relay.client()
        relayed = self.assertSuccess(client.allocate()).get(A.XOR_RELAYED_ADDRESS)
        port = self.relay.relayPort(client)
        self.assertEqual(relayed, TransportAddress("198.51.100.99", port.portNumber))
        self.assertEqual(port.host, RELAY_IP)

    def test_softwareInResponses(self) -> None:
        """
        A configured SOFTWARE is added to Allocate responses (item 45).
        """
        self.relay = FakeRelay(software="turnrelay-test")
        response = self.relay.client().allocate()
        self.assertEqual(response.get(A.SOFTWARE), "turnrelay-test")

    def test_randomPorts(self) -> None:
        """
        Relay ports are picked at random from the range (item 57).
        """
        ports = {self.relay.client().allocate().get(A.XOR_RELAYED_ADDRESS).port for _ in range(8)}
        self.assertGreater(len(ports), 1)
        self.assertNotEqual(sorted(ports), list(range(50000, 50000 + len(ports))))


class LifetimeTests(TURNTestCase):
    """
    Expiry, Refresh and deletion (RFC 8656 sections 6 and 8).
    """

    def setUp(self) -> None:
        self.relay = FakeRelay()
        self.client = self.relay.client()
        self.client.allocate()
        self.port = self.relay.relayPort(self.client)

    def test_expiry(self) -> None:
        """
        An allocation expires after its lifetime and its relay socket is closed
        (item 66).
        """
        self.relay.reactor.advance(599)
        self.assertEqual(len(self.relay.server.registry), 1)
        self.relay.reactor.advance(1)
        self.assertEqual(len(self.relay.server.registry), 0)
        self.assertFalse(self.port.listening)
        self.assertIsNone(self.client.link.allocation)
        self.assertEqual(self.relay.server.relayPorts.inUse, 0)  # type: ignore[union-attr]

    def test_expiryCancelsTimers(self) -> None:
        """
        Expiry leaves no timer behind (permissions and channels go too).
        """
        self.client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        self.client.request(
            Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, PEER_A)]
        )
        self.relay.reactor.advance(600)
        self.assertEqual(self.relay.reactor.getDelayedCalls(), [])

    def test_refresh(self) -> None:
        """
        Refresh sets a new time to expiry and answers with it (item 63).
        """
        self.relay.reactor.advance(500)
        response = self.assertSuccess(self.client.request(Method.REFRESH, [(A.LIFETIME, 900)]))
        self.assertEqual(response.get(A.LIFETIME), 900)
        self.relay.reactor.advance(899)
        self.assertEqual(len(self.relay.server.registry), 1)
        self.relay.reactor.advance(1)
        self.assertEqual(len(self.relay.server.registry), 0)

    def test_refreshDefaultsAndCaps(self) -> None:
        """
        Refresh without LIFETIME gets the default; above the maximum, the maximum
        (item 63).
        """
        self.assertEqual(self.client.request(Method.REFRESH).get(A.LIFETIME), 600)
        response = self.client.request(Method.REFRESH, [(A.LIFETIME, 10**6)])
        self.assertEqual(response.get(A.LIFETIME), 3600)

    def test_delete(self) -> None:
        """
        Refresh with LIFETIME 0 deletes the allocation; then CreatePermission and
        a retransmitted delete get 437 (item 65).
        """
        response = self.assertSuccess(self.client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        self.assertEqual(response.get(A.LIFETIME), 0)
        self.assertFalse(self.port.listening)
        self.assertEqual(len(self.relay.server.registry), 0)
        deleteAgain = self.client.request(Method.REFRESH, [(A.LIFETIME, 0)])
        self.assertErrorCode(deleteAgain, 437)
        response = self.client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        self.assertErrorCode(response, 437)

    def test_noAllocation(self) -> None:
        """
        Refresh, CreatePermission and ChannelBind without an allocation get 437
        (item 62).
        """
        other = self.relay.client()
        self.assertErrorCode(other.request(Method.REFRESH), 437)
        self.assertErrorCode(
            other.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)]), 437
        )

    def test_wrongCredentials(self) -> None:
        """
        A valid Refresh from another user on the allocation's 5-tuple gets 441
        (item 39).
        """
        bob = self.relay.client("bob")
        bob.link = self.client.link
        self.assertErrorCode(bob.request(Method.REFRESH), 441)
        self.assertErrorCode(
            bob.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)]), 441
        )
        self.assertEqual(len(self.relay.server.registry), 1)

    def test_refreshFamilyMismatch(self) -> None:
        """
        Refresh with REQUESTED-ADDRESS-FAMILY other than the allocation's gets 443
        (item 64).
        """
        response = self.client.request(Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)])
        self.assertErrorCode(response, 443)
        response = self.client.request(Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4)])
        self.assertSuccess(response)

    def test_staleNonce(self) -> None:
        """
        After the nonce lifetime a request gets 438 with a fresh nonce, and the
        retry succeeds (item 35).
        """
        self.client.request(Method.REFRESH, [(A.LIFETIME, 3600)])
        self.relay.reactor.advance(601)
        response = self.client.send(self.client.build(Method.REFRESH))
        self.assertErrorCode(response, 438)
        assert response is not None
        self.assertNotEqual(response.get(A.NONCE), self.client.nonce)
        self.client.nonce = response.get(A.NONCE)
        self.assertSuccess(self.client.send(self.client.build(Method.REFRESH)))

    def test_lifeLogged(self) -> None:
        """
        An allocation's end is logged with its usage and without secrets.
        """
        with capturedLogs() as events:
            self.client.request(Method.REFRESH, [(A.LIFETIME, 0)])
        [ended] = [e for e in events if e.get("reason") == "deleted"]
        self.assertEqual(ended["username"], "alice")
        for field in ("packetsToPeer", "bytesToPeer", "packetsFromPeer", "bytesFromPeer"):
            self.assertEqual(ended[field], 0)
        text = repr(events)
        self.assertNotIn("alice-password", text)
        self.assertNotIn(self.client.key().hex(), text)


class StopTests(TURNTestCase):
    """
    Stopping the controller ends everything it holds.
    """

    def test_stop(self) -> None:
        """
        stop() ends every allocation and EVEN-PORT reservation, closes their
        relay sockets and leaves no timer.
        """
        relay = FakeRelay()
        client = relay.client()
        client.allocate((A.EVEN_PORT, True))
        relay.client().allocate()
        d = relay.server.stop()
        self.assertEqual(len(relay.server.registry), 0)
        self.assertFalse(any(port.listening for port in relay.reactor.udpPorts))
        self.assertEqual(relay.server.relayPorts.inUse, 0)  # type: ignore[union-attr]
        self.assertEqual(relay.reactor.getDelayedCalls(), [])
        self.successResultOf(d)
