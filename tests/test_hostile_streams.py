"""
The front door under hostile load, through real sockets on loopback: floods
of TCP connections that never allocate, a client that pipelines requests
and never reads, and a peer that opens thousands of RFC 6062 connections.

Each flood is bounded in count and time.  The relays of the first tests run
in-process; those whose memory or descriptors are measured run as a real
twistd child, so that the figures are the relay's alone.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from typing import Any, Dict, List, Tuple
from urllib.request import urlopen

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase

from tests._assertions import TURNTestCase
from tests._relays import ServerConnections, startRelay
from tests._sockets import (
    SocketTURNSession,
    UnverifiedClient,
    bindChannel,
    bindingRequest,
    datagramClient,
    roundTrip,
    streamTURNClient,
)
from tests._timing import PROMPTLY, poll, reactor, within
from tests._twistd import TwistdRelay, allEnter, twistdRelayArgs
from tests.test_admin_metrics import parseScrape, value
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress

# How fast a client from elsewhere must get in while the flood holds.
GET_IN_WITHIN = 1.0
# The flood of connections that never allocate, per variant and source.
FLOOD = 1100
# How many connections are opened before the relay is let to accept them:
# less than Twisted's listen backlog (50), so that no SYN is dropped.
BATCH = 40
ALLOCATE_TIMEOUT = 2.0
# How long the client that never reads keeps sending requests.
HOG_SECONDS = 4.0


def raiseDescriptorLimit(testCase: TestCase, needed: int) -> None:
    """
    Make room for C{needed} more descriptors in this process, or skip.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(os.listdir("/proc/self/fd")) + needed + 256
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        raise SkipTest(f"needs {want} descriptors; ulimit -Hn is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    testCase.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))


class RawConnections:
    """
    Plain non-blocking sockets, many of them, from one source address: what
    a flooder holds.  The reactor never sees them, so they cost the test
    nothing per event; they are closed at cleanup.
    """

    def __init__(self, testCase: TestCase, source: str) -> None:
        self.source = source
        self.sockets: List[socket.socket] = []
        self._closed: set[int] = set()
        testCase.addCleanup(self.closeAll)

    async def connect(
        self, target: TransportAddress, count: int, accepted: Any, first: bytes = b""
    ) -> None:
        """
        Open C{count} connections to C{target}, L{BATCH} at a time, waiting
        after each batch until the relay has accepted it.

        @param accepted: returns how many connections the relay has accepted.
        @param first: bytes each connection sends at once.
        """
        while count > 0:
            batch = min(BATCH, count)
            expected = accepted() + batch
            for _ in range(batch):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.bind((self.source, 0))
                s.connect_ex((target.host, target.port))
                self.sockets.append(s)

            def acceptedAll(expected: int = expected) -> bool:
                return bool(accepted() >= expected)

            await poll(acceptedAll, PROMPTLY, "the relay accepting")
            if first:
                for s in self.sockets[-batch:]:
                    self._send(s, first)
            count -= batch

    def _send(self, s: socket.socket, data: bytes) -> None:
        try:
            s.send(data)
        except OSError:
            self._closed.add(s.fileno())

    def sendAll(self, data: bytes) -> None:
        """
        Send C{data} on every connection still open, reading and discarding
        what came back.
        """
        for s in self.sockets:
            if self._isOpen(s):
                self._send(s, data)

    def _isOpen(self, s: socket.socket) -> bool:
        if s.fileno() in self._closed:
            return False
        try:
            while s.recv(65536):
                pass
            closed = True  # end of stream
        except BlockingIOError:
            closed = False
        except OSError as e:
            closed = e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)
        if closed:
            self._closed.add(s.fileno())
        return not closed

    def openCount(self) -> int:
        """
        @return: how many connections the relay has not closed.
        """
        return sum(1 for s in self.sockets if self._isOpen(s))

    def closeAll(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []


async def getsInAndRelays(
    testCase: TURNTestCase, relay: Any, transport: str, tls: Any = None
) -> float:
    """
    Connect a client from 127.0.0.1 over C{transport}, allocate, bind a
    channel and relay a round trip with a UDP peer.

    @return: the seconds it took.
    """
    started = reactor.seconds()
    peer = datagramClient(testCase, "127.0.0.1")
    client = await streamTURNClient(testCase, relay.address(transport), tls)
    if tls is not None:
        await within(client.whenHandshaken(), PROMPTLY, "the TLS handshake")
    relayed = await bindChannel(testCase, client.session, peer.address)
    await roundTrip(testCase, client.session, peer, relayed, transport.encode())
    return reactor.seconds() - started


class UnallocatedFloodTests(TURNTestCase, TestCase):
    """
    Connections that never allocate cannot lock other clients out, and do
    not outlive stream-allocate-timeout.
    """

    timeout = 90

    async def test_floodOfUnallocatedConnections(self) -> None:
        """
        With 1,100 connections from each of three addresses that never
        allocate (one idle, one sending half a STUN header, one sending a
        Binding every half second), a client from another address allocates
        and relays over TCP and over TLS within a second; once
        stream-allocate-timeout has passed, none of the 3,300 is open.
        """
        raiseDescriptorLimit(self, 3 * FLOOD * 2 + 200)
        relay = startRelay(
            self,
            listen=[
                "tcp:0:interface=127.0.0.1",
                "tls:0:interface=127.0.0.1",
                "udp:0:interface=127.0.0.1",
            ],
            stream_allocate_timeout=ALLOCATE_TIMEOUT,
            # Less than the flood holds after the per-source cap (3 x 64):
            # shedding has to make room for the newcomers too.
            max_unallocated_connections=150,
        )
        tcp = ServerConnections(self, relay, "tcp")
        ServerConnections(self, relay, "tls")
        target = relay.address("tcp")
        _, binding = bindingRequest()
        variants: Dict[str, Tuple[str, bytes]] = {
            "idle": ("127.0.0.2", b""),
            "half a header": ("127.0.0.3", binding[:10]),
            "Binding": ("127.0.0.4", binding),
        }
        floods: Dict[str, RawConnections] = {}
        for name, (source, first) in variants.items():
            flood = floods[name] = RawConnections(self, source)
            await flood.connect(target, FLOOD, lambda: len(tcp.protocols), first)
        limits = tcp.limits
        self.assertLessEqual(limits.unallocated, 150)
        self.assertGreater(limits.closed["shed"], 0)
        turnedAway = limits.closed["per-source"] + limits.closed["shed"]
        self.assertGreaterEqual(turnedAway, 3 * FLOOD - 150)

        floodStarted = reactor.seconds()
        floods["Binding"].sendAll(binding)
        for transport, tls in (("tcp", None), ("tls", UnverifiedClient())):
            elapsed = await getsInAndRelays(self, relay, transport, tls)
            self.assertLess(elapsed, GET_IN_WITHIN, transport)

        async def keepSendingBindings() -> None:
            while floods["Binding"].openCount():
                floods["Binding"].sendAll(binding)
                await deferLater(reactor, 0.5, lambda: None)

        sending: Deferred[None] = Deferred.fromCoroutine(keepSendingBindings())
        await poll(
            lambda: sum(flood.openCount() for flood in floods.values()) == 0,
            ALLOCATE_TIMEOUT + PROMPTLY,
            "every flooding connection to be closed",
            interval=0.1,
        )
        await sending
        self.assertGreaterEqual(reactor.seconds() - floodStarted, ALLOCATE_TIMEOUT * 0.5)
        self.assertGreater(limits.closed["allocate-timeout"], 0)
        self.assertEqual(limits.unallocated, 0)
        self.assertEqual(relay.events.matching(lambda e: "closing" in e.get("log_format", "")), [])


class SlowReaderMemoryTests(TURNTestCase, TestCase):
    """
    A client that pipelines requests and never reads its answers costs the
    relay a bounded buffer.
    """

    timeout = 60

    async def test_pipelinedRequestsNeverRead(self) -> None:
        """
        A TCP client that pipelines unauthenticated Binding requests for a
        while and never reads grows the relay's memory by less than 5 MB,
        and other clients keep relaying meanwhile.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        relay = await TwistdRelay(self, twistdRelayArgs(directory)).started()
        # A first round trip, so that what it costs is not counted.
        await allEnter(self, relay)
        before = relay.rss()

        _, binding = bindingRequest()
        burst = binding * 3000
        hog = socket.create_connection((relay.addresses["tcp"].host, relay.addresses["tcp"].port))
        self.addCleanup(hog.close)
        hog.setblocking(False)
        sent = 0
        started = reactor.seconds()
        while reactor.seconds() - started < HOG_SECONDS:
            try:
                while True:
                    sent += hog.send(burst)
            except BlockingIOError:
                pass  # our buffer is full: the relay reads no more for now
            except OSError:
                break  # the relay closed it: past stream-max-unsent
            await deferLater(reactor, 0.001, lambda: None)
        grown = relay.rss() - before
        self.assertGreater(sent, 1_000_000)
        self.assertLess(grown, 5 * 1024 * 1024, f"sent {sent} bytes, RSS grew by {grown}")
        await allEnter(self, relay)


class PeerConnectionFloodTests(TURNTestCase, TestCase):
    """
    A peer opening thousands of connections to a TCP relayed address cannot
    exhaust the relay's descriptors.
    """

    timeout = 90

    async def _flood(self, relay: TwistdRelay, count: int) -> RawConnections:
        """
        Allocate a TCP relayed address with a permission for 127.0.0.1, and
        open C{count} connections to it from there.
        """
        client = await streamTURNClient(self, relay.addresses["tcp"])
        session: SocketTURNSession = client.session
        allocated = await within(session.allocate(transport=A.TRANSPORT_TCP), PROMPTLY, "Allocate")
        relayed = self.assertSuccess(allocated).get(A.XOR_RELAYED_ADDRESS)
        assert isinstance(relayed, TransportAddress)
        permitted = await within(
            session.createPermission(TransportAddress("127.0.0.1", 1)), PROMPTLY, "permission"
        )
        self.assertSuccess(permitted)
        flood = RawConnections(self, "127.0.0.1")
        # The relay accepts in the background; count what the kernel took.
        for start in range(0, count, BATCH):
            for _ in range(min(BATCH, count - start)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.bind(("127.0.0.1", 0))
                s.connect_ex((relayed.host, relayed.port))
                flood.sockets.append(s)
            await deferLater(reactor, 0.005, lambda: None)
        self.client = client
        return flood

    async def test_peerFloodCappedPerAllocation(self) -> None:
        """
        3,000 connections from a peer to one TCP allocation hold at most
        max-peer-connections descriptors; new UDP, TCP and TLS clients
        allocate and relay during the flood.
        """
        raiseDescriptorLimit(self, 3200)
        directory = FilePath(self.mktemp())
        directory.makedirs()
        relay = await TwistdRelay(
            self, twistdRelayArgs(directory, "--max-peer-connections", "100")
        ).started()
        baseline = relay.openDescriptors()
        flood = await self._flood(relay, 3000)
        # The allocation holds its 100 pending connections (and the client's
        # control connection), and no more.
        await poll(
            lambda: relay.openDescriptors() - baseline >= 100,
            PROMPTLY,
            "the peer connections the relay holds",
            describe=relay.openDescriptors,
        )
        await poll(lambda: flood.openCount() <= 100 + 60, PROMPTLY, "refusals", interval=0.1)
        self.assertLess(relay.openDescriptors() - baseline, 110)
        await allEnter(self, relay)

    async def test_descriptorBudget(self) -> None:
        """
        With a descriptor limit of 256 and no per-allocation cap to speak
        of, 3,000 peer connections stop at descriptor-reserve: the relay
        never runs out (EMFILE), refuses the rest and says so in its
        metrics, not once per connection in its log; once the peer lets
        go, new UDP, TCP and TLS clients allocate and relay.
        """
        raiseDescriptorLimit(self, 3200)
        directory = FilePath(self.mktemp())
        directory.makedirs()
        args = twistdRelayArgs(
            directory,
            "--max-peer-connections",
            "100000",
            "--metrics",
            "tcp:0:interface=127.0.0.1",
        )
        limited = ["prlimit", "--nofile=256:256", "--"] + args
        relay = await TwistdRelay(self, limited).started()
        line = await relay.child.waitForOutput(rb"metrics listening on 127\.0\.0\.1:(\d+)")
        metricsURL = f"http://127.0.0.1:{int(line.group(1))}/metrics"
        flood = await self._flood(relay, 3000)
        await poll(
            lambda: relay.openDescriptors() >= 256 - 64 - 8,
            PROMPTLY,
            "the reserve",
            describe=relay.openDescriptors,
        )
        self.assertLessEqual(relay.openDescriptors(), 256 - 32)
        samples = parseScrape(await scrape(metricsURL))
        refusals = "turnrelay_descriptor_refusals_total"
        self.assertGreater(value(samples, refusals, kind="peer"), 0)
        self.assertEqual(value(samples, "turnrelay_out_of_descriptors_total"), 0)
        flood.closeAll()
        await self.client.close()
        await poll(lambda: relay.openDescriptors() < 64, PROMPTLY, "the peers' connections closing")
        await allEnter(self, relay)
        output = relay.child.output + relay.child.errors
        self.assertLessEqual(output.count(b"file descriptors"), 4, output[-3000:])
        self.assertNotIn(b"Too many open files", output)
        self.assertNotIn(b"EMFILE", output)


async def scrape(url: str) -> str:
    """
    @return: the body of a GET of C{url}, done off the reactor thread.
    """
    with await deferToThread(urlopen, url, timeout=PROMPTLY) as response:
        body: bytes = response.read()
    return body.decode("utf-8")
