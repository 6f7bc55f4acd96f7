"""
IPv6 relays through real sockets on ::1 and 127.0.0.1: allocations of the
other family than the client's, dual allocations, and the address-family
error codes as they come over the wire.

The relay runs in-process on the global reactor with UDP listeners on both
loopback addresses, relay-ip 127.0.0.1 and relay-ip6 ::1; clients and
peers are UDP sockets of the same process.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase
from tests._relays import LoopbackRelay, startRelay
from tests._sockets import datagramClient, noIPv6Loopback, roundTrip, udpTURNClient
from tests._timing import PROMPTLY, within
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.message import Method

SKIP = noIPv6Loopback()


def startDualStackRelay(testCase: TestCase) -> LoopbackRelay:
    """
    Start a relay with UDP listeners on 127.0.0.1 and ::1 that relays from
    127.0.0.1 and ::1.
    """
    return startRelay(
        testCase,
        listen=["udp:0:interface=127.0.0.1", "udp:0:interface=::1"],
        relay_ip="127.0.0.1",
        relay_ip6="::1",
    )


class IPv6RelayTests(TURNTestCase, TestCase):
    """
    IPv6 relayed addresses, alone and beside IPv4 ones.
    """

    skip = SKIP
    timeout = 20

    def setUp(self) -> None:
        self.relay = startDualStackRelay(self)

    async def test_ipv6RelayForIPv4Client(self) -> None:
        """
        An IPv4 client asking REQUESTED-ADDRESS-FAMILY IPv6 gets one IPv6
        relayed address and relays through a channel to a peer on ::1 and
        back (RFC 8656 section 7.2).
        """
        client = udpTURNClient(self, self.relay.address("udp", FAMILY_IPV4), "127.0.0.1")
        allocated = await within(
            client.allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        self.assertSuccess(allocated)
        relayed = allocated.getAll(A.XOR_RELAYED_ADDRESS)
        self.assertEqual([address.host for address in relayed], ["::1"])
        self.assertEqual(allocated.get(A.XOR_MAPPED_ADDRESS).family, FAMILY_IPV4)
        peer = datagramClient(self, "::1")
        self.assertSuccess(await within(client.channelBind(0x4000, peer.address), PROMPTLY, "CB"))
        await roundTrip(self, client, peer, relayed[0], b"over 0x4000", 0x4000)

    async def test_dualAllocation(self) -> None:
        """
        ADDITIONAL-ADDRESS-FAMILY IPv6 gets an IPv4 and an IPv6 relayed
        address; channels to a peer of each family relay both ways, and each
        peer sees the relayed address of its own family as the source (RFC
        8656 sections 7.2 and 12).
        """
        client = udpTURNClient(self, self.relay.address("udp", FAMILY_IPV6), "::1")
        allocated = await within(
            client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        self.assertSuccess(allocated)
        self.assertIsNone(allocated.get(A.ADDRESS_ERROR_CODE))
        relayed = {address.family: address for address in allocated.getAll(A.XOR_RELAYED_ADDRESS)}
        self.assertEqual(len(allocated.getAll(A.XOR_RELAYED_ADDRESS)), 2)
        self.assertEqual(relayed[FAMILY_IPV4].host, "127.0.0.1")
        self.assertEqual(relayed[FAMILY_IPV6].host, "::1")
        peer4 = datagramClient(self, "127.0.0.1")
        peer6 = datagramClient(self, "::1")
        for number, peer in ((0x4000, peer4), (0x4001, peer6)):
            bound = await within(client.channelBind(number, peer.address), PROMPTLY, "CB")
            self.assertSuccess(bound)
        await roundTrip(self, client, peer4, relayed[FAMILY_IPV4], b"over 0x4000", 0x4000)
        await roundTrip(self, client, peer6, relayed[FAMILY_IPV6], b"over 0x4001", 0x4001)
        # Once more in the other order: neither channel disturbed the other.
        await roundTrip(self, client, peer6, relayed[FAMILY_IPV6], b"over 0x4001", 0x4001)
        await roundTrip(self, client, peer4, relayed[FAMILY_IPV4], b"over 0x4000", 0x4000)

    async def test_indicationsOverIPv6Relay(self) -> None:
        """
        Without a channel, a Send indication reaches a peer on ::1 from the
        IPv6 relayed address, and the peer's answer comes back in a Data
        indication naming it in XOR-PEER-ADDRESS (RFC 8656 sections 11.2 and
        11.3).
        """
        client = udpTURNClient(self, self.relay.address("udp", FAMILY_IPV4), "127.0.0.1")
        allocated = await within(
            client.allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        relayed = self.assertSuccess(allocated).get(A.XOR_RELAYED_ADDRESS)
        peer = datagramClient(self, "::1")
        permitted = await within(client.createPermission(peer.address), PROMPTLY, "CP")
        self.assertSuccess(permitted)
        client.sendIndication(peer.address, b"sent over IPv6")
        datagram, source = await within(peer.received.get(), PROMPTLY, "the Send indication")
        self.assertEqual(
            (datagram, TransportAddress(source[0], source[1])), (b"sent over IPv6", relayed)
        )
        peer.send(b"answer of odd length", relayed)
        indication = await within(client.indications.get(), PROMPTLY, "the Data indication")
        self.assertEqual(
            (indication.method, indication.get(A.XOR_PEER_ADDRESS), indication.get(A.DATA)),
            (Method.DATA, peer.address, b"answer of odd length"),
        )

    async def test_refreshRemovesOneFamily(self) -> None:
        """
        A Refresh with LIFETIME 0 and REQUESTED-ADDRESS-FAMILY IPv6 gives up
        the IPv6 half of a dual allocation: its channel is gone (an IPv6 peer
        now gets 443), while the IPv4 half relays on (RFC 8656 section 8).
        """
        client = udpTURNClient(self, self.relay.address("udp", FAMILY_IPV4), "127.0.0.1")
        allocated = await within(
            client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        relayed = {a.family: a for a in self.assertSuccess(allocated).getAll(A.XOR_RELAYED_ADDRESS)}
        peer4 = datagramClient(self, "127.0.0.1")
        peer6 = datagramClient(self, "::1")
        for number, peer in ((0x4000, peer4), (0x4001, peer6)):
            self.assertSuccess(
                await within(client.channelBind(number, peer.address), PROMPTLY, "CB")
            )
        await roundTrip(self, client, peer6, relayed[FAMILY_IPV6], b"over 0x4001", 0x4001)

        removed = await within(
            client.refresh((A.LIFETIME, 0), (A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)),
            PROMPTLY,
            "Refresh",
        )
        self.assertEqual(self.assertSuccess(removed).get(A.LIFETIME), 0)
        (allocation,) = list(self.relay.server.registry)
        self.assertEqual(allocation.relayedAddresses, [relayed[FAMILY_IPV4]])
        await roundTrip(self, client, peer4, relayed[FAMILY_IPV4], b"over 0x4000", 0x4000)
        rebound = await within(client.channelBind(0x4001, peer6.address), PROMPTLY, "CB")
        self.assertErrorCode(rebound, 443)


class AddressFamilyErrorTests(TURNTestCase, TestCase):
    """
    The address-family errors of RFC 8656, over the wire.
    """

    skip = SKIP
    timeout = 20

    async def test_ipv6NotOfferedIs440(self) -> None:
        """
        REQUESTED-ADDRESS-FAMILY IPv6 on a relay without relay-ip6 gets 440
        Address Family not Supported (RFC 8656 section 7.2).
        """
        relay = startRelay(self)
        client = udpTURNClient(self, relay.address("udp"))
        response = await within(
            client.allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        self.assertErrorCode(response, 440)
        self.assertEqual(len(relay.server.registry), 0)

    async def test_additionalIPv6NotOffered(self) -> None:
        """
        ADDITIONAL-ADDRESS-FAMILY IPv6 on a relay without relay-ip6 gets the
        IPv4 relayed address alone, with ADDRESS-ERROR-CODE 440 for IPv6
        (RFC 8656 section 7.2).
        """
        relay = startRelay(self)
        client = udpTURNClient(self, relay.address("udp"))
        response = await within(
            client.allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        self.assertSuccess(response)
        relayed = response.getAll(A.XOR_RELAYED_ADDRESS)
        self.assertEqual([address.family for address in relayed], [FAMILY_IPV4])
        error = response.get(A.ADDRESS_ERROR_CODE)
        self.assertEqual((error.family, error.code), (FAMILY_IPV6, 440))

    async def test_peerOfOtherFamilyIs443(self) -> None:
        """
        CreatePermission and ChannelBind for an IPv6 peer on an IPv4-only
        allocation get 443 Peer Address Family Mismatch (RFC 8656 sections
        9.1 and 12.1).
        """
        relay = startDualStackRelay(self)
        client = udpTURNClient(self, relay.address("udp", FAMILY_IPV4))
        self.assertSuccess(await within(client.allocate(), PROMPTLY, "Allocate"))
        peer6 = TransportAddress("::1", 5000)
        permission = await within(client.createPermission(peer6), PROMPTLY, "CreatePermission")
        self.assertErrorCode(permission, 443)
        bound = await within(client.channelBind(0x4000, peer6), PROMPTLY, "ChannelBind")
        self.assertErrorCode(bound, 443)
        allocation = next(iter(relay.server.registry))
        self.assertEqual(dict(allocation.permissions), {})

    async def test_ipv4PeerOnIPv6AllocationIs443(self) -> None:
        """
        CreatePermission and ChannelBind for an IPv4 peer on an IPv6-only
        allocation get 443 too.
        """
        relay = startDualStackRelay(self)
        client = udpTURNClient(self, relay.address("udp", FAMILY_IPV6), "::1")
        allocated = await within(
            client.allocate((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        self.assertSuccess(allocated)
        peer4 = TransportAddress("127.0.0.1", 5000)
        permission = await within(client.createPermission(peer4), PROMPTLY, "CreatePermission")
        self.assertErrorCode(permission, 443)
        bound = await within(client.channelBind(0x4000, peer4), PROMPTLY, "ChannelBind")
        self.assertErrorCode(bound, 443)

    async def test_bothFamilyAttributesIs400(self) -> None:
        """
        An Allocate with both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY gets
        400 Bad Request (RFC 8656 section 7.2).
        """
        relay = startDualStackRelay(self)
        client = udpTURNClient(self, relay.address("udp", FAMILY_IPV4))
        response = await within(
            client.allocate(
                (A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4),
                (A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6),
            ),
            PROMPTLY,
            "Allocate",
        )
        self.assertErrorCode(response, 400)
        self.assertEqual(len(relay.server.registry), 0)
