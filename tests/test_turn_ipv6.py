"""
IPv6 relays and dual allocations (RFC 8656 sections 7.2, 8, 10 and 12,
absorbing RFC 6156), on a fake reactor.  Item numbers refer to
shared/spec/turn-checklist.md.
"""

from __future__ import annotations

import socket

from tests._assertions import TURNTestCase
from tests._relays import PEER_6, PEER_A, RELAY_IP, RELAY_IP6, FakeRelay
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.channeldata import encodeChannelData
from turnrelay.stun.message import Method, decodeMessage
from turnrelay.testing import FakeUDPPort


class IPv6RelayTests(TURNTestCase):
    """
    Allocations with an IPv6 relayed address.
    """

    def setUp(self) -> None:
        self.relay = FakeRelay(relay_ip6=RELAY_IP6)
        self.client = self.relay.client()

    def test_requestedIPv6(self) -> None:
        """
        REQUESTED-ADDRESS-FAMILY IPv6 gets an IPv6 relayed address (item 52).
        """
        response = self.assertSuccess(self.client.allocate((A.REQUESTED_ADDRESS_FAMILY, 2)))
        [relayed] = response.getAll(A.XOR_RELAYED_ADDRESS)
        self.assertEqual(relayed.host, RELAY_IP6)
        self.assertEqual(self.relay.relayPort(self.client).host, RELAY_IP6)

    def test_defaultIsIPv4(self) -> None:
        """
        Without REQUESTED-ADDRESS-FAMILY the relayed address is IPv4 (item 52).
        """
        [relayed] = self.client.allocate().getAll(A.XOR_RELAYED_ADDRESS)
        self.assertEqual(relayed.family, FAMILY_IPV4)

    def test_ipv6Only(self) -> None:
        """
        A relay with only IPv6 addresses answers a plain Allocate with 440
        (item 52).
        """
        relay = FakeRelay(relay_ip=None, listen=["udp:3478:interface=0.0.0.0"], relay_ip6=RELAY_IP6)
        self.assertErrorCode(relay.client().allocate(), 440)
        response = relay.client().allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertSuccess(response)

    def test_peerFamily(self) -> None:
        """
        On an IPv6 allocation, IPv4 peers get 443 and IPv6 ones are relayed to
        from the IPv6 relay socket (items 97, 70).
        """
        self.client.allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6))
        permit = Method.CREATE_PERMISSION
        self.assertErrorCode(self.client.request(permit, [(A.XOR_PEER_ADDRESS, PEER_A)]), 443)
        self.assertSuccess(self.client.request(permit, [(A.XOR_PEER_ADDRESS, PEER_6)]))
        self.client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER_6), (A.DATA, b"v6"))
        port = self.relay.relayPort(self.client)
        self.assertEqual(port.written, [(b"v6", PEER_6)])

    def test_deniedIPv6Peers(self) -> None:
        """
        IPv6 loopback, link-local and mapped loopback peers get 403.
        """
        self.client.allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6))
        for host in ("::1", "fe80::1", "::ffff:127.0.0.1", "fd00::1", "2001:db8::1"):
            response = self.client.request(
                Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, TransportAddress(host, 1))]
            )
            self.assertErrorCode(response, 403)

    def test_dontFragmentIPv6(self) -> None:
        """
        DONT-FRAGMENT on an IPv6 relay sets IPV6_DONTFRAG (item 49).
        """
        self.assertSuccess(
            self.client.allocate((A.REQUESTED_ADDRESS_FAMILY, 2), (A.DONT_FRAGMENT, True))
        )
        port = self.relay.relayPort(self.client)
        option = (socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG)
        self.assertEqual(port.socket.options.get(option), 1)


class DualAllocationTests(TURNTestCase):
    """
    ADDITIONAL-ADDRESS-FAMILY: IPv4 and IPv6 relayed addresses at once (item 54).
    """

    def setUp(self) -> None:
        self.relay = FakeRelay(relay_ip6=RELAY_IP6)
        self.client = self.relay.client()
        self.response = self.client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.allocation = self.client.link.allocation

    def ports(self) -> dict[int, FakeUDPPort]:
        return {family: relay.port for family, relay in self.allocation.relays.items()}

    def test_twoRelayedAddresses(self) -> None:
        """
        Both families available: two XOR-RELAYED-ADDRESS, IPv4 first, no
        ADDRESS-ERROR-CODE.
        """
        self.assertSuccess(self.response)
        relayed = self.response.getAll(A.XOR_RELAYED_ADDRESS)
        self.assertEqual([r.host for r in relayed], [RELAY_IP, RELAY_IP6])
        self.assertNotIn(A.ADDRESS_ERROR_CODE, self.response)
        self.assertEqual(len(self.relay.reactor.udpPorts), 2)

    def test_onlyIPv6Offered(self) -> None:
        """
        Only IPv6 available: one relayed address and ADDRESS-ERROR-CODE 440 for
        IPv4.
        """
        relay = FakeRelay(relay_ip=None, listen=["udp:3478:interface=0.0.0.0"], relay_ip6=RELAY_IP6)
        response = relay.client().allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertSuccess(response)
        [relayed] = response.getAll(A.XOR_RELAYED_ADDRESS)
        self.assertEqual(relayed.family, FAMILY_IPV6)
        error = response.get(A.ADDRESS_ERROR_CODE)
        self.assertEqual((error.family, error.code), (FAMILY_IPV4, 440))

    def test_neitherOffered(self) -> None:
        """
        No family available: 508 (item 54).
        """
        relay = FakeRelay(relay_ip=None, listen=["udp:3478:interface=0.0.0.0"])
        response = relay.client().allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertErrorCode(response, 508)

    def test_bothFamiliesRelay(self) -> None:
        """
        Permissions and channels work per family: each peer is reached from the
        relay socket of its own family, and answers come back (item 98).
        """
        ports = self.ports()
        for number, peer in ((0x4000, PEER_A), (0x4001, PEER_6)):
            response = self.client.request(
                Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, peer)]
            )
            self.assertSuccess(response)
            self.relay.server.channelDataReceived(
                encodeChannelData(number, b"hello"), self.client.link
            )
        self.assertEqual(ports[FAMILY_IPV4].written, [(b"hello", PEER_A)])
        self.assertEqual(ports[FAMILY_IPV6].written, [(b"hello", PEER_6)])
        ports[FAMILY_IPV6].protocol.datagramReceived(b"back", (PEER_6.host, PEER_6.port))
        self.assertEqual(self.client.link.sent, [encodeChannelData(0x4001, b"back")])

    def test_sendIndicationPerFamily(self) -> None:
        """
        Send indications go out of the socket of the peer's family.
        """
        ports = self.ports()
        self.client.request(
            Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A), (A.XOR_PEER_ADDRESS, PEER_6)]
        )
        for peer in (PEER_A, PEER_6):
            self.client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, peer), (A.DATA, b"x"))
        self.assertEqual(ports[FAMILY_IPV4].written, [(b"x", PEER_A)])
        self.assertEqual(ports[FAMILY_IPV6].written, [(b"x", PEER_6)])
        ports[FAMILY_IPV6].protocol.datagramReceived(b"y", (PEER_6.host, PEER_6.port))
        data = self.client.link.popSent()
        assert data is not None
        self.assertEqual(decodeMessage(data).get(A.XOR_PEER_ADDRESS), PEER_6)

    def test_deleteOneFamily(self) -> None:
        """
        Refresh with LIFETIME 0 and REQUESTED-ADDRESS-FAMILY deletes that family
        only; the other keeps relaying (item 64).
        """
        ports = self.ports()
        self.client.request(
            Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A), (A.XOR_PEER_ADDRESS, PEER_6)]
        )
        response = self.client.request(
            Method.REFRESH, [(A.LIFETIME, 0), (A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)]
        )
        self.assertSuccess(response)
        self.assertFalse(ports[FAMILY_IPV6].listening)
        self.assertTrue(ports[FAMILY_IPV4].listening)
        self.assertEqual(set(self.allocation.permissions), {PEER_A.host})
        self.assertEqual(len(self.relay.server.registry), 1)
        response = self.client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_6)])
        self.assertErrorCode(response, 443)

    def test_deleteAll(self) -> None:
        """
        Refresh with LIFETIME 0 and no family deletes the whole allocation and
        closes both sockets.
        """
        ports = self.ports()
        self.assertSuccess(self.client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        self.assertFalse(any(port.listening for port in ports.values()))
        self.assertEqual(len(self.relay.server.registry), 0)
        self.assertEqual(self.relay.reactor.getDelayedCalls(), [])
