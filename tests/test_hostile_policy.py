"""
Hostile peer addresses through a real relay on loopback.

Every address the security notes deny (C{shared/spec/security-notes.md},
sections 1.1, 1.2 and 1.5), in every IPv6 spelling that embeds an IPv4 one
(mapped, translated (SIIT), compatible, NAT64 under both prefixes, 6to4,
Teredo), and the relay's own addresses and service ports in those
spellings, are asked for over CreatePermission, ChannelBind, Send and
Connect (RFC 6062, over TCP).  Zero may get through: the requests get 403,
and no Send reaches a peer.

Text spellings of one address (upper case, zeros written out, dotted or hex
tails) are the same 16 bytes on the wire; the policy's unit tests cover
those, and here every address that differs on the wire is sent.

The relay runs in-process on the global reactor with relay-ip 127.0.0.1 and
relay-ip6 ::1; clients and peers are sockets of the same process.  Each
sweep is a bounded list of peers, and every wait has a deadline.
"""

from __future__ import annotations

import itertools
import os
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Callable, Coroutine, Dict, Iterable, List, Tuple

from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase, errorCode
from tests._relays import LoopbackRelay, ServerConnections, startRelay
from tests._sockets import (
    SocketTURNSession,
    datagramClient,
    noIPv6Loopback,
    streamTURNClient,
    udpTURNClient,
)
from tests._timing import PROMPTLY, within
from turnrelay.config import ConfigError
from turnrelay.listening import ListeningService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.message import Method, STUNMessage
from turnrelay.turn.allocation import Allocation

# Send indications go out this many at a time, each batch followed by a
# request whose answer shows that the relay has read the batch, so that no
# receive buffer ever overflows.
SEND_BATCH = 32


SKIP = noIPv6Loopback()

# Security notes 1.1 and 1.5: one address of every denied IPv4 range, the
# edges of this network and loopback, and the metadata service.
DENIED_IPV4 = [
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "169.254.1.1",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",
    "192.0.0.1",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "198.18.0.1",
    "192.88.99.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
]

# Security notes 1.2: one address of every denied IPv6 range.
DENIED_IPV6 = [
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "fec0::1",
    "ff02::1",
    "100::1",
    "2001:db8::1",
    "2001::1",
    "2002::1",
]

# A public Teredo server (the example in Python's documentation) and a
# public client address, to build Teredo addresses around.
TEREDO_SERVER = int(IPv4Address("65.54.227.120"))
TEREDO_CLIENT = int(IPv4Address("8.8.4.4"))


def ipv6Spellings(address: str) -> Dict[str, str]:
    """
    Every IPv6 address that embeds the IPv4 C{address}, as distinct on the
    wire: security notes 1.2 and 1.4, and SIIT (RFC 7915).

    @return: the addresses keyed by the name of their form.
    """
    v = int(IPv4Address(address))
    spellings = {
        "mapped": IPv6Address((0xFFFF << 32) | v),
        "translated (SIIT)": IPv6Address((0xFFFF0000 << 32) | v),
        "compatible": IPv6Address(v),
        "NAT64": IPv6Address((0x0064FF9B << 96) | v),
        "NAT64 local-use": IPv6Address((0x0064FF9B0001 << 80) | v),
        "6to4": IPv6Address((0x2002 << 112) | (v << 80) | 1),
        "Teredo server": IPv6Address(
            (0x20010000 << 96) | (v << 64) | (0x8000 << 48) | (TEREDO_CLIENT ^ 0xFFFFFFFF)
        ),
        "Teredo client": IPv6Address(
            (0x20010000 << 96) | (TEREDO_SERVER << 64) | (0x8000 << 48) | (v ^ 0xFFFFFFFF)
        ),
    }
    if v <= 1:
        # ::0.0.0.0 and ::0.0.0.1 are IPv6's own :: and ::1, swept anyway.
        del spellings["compatible"]
    return {name: str(host) for name, host in spellings.items()}


def hostilePeers(port: int) -> Dict[int, List[TransportAddress]]:
    """
    Every denied address in every spelling, on C{port}.

    @return: the peers by address family.
    """
    ipv6 = list(DENIED_IPV6)
    for address in DENIED_IPV4:
        ipv6.extend(ipv6Spellings(address).values())
    return {
        FAMILY_IPV4: [TransportAddress(host, port) for host in DENIED_IPV4],
        FAMILY_IPV6: [TransportAddress(host, port) for host in ipv6],
    }


def ownPeers(services: Iterable[TransportAddress]) -> Dict[int, List[TransportAddress]]:
    """
    Every spelling of each of C{services}' addresses, on its port.

    @return: the peers by address family.
    """
    peers: Dict[int, List[TransportAddress]] = {FAMILY_IPV4: [], FAMILY_IPV6: []}
    for service in services:
        if ":" in service.host:
            for host in (service.host, IPv6Address(service.host).exploded):
                peers[FAMILY_IPV6].append(TransportAddress(host, service.port))
            continue
        peers[FAMILY_IPV4].append(service)
        for host in ipv6Spellings(service.host).values():
            peers[FAMILY_IPV6].append(TransportAddress(host, service.port))
    return peers


def connectRequest(
    session: SocketTURNSession,
) -> Callable[[TransportAddress], Coroutine[Any, Any, STUNMessage]]:
    """
    @return: a function that sends C{session}'s Connect request for a peer.
    """
    return lambda peer: session.request(Method.CONNECT, [(A.XOR_PEER_ADDRESS, peer)])


def ownServices(relay: LoopbackRelay) -> List[TransportAddress]:
    """
    @return: the address of every socket the relay listens on: TURN
        listeners and admin services.
    """
    return [
        child.address
        for child in relay.service
        if isinstance(child, ListeningService) and child.address is not None
    ]


def serverAllocation(relay: LoopbackRelay, relayed: Iterable[TransportAddress]) -> Allocation:
    """
    @return: the relay's allocation with the relayed addresses C{relayed}.
    """
    wanted = set(relayed)
    for allocation in relay.server.registry:
        if set(allocation.relayedAddresses) == wanted:
            return allocation
    raise AssertionError(f"no allocation relaying from {wanted}")


class HostileSweeps(TURNTestCase, TestCase):
    """
    Sweeps of hostile peers over each request that names a peer, against a
    relay each test starts.
    """

    skip = SKIP
    timeout = 30

    relay: LoopbackRelay

    def startRelay(self, **settings: Any) -> LoopbackRelay:
        """
        Start a relay with UDP and TCP listeners on 127.0.0.1, relay-ip
        127.0.0.1 and relay-ip6 ::1.
        """
        values: Dict[str, Any] = {
            "listen": ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
            "relay_ip": "127.0.0.1",
            "relay_ip6": "::1",
            "user_quota": 0,
        }
        values.update(settings)
        relay = startRelay(self, **values)
        ServerConnections(self, relay, "tcp")
        self.relay = relay
        return relay

    async def udpAllocation(
        self,
    ) -> Tuple[SocketTURNSession, Allocation, Dict[int, TransportAddress]]:
        """
        Allocate an IPv4 and an IPv6 UDP relay for one client.

        @return: the client, the relay's allocation, and the relayed
            addresses by family.
        """
        session = udpTURNClient(self, self.relay.address("udp", FAMILY_IPV4))
        allocated = await within(
            session.allocate((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6)), PROMPTLY, "Allocate"
        )
        relayed = self.assertSuccess(allocated).getAll(A.XOR_RELAYED_ADDRESS)
        return session, serverAllocation(self.relay, relayed), {a.family: a for a in relayed}

    async def tcpAllocation(self, family: int) -> SocketTURNSession:
        """
        Allocate a TCP relay (RFC 6062) of C{family} on a connection of its
        own.

        @return: the client.
        """
        client = await within(
            streamTURNClient(self, self.relay.address("tcp")), PROMPTLY, "TCP connect"
        )
        allocated = await within(
            client.session.allocate(
                (A.REQUESTED_ADDRESS_FAMILY, family), transport=A.TRANSPORT_TCP
            ),
            PROMPTLY,
            "TCP Allocate",
        )
        self.assertSuccess(allocated)
        return client.session

    async def assertAllRefused(
        self,
        what: str,
        peers: List[TransportAddress],
        ask: Callable[[TransportAddress], Coroutine[Any, Any, STUNMessage]],
    ) -> None:
        """
        Ask for each of C{peers} in turn; each must get 403.
        """
        bypasses = []
        for peer in peers:
            response = await within(ask(peer), PROMPTLY, f"{what} for {peer}")
            if errorCode(response) != 403:
                bypasses.append((str(peer), errorCode(response) or "success"))
        self.assertEqual(
            bypasses, [], f"{what}: {len(bypasses)} of {len(peers)} hostile peers not refused"
        )

    async def createPermissionSweep(
        self, session: SocketTURNSession, allocation: Allocation, peers: Dict[int, List[Any]]
    ) -> None:
        """
        CreatePermission for every peer gets 403, and installs nothing.
        """
        before = dict(allocation.permissions)
        for family in (FAMILY_IPV4, FAMILY_IPV6):
            await self.assertAllRefused("CreatePermission", peers[family], session.createPermission)
        self.assertEqual(dict(allocation.permissions), before)

    async def channelBindSweep(
        self, session: SocketTURNSession, allocation: Allocation, peers: Dict[int, List[Any]]
    ) -> None:
        """
        ChannelBind to every peer gets 403, and binds nothing.
        """
        numbers = itertools.count(0x4000)
        before = dict(allocation.channels)
        for family in (FAMILY_IPV4, FAMILY_IPV6):
            await self.assertAllRefused(
                "ChannelBind",
                peers[family],
                lambda peer: session.channelBind(next(numbers), peer),
            )
        self.assertEqual(dict(allocation.channels), before)

    async def sendSweep(
        self, session: SocketTURNSession, allocation: Allocation, peers: Dict[int, List[Any]]
    ) -> None:
        """
        A Send indication to every peer is dropped: none is relayed, each is
        counted as dropped, and nothing arrives at the peers listening.
        """
        everyPeer = peers[FAMILY_IPV4] + peers[FAMILY_IPV6]
        relayed = allocation.packetsToPeer
        dropped = allocation.droppedInvalid + allocation.droppedPermission
        for start in range(0, len(everyPeer), SEND_BATCH):
            for peer in everyPeer[start : start + SEND_BATCH]:
                session.sendIndication(peer, b"hostile " + str(peer).encode())
            # Answered after the batch, from the same socket: the relay has
            # read and judged every Send of it.
            self.assertSuccess(await within(session.refresh(), PROMPTLY, "Refresh"))
        self.assertEqual(allocation.packetsToPeer - relayed, 0, "Sends relayed to hostile peers")
        self.assertEqual(
            allocation.droppedInvalid + allocation.droppedPermission - dropped, len(everyPeer)
        )

    async def connectSweep(self, peers: Dict[int, List[Any]]) -> None:
        """
        Connect (RFC 6062) to every peer gets 403, over a TCP allocation of
        each family.
        """
        for family in (FAMILY_IPV4, FAMILY_IPV6):
            session = await self.tcpAllocation(family)
            await self.assertAllRefused(
                "Connect",
                peers[family],
                connectRequest(session),
            )
        self.assertEqual(self.relay.server.peerConnections, {})


class DeniedAddressTests(HostileSweeps):
    """
    Every address of the default deny list, in every spelling, is refused
    (security notes 1.1, 1.2 and 1.4; CVE-2020-26262 and CVE-2026-27624).
    A peer listens on 127.0.0.1 at the port every hostile peer names.
    """

    def setUp(self) -> None:
        self.startRelay(allow_loopback_peers=False)
        self.peer = datagramClient(self, "127.0.0.1")
        self.peers = hostilePeers(self.peer.address.port)

    async def test_createPermission(self) -> None:
        """
        CreatePermission for a denied address in any spelling gets 403 (RFC
        8656 section 10.2).
        """
        session, allocation, _ = await self.udpAllocation()
        await self.createPermissionSweep(session, allocation, self.peers)

    async def test_channelBind(self) -> None:
        """
        ChannelBind to a denied address in any spelling gets 403 (RFC 8656
        section 12.2).
        """
        session, allocation, _ = await self.udpAllocation()
        await self.channelBindSweep(session, allocation, self.peers)

    async def test_send(self) -> None:
        """
        A Send indication to a denied address in any spelling is dropped
        (RFC 8656 section 11.2), even after the client asked for a
        permission for it.
        """
        session, allocation, _ = await self.udpAllocation()
        for family in (FAMILY_IPV4, FAMILY_IPV6):
            for peer in self.peers[family]:
                await within(session.createPermission(peer), PROMPTLY, "CreatePermission")
        self.assertEqual(allocation.permissions, {})
        await self.sendSweep(session, allocation, self.peers)
        self.assertEqual(self.peer.received.pending, [], "datagrams arrived at the peer")

    async def test_connect(self) -> None:
        """
        Connect to a denied address in any spelling gets 403 (RFC 6062
        section 5.2).
        """
        await self.connectSweep(self.peers)


class OwnRelayAddressTests(HostileSweeps):
    """
    On the relay address only relay ports are peers, in every spelling of
    it: C{::ffff:<relay-ip>}, C{::ffff:0:<relay-ip>} and
    C{64:ff9b::<relay-ip>} do not reach the relay's own listener ports.

    The operator allows 127.0.0.0/8 as a range (not the relay address in so
    many words), so the host is a peer and only the own-address rules stand
    between a client and the listeners.
    """

    def setUp(self) -> None:
        self.startRelay(allow_loopback_peers=False, allow_peer=["127.0.0.0/8"])
        self.peers = ownPeers(ownServices(self.relay))

    async def test_createPermissionAllowed(self) -> None:
        """
        A permission is for the host, whatever the port: the relay address
        gets one, in every spelling, since clients relay to each other
        through it.
        """
        session, allocation, _ = await self.udpAllocation()
        hosts = {"127.0.0.1", "::ffff:127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::7f00:1"}
        for host in sorted(hosts):
            peer = TransportAddress(host, 1)
            self.assertSuccess(await within(session.createPermission(peer), PROMPTLY, "CP"))
        self.assertEqual(set(allocation.permissions), hosts)

    async def test_channelBind(self) -> None:
        """
        ChannelBind to a listener port of the relay address, in any
        spelling, gets 403; to another allocation's relayed address, in any
        spelling, it succeeds.
        """
        session, allocation, _ = await self.udpAllocation()
        await self.channelBindSweep(session, allocation, self.peers)
        _, _, other = await self.udpAllocation()
        port = other[FAMILY_IPV4].port
        for number, host in enumerate(("127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1")):
            bound = await within(
                session.channelBind(0x7000 + number, TransportAddress(host, port)), PROMPTLY, "CB"
            )
            self.assertSuccess(bound)

    async def test_send(self) -> None:
        """
        A Send indication to a listener port of the relay address, in any
        spelling, is dropped although the host has a permission.
        """
        session, allocation, _ = await self.udpAllocation()
        for family in (FAMILY_IPV4, FAMILY_IPV6):
            for host in {peer.host for peer in self.peers[family]}:
                await within(session.createPermission(TransportAddress(host, 1)), PROMPTLY, "CP")
        await self.sendSweep(session, allocation, self.peers)

    async def test_connect(self) -> None:
        """
        Connect to a listener port of the relay address, in any spelling,
        gets 403.
        """
        await self.connectSweep(self.peers)


class OwnServiceTests(HostileSweeps):
    """
    With allow-loopback-peers, loopback is a peer, but no socket of the
    relay's own is: neither the TURN listeners nor the admin console,
    metrics or credentials endpoint, in any spelling of their address.
    """

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        keys = os.path.join(directory, "authorized_keys")
        token = os.path.join(directory, "token")
        for path, text in ((keys, ""), (token, "a bearer token for the test")):
            with open(path, "w") as f:
                f.write(text)
        self.startRelay(
            listen=[
                "udp:0:interface=127.0.0.1",
                "tcp:0:interface=127.0.0.1",
                "udp:0:interface=::1",
            ],
            manhole="tcp:0:interface=127.0.0.1",
            manhole_authorized_keys=keys,
            state_dir=os.path.join(directory, "state"),
            metrics="tcp:0:interface=127.0.0.1",
            credentials_endpoint="tcp:0:interface=127.0.0.1",
            credentials_token_file=token,
            static_auth_secret=["a shared secret for the test"],
        )
        self.services = ownServices(self.relay)
        self.peers = ownPeers(self.services)
        self.peer4 = datagramClient(self, "127.0.0.1")

    def test_servicesListening(self) -> None:
        """
        The sweep covers all six sockets: three TURN listeners and three
        admin services.
        """
        self.assertEqual(len(self.services), 6)
        self.assertEqual(len(set(self.services)), 6)

    async def test_channelBind(self) -> None:
        """
        ChannelBind to an own service port, in any spelling, gets 403; to a
        loopback peer it succeeds.
        """
        session, allocation, _ = await self.udpAllocation()
        await self.channelBindSweep(session, allocation, self.peers)
        self.assertSuccess(
            await within(session.channelBind(0x7FFF, self.peer4.address), PROMPTLY, "CB")
        )

    async def test_send(self) -> None:
        """
        A Send indication to an own service port, in any spelling, is
        dropped although loopback has a permission; one to a loopback peer
        arrives.
        """
        session, allocation, _ = await self.udpAllocation()
        for family in (FAMILY_IPV4, FAMILY_IPV6):
            for host in {peer.host for peer in self.peers[family]}:
                await within(session.createPermission(TransportAddress(host, 1)), PROMPTLY, "CP")
        self.assertIn("127.0.0.1", allocation.permissions)
        self.assertIn("::1", allocation.permissions)
        await self.sendSweep(session, allocation, self.peers)
        session.sendIndication(self.peer4.address, b"to a peer")
        self.assertEqual(await within(self.peer4.receive(), PROMPTLY, "Send"), b"to a peer")

    async def test_connect(self) -> None:
        """
        Connect to an own service port, in any spelling, gets 403.
        """
        await self.connectSweep(self.peers)

    async def test_reload(self) -> None:
        """
        A configuration reload keeps the own service ports refused.
        """
        self.assertEqual(self.relay.service.reloadConfig(self.relay.service.config), [])
        session, allocation, _ = await self.udpAllocation()
        await self.channelBindSweep(session, allocation, self.peers)


class RelayAddressSettingTests(TURNTestCase, TestCase):
    """
    A relay never starts with a wildcard as its relayed address, nor with
    an admin HTTP service on a mapped wildcard.
    """

    def assertRefused(self, **settings: Any) -> ConfigError:
        error = self.assertRaises(ConfigError, startRelay, self, **settings)
        self.assertNotIn("\n", str(error))
        return error

    def test_relayIP6Wildcard(self) -> None:
        """
        relay-ip6 :: (or a mapped or translated wildcard) is refused: it
        would be advertised as the relayed address.
        """
        for wildcard in ("::", "::ffff:0.0.0.0", "::ffff:0:0.0.0.0"):
            self.assertIn("wildcard", str(self.assertRefused(relay_ip6=wildcard)))
        self.assertIn("wildcard", str(self.assertRefused(relay_ip="0.0.0.0")))

    def test_adminWildcard(self) -> None:
        """
        metrics and credentials-endpoint on ::ffff:0.0.0.0, every IPv4
        address, are refused as 0.0.0.0 is.
        """
        for name in ("metrics", "credentials_endpoint"):
            error = self.assertRefused(**{name: "tcp:0:interface=::ffff:0.0.0.0"})
            self.assertIn("0.0.0.0", str(error))

    async def test_relayedAddressSpecific(self) -> None:
        """
        A relay whose only listener is a mapped wildcard offers no relayed
        address it cannot name (508 for Allocate over IPv4, 440 over IPv6),
        rather than advertising a wildcard.
        """
        relay = startRelay(self, listen=["udp:0:interface=::ffff:0.0.0.0"])
        self.assertIsNone(relay.service.config.effectiveRelayIP())
        self.assertIsNone(relay.service.config.effectiveRelayIP6())
        port = relay.address("udp", FAMILY_IPV6).port
        session = udpTURNClient(self, TransportAddress("127.0.0.1", port))
        response = await within(session.allocate(), PROMPTLY, "Allocate")
        self.assertIn(errorCode(response), (508, 440))
        self.assertEqual(len(relay.server.registry), 0)
