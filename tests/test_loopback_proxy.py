"""
TURN over TCP and TLS behind a load balancer, through real sockets on
127.0.0.1: each connection starts with a real PROXY protocol header (v1
text or v2 binary, before the TLS handshake) naming a client elsewhere,
and the relay must treat the connection as that client's.

The clients claim documentation addresses (203.0.113.0/24): they are only
data in the header, and no packet goes there.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import DeferredQueue
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase
from tests._relays import LoopbackRelay, ServerConnections, startRelay
from tests._sockets import (
    TURNStreamClient,
    UnverifiedClient,
    bindingRequest,
    streamEndpoint,
    streamTURNClient,
)
from tests._timing import PROMPTLY, reactor, within
from tests.test_transports_proxy import proxyV1, proxyV2
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import Method, STUNMessage

# Who the headers say the clients are, and the balancer's public address.
CLIENT = ("203.0.113.7", 4444)
OTHER_CLIENT = ("203.0.113.8", 5555)
PUBLIC = ("198.51.100.1", 443)
# The relay's handshake deadline in these tests (the smallest allowed),
# which is also the PROXY header's.
HANDSHAKE_TIMEOUT = 1.0


class ProxiedTURNClient(TURNStreamClient):
    """
    A TURN client as a load balancer passes it on: the connection starts
    with a PROXY header, then (for TLS) the client's handshake.
    """

    def __init__(self, header: bytes, tls: Optional[IOpenSSLClientConnectionCreator]) -> None:
        super().__init__()
        self._header = header
        self._tls = tls

    def connectionMade(self) -> None:
        super().connectionMade()
        transport: Any = self.transport
        transport.write(self._header)
        if self._tls is not None:
            transport.startTLS(self._tls)


async def proxiedClient(
    testCase: TestCase,
    address: TransportAddress,
    header: bytes,
    tls: Optional[IOpenSSLClientConnectionCreator] = None,
) -> ProxiedTURNClient:
    """
    Connect to C{address}, send C{header}, then start TLS with C{tls}; the
    connection is dropped at cleanup.
    """
    client = await connectProtocol(streamEndpoint(address), ProxiedTURNClient(header, tls))
    testCase.addCleanup(client.close)
    if tls is not None:
        await within(client.whenHandshaken(), PROMPTLY, "the TLS handshake after the header")
    return client


def startProxiedRelay(testCase: TestCase, **settings: Any) -> LoopbackRelay:
    """
    Start a relay with a tcp and a tls listener, both with proxy=yes.
    """
    return startRelay(
        testCase,
        listen=["tcp:0:interface=127.0.0.1:proxy=yes", "tls:0:interface=127.0.0.1:proxy=yes"],
        tls_handshake_timeout=HANDSHAKE_TIMEOUT,
        **settings,
    )


HEADERS = {"v1": proxyV1(CLIENT, PUBLIC), "v2": proxyV2(CLIENT, PUBLIC)}


class ProxiedClientTests(TURNTestCase, TestCase):
    """
    Clients behind a load balancer are known by the addresses in their
    PROXY headers.
    """

    def mapped(self, response: STUNMessage) -> TransportAddress:
        mapped = self.assertSuccess(response).get(A.XOR_MAPPED_ADDRESS)
        assert isinstance(mapped, TransportAddress)
        return mapped

    async def test_binding(self) -> None:
        """
        XOR-MAPPED-ADDRESS is the client the v1 or v2 header names, over
        TCP and over TLS (header first, then the handshake).
        """
        relay = startProxiedRelay(self)
        for transport in ("tcp", "tls"):
            connections = ServerConnections(self, relay, transport)
            tls = UnverifiedClient() if transport == "tls" else None
            for version, header in HEADERS.items():
                client = await proxiedClient(self, relay.address(transport), header, tls)
                response = await within(client.session.binding(), PROMPTLY, "Binding")
                self.assertEqual(
                    self.mapped(response), TransportAddress(*CLIENT), (transport, version)
                )
                protocol = connections.forClient(TransportAddress(*CLIENT))
                self.assertEqual(protocol.serverAddress, TransportAddress(*PUBLIC))
                await client.close()
                await within(connections.whenAllClosed(), PROMPTLY, "the relay closing")

    async def test_allocate(self) -> None:
        """
        An allocation made through the balancer belongs to the 5-tuple of
        the client the header names, and is logged as that client's.
        """
        relay = startProxiedRelay(self)
        for transport, version in (("tcp", "v1"), ("tls", "v2")):
            connections = ServerConnections(self, relay, transport)
            tls = UnverifiedClient() if transport == "tls" else None
            client = await proxiedClient(self, relay.address(transport), HEADERS[version], tls)
            allocated = self.assertSuccess(
                await within(client.session.allocate(), PROMPTLY, "Allocate")
            )
            self.assertEqual(self.mapped(allocated), TransportAddress(*CLIENT))
            [allocation] = relay.registry
            self.assertEqual(allocation.fiveTuple.transportProtocol, transport)
            self.assertEqual(allocation.fiveTuple.clientAddress, TransportAddress(*CLIENT))
            self.assertEqual(allocation.fiveTuple.serverAddress, TransportAddress(*PUBLIC))
            relayed = allocated.get(A.XOR_RELAYED_ADDRESS)
            created = relay.created(str(relayed))
            self.assertIn("203.0.113.7:4444", created["client"])
            await client.close()
            await within(connections.whenAllClosed(), PROMPTLY, "the relay closing")
            self.assertEqual(len(relay.registry), 0)

    async def test_perSource(self) -> None:
        """
        The per-source limit counts the clients the headers name, not the
        balancer they all come through.
        """
        relay = startProxiedRelay(self, max_unallocated_per_source=1)
        connections = ServerConnections(self, relay, "tcp")
        address = relay.address("tcp")
        first = await proxiedClient(self, address, proxyV1(CLIENT, PUBLIC))
        self.assertSuccess(await within(first.session.binding(), PROMPTLY, "Binding"))
        other = await proxiedClient(self, address, proxyV2(OTHER_CLIENT, PUBLIC))
        self.assertSuccess(await within(other.session.binding(), PROMPTLY, "Binding"))
        again = await proxiedClient(self, address, proxyV2((CLIENT[0], 4445), PUBLIC))
        await within(again.whenClosed(), PROMPTLY, "closing the second from one source")
        self.assertEqual(dict(connections.limits.closed), {"per-source": 1})
        self.assertIsNone(first.lostReason)
        self.assertIsNone(other.lostReason)


class MissingHeaderTests(TURNTestCase, TestCase):
    """
    A proxy listener closes connections that do not start with a PROXY
    header, and counts them.
    """

    async def test_tcpWithoutHeader(self) -> None:
        """
        A TURN client that speaks STUN at once is closed, and counted.
        """
        relay = startProxiedRelay(self)
        connections = ServerConnections(self, relay, "tcp")
        client = await streamTURNClient(self, relay.address("tcp"))
        client.send(bindingRequest()[1])
        await within(client.whenClosed(), PROMPTLY, "closing the connection without a header")
        self.assertEqual(dict(connections.limits.closed), {"proxy-header": 1})
        self.assertEqual(connections.protocols, [])

    async def test_tlsWithoutHeader(self) -> None:
        """
        A TLS client that starts its handshake at once is closed, and
        counted.
        """
        relay = startProxiedRelay(self)
        connections = ServerConnections(self, relay, "tls")
        client = await streamTURNClient(self, relay.address("tls"), UnverifiedClient())
        await within(client.whenClosed(), PROMPTLY, "closing the connection without a header")
        self.assertFalse(client.handshaken)
        self.assertEqual(dict(connections.limits.closed), {"proxy-header": 1})

    async def test_silent(self) -> None:
        """
        A connection that sends nothing is closed when the handshake
        timeout runs out, and counted apart.
        """
        relay = startProxiedRelay(self)
        connections = ServerConnections(self, relay, "tcp")
        client = await streamTURNClient(self, relay.address("tcp"))
        await within(
            client.whenClosed(), HANDSHAKE_TIMEOUT + PROMPTLY, "closing the silent connection"
        )
        self.assertEqual(dict(connections.limits.closed), {"proxy-timeout": 1})


class TrustedBalancerTests(TURNTestCase, TestCase):
    """
    With proxy-from, only the load balancers named may send headers.
    """

    async def test_trusted(self) -> None:
        """
        A connection from a named balancer is the client its header names.
        """
        relay = startProxiedRelay(self, proxy_from=["127.0.0.0/8"])
        ServerConnections(self, relay, "tcp")
        client = await proxiedClient(self, relay.address("tcp"), proxyV2(CLIENT, PUBLIC))
        response = await within(client.session.binding(), PROMPTLY, "Binding")
        self.assertEqual(
            self.assertSuccess(response).get(A.XOR_MAPPED_ADDRESS), TransportAddress(*CLIENT)
        )

    async def test_untrusted(self) -> None:
        """
        A connection from anywhere else is closed, however good its header,
        and counted.
        """
        relay = startProxiedRelay(self, proxy_from=["192.0.2.0/24"])
        connections = ServerConnections(self, relay, "tls")
        client = await connectProtocol(
            streamEndpoint(relay.address("tls")),
            ProxiedTURNClient(proxyV1(CLIENT, PUBLIC), UnverifiedClient()),
        )
        self.addCleanup(client.close)
        await within(client.whenClosed(), PROMPTLY, "closing the untrusted connection")
        self.assertFalse(client.handshaken)
        self.assertEqual(dict(connections.limits.closed), {"proxy-source": 1})
        self.assertEqual(connections.protocols, [])


class PeerServer(Protocol):
    """
    A TCP peer's side of one connection: it records what it receives.
    """

    def __init__(self, received: DeferredQueue[bytes]) -> None:
        self._received = received

    def dataReceived(self, data: bytes) -> None:
        self._received.put(data)


class RFC6062Tests(TURNTestCase, TestCase):
    """
    RFC 6062 through the balancer: the data connection comes through it too.
    """

    async def test_connectionBind(self) -> None:
        """
        A TCP allocation made through the balancer connects to a peer, and a
        second proxied connection from the same client binds to it and
        relays to the peer.
        """
        relay = startProxiedRelay(self)
        ServerConnections(self, relay, "tcp")
        received: DeferredQueue[bytes] = DeferredQueue()
        peers: List[Protocol] = []

        def buildPeer() -> Protocol:
            peer = PeerServer(received)
            peers.append(peer)
            return peer

        listening = reactor.listenTCP(0, Factory.forProtocol(buildPeer), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        peerHost = listening.getHost()
        peer = TransportAddress(peerHost.host, peerHost.port)

        address = relay.address("tcp")
        control = await proxiedClient(self, address, proxyV1(CLIENT, PUBLIC))
        session = control.session
        self.assertSuccess(
            await within(session.allocate(transport=A.TRANSPORT_TCP), PROMPTLY, "Allocate")
        )
        self.assertSuccess(
            await within(session.createPermission(peer), PROMPTLY, "CreatePermission")
        )
        connected = self.assertSuccess(
            await within(
                session.request(Method.CONNECT, [(A.XOR_PEER_ADDRESS, peer)]),
                PROMPTLY,
                "Connect",
            )
        )
        connectionID = connected.get(A.CONNECTION_ID)

        data = await proxiedClient(self, address, proxyV2((CLIENT[0], CLIENT[1] + 1), PUBLIC))
        self.assertSuccess(
            await within(
                data.session.request(Method.CONNECTION_BIND, [(A.CONNECTION_ID, connectionID)]),
                PROMPTLY,
                "ConnectionBind",
            )
        )
        data.send(b"through the balancer")
        self.assertEqual(
            await within(received.get(), PROMPTLY, "the peer receiving"), b"through the balancer"
        )
        for connection in peers:
            self.addCleanup(connection.transport.abortConnection)  # type: ignore[union-attr]
