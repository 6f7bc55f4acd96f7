"""
Permissions, channels and the data path (RFC 8656 sections 9-12), on a fake
reactor.  Item numbers refer to shared/spec/turn-checklist.md.
"""

from __future__ import annotations

from typing import Optional

from tests._assertions import TURNTestCase
from tests._relays import DENIED_PEER, PEER_A, PEER_B, RELAY_IP, FakeRelay
from tests._session import REST_SECRETS, TURNClient
from turnrelay.auth.credentials import mintRESTCredential
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import CHANNEL_NUMBER_MAX, encodeChannelData
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.testing import FakeUDPPort
from turnrelay.turn.limits import RelayLimits


class RelayTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.relay = FakeRelay()
        self.client = self.relay.client()
        self.assertSuccess(self.client.allocate())
        self.port = self.relay.relayPort(self.client)
        self.allocation = self.client.link.allocation

    def permit(self, *peers: TransportAddress, client: Optional[TURNClient] = None) -> STUNMessage:
        client = client or self.client
        return client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, p) for p in peers])

    def bind(self, number: int, peer: TransportAddress) -> STUNMessage:
        return self.client.request(
            Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, peer)]
        )

    def sendIndication(
        self, peer: TransportAddress, data: bytes, *extra: tuple[int, object]
    ) -> None:
        self.client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, peer), (A.DATA, data), *extra)

    def fromPeer(self, peer: TransportAddress, data: bytes) -> None:
        self.port.protocol.datagramReceived(data, (peer.host, peer.port))

    def toPeers(self) -> list[tuple[bytes, tuple[str, int]]]:
        written, self.port.written[:] = list(self.port.written), []
        return written


class CreatePermissionTests(RelayTestCase):
    """
    CreatePermission (RFC 8656 section 10, items 67-70).
    """

    def test_noPeer(self) -> None:
        """
        CreatePermission without XOR-PEER-ADDRESS gets 400.
        """
        self.assertErrorCode(self.permit(), 400)

    def test_familyMismatch(self) -> None:
        """
        An IPv6 peer on an IPv4 allocation gets 443.
        """
        self.assertErrorCode(self.permit(TransportAddress("::1", 0)), 443)

    def test_policyDenied(self) -> None:
        """
        Loopback and other denied peers get 403, in every spelling.
        """
        self.assertErrorCode(self.permit(TransportAddress("127.0.0.1", 1)), 403)
        self.assertErrorCode(self.permit(DENIED_PEER), 403)
        self.assertErrorCode(self.permit(TransportAddress("0.0.0.0", 1)), 403)
        self.assertEqual(self.allocation.permissions, {})

    def test_success(self) -> None:
        """
        An allowed peer gets a permission; its port is ignored.
        """
        self.assertSuccess(self.permit(TransportAddress(PEER_A.host, 0)))
        self.assertEqual(set(self.allocation.permissions), {PEER_A.host})

    def test_several(self) -> None:
        """
        Several XOR-PEER-ADDRESSes install several permissions (item 13).
        """
        self.assertSuccess(self.permit(PEER_A, PEER_B))
        self.assertEqual(set(self.allocation.permissions), {PEER_A.host, PEER_B.host})

    def test_allOrNothing(self) -> None:
        """
        One denied address refuses the whole request; none is installed (item 69).
        """
        self.assertErrorCode(self.permit(PEER_A, DENIED_PEER), 403)
        self.assertEqual(self.allocation.permissions, {})

    def test_capacity(self) -> None:
        """
        Permissions beyond the per-allocation limit get 508.
        """
        self.relay = FakeRelay(max_permissions=2)
        client = self.relay.client()
        client.allocate()
        peers = [TransportAddress(f"198.51.100.{n}", 1) for n in (10, 11, 12)]
        self.assertSuccess(self.permit(*peers[:2], client=client))
        self.assertErrorCode(self.permit(peers[2], client=client), 508)
        self.assertSuccess(self.permit(peers[0], client=client))

    def test_lifetime(self) -> None:
        """
        A permission lasts exactly 300 s; refreshing resets it (item 67).
        """
        self.permit(PEER_A)
        self.relay.reactor.advance(299)
        self.permit(PEER_A)
        self.relay.reactor.advance(299)
        self.assertIn(PEER_A.host, self.allocation.permissions)
        self.relay.reactor.advance(1)
        self.assertNotIn(PEER_A.host, self.allocation.permissions)

    def test_expiredPermissionDropsInbound(self) -> None:
        """
        After 300 s of silence, inbound data from the peer is dropped (item 70).
        """
        self.permit(PEER_A)
        self.relay.reactor.advance(300)
        self.fromPeer(PEER_A, b"late")
        self.assertEqual(self.client.link.sent, [])


class SendAndDataTests(RelayTestCase):
    """
    Send and Data indications (RFC 8656 section 11, items 71-74).
    """

    def test_noPermission(self) -> None:
        """
        A Send to a peer without a permission sends nothing.
        """
        self.sendIndication(PEER_A, b"hello")
        self.assertEqual(self.toPeers(), [])

    def test_relayed(self) -> None:
        """
        After CreatePermission, a Send reaches the peer from the relayed address.
        """
        self.permit(PEER_A)
        self.sendIndication(PEER_A, b"hello")
        self.assertEqual(self.toPeers(), [(b"hello", PEER_A)])
        self.assertEqual((self.allocation.packetsToPeer, self.allocation.bytesToPeer), (1, 5))

    def test_emptyData(self) -> None:
        """
        A zero-length DATA is still sent.
        """
        self.permit(PEER_A)
        self.sendIndication(PEER_A, b"")
        self.assertEqual(self.toPeers(), [(b"", PEER_A)])

    def test_malformedDiscarded(self) -> None:
        """
        Send without DATA or XOR-PEER-ADDRESS, to port 0, or with an unknown
        comprehension-required attribute is discarded without an answer.
        """
        self.permit(PEER_A)
        self.client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER_A))
        self.client.indication(Method.SEND, (A.DATA, b"x"))
        self.sendIndication(TransportAddress(PEER_A.host, 0), b"x")
        self.sendIndication(PEER_A, b"x", (0x7FF0, b""))
        self.assertEqual(self.toPeers(), [])
        self.assertEqual(self.client.link.sent, [])

    def test_noAllocation(self) -> None:
        """
        A Send on a 5-tuple without an allocation is ignored (item 72).
        """
        other = self.relay.client()
        other.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER_A), (A.DATA, b"x"))
        self.assertEqual(self.toPeers(), [])
        self.assertEqual(other.link.sent, [])

    def test_sendDoesNotRefreshPermission(self) -> None:
        """
        Sending does not refresh a permission (item 71).
        """
        self.permit(PEER_A)
        self.relay.reactor.advance(200)
        self.sendIndication(PEER_A, b"x")
        self.relay.reactor.advance(100)
        self.sendIndication(PEER_A, b"y")
        self.assertEqual(self.toPeers(), [(b"x", PEER_A)])

    def test_dataIndication(self) -> None:
        """
        A permitted peer's datagram reaches the client in a Data indication with
        XOR-PEER-ADDRESS and DATA (item 73).
        """
        self.permit(PEER_A)
        self.fromPeer(PEER_A, b"reply")
        data = self.client.link.popSent()
        assert data is not None
        message = decodeMessage(data)
        self.assertEqual(
            (message.method, message.messageClass), (Method.DATA, MessageClass.INDICATION)
        )
        self.assertEqual(message.get(A.XOR_PEER_ADDRESS), PEER_A)
        self.assertEqual(message.get(A.DATA), b"reply")
        self.assertEqual(self.allocation.packetsFromPeer, 1)

    def test_inboundWithoutPermission(self) -> None:
        """
        A datagram from a peer without a permission is discarded (item 68).
        """
        self.permit(PEER_A)
        self.fromPeer(PEER_B, b"who?")
        self.assertEqual(self.client.link.sent, [])
        self.assertEqual(self.allocation.dropped, 1)

    def test_ownRelayAddressOutsideRange(self) -> None:
        """
        Our relay address is a peer only on relay ports: never another service
        of this host (security notes 1.3).
        """
        self.permit(TransportAddress(RELAY_IP, 0))
        self.sendIndication(TransportAddress(RELAY_IP, 22), b"ssh?")
        self.assertEqual(self.toPeers(), [])
        self.sendIndication(TransportAddress(RELAY_IP, 50050), b"relay")
        self.assertEqual(self.toPeers(), [(b"relay", (RELAY_IP, 50050))])


class ChannelTests(RelayTestCase):
    """
    ChannelBind and ChannelData (RFC 8656 sections 12.1-12.7, items 75-85).
    """

    def test_rules(self) -> None:
        """
        Bind 0x4000 to A, then 0x4000 to B and 0x4001 to A get 400; rebinding
        0x4000 to A succeeds (item 81).
        """
        self.assertSuccess(self.bind(0x4000, PEER_A))
        self.assertErrorCode(self.bind(0x4000, PEER_B), 400)
        self.assertErrorCode(self.bind(0x4001, PEER_A), 400)
        self.assertSuccess(self.bind(0x4000, PEER_A))

    def test_numberRangeRFC8656(self) -> None:
        """
        With RFC 8656's numbering, numbers outside 0x4000-0x4FFF get 400
        (items 75, 76, 81).
        """
        self.relay.server.limits = RelayLimits(maxChannelNumber=CHANNEL_NUMBER_MAX)
        for number in (0x0000, 0x3FFF, 0x5000, 0x7FFF, 0xFFFF):
            self.assertErrorCode(self.bind(number, PEER_A), 400)
        self.assertSuccess(self.bind(0x4FFF, PEER_A))

    def test_numberRangeRFC5766(self) -> None:
        """
        By default RFC 5766's 0x4000-0x7FFF is bound, for the clients that
        still use it; 0x8000 and above are never channels.
        """
        for number in (0x0000, 0x3FFF, 0x8000, 0xFFFF):
            self.assertErrorCode(self.bind(number, PEER_A), 400)
        self.assertSuccess(self.bind(0x7FFF, PEER_A))
        self.fromPeer(PEER_A, b"up high")
        self.assertEqual(self.client.link.sent, [encodeChannelData(0x7FFF, b"up high")])
        self.relay.server.channelDataReceived(encodeChannelData(0x7FFF, b"back"), self.client.link)
        self.assertEqual(self.toPeers(), [(b"back", PEER_A)])

    def test_missingAttributes(self) -> None:
        """
        ChannelBind without CHANNEL-NUMBER or XOR-PEER-ADDRESS gets 400 (item 76).
        """
        self.assertErrorCode(
            self.client.request(Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000)]), 400
        )
        self.assertErrorCode(
            self.client.request(Method.CHANNEL_BIND, [(A.XOR_PEER_ADDRESS, PEER_A)]), 400
        )

    def test_familyAndPolicy(self) -> None:
        """
        An IPv6 peer gets 443; a denied peer or port 0 gets 403 (item 77).
        """
        self.assertErrorCode(self.bind(0x4000, TransportAddress("2001:db8::1", 1)), 443)
        self.assertErrorCode(self.bind(0x4000, DENIED_PEER), 403)
        self.assertErrorCode(self.bind(0x4000, TransportAddress(PEER_A.host, 0)), 403)
        self.assertErrorCode(self.bind(0x4000, TransportAddress(RELAY_IP, 3478)), 403)
        self.assertSuccess(self.bind(0x4000, TransportAddress(RELAY_IP, 50001)))

    def test_capacity(self) -> None:
        """
        Channels beyond the per-allocation limit get 508 (item 77).
        """
        self.relay = FakeRelay(max_channels=1)
        self.client = self.relay.client()
        self.client.allocate()
        self.assertSuccess(self.bind(0x4000, PEER_A))
        self.assertErrorCode(self.bind(0x4001, PEER_B), 508)
        self.assertSuccess(self.bind(0x4000, PEER_A))

    def test_bindInstallsPermission(self) -> None:
        """
        A channel binding installs the peer's permission (item 78).
        """
        self.bind(0x4000, PEER_A)
        self.assertIn(PEER_A.host, self.allocation.permissions)

    def test_lifetime(self) -> None:
        """
        A binding lasts 600 s unless refreshed by rebinding (items 78, 80).
        """
        self.client.request(Method.REFRESH, [(A.LIFETIME, 3600)])
        self.bind(0x4000, PEER_A)
        self.relay.reactor.advance(500)
        self.bind(0x4000, PEER_A)
        self.relay.reactor.advance(599)
        self.assertIn(0x4000, self.allocation.channels)
        self.relay.reactor.advance(1)
        self.assertNotIn(0x4000, self.allocation.channels)
        self.assertSuccess(self.bind(0x4000, PEER_B))

    def test_channelDataToPeer(self) -> None:
        """
        ChannelData on a bound channel reaches the peer; padded and zero-length
        frames too (items 83, 84).
        """
        self.bind(0x4000, PEER_A)
        for frame, payload in (
            (encodeChannelData(0x4000, b"abc"), b"abc"),
            (encodeChannelData(0x4000, b"abc", pad=True), b"abc"),
            (encodeChannelData(0x4000, b""), b""),
        ):
            self.relay.server.channelDataReceived(frame, self.client.link)
            self.assertEqual(self.toPeers(), [(payload, PEER_A)])

    def test_channelDataDropped(self) -> None:
        """
        ChannelData on an unbound channel, or shorter than its length, is
        discarded (item 84).
        """
        self.bind(0x4000, PEER_A)
        server, channel = self.relay.server, self.client.link
        server.channelDataReceived(encodeChannelData(0x4001, b"abc"), channel)
        server.channelDataReceived(encodeChannelData(0x4000, b"abc")[:-1], channel)
        self.assertEqual(self.toPeers(), [])
        self.assertEqual(self.allocation.dropped, 2)

    def test_channelDataDoesNotRefresh(self) -> None:
        """
        ChannelData refreshes neither the channel nor the permission (item 85).
        """
        self.bind(0x4000, PEER_A)
        for _ in range(3):
            self.relay.reactor.advance(99)
            self.relay.server.channelDataReceived(encodeChannelData(0x4000, b"x"), self.client.link)
        self.assertEqual(len(self.toPeers()), 3)
        self.relay.reactor.advance(3)
        self.relay.server.channelDataReceived(encodeChannelData(0x4000, b"x"), self.client.link)
        self.assertEqual(self.toPeers(), [])

    def test_peerDataOnChannel(self) -> None:
        """
        A bound peer's datagram reaches the client as ChannelData, unpadded over
        UDP (items 73, 83).
        """
        self.bind(0x4000, PEER_A)
        self.fromPeer(PEER_A, b"media")
        self.assertEqual(self.client.link.sent, [encodeChannelData(0x4000, b"media")])

    def test_peerDataPaddedOnStreams(self) -> None:
        """
        Over TCP, ChannelData to the client is padded to 4 bytes (item 83).
        """
        self.client.link.transportProtocol = "tcp"
        self.client.link.fiveTuple = self.client.link.fiveTuple._replace(transportProtocol="tcp")
        self.allocation.fiveTuple = self.client.link.fiveTuple
        self.bind(0x4000, PEER_A)
        self.fromPeer(PEER_A, b"media")
        self.assertEqual(self.client.link.sent, [encodeChannelData(0x4000, b"media", pad=True)])

    def test_otherPortOfBoundPeerGetsDataIndication(self) -> None:
        """
        A channel is bound to an IP and port: the same IP from another port
        gets a Data indication.
        """
        self.bind(0x4000, PEER_A)
        self.fromPeer(TransportAddress(PEER_A.host, PEER_A.port + 1), b"other")
        data = self.client.link.popSent()
        assert data is not None
        self.assertEqual(decodeMessage(data).method, Method.DATA)


class BandwidthTests(RelayTestCase):
    """
    The per-allocation bandwidth cap (RFC 8656 section 21.3.1).
    """

    def test_excessDropped(self) -> None:
        """
        Traffic beyond the cap is dropped and counted, and flows again as the
        budget refills.
        """
        self.relay = FakeRelay(bandwidth=1000)
        self.client = self.relay.client()
        self.client.allocate()
        self.port = self.relay.relayPort(self.client)
        allocation = self.client.link.allocation
        self.bind(0x4000, PEER_A)
        frame = encodeChannelData(0x4000, b"x" * 400)
        for _ in range(4):
            self.relay.server.channelDataReceived(frame, self.client.link)
        self.assertEqual(len(self.toPeers()), 2)
        self.assertEqual(allocation.dropped, 2)
        self.relay.reactor.advance(0.4)
        self.relay.server.channelDataReceived(frame, self.client.link)
        self.assertEqual(len(self.toPeers()), 1)


class RESTCredentialTests(TURNTestCase):
    """
    TURN REST API credentials (checklist section 21).
    """

    def setUp(self) -> None:
        self.relay = FakeRelay()
        self.relay.reactor.advance(1_800_000_000)

    def restClient(self, secret: bytes, ttl: float) -> TURNClient:
        username, password = mintRESTCredential(secret, "carol", ttl, self.relay.reactor.seconds())
        return self.relay.client(username, password)

    def test_allocate(self) -> None:
        """
        A REST credential minted from the shared secret allocates.
        """
        self.assertSuccess(self.restClient(REST_SECRETS[0].encode(), 3600).allocate())

    def test_rotation(self) -> None:
        """
        Credentials minted with any configured secret are accepted.
        """
        self.assertSuccess(self.restClient(REST_SECRETS[1].encode(), 3600).allocate())
        self.assertErrorCode(self.restClient(b"unknown secret", 3600).allocate(), 401)

    def test_expired(self) -> None:
        """
        An expired REST username is refused with 401.
        """
        client = self.restClient(REST_SECRETS[0].encode(), 60)
        self.relay.reactor.advance(61)
        self.assertErrorCode(client.allocate(), 401)

    def test_quotaPerUsername(self) -> None:
        """
        The quota counts the whole REST username (item 130).
        """
        self.relay.server.limits = RelayLimits(userQuota=1)
        client = self.restClient(REST_SECRETS[0].encode(), 3600)
        self.assertSuccess(client.allocate())
        twin = self.relay.client(client.username, client.password)
        self.assertErrorCode(twin.allocate(), 486)


class MalformedRequestTests(TURNTestCase):
    """
    Malformed requests: 400 when that answer is no larger than the request.
    """

    def setUp(self) -> None:
        self.relay = FakeRelay()
        self.client = self.relay.client()

    def test_answeredWhenNotAmplifying(self) -> None:
        """
        A request whose attribute runs past its end gets 400 (item 10).
        """
        good = STUNMessage(Method.ALLOCATE, MessageClass.REQUEST, b"m" * 12, [(A.DATA, b"x" * 40)])
        data = bytearray(good.encode())
        data[22:24] = (200).to_bytes(2, "big")
        response = self.client.send(bytes(data))
        self.assertErrorCode(response, 400)

    def test_droppedWhenAmplifying(self) -> None:
        """
        A short malformed request gets nothing: the 400 would be larger.
        """
        data = bytearray(
            STUNMessage(
                Method.ALLOCATE, MessageClass.REQUEST, b"m" * 12, [(A.LIFETIME, 1)]
            ).encode()
        )
        data[22:24] = (200).to_bytes(2, "big")
        self.assertIsNone(self.client.send(bytes(data)))

    def test_malformedIndicationDropped(self) -> None:
        """
        A malformed indication is discarded silently (item 10).
        """
        good = STUNMessage(Method.SEND, MessageClass.INDICATION, b"m" * 12, [(A.DATA, b"x" * 40)])
        data = bytearray(good.encode())
        data[22:24] = (200).to_bytes(2, "big")
        self.assertIsNone(self.client.send(bytes(data)))


class RegistryTests(TURNTestCase):
    """
    The registry across clients.
    """

    def test_twoClientsTwoAllocations(self) -> None:
        """
        Two clients get two allocations with different relay ports, and relay
        to each other through their relayed addresses.
        """
        relay = FakeRelay()
        alice, bob = relay.client("alice"), relay.client("bob")
        relayedA = alice.allocate().get(A.XOR_RELAYED_ADDRESS)
        relayedB = bob.allocate().get(A.XOR_RELAYED_ADDRESS)
        self.assertNotEqual(relayedA, relayedB)
        self.assertEqual(len(relay.server.registry), 2)
        self.assertEqual(relay.server.registry.countForUser("alice"), 1)
        self.assertSuccess(
            alice.request(
                Method.CHANNEL_BIND,
                [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, relayedB)],
            )
        )
        portA = relay.relayPort(alice)
        relay.server.channelDataReceived(encodeChannelData(0x4000, b"hi bob"), alice.link)
        self.assertEqual(portA.written, [(b"hi bob", relayedB)])
        self.assertIsInstance(portA, FakeUDPPort)


class OwnRelayAddressTests(TURNTestCase):
    """
    When the operator allows our relay address as a peer in so many words,
    peers on it are not kept to the relay port range.
    """

    def relayWith(self, relayIP: str, **policy: object) -> FakeRelay:
        from turnrelay.turn.policy import PeerPolicy
        from turnrelay.turn.relay import RelayPortPool
        from turnrelay.turn.server import TURNServer

        relay = FakeRelay()
        relay.server = TURNServer(
            clock=relay.reactor,
            authenticator=relay.server.authenticator,
            peerPolicy=PeerPolicy(**policy),  # type: ignore[arg-type]
            relayPorts=RelayPortPool(relay.reactor, relayIP, 50000, 50099),
        )
        return relay

    def bindTo(self, relay: FakeRelay, peer: TransportAddress) -> STUNMessage:
        client = relay.client()
        client.allocate()
        return client.request(
            Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, peer)]
        )

    def test_loopbackDemo(self) -> None:
        """
        With allow-loopback-peers and a loopback relay IP, loopback peers on any
        port are relayed to (the demo and the benchmarks need it).
        """
        relay = self.relayWith("127.0.0.1", allowLoopback=True)
        self.assertSuccess(self.bindTo(relay, TransportAddress("127.0.0.1", 23490)))

    def test_exactAllowEntry(self) -> None:
        """
        An allow-peer entry naming exactly the relay address lifts the port rule.
        """
        relay = self.relayWith(RELAY_IP, allow=[RELAY_IP + "/32"])
        self.assertSuccess(self.bindTo(relay, TransportAddress(RELAY_IP, 22)))

    def test_widerAllowEntry(self) -> None:
        """
        A wider allow-peer range that merely contains the relay address does not.
        """
        relay = self.relayWith(RELAY_IP, allow=["198.51.100.0/24"])
        self.assertErrorCode(self.bindTo(relay, TransportAddress(RELAY_IP, 22)), 403)


class ShortChannelDataTests(RelayTestCase):
    """
    ChannelData too short to hold its own header.
    """

    def test_dropped(self) -> None:
        """
        A 1- to 3-byte datagram that starts like ChannelData is counted as
        invalid and dropped, never an error (a spoofed source could otherwise
        flood the log).
        """
        self.bind(0x4000, PEER_A)
        for data in (b"\x40", b"\x40\x00", b"\x40\x00\x00"):
            self.relay.server.channelDataReceived(data, self.client.link)
        self.assertEqual(self.toPeers(), [])
        self.assertEqual(self.allocation.droppedInvalid, 3)
