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

from typing import Any, Dict, List

from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import deferLater
from twisted.protocols import tls as twistedTLS
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase
from tests._relays import ServerConnections, startRelay
from tests._sockets import (
    CHANNEL,
    UnverifiedClient,
    bindChannel,
    bindingRequest,
    datagramClient,
    roundTrip,
    streamTURNClient,
    udpTURNClient,
)
from tests._timing import PROMPTLY, reactor, within

# How long a STUN Binding may take while the relay is flooded.
BINDING_DEADLINE = 1.0
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


# A TCP and a UDP listener.
TCP_AND_UDP = ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]


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


class SlowReaderTests(TURNTestCase, TestCase):
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
        tls = UnverifiedClient() if transport == "tls" else None
        relay = startRelay(
            self,
            listen=[f"{transport}:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"],
            tls_check_interval=0,
        )
        connections = ServerConnections(self, relay, transport)
        streamAddress = relay.address(transport)

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
        stun = udpTURNClient(self, relay.address("udp"))

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
                self.assertSuccess(answer)
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
        warnings = relay.events.matching(
            lambda event: "reads too slowly" in event.get("log_format", "")
        )
        self.assertEqual([event["client"] for event in warnings], [slow.address])
        self.assertIsNone(slow.lostReason)
        await roundTrip(self, other.session, otherPeer, otherRelayed, b"after the flood")

        # Reading again: a Binding answer comes after everything the relay
        # had buffered, and relaying goes on.
        slowTransport.resumeProducing()
        answer = await within(slow.session.binding(), PROMPTLY, "Binding after the flood")
        self.assertSuccess(answer)
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


class ConnectionLimitTests(TURNTestCase, TestCase):
    """
    Connections without an allocation are held to a quiet spell and a count.
    """

    timeout = 20

    async def test_idleHalfHeaderClosed(self) -> None:
        """
        A connection that sends half a STUN header and then nothing is closed
        once stream-idle-timeout has passed.
        """
        relay = startRelay(self, listen=TCP_AND_UDP, stream_idle_timeout=IDLE_TIMEOUT)
        connections = ServerConnections(self, relay, "tcp")
        client = await streamTURNClient(self, relay.address("tcp"))
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
        relay = startRelay(self, listen=TCP_AND_UDP, max_unallocated_per_source=2)
        connections = ServerConnections(self, relay, "tcp")
        address = relay.address("tcp")
        first = await streamTURNClient(self, address)
        second = await streamTURNClient(self, address)
        for client in (first, second):
            self.assertSuccess(await within(client.session.binding(), PROMPTLY, "Binding"))
        self.assertEqual(connections.limits.unallocated, 2)

        third = await streamTURNClient(self, address)
        started = reactor.seconds()
        await within(third.whenClosed(), PROMPTLY, "closing the connection beyond the limit")
        self.assertLess(reactor.seconds() - started, IDLE_TIMEOUT)
        self.assertEqual(dict(connections.limits.closed), {"per-source": 1})

        self.assertEqual(connections.limits.unallocated, 2)

        self.assertSuccess(await within(first.session.allocate(), PROMPTLY, "Allocate"))
        self.assertEqual(connections.limits.unallocated, 1)
        fourth = await streamTURNClient(self, address)
        self.assertSuccess(await within(fourth.session.binding(), PROMPTLY, "Binding"))
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
