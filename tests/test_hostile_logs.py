"""
Requests from sources nobody can trust, through real sockets on loopback: a
flood that must not flood the log, the size of every unauthenticated answer
against its request (amplification), and a burst from one source against
the per-source limit.

The relay runs in-process on the global reactor; the flooders are plain
non-blocking sockets of the same process, paced on what the relay has read
so that the kernel drops nothing and every request is handled.  Each flood
is bounded in count, and in time by the test's timeout.
"""

from __future__ import annotations

import re
import socket
from typing import Callable, Dict, Optional, Tuple

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase
from tests._logs import LogRecorder
from tests._relays import LoopbackRelay, startRelay
from tests._sockets import DatagramClient, datagramClient, noIPv6Loopback, udpTURNClient
from tests._timing import PROMPTLY, reactor, within
from tests.test_turn_refusals import EXCHANGES, signedAnonymously, unsigned
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import Method, decodeMessage
from turnrelay.turn.sources import AMPLIFICATION_LIMIT

# The flood of issue 9, item 4: MESSAGE-INTEGRITY without USERNAME or NONCE.
FLOOD = 80_000
# What the flood may add to the log, in bytes.
LOG_BOUND = 10_000
# The burst of issue 9, item 5.
BURST = 1_000
# At most this many datagrams are left unread by the relay at once: well
# within the default socket buffer, so that the kernel drops none.
WINDOW = 200

NO_IPV6 = noIPv6Loopback()


def logSize(log: LogRecorder) -> int:
    """
    @return: how many bytes twistd's log file would hold of C{log}.
    """
    return len(log.logFileText().encode("utf-8"))


async def flood(
    server: TransportAddress,
    data: bytes,
    count: int,
    handled: Callable[[], int],
    interface: str = "127.0.0.1",
) -> float:
    """
    Send C{data} C{count} times to C{server} from one plain socket, as fast
    as the relay reads it: never more than L{WINDOW} ahead of C{handled()}.

    @return: the seconds it took the relay to handle them all.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    start = reactor.seconds()
    base = handled()
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        sender.bind((interface, 0))
        sender.setblocking(False)
        address = (server.host, server.port)
        sent = 0
        while sent < count or handled() - base < count:
            while sent < count and sent - (handled() - base) < WINDOW:
                sender.sendto(data, address)
                sent += 1
            await deferLater(reactor, 0, lambda: None)
    return reactor.seconds() - start


class LogFloodTests(TURNTestCase, TestCase):
    """
    Refused requests from sources not authenticated are summed up in the
    log, never logged one by one (issue 9, item 4).
    """

    timeout = 120

    async def _flood(self, **settings: object) -> Tuple[LoopbackRelay, LogRecorder, int, float]:
        """
        Start a relay (refusals summed up every second), make and end an
        allocation around a flood of L{FLOOD} requests carrying
        MESSAGE-INTEGRITY without USERNAME or NONCE, and stop the relay.

        @return: the relay, its log, the bytes logged from the flood's start
            to the relay's stop, and the seconds the flood took.
        """
        log = LogRecorder(self, namespace="")
        relay = startRelay(self, refusal_summary_interval=1, **settings)
        server = relay.address()
        session = udpTURNClient(self, server)
        self.assertSuccess(await within(session.allocate(), PROMPTLY, "Allocate"))
        before = logSize(log)
        failures = relay.server.authFailures
        seconds = await flood(
            server, signedAnonymously(), FLOOD, lambda: failures["missing-attribute"]
        )
        self.assertSuccess(await within(session.refresh((A.LIFETIME, 0)), PROMPTLY, "Refresh 0"))
        await relay.service.stopService()
        # Everything logged since the allocation was made: the flood's
        # summaries (the last one at stop), the allocation's end, the stop.
        added = logSize(log) - before
        self.assertEqual(failures["missing-attribute"], FLOOD)
        text = log.logFileText()
        self.assertRegex(
            text, r"allocation 127\.0\.0\.1:\d+ created for alice on udp:127\.0\.0\.1:\d+->"
        )
        self.assertRegex(
            text,
            r"allocation 127\.0\.0\.1:\d+ deleted: alice on udp:127\.0\.0\.1:\d+->\S+, [\d.]+ s, "
            r"0 packets \(0 bytes\) to peers, 0 packets \(0 bytes\) from peers, 0 dropped",
        )
        return relay, log, added, seconds

    async def test_floodRateLimited(self) -> None:
        """
        With the default per-source limit, 80,000 such requests add less
        than 10 KB to the log (summaries of what was refused, by reason);
        the allocation's created and ended records are there.
        """
        relay, log, added, seconds = await self._flood()
        self.assertLess(added, LOG_BOUND, log.logFileText()[-3000:])
        refusals = relay.server.refusals
        self.assertEqual(refusals["missing-attribute"], FLOOD)
        self.assertGreater(refusals["rate-limited"], FLOOD - 40 - 20 * (seconds + 1))
        summaries = re.findall(r"refused unauthenticated requests in the last", log.logFileText())
        self.assertGreaterEqual(len(summaries), 1)
        self.assertLessEqual(len(summaries), seconds + 2)
        self.assertNotRegex(log.logFileText(), r"refused with 400")

    async def test_floodAnswered(self) -> None:
        """
        With a per-source limit high enough to answer them all (each gets
        its 400), the log is just as quiet.
        """
        relay, log, added, _ = await self._flood(
            unauthenticated_rate=1_000_000, unauthenticated_burst=1_000_000
        )
        self.assertLess(added, LOG_BOUND, log.logFileText()[-3000:])
        self.assertEqual(relay.server.requests["ALLOCATE", "400"], FLOOD)
        self.assertEqual(relay.server.refusals["rate-limited"], 0)


class AmplificationTests(TURNTestCase, TestCase):
    """
    No unauthenticated answer over UDP is more than three times the size of
    its request (issue 9, item 5), from IPv4 and IPv6 clients.
    """

    async def _ratios(self, interface: str) -> Dict[str, Optional[float]]:
        """
        Send every kind of unauthenticated request (L{EXCHANGES}) from
        C{interface}, each followed by a Binding request whose answer says
        that the relay is done with it.

        @return: response size / request size by kind, L{None} for no
            response.
        """
        relay = startRelay(self, listen=[f"udp:0:interface={interface}"])
        server = relay.address()
        client = datagramClient(self, interface)
        ratios: Dict[str, Optional[float]] = {}
        for name, make in EXCHANGES.items():
            data = make()
            probe = unsigned(Method.BINDING)
            client.send(data, server)
            client.send(probe, server)
            response = await within(client.receive(), PROMPTLY, name)
            if response[8:20] == probe[8:20]:
                ratios[name] = None
                continue
            ratios[name] = len(response) / len(data)
            self.assertEqual(decodeMessage(response).transactionID, data[8:20], name)
            answer = await within(client.receive(), PROMPTLY, name + " probe")
            self.assertEqual(answer[8:20], probe[8:20], name)
        return ratios

    def assertBounded(self, ratios: Dict[str, Optional[float]]) -> None:
        worst = max(ratio or 0 for ratio in ratios.values())
        self.assertLessEqual(worst, AMPLIFICATION_LIMIT, ratios)
        # What real clients send is answered: Binding, and the 401 to a
        # browser's first Allocate.
        for name in ("binding", "binding+fingerprint", "allocate", "allocate+fingerprint"):
            self.assertIsNotNone(ratios[name], name)
        self.assertIsNone(ratios["bare allocate"])

    async def test_ipv4(self) -> None:
        """
        From 127.0.0.1: at most 3.0.
        """
        self.assertBounded(await self._ratios("127.0.0.1"))

    async def test_ipv6(self) -> None:
        """
        From ::1 (XOR-MAPPED-ADDRESS is 12 bytes longer): at most 3.0.
        """
        if NO_IPV6:
            self.skipTest(NO_IPV6)
        self.assertBounded(await self._ratios("::1"))


class BurstTests(TURNTestCase, TestCase):
    """
    The per-source limit on unauthenticated UDP answers holds under a
    burst, and other sources are still answered (issue 9, item 5).
    """

    async def test_burst(self) -> None:
        """
        Of 1,000 Binding requests from one source, no more are answered than
        the burst and the rate allow; another IPv4 source, and an IPv6 one,
        still get answers.
        """
        relay = startRelay(self)
        server = relay.address()
        config = relay.service.config
        limit = config.unauthenticatedBurst, config.unauthenticatedRate
        server6: Optional[TransportAddress] = None
        if not NO_IPV6:
            server6 = startRelay(self, listen=["udp:0:interface=::1"]).address()
        requests = relay.server.requests
        refusals = relay.server.refusals

        def handled() -> int:
            return requests["BINDING", "success"] + refusals["rate-limited"]

        seconds = await flood(server, unsigned(Method.BINDING), BURST, handled)
        answered = requests["BINDING", "success"]
        burst, rate = limit
        self.assertLessEqual(answered, burst + rate * seconds + 1)
        self.assertGreaterEqual(answered, burst)
        self.assertEqual(refusals["rate-limited"], BURST - answered)
        self.assertEqual(relay.service.stats()["unauthenticatedSources"], 1)

        await self.assertAnswered(datagramClient(self, "127.0.0.2"), server)
        if server6 is not None:
            await self.assertAnswered(datagramClient(self, "::1"), server6)

    async def assertAnswered(self, client: DatagramClient, server: TransportAddress) -> None:
        probe = unsigned(Method.BINDING)
        client.send(probe, server)
        answer = await within(client.receive(), PROMPTLY, f"Binding from {client.address}")
        self.assertEqual(decodeMessage(answer).transactionID, probe[8:20])
