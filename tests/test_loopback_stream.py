"""
TURN over TCP (and TLS) through real sockets on 127.0.0.1: a client that
stops reading while its peer floods it, a connection that goes quiet in the
middle of a message, and too many connections without an allocation.

The relay runs in-process on the global reactor; clients and peers are
sockets of the same process.  The flood goes out in short bursts, each
followed by a turn of the reactor, so that the relay reads it as it comes
(the kernel drops what a relay socket's buffer cannot hold, as it would on
a real network).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import deferLater
from twisted.protocols import tls as twistedTLS
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._loopback import DatagramClient, bindingRequest, datagramClient, reactor
from tests._relayfixture import ServerEvents
from tests._turnsocket import (
    ServerConnections,
    TURNSession,
    TURNStreamClient,
    UnverifiedClient,
    assertSuccess,
    listenerAddress,
    startTURNRelay,
    streamTURNClient,
    udpTURNClient,
    within,
)
from turnrelay.service import RelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.transports.tls import makeSelfSignedCertificate

# Bounds on waits for things that happen in milliseconds on loopback.
PROMPTLY = 5.0
# How long a STUN Binding may take while the relay is flooded.
BINDING_DEADLINE = 1.0
CHANNEL = 0x4000
# The flood: DATAGRAMS datagrams of DATAGRAM_SIZE bytes, BURST at a time.
DATAGRAMS = 20_000
DATAGRAM_SIZE = 1000
BURST = 50
# A Binding and a round trip by the other client every so many bursts.
PROBE_EVERY = 20
# What Twisted's TCP transports buffer before pausing their producer.
TCP_BUFFER_SIZE = FileDescriptor.bufferSize
# Twisted's TLS transport (since 22.8) gathers small writes up to this many
# bytes, for the next reactor turn, before encrypting them; only then can
# the TCP transport under it pause the relay.
TLS_AGGREGATE_SIZE: int = getattr(
    getattr(twistedTLS, "_AggregateSmallWrites", None), "MAX_BUFFER_SIZE", 0
)
# The record headers and tags of that much data, with room to spare.
TLS_RECORD_OVERHEAD = 1024
# The smallest idle timeout allowed.
IDLE_TIMEOUT = 1.0


def startStreamRelay(testCase: TestCase, **settings: Any) -> Tuple[RelayService, ServerEvents]:
    """
    Start a relay with a TCP and a UDP listener on 127.0.0.1.
    """
    return startTURNRelay(
        testCase, listen=["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"], **settings
    )


async def bindChannel(
    testCase: TestCase, session: TURNSession, peer: TransportAddress
) -> TransportAddress:
    """
    Allocate a UDP relay and bind L{CHANNEL} to C{peer}.

    @return: the relayed address.
    """
    allocated = assertSuccess(testCase, await within(session.allocate(), PROMPTLY, "Allocate"))
    bound = await within(session.channelBind(CHANNEL, peer), PROMPTLY, "ChannelBind")
    assertSuccess(testCase, bound)
    relayed = allocated.get(A.XOR_RELAYED_ADDRESS)
    assert isinstance(relayed, TransportAddress)
    return relayed


async def roundTrip(
    testCase: TestCase,
    session: TURNSession,
    peer: DatagramClient,
    relayed: TransportAddress,
    tag: bytes,
) -> None:
    """
    Send C{tag} to C{peer} over the channel and have the peer send it back.
    """
    session.sendChannelData(CHANNEL, tag)
    datagram, source = await within(peer.received.get(), PROMPTLY, "ChannelData at the peer")
    testCase.assertEqual((datagram, TransportAddress(*source[:2])), (tag, relayed))
    peer.send(tag[::-1], relayed)
    received = await within(session.channelData.get(), PROMPTLY, "ChannelData from the peer")
    testCase.assertEqual(received, (CHANNEL, tag[::-1]))


def buffered(protocol: Any) -> int:
    """
    @return: how many bytes the relay's transports for C{protocol} (TCP,
        and TLS over it) hold that the kernel has not taken yet.
    """
    transport = protocol.transport
    held = 0
    if isinstance(transport, TLSMemoryBIOProtocol):
        held += sum(len(chunk) for chunk in transport._appSendBuffer)
        aggregator = getattr(transport, "_aggregator", None)
        held += sum(len(chunk) for chunk in getattr(aggregator, "_buffer", ()))
        transport = transport.transport
    return held + len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class SlowReaderTests(TestCase):
    """
    A TCP or TLS client that does not read costs the relay a bounded buffer,
    not memory without end or a stalled reactor.
    """

    timeout = 60

    async def _flood(self, transport: str) -> None:
        """
        Flood a client that has stopped reading over C{transport} while
        another client of the same listener relays and a UDP client asks for
        Bindings; then let the first read again.
        """
        settings: Dict[str, Any] = {}
        tls = None
        if transport == "tls":
            base = FilePath(self.mktemp())
            base.makedirs()
            cert, key = base.child("turns.crt").path, base.child("turns.key").path
            makeSelfSignedCertificate(cert, key)
            settings = {"tls_cert": cert, "tls_key": key, "tls_check_interval": 0}
            tls = UnverifiedClient()
        relay, events = startTURNRelay(
            self,
            listen=[f"{transport}:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"],
            **settings,
        )
        connections = ServerConnections(self, relay, transport)
        streamAddress = listenerAddress(relay, transport)

        slow = await streamTURNClient(self, streamAddress, tls)
        flooder = datagramClient(self, "127.0.0.1")
        slowRelayed = await bindChannel(self, slow.session, flooder.address)
        # The path works before the client stops reading.
        flooder.send(b"first", slowRelayed)
        first = await within(slow.session.channelData.get(), PROMPTLY, "the first datagram")
        self.assertEqual(first, (CHANNEL, b"first"))

        other = await streamTURNClient(self, streamAddress, tls)
        otherPeer = datagramClient(self, "127.0.0.1")
        otherRelayed = await bindChannel(self, other.session, otherPeer.address)
        stun = udpTURNClient(self, listenerAddress(relay, "udp"))

        serverSide = connections.forClient(slow.address)
        allocation = serverSide.allocation
        assert allocation is not None
        slowTransport: Any = slow.transport
        slowTransport.pauseProducing()

        payload = bytes(DATAGRAM_SIZE)
        # A full TCP transport buffer and one relayed frame more; over TLS,
        # also what Twisted gathers before encrypting, and the records' own
        # bytes.
        bound = TCP_BUFFER_SIZE + 4 + DATAGRAM_SIZE
        if tls is not None:
            bound += TLS_AGGREGATE_SIZE + TLS_RECORD_OVERHEAD
        largest = 0
        latencies: List[float] = []
        dropsAt: Dict[int, int] = {}
        sendErrors = 0
        bursts = DATAGRAMS // BURST
        for burst in range(bursts):
            for _ in range(BURST):
                try:
                    flooder.send(payload, slowRelayed)
                except OSError:
                    sendErrors += 1
            # A turn of the reactor: the relay reads and relays the burst.
            await deferLater(reactor, 0, lambda: None)
            largest = max(largest, buffered(serverSide))
            if burst % PROBE_EVERY == PROBE_EVERY - 1:
                started = reactor.seconds()
                answer = await within(stun.binding(), BINDING_DEADLINE, "Binding during the flood")
                assertSuccess(self, answer)
                latencies.append(reactor.seconds() - started)
                await roundTrip(self, other.session, otherPeer, otherRelayed, b"probe %d" % burst)
                dropsAt[burst] = serverSide.droppedRelayed

        self.assertLessEqual(largest, bound)
        self.assertLessEqual(buffered(serverSide), bound)
        self.assertLess(sendErrors, DATAGRAMS // 10)
        # The flood outgrew every buffer on the way, and the drops went on
        # growing after they began.
        drops = [dropsAt[burst] for burst in sorted(dropsAt)]
        self.assertGreater(drops[-1], 0, f"nothing dropped; {allocation.usage()}")
        started = next(index for index, count in enumerate(drops) if count)
        self.assertLess(started, len(drops) - 1, f"drops only at the end: {drops}")
        self.assertGreater(drops[-1], drops[started])
        self.assertGreaterEqual(allocation.dropped, serverSide.droppedRelayed)
        # What went into the connection is what the buffers hold, not the flood.
        self.assertLess(allocation.bytesFromPeer, DATAGRAMS * DATAGRAM_SIZE // 2)
        self.assertLess(max(latencies), BINDING_DEADLINE)
        otherSide = connections.forClient(other.address)
        self.assertEqual(otherSide.droppedRelayed, 0)
        self.assertEqual(otherSide.allocation.dropped, 0)  # type: ignore[union-attr]
        warnings = events.matching(lambda event: "reads too slowly" in event.get("log_format", ""))
        self.assertEqual([event["client"] for event in warnings], [slow.address])
        self.assertIsNone(slow.lostReason)
        await roundTrip(self, other.session, otherPeer, otherRelayed, b"after the flood")

        # Reading again: a Binding answer comes after everything the relay
        # had buffered, and relaying goes on.
        slowTransport.resumeProducing()
        answer = await within(slow.session.binding(), PROMPTLY, "Binding after the flood")
        assertSuccess(self, answer)
        flooder.send(b"caught up", slowRelayed)
        while True:
            number, data = await within(
                slow.session.channelData.get(), PROMPTLY, "relaying after the client caught up"
            )
            if data == b"caught up":
                break
            self.assertEqual((number, len(data)), (CHANNEL, DATAGRAM_SIZE))

    async def test_slowReaderTCP(self) -> None:
        """
        While a peer floods a TCP client that has stopped reading, the
        relay's buffer for that connection stays within one transport
        buffer, the excess is dropped and counted (warned about once),
        Binding over UDP is answered promptly, another TCP client relays as
        before, and relaying resumes once the client reads again.
        """
        await self._flood("tcp")

    async def test_slowReaderTLS(self) -> None:
        """
        The same over TLS: the relay's buffer for a client that stopped
        reading stays bounded, the excess is dropped, others are served, and
        relaying resumes once it reads again.
        """
        await self._flood("tls")


class ConnectionLimitTests(TestCase):
    """
    Connections without an allocation are held to a quiet spell and a count.
    """

    timeout = 20

    async def test_idleHalfHeaderClosed(self) -> None:
        """
        A connection that sends half a STUN header and then nothing is closed
        once stream-idle-timeout has passed.
        """
        relay, events = startStreamRelay(self, stream_idle_timeout=IDLE_TIMEOUT)
        connections = ServerConnections(self, relay, "tcp")
        client = await streamTURNClient(self, listenerAddress(relay, "tcp"))
        _, request = bindingRequest()
        client.transport.write(request[:10])  # type: ignore[union-attr]
        started = reactor.seconds()
        await within(client.whenClosed(), IDLE_TIMEOUT + PROMPTLY, "closing the idle connection")
        self.assertGreaterEqual(reactor.seconds() - started, IDLE_TIMEOUT * 0.9)
        self.assertEqual(dict(connections.limits.closed), {"idle": 1})

    async def test_beyondMaxUnallocatedClosed(self) -> None:
        """
        Connections from one source beyond max-unallocated-per-source are
        closed as they arrive; one that holds an allocation no longer counts.
        """
        relay, events = startStreamRelay(self, max_unallocated_per_source=2)
        connections = ServerConnections(self, relay, "tcp")
        address = listenerAddress(relay, "tcp")
        first = await streamTURNClient(self, address)
        second = await streamTURNClient(self, address)
        for client in (first, second):
            assertSuccess(self, await within(client.session.binding(), PROMPTLY, "Binding"))
        self.assertEqual(connections.limits.unallocated, 2)

        third = await streamTURNClient(self, address)
        started = reactor.seconds()
        await within(third.whenClosed(), PROMPTLY, "closing the connection beyond the limit")
        self.assertLess(reactor.seconds() - started, IDLE_TIMEOUT)
        self.assertEqual(dict(connections.limits.closed), {"per-source": 1})

        self.assertEqual(connections.limits.unallocated, 2)

        assertSuccess(self, await within(first.session.allocate(), PROMPTLY, "Allocate"))
        self.assertEqual(connections.limits.unallocated, 1)
        fourth = await streamTURNClient(self, address)
        assertSuccess(self, await within(fourth.session.binding(), PROMPTLY, "Binding"))
        self.assertIsNone(fourth.lostReason)
        self.assertIsNone(second.lostReason)
        self.assertEqual(connections.limits.unallocated, 2)

        # Closing connections gives their places back, whether or not they
        # held an allocation.
        for client in (first, second, fourth):
            await client.close()
        await within(connections.whenAllClosed(), PROMPTLY, "the relay closing its side")
        self.assertEqual(connections.limits.unallocated, 0)
        self.assertEqual(len(relay.server.registry), 0)

    async def test_allocatedConnectionNotIdleClosed(self) -> None:
        """
        A connection holding an allocation is not closed for being quiet,
        while a quiet one without is.
        """
        relay, events = startStreamRelay(self, stream_idle_timeout=IDLE_TIMEOUT)
        ServerConnections(self, relay, "tcp")
        address = listenerAddress(relay, "tcp")
        allocated = await streamTURNClient(self, address)
        assertSuccess(self, await within(allocated.session.allocate(), PROMPTLY, "Allocate"))
        quiet: TURNStreamClient = await streamTURNClient(self, address)
        await within(quiet.whenClosed(), IDLE_TIMEOUT + PROMPTLY, "closing the quiet connection")
        self.assertIsNone(allocated.lostReason)
        assertSuccess(self, await within(allocated.session.binding(), PROMPTLY, "Binding"))

    async def test_deletedAllocationIdleAgain(self) -> None:
        """
        A connection whose allocation is deleted (Refresh with LIFETIME 0)
        counts as unallocated again and is closed after stream-idle-timeout.
        """
        relay, events = startStreamRelay(self, stream_idle_timeout=IDLE_TIMEOUT)
        connections = ServerConnections(self, relay, "tcp")
        client = await streamTURNClient(self, listenerAddress(relay, "tcp"))
        assertSuccess(self, await within(client.session.allocate(), PROMPTLY, "Allocate"))
        self.assertEqual(connections.limits.unallocated, 0)
        deleted = await within(client.session.refresh((A.LIFETIME, 0)), PROMPTLY, "Refresh")
        self.assertEqual(assertSuccess(self, deleted).get(A.LIFETIME), 0)
        self.assertEqual(connections.limits.unallocated, 1)
        started = reactor.seconds()
        await within(client.whenClosed(), IDLE_TIMEOUT + PROMPTLY, "closing the idle connection")
        self.assertGreaterEqual(reactor.seconds() - started, IDLE_TIMEOUT * 0.9)
        await within(connections.whenAllClosed(), PROMPTLY, "the relay closing its side")
        self.assertEqual(connections.limits.unallocated, 0)
