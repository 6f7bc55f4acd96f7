"""
Independent TURN clients reach an in-process relay over TCP and TLS
(RFC 8656 section 3.1, RFC 8489 section 6.2), and allocate TCP relayed
addresses (RFC 6062), all on 127.0.0.1:

  - coturn's C{turnutils_uclient} (C{-t}, C{-t -S}, C{-T}), with coturn's
    C{turnutils_peer} as the UDP echo peer;
  - aioice's TURN client over TCP and TLS (C{tests/interop/aioice_stream.py},
    in a child Python), trusting the test's own self-signed certificate;
  - a small RFC 6062 client of our own (C{tests/interop/rfc6062_client.py},
    with its own STUN codec) against TCP peers in this process.

The relay listens for UDP, TCP and TLS at once, so one registry holds the
allocations of every transport.  Every wait ends on an event (a process
exiting or printing a line, a relay log event, a connection closing); the
test timeouts are a safety net.  Cleanup kills what still runs, stops the
relay, and then waits until no TCP connection is left in the reactor: the
relay's peer connections (RFC 6062) close on their own after the clients'
connections, and nothing announces it, so that last wait looks at the
reactor's sockets until they are gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests._logs import isCreated, isEnded, isRefused
from tests._processes import (
    ChildProcess,
    aioiceStreamArgs,
    assertRelayedAll,
    describe,
    finalReport,
    requireModule,
    requireTool,
    runToCompletion,
    spawn,
    startEchoPeer,
    uclientArgs,
    uclientCounters,
)
from tests._relays import (
    MAX_RELAY_PORT,
    MIN_RELAY_PORT,
    LoopbackRelay,
    assertRefusedUnauthenticated,
    makeCertificate,
    relayedKey,
    startRelay,
)
from tests._session import PASSWORD, REST_SECRET, USERNAME
from tests._sockets import HOST
from tests._timing import poll, reactor
from turnrelay.auth.credentials import mintRESTCredential
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress

HERE = os.path.dirname(os.path.abspath(__file__))
RFC6062_CLIENT = os.path.join(HERE, "interop", "rfc6062_client.py")

# turnutils_uclient sends this many messages of this size, one every 5 ms.
MESSAGES = 10
MESSAGE_SIZE = 200
# Cleanup waits this long for the last TCP connections to close.
CLOSE_TIMEOUT = 10.0


# The relay -------------------------------------------------------------------


def startStreamRelay(testCase: TestCase, **settings: Any) -> LoopbackRelay:
    """
    Start a relay (L{tests._relays.startRelay}, with C{settings}) listening
    for UDP, TCP and TLS, its certificate for C{localhost} and 127.0.0.1.
    It stops at cleanup, and cleanup then waits for every TCP connection to
    close.
    """
    baseline = _tcpConnections()
    testCase.addCleanup(_connectionsClosed, baseline)
    listen = [f"{transport}:0:interface={HOST}" for transport in ("udp", "tcp", "tls")]
    return startRelay(testCase, listen=listen, **settings)


def _tcpConnections() -> Set[Any]:
    """
    @return: the TCP connections (not listening ports) the reactor watches.
    """
    selectables = list(reactor.getReaders()) + list(reactor.getWriters())
    return {s for s in selectables if isinstance(s, tcp.Connection)}


async def _connectionsClosed(baseline: Set[Any]) -> None:
    """
    Wait until the reactor watches no TCP connection beyond C{baseline},
    for at most L{CLOSE_TIMEOUT} seconds.
    """
    await poll(
        lambda: not _tcpConnections() - baseline,
        CLOSE_TIMEOUT,
        "the TCP connections to close:",
        describe=lambda: _tcpConnections() - baseline,
    )


# Peers in this process -------------------------------------------------------


class EchoPeer(Protocol):
    """
    One TCP peer connection that greets first, echoes what it receives and
    keeps it.

    @ivar received: everything received.
    @ivar remote: the other end's address once connected.
    @ivar local: this end's address once connected.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = b""
        self.remote: Optional[TransportAddress] = None
        self.local: Optional[TransportAddress] = None
        self.disconnected = False
        self._waiters: List[Deferred[None]] = []

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer, host = transport.getPeer(), transport.getHost()
        self.remote = TransportAddress(peer.host, peer.port)
        self.local = TransportAddress(host.host, host.port)
        if self.greeting:
            transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.disconnected = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenClosed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the connection is lost.
        """
        if self.disconnected:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def close(self) -> Deferred[None]:
        """
        Close the connection if it is open, and wait until it is.
        """
        if not self.disconnected:
            self.transport.loseConnection()  # type: ignore[union-attr]
        return self.whenClosed()


class EchoServer(Factory):
    """
    A TCP echo server; it keeps every connection it accepted.
    """

    def __init__(self) -> None:
        self.connections: List[EchoPeer] = []

    def buildProtocol(self, addr: Any) -> EchoPeer:
        peer = EchoPeer()
        self.connections.append(peer)
        return peer


def startEchoServer(testCase: TestCase) -> Tuple[TransportAddress, EchoServer]:
    """
    Listen on 127.0.0.1 with an L{EchoServer}, until cleanup.
    """
    server = EchoServer()
    port = reactor.listenTCP(0, server, interface=HOST)
    testCase.addCleanup(port.stopListening)
    return TransportAddress(HOST, port.getHost().port), server


def closedPort(testCase: TestCase) -> TransportAddress:
    """
    A TCP port on 127.0.0.1 that refuses connections: bound (so that nothing
    else takes it) but not listening, until cleanup.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    testCase.addCleanup(sock.close)
    sock.bind((HOST, 0))
    return TransportAddress(HOST, sock.getsockname()[1])


# Child processes -------------------------------------------------------------


async def progress(child: ChildProcess, event: str) -> Dict[str, Any]:
    """
    Wait for a script's progress line C{{"event": event, ...}}.

    @return: the line's object.
    """
    match = await child.waitForOutput(rb'(?m)^(\{"event": "' + event.encode() + rb'".*)\n')
    line: Dict[str, Any] = json.loads(match.group(1))
    return line


def aioiceArgs(
    testCase: TestCase,
    relay: LoopbackRelay,
    transport: str,
    *options: str,
    username: str = USERNAME,
    password: str = PASSWORD,
) -> List[str]:
    """
    The command line of C{aioice_stream.py} against C{relay}.
    """
    assert relay.certificate is not None
    return aioiceStreamArgs(
        testCase,
        relay.address(transport),
        transport,
        relay.certificate,
        username,
        password,
        *options,
    )


def rfc6062Args(relay: LoopbackRelay, *options: str) -> List[str]:
    """
    The command line of C{rfc6062_client.py} against C{relay} over TCP.
    """
    return [
        sys.executable,
        RFC6062_CLIENT,
        "--username",
        USERNAME,
        "--password",
        PASSWORD,
        *options,
        relay.address("tcp").host,
        str(relay.address("tcp").port),
    ]


# coturn ----------------------------------------------------------------------


class CoturnStreamTests(TestCase):
    """
    coturn's C{turnutils_uclient} reaches the relay over TCP (C{-t}) or TLS
    (C{-t -S}), relays to C{turnutils_peer} over UDP and counts the echoes.

    It runs with C{-c} (no RTCP allocation, which would leave an EVEN-PORT
    reservation behind) and one client, and C{-v} to show its channel
    bindings.  Before its real allocation it makes a probe allocation on a
    connection of its own, which ends when the client exits.
    """

    # Each run of the client takes 1 to 6 s (it counts in whole seconds).
    timeout = 30

    async def _relays(self, transport: str, *options: str) -> Tuple[LoopbackRelay, LogEvent, bytes]:
        """
        Run the client over C{transport} with C{options} and check that every
        message went to the peer and came back, as the client and the relay
        count them, and that the client deleted its allocation.

        @return: the relay, its event of the allocation's end, and what the
            client printed.
        """
        requireTool(self, "turnutils_uclient")
        relay = startStreamRelay(self)
        peer, _ = await startEchoPeer(self)
        address = relay.address(transport)
        flags = ["-t", *(["-S"] if transport == "tls" else []), "-c", "-v", *options]
        args = uclientArgs(self, address, peer, *flags, messages=MESSAGES, size=MESSAGE_SIZE)
        child = await runToCompletion(self, args)
        assertRelayedAll(self, child, MESSAGES)
        ended = await relay.events.waitFor(
            lambda event: isEnded(event) and event["reason"] == "deleted"
        )
        self.assertEqual(
            (
                ended["packetsToPeer"],
                ended["bytesToPeer"],
                ended["packetsFromPeer"],
                ended["bytesFromPeer"],
                ended["dropped"],
            ),
            (MESSAGES, MESSAGES * MESSAGE_SIZE, MESSAGES, MESSAGES * MESSAGE_SIZE, 0),
            ended,
        )
        # The 5-tuple is the client's connection to the listener it used.
        self.assertRegex(
            ended["client"], rf"^{transport}:{re.escape(HOST)}:\d+->{re.escape(str(address))}$"
        )
        self.assertEqual(relay.created(ended["relayed"])["username"], ended["username"])
        relayedPort = int(ended["relayed"].rpartition(":")[2])
        self.assertTrue(MIN_RELAY_PORT <= relayedPort <= MAX_RELAY_PORT, ended["relayed"])
        return relay, ended, child.output

    def _channelNumbers(self, output: bytes) -> List[int]:
        """
        @return: the channel numbers C{-v} reports bound.
        """
        return [int(n, 16) for n in re.findall(rb"success: 0x([0-9a-f]+)", output)]

    async def test_tcpChannels(self) -> None:
        """
        Over TCP, a static user binds channels and relays ChannelData, framed
        and padded on the stream (RFC 8656 section 12.5), without loss.
        """
        _, ended, output = await self._relays("tcp", "-u", USERNAME, "-w", PASSWORD)
        self.assertEqual(ended["username"], USERNAME)
        numbers = self._channelNumbers(output)
        self.assertTrue(numbers, output)
        self.assertTrue(all(0x4000 <= n <= 0x7FFF for n in numbers), numbers)

    async def test_tcpSendIndicationsREST(self) -> None:
        """
        Over TCP, with a TURN REST API credential minted from the shared
        secret (C{-W}), Send and Data indications (C{-s}) relay without loss.
        """
        _, ended, output = await self._relays("tcp", "-s", "-u", "carol", "-W", REST_SECRET)
        self.assertRegex(ended["username"], r"^\d+:carol$")
        self.assertEqual(self._channelNumbers(output), [])

    async def test_tlsChannelsREST(self) -> None:
        """
        Over TLS (RFC 8656 section 3.1), a TURN REST API credential binds
        channels and relays without loss.
        """
        _, ended, output = await self._relays("tls", "-u", "carol", "-W", REST_SECRET)
        self.assertRegex(ended["username"], r"^\d+:carol$")
        self.assertTrue(self._channelNumbers(output), output)

    async def test_tlsSendIndications(self) -> None:
        """
        Over TLS, a static user relays with Send and Data indications
        without loss.
        """
        _, ended, output = await self._relays("tls", "-s", "-u", USERNAME, "-w", PASSWORD)
        self.assertEqual(ended["username"], USERNAME)
        self.assertEqual(self._channelNumbers(output), [])

    async def test_tlsWrongPassword(self) -> None:
        """
        Over TLS, an Allocate with the wrong password is refused with 401
        (RFC 8489 section 9.2.4) and the client gives up without an
        allocation.
        """
        uclient = requireTool(self, "turnutils_uclient")
        relay = startStreamRelay(self)
        peer, _ = await startEchoPeer(self)
        args = [uclient, "-t", "-S", "-c", "-u", USERNAME, "-w", "not-" + PASSWORD]
        args += ["-p", str(relay.address("tls").port), "-e", peer.host, "-r", str(peer.port), HOST]
        child = await runToCompletion(self, args)
        self.assertNotEqual(child.exitCode, 0, describe(child))
        self.assertIn(b"Cannot complete Allocation", child.output)
        self.assertIsNone(uclientCounters(child.output), describe(child))
        self.assertEqual(len(relay.registry), 0)
        self.assertEqual(relay.events.matching(isCreated), [])
        assertRefusedUnauthenticated(self, relay, "bad-integrity")


class CoturnTCPRelayTests(TestCase):
    """
    coturn's C{turnutils_uclient -T}: pairs of clients allocate TCP relayed
    addresses (RFC 6062), connect them to each other with Connect, accept
    with ConnectionAttempt, bind data connections, and count the messages
    that come back.
    """

    timeout = 30

    async def _relays(self, transport: str) -> LoopbackRelay:
        """
        Run two clients over C{transport}, check their counts, and check
        that the relay bound their connections to each other's relayed
        addresses.

        @return: the relay.
        """
        uclient = requireTool(self, "turnutils_uclient")
        relay = startStreamRelay(self)
        address = relay.address(transport)
        clients, messages = 2, 20
        args = [uclient, "-T", *(["-S"] if transport == "tls" else [])]
        args += ["-u", USERNAME, "-w", PASSWORD, "-m", str(clients), "-n", str(messages)]
        args += ["-l", "100", "-z", "5", "-p", str(address.port), address.host]
        child = await runToCompletion(self, args)
        assertRelayedAll(self, child, clients * messages)
        bound = relay.events.matching(lambda event: "connectionID" in event and "client" in event)
        self.assertTrue(bound, relay.events.events)
        relayed = {event["relayed"] for event in bound}
        for event in bound:
            # Client to client: each peer is the other client's relayed address.
            self.assertIn(event["peer"], relayed, bound)
            self.assertTrue(
                relay.created(event["relayed"])["client"].startswith(f"{transport}:"), event
            )
        return relay

    async def test_tcpClientToClient(self) -> None:
        """
        Over TCP control and data connections, two clients relay to each
        other through TCP allocations without loss (RFC 6062 sections 4.3
        and 4.4).
        """
        await self._relays("tcp")

    async def test_tlsClientToClient(self) -> None:
        """
        Over TLS control and data connections, two clients relay to each
        other through TCP allocations without loss.
        """
        await self._relays("tls")


# aioice ----------------------------------------------------------------------


class AioiceStreamTests(TestCase):
    """
    aioice's TURN client over TCP and TLS: it allocates, binds a channel to
    its own UDP peer, relays round trips, and deletes its allocation.
    """

    timeout = 30
    roundTrips = 6

    async def _client(
        self, relay: LoopbackRelay, transport: str, *args: str, **credentials: str
    ) -> Tuple[ChildProcess, Dict[str, Any]]:
        """
        Run the aioice script to its end.

        @return: the process and its report.
        """
        requireModule(self, "aioice")
        command = aioiceArgs(self, relay, transport, *args, **credentials)
        child = await runToCompletion(self, command)
        return child, finalReport(self, child)

    async def _relays(self, transport: str, username: str, password: str) -> Dict[str, Any]:
        """
        Relay round trips with aioice over C{transport}; check both sides'
        accounts.

        @return: the script's report.
        """
        relay = startStreamRelay(self)
        child, result = await self._client(
            relay,
            transport,
            "--round-trips",
            str(self.roundTrips),
            username=username,
            password=password,
        )
        self.assertEqual((child.exitCode, result["error"]), (0, None), describe(child))
        self.assertEqual(result["roundTrips"], self.roundTrips)
        self.assertTrue(result["deleted"], result)
        # XOR-MAPPED-ADDRESS is the client's end of its connection.
        self.assertEqual(result["mapped"], result["local"], result)
        relayed = relayedKey(result["relayed"])
        ended = await relay.whenEnded(relayed)
        self.assertEqual(
            (ended["username"], ended["packetsToPeer"], ended["packetsFromPeer"], ended["dropped"]),
            (username, self.roundTrips, self.roundTrips, 0),
        )
        address = relay.address(transport)
        self.assertEqual(
            relay.created(relayed)["client"],
            f"{transport}:{relayedKey(result['local'])}->{address}",
        )
        self.assertEqual(list(relay.registry), [])
        return result

    async def test_tcp(self) -> None:
        """
        Over TCP, aioice allocates, relays every round trip intact through a
        channel, and deletes its allocation.
        """
        await self._relays("tcp", USERNAME, PASSWORD)

    async def test_tlsREST(self) -> None:
        """
        Over TLS, aioice verifies the relay's certificate, is offered ALPN
        C{stun.turn} (RFC 7443) and TLS 1.2 or later, and relays with a TURN
        REST API credential.
        """
        username, password = mintRESTCredential(
            REST_SECRET.encode(), "carol", ttl=600, now=reactor.seconds()
        )
        result = await self._relays("tls", username, password)
        self.assertEqual(result["tls"]["alpn"], "stun.turn", result)
        self.assertIn(result["tls"]["version"], ("TLSv1.2", "TLSv1.3"), result)

    async def test_tlsUntrusted(self) -> None:
        """
        aioice refuses a relay whose certificate it was not told to trust, so
        the TLS tests do verify: no allocation is made.
        """
        relay = startStreamRelay(self)
        relay.certificate, _ = makeCertificate(self, "stranger")
        child, result = await self._client(relay, "tls")
        self.assertEqual(child.exitCode, 1, describe(child))
        self.assertIn("CERTIFICATE_VERIFY_FAILED", result["error"], result)
        self.assertEqual(relay.events.matching(isCreated), [])


# One registry ----------------------------------------------------------------


class OneRegistryTests(TestCase):
    """
    Clients over UDP, TCP and TLS, and an RFC 6062 client, hold allocations at
    the same time in the relay's one registry.
    """

    timeout = 30

    async def test_everyTransport(self) -> None:
        """
        Allocations made over UDP, TCP and TLS, and a TCP allocation, live in
        one registry keyed by 5-tuple (RFC 8656 section 2), each with its
        transport, client address and listener; all relay afterwards.
        """
        requireModule(self, "aioice")
        relay = startStreamRelay(self)
        transports = ("udp", "tcp", "tls")
        held = {
            t: spawn(self, aioiceArgs(self, relay, t, "--hold"), input=None) for t in transports
        }
        tcpRelay = spawn(self, rfc6062Args(relay, "--accept-from", HOST, "--greeting", "hi"))
        allocated = {t: await progress(child, "allocated") for t, child in held.items()}
        permitted = await progress(tcpRelay, "permitted")
        tcpAllocated = await progress(tcpRelay, "allocated")

        listeners = {t: relay.address(t) for t in transports}
        byRelayed = {relayedKey(a.relayedAddress): a for a in relay.registry}
        self.assertEqual(len(byRelayed), 4, byRelayed)
        for transport, event in allocated.items():
            allocation = byRelayed[relayedKey(event["relayed"])]
            self.assertEqual(
                (
                    allocation.fiveTuple.transportProtocol,
                    allocation.fiveTuple.clientAddress,
                    allocation.fiveTuple.serverAddress,
                    allocation.transport,
                ),
                (
                    transport,
                    TransportAddress(*event["local"]),
                    listeners[transport],
                    A.TRANSPORT_UDP,
                ),
            )
            self.assertIs(relay.registry.get(allocation.fiveTuple), allocation)
        allocation = byRelayed[relayedKey(permitted["relayed"])]
        self.assertEqual(
            (
                allocation.fiveTuple.transportProtocol,
                allocation.fiveTuple.clientAddress,
                allocation.fiveTuple.serverAddress,
                allocation.transport,
            ),
            (
                "tcp",
                TransportAddress(*tcpAllocated["mapped"]),
                relay.address("tcp"),
                A.TRANSPORT_TCP,
            ),
        )
        self.assertEqual(relay.registry.countForUser(USERNAME), 4)

        # Let them go on: the aioice clients relay and delete, and a peer
        # connects to the TCP allocation so that its client can finish.
        for child in held.values():
            child.finishInput(b"go\n")
        peer = await connectPeer(self, permitted["relayed"], b"hi")
        children: List[ChildProcess] = [*held.values(), tcpRelay]
        for process in children:
            await process.whenEnded()
            self.assertEqual(finalReport(self, process)["ok"], True, describe(process))
        await peer.whenClosed()
        self.assertEqual(list(relay.registry), [])


async def connectPeer(testCase: TestCase, address: Sequence[Any], greeting: bytes) -> EchoPeer:
    """
    Connect an L{EchoPeer} to C{address} (C{[host, port]}); it is closed at
    cleanup.
    """
    endpoint = TCP4ClientEndpoint(reactor, address[0], int(address[1]))
    peer = await connectProtocol(endpoint, EchoPeer(greeting))
    testCase.addCleanup(peer.close)
    return peer


# RFC 6062 --------------------------------------------------------------------


class RFC6062Tests(TestCase):
    """
    Our own RFC 6062 client allocates a TCP relayed address over TCP, and
    reaches TCP peers that run in this process.
    """

    timeout = 30

    async def _client(self, relay: LoopbackRelay, *options: str) -> Dict[str, Any]:
        """
        Run the client to its end; it must succeed.

        @return: its report.
        """
        child = await runToCompletion(self, rfc6062Args(relay, *options))
        result = finalReport(self, child)
        self.assertEqual((child.exitCode, result["error"]), (0, None), describe(child))
        return result

    async def test_connect(self) -> None:
        """
        Connect opens a connection from the relayed address to the peer and
        answers CONNECTION-ID; ConnectionBind on a new connection splices it
        with the peer's, byte for byte (RFC 6062 sections 4.3, 5.2, 5.4); a
        second Connect to the same peer gets 446, and one to a port that
        refuses gets 447 at once.
        """
        relay = startStreamRelay(self)
        echo, server = startEchoServer(self)
        refusing = closedPort(self)
        result = await self._client(
            relay, "--connect", str(echo), "--connect", str(echo), "--connect", str(refusing)
        )
        first, again, refused = result["connects"]
        self.assertEqual([first["code"], again["code"], refused["code"]], [None, 446, 447], result)
        self.assertEqual(first["echoed"], 1 + 1203 + 300_000)
        # The relay answered 447 when the connection was refused, not at its
        # 30 s timeout.
        self.assertLess(refused["seconds"], 5.0, result)
        self.assertEqual(
            [(e["method"], e["code"]) for e in relay.events.matching(isRefused)],
            [("CONNECT", 446), ("CONNECT", 447)],
        )
        # The peer saw the connection come from the relayed address.
        [connection] = server.connections
        self.assertEqual(connection.remote, TransportAddress(*result["relayed"]))
        self.assertEqual(len(connection.received), first["echoed"])
        # Deleting the allocation closed the peer connection.
        await connection.whenClosed()
        self.assertEqual(relay.server.peerConnections, {})
        bound = relay.events.matching(lambda event: "connectionID" in event and "client" in event)
        self.assertEqual(
            [(f"{event['connectionID']:08x}", event["peer"]) for event in bound],
            [(first["connectionID"], str(echo))],
        )

    async def test_accept(self) -> None:
        """
        With a permission, a peer connecting to the relayed address causes a
        ConnectionAttempt indication with the peer's address (RFC 6062
        section 5.3); after ConnectionBind the client gets what the peer sent
        before the bind, bytes flow both ways, and when the peer closes, the
        relay closes the data connection (section 5.5).
        """
        relay = startStreamRelay(self)
        greeting = b"hello from the peer, before any ConnectionBind"
        options = ["--accept-from", HOST, "--greeting", greeting.decode(), "--await-peer-close"]
        child = spawn(self, rfc6062Args(relay, *options))
        permitted = await progress(child, "permitted")
        peer = await connectPeer(self, permitted["relayed"], greeting)
        await progress(child, "echoed")
        await peer.close()
        await child.whenEnded()
        result = finalReport(self, child)
        self.assertEqual((child.exitCode, result["error"]), (0, None), describe(child))
        accepted = result["accepted"]
        self.assertEqual(TransportAddress(*accepted["peer"]), peer.local, result)
        self.assertTrue(accepted["greeting"], result)
        self.assertEqual(accepted["echoed"], len(peer.received))
        self.assertEqual(accepted["sentSHA256"], _sha256(peer.received))
        self.assertTrue(accepted["closedByPeer"], result)
        self.assertEqual(relay.server.peerConnections, {})
        [bound] = relay.events.matching(lambda event: "connectionID" in event and "client" in event)
        self.assertEqual(
            (f"{bound['connectionID']:08x}", bound["peer"], bound["relayed"]),
            (accepted["connectionID"], str(peer.local), relayedKey(result["relayed"])),
        )

    async def test_acceptNeedsPermission(self) -> None:
        """
        A peer without a permission that connects to the relayed address is
        closed at once and no ConnectionAttempt is sent for it (RFC 6062
        section 5.3); once the permission exists, the next peer is offered.
        """
        relay = startStreamRelay(self)
        child = spawn(self, rfc6062Args(relay, "--accept-from", HOST, "--hold"), input=None)
        holding = await progress(child, "holding")
        stranger = await connectPeer(self, holding["relayed"], b"knock knock")
        await stranger.whenClosed()
        self.assertEqual(stranger.received, b"")
        server = relay.server
        self.assertEqual(dict(server.peerConnectionsRefused), {"permission": 1})
        self.assertEqual(server.peerConnections, {})
        child.finishInput(b"go\n")
        permitted = await progress(child, "permitted")
        peer = await connectPeer(self, permitted["relayed"], b"")
        await child.whenEnded()
        result = finalReport(self, child)
        self.assertEqual((child.exitCode, result["error"]), (0, None), describe(child))
        self.assertEqual(TransportAddress(*result["accepted"]["peer"]), peer.local, result)
        await peer.whenClosed()

    async def test_connectDenied(self) -> None:
        """
        Connect to a peer the policy denies (loopback, without
        allow-loopback-peers) gets 403, and no connection is attempted (RFC
        8656 section 21.2.1 via RFC 6062 section 5.2).
        """
        relay = startStreamRelay(self, allow_loopback_peers=False)
        echo, server = startEchoServer(self)
        result = await self._client(relay, "--connect", str(echo))
        [denied] = result["connects"]
        self.assertEqual(denied["code"], 403, result)
        self.assertEqual(server.connections, [])

    async def test_relayedPortNotShared(self) -> None:
        """
        A TCP relayed address belongs to one allocation: a second relay given
        the same one-port range answers 508 while the first holds the port
        (RFC 8656 section 7.2), instead of listening on it too.
        """
        port = freeRelayPort()
        first = startStreamRelay(self, min_port=port, max_port=port)
        second = startStreamRelay(self, min_port=port, max_port=port)
        holder = spawn(self, rfc6062Args(first, "--accept-from", HOST, "--hold"), input=None)
        holding = await progress(holder, "holding")
        self.assertEqual(holding["relayed"], [HOST, port])
        child = await runToCompletion(self, rfc6062Args(second))
        result = finalReport(self, child)
        self.assertEqual((result["relayed"], result["errorCode"]), (None, 508), describe(child))

    async def test_usageLogged(self) -> None:
        """
        The end of a TCP allocation is logged with the bytes relayed each way
        through its peer connections, as for UDP allocations.
        """
        relay = startStreamRelay(self)
        echo, _ = startEchoServer(self)
        result = await self._client(relay, "--connect", str(echo))
        ended = await relay.whenEnded(relayedKey(result["relayed"]))
        [connect] = result["connects"]
        self.assertEqual(
            (ended["bytesToPeer"], ended["bytesFromPeer"]),
            (connect["echoed"], connect["echoed"]),
            ended,
        )


def freeRelayPort() -> int:
    """
    Find a TCP port in the relay range of L{tests._relays} (outside
    Linux's ephemeral range, so no client or listener socket takes it) that
    nothing uses now.
    """
    for port in range(MIN_RELAY_PORT, MAX_RELAY_PORT + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free TCP port in {MIN_RELAY_PORT}-{MAX_RELAY_PORT}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
