"""
Tests for how L{turnrelay.turn.server.TURNServer} treats requests it cannot
trust, on a fake clock: the per-source limit and the amplification limit on
unauthenticated UDP answers, the compact 401, and refusals counted and
summed up in the log instead of a line each.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests._assertions import TURNTestCase
from tests._relays import FakeRelay
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.testing import FakeClientLink
from turnrelay.turn.refusals import REFUSED_WARNINGS_PER_INTERVAL
from turnrelay.turn.server import TURNServer
from turnrelay.turn.sources import AMPLIFICATION_LIMIT, SourceRateLimiter

CLIENT = TransportAddress("192.0.2.1", 32853)
CLIENT6 = TransportAddress("2001:db8::1", 4444)


def request(method: int, *attributes: Tuple[int, object]) -> STUNMessage:
    return STUNMessage(method, MessageClass.REQUEST, os.urandom(12), list(attributes))


def unsigned(method: int = Method.ALLOCATE, *attributes: Tuple[int, object]) -> bytes:
    """
    A request without integrity: it gets the 401 challenge.
    """
    return request(method, *attributes).encode()


def signedAnonymously() -> bytes:
    """
    An Allocate with MESSAGE-INTEGRITY but no USERNAME, REALM or NONCE: 400,
    the request of the log flood (issue 9, item 4).
    """
    message = request(Method.ALLOCATE, (A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP))
    return message.encode(key=b"k" * 16)


def malformedRequest() -> bytes:
    """
    A Binding request whose attribute runs past its end: 400 if that is
    no larger.
    """
    header = request(Method.BINDING).encode()[:20]
    body = b"\x80\x22\x01\x00" + b"x" * 24
    return header[:2] + len(body).to_bytes(2, "big") + header[4:] + body


# Every kind of unauthenticated request, smallest first: what a spoofer
# could send.
EXCHANGES = {
    "binding": lambda: unsigned(Method.BINDING),
    "binding+fingerprint": lambda: request(Method.BINDING).encode(fingerprint=True),
    "binding 420": lambda: unsigned(Method.BINDING, (0x7FF0, b"")),
    "bare allocate": lambda: unsigned(),
    "allocate": lambda: unsigned(Method.ALLOCATE, (A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP)),
    "allocate+fingerprint": lambda: request(
        Method.ALLOCATE, (A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP)
    ).encode(fingerprint=True),
    "refresh": lambda: unsigned(Method.REFRESH),
    "stale nonce": lambda: request(
        Method.REFRESH, (A.USERNAME, "a"), (A.REALM, "r"), (A.NONCE, "n")
    ).encode(key=b"k" * 16),
    "missing attribute": signedAnonymously,
    "malformed": malformedRequest,
}


class ControllerTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = TURNServer(self.clock)

    def exchange(
        self, data: bytes, client: TransportAddress = CLIENT, transport: str = "udp"
    ) -> Optional[bytes]:
        """
        Hand one datagram to the controller.

        @return: what it sent back, if anything.
        """
        link = FakeClientLink(client, transportProtocol=transport)
        self.server.stunReceived(data, link)
        sent = link.popSent()
        self.assertEqual(link.sent, [])
        return sent


class AmplificationTests(ControllerTestCase):
    """
    Over UDP, no unauthenticated answer is more than three times the size of
    its request (RFC 8489 section 16.1.2).
    """

    def test_worstRatio(self) -> None:
        """
        Every kind of unauthenticated request, from IPv4 and IPv6 clients,
        gets an answer at most three times its size, or none; SOFTWARE (long,
        here) included when it fits.
        """
        self.server.software = "turnrelay 1.0, a rather long SOFTWARE value"
        answered = []
        for client in (CLIENT, CLIENT6):
            for name, make in EXCHANGES.items():
                data = make()
                response = self.exchange(data, client)
                if response is not None:
                    answered.append(name)
                    self.assertLessEqual(
                        len(response), AMPLIFICATION_LIMIT * len(data), (name, client)
                    )
        for name in ("binding", "allocate", "stale nonce", "missing attribute", "malformed"):
            self.assertIn(name, answered)

    def test_bareRequestDropped(self) -> None:
        """
        A 20-byte Allocate without attributes gets no 401 over UDP: the
        smallest one is four times larger.  It is counted as amplification.
        """
        self.assertIsNone(self.exchange(unsigned()))
        self.assertEqual(self.server.refusals, {"amplification": 1})
        self.assertEqual(self.server.authFailures, {"no-integrity": 1})
        self.assertEqual(self.server.requests, {})

    def test_compactChallenge(self) -> None:
        """
        A browser's first Allocate (REQUESTED-TRANSPORT alone, 28 bytes) gets
        the compact 401: no reason phrase, REALM, and a nonce without the
        cookie, so no PASSWORD-ALGORITHMS; and it can authenticate with it.
        """
        data = unsigned(Method.ALLOCATE, (A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP))
        sent = self.exchange(data)
        assert sent is not None
        self.assertLessEqual(len(sent), 3 * len(data))
        response = decodeMessage(sent)
        self.assertEqual(response.get(A.ERROR_CODE).code, 401)
        self.assertEqual(response.get(A.ERROR_CODE).reason, "")
        self.assertEqual(response.get(A.REALM), "turnrelay")
        self.assertFalse(response.get(A.NONCE).startswith("obMatJos2"))
        self.assertNotIn(A.PASSWORD_ALGORITHMS, response)
        self.assertTrue(self.server.authenticator.nonces.check(response.get(A.NONCE), CLIENT))
        self.assertEqual(self.server.refusals, {})
        self.assertEqual(self.server.requests, {("ALLOCATE", "401"): 1})

    def test_fullChallengeWhenItFits(self) -> None:
        """
        A request large enough gets the full 401, with the reason phrase, the
        nonce cookie and PASSWORD-ALGORITHMS.
        """
        data = unsigned(
            Method.ALLOCATE,
            (A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP),
            (A.SOFTWARE, "a client that names itself at length"),
        )
        sent = self.exchange(data)
        assert sent is not None
        response = decodeMessage(sent)
        self.assertEqual(response.get(A.ERROR_CODE).reason, "Unauthenticated")
        self.assertTrue(response.get(A.NONCE).startswith("obMatJos2"))
        self.assertIn(A.PASSWORD_ALGORITHMS, response)

    def test_streamsUnlimited(self) -> None:
        """
        Over TCP and TLS the source is real: even a bare request gets the
        full 401.
        """
        for transport in ("tcp", "tls"):
            sent = self.exchange(unsigned(), transport=transport)
            assert sent is not None
            self.assertIn(A.PASSWORD_ALGORITHMS, decodeMessage(sent))
        self.assertEqual(self.server.refusals, {})

    def test_softwareLeftOutWhenTooLarge(self) -> None:
        """
        A configured SOFTWARE is left out of an unauthenticated UDP answer it
        would make too large, and kept where it fits.
        """
        self.server.software = "x" * 40
        sent = self.exchange(unsigned(Method.BINDING), CLIENT6)
        assert sent is not None
        self.assertNotIn(A.SOFTWARE, decodeMessage(sent))
        self.server.software = "turnrelay"
        sent = self.exchange(unsigned(Method.BINDING), CLIENT6)
        assert sent is not None
        self.assertEqual(decodeMessage(sent).get(A.SOFTWARE), "turnrelay")


class SourceLimitTests(ControllerTestCase):
    """
    Unauthenticated UDP answers are held to a token bucket per source.
    """

    def setUp(self) -> None:
        super().setUp()
        self.server.sourceLimit = SourceRateLimiter(self.clock, rate=2, burst=3, maxSources=100)

    def answered(self, data: bytes, count: int, client: TransportAddress = CLIENT) -> int:
        return sum(self.exchange(data, client) is not None for _ in range(count))

    def test_burstThenRate(self) -> None:
        """
        A source gets the burst at once, then the rate; the rest is dropped
        and counted as rate-limited.
        """
        self.assertEqual(self.answered(unsigned(Method.BINDING), 10), 3)
        self.assertEqual(self.server.refusals, {"rate-limited": 7})
        self.clock.advance(1)
        self.assertEqual(self.answered(unsigned(Method.BINDING), 10), 2)

    def test_everyUnauthenticatedAnswer(self) -> None:
        """
        Challenges, 400s and malformed requests' 400s draw on the same bucket
        as Binding.
        """
        for make in (signedAnonymously, malformedRequest, unsigned, unsigned, unsigned):
            data = make() if make is not unsigned else EXCHANGES["allocate"]()
            self.exchange(data)
        self.assertEqual(self.server.refusals["rate-limited"], 2)

    def test_otherSources(self) -> None:
        """
        Another source, and another IPv6 /64, still get answers.
        """
        self.answered(unsigned(Method.BINDING), 10)
        self.assertEqual(
            self.answered(unsigned(Method.BINDING), 10, TransportAddress("192.0.2.2", 1)), 3
        )
        self.answered(unsigned(Method.BINDING), 10, CLIENT6)
        self.assertEqual(
            self.answered(unsigned(Method.BINDING), 10, TransportAddress("2001:db8::2", 1)), 0
        )
        self.assertEqual(
            self.answered(unsigned(Method.BINDING), 10, TransportAddress("2001:db8:0:1::1", 1)),
            3,
        )

    def test_streamsUnlimited(self) -> None:
        """
        TCP and TLS clients are not limited.
        """
        for transport in ("tcp", "tls"):
            answers = [
                self.exchange(unsigned(Method.BINDING), transport=transport) for _ in range(10)
            ]
            self.assertNotIn(None, answers)

    def test_authenticatedUnlimited(self) -> None:
        """
        Authenticated requests are answered whatever the source's bucket
        holds: the client proved it owns its address.
        """
        relay = FakeRelay()
        relay.server.sourceLimit = SourceRateLimiter(relay.reactor, 1, 1, 100)
        client = relay.client()
        self.assertSuccess(client.allocate())
        for _ in range(20):
            self.assertSuccess(client.request(Method.REFRESH, [(A.LIFETIME, 600)]))
        self.assertEqual(relay.server.refusals, {})


class RefusalSummaryTests(ControllerTestCase):
    """
    Refusals are counted by reason and summed up in the log once per
    interval, never logged one by one.
    """

    def setUp(self) -> None:
        super().setUp()
        self.server.refusalSummaryInterval = 60.0

    def warnings(self, events: Sequence[LogEvent]) -> List[LogEvent]:
        return [event for event in events if event["log_level"] >= LogLevel.warn]

    def test_noLinePerRequest(self) -> None:
        """
        A thousand refused requests log nothing at once; one line after the
        interval says how many, by reason.
        """
        with capturedLogs() as events:
            for _ in range(1000):
                self.exchange(signedAnonymously())
            self.exchange(malformedRequest())
            self.assertEqual(self.warnings(events), [])
            self.clock.advance(60)
        [summary] = self.warnings(events)
        self.assertEqual(summary["refused"], {"missing-attribute": 1000, "malformed": 1})
        self.assertEqual(summary["seconds"], 60)
        self.assertNotIn("code", summary)
        self.assertEqual(self.server.refusals, {"missing-attribute": 1000, "malformed": 1})

    def test_atMostOneLinePerInterval(self) -> None:
        """
        Refusals all along make one summary per interval, each of what
        happened since the one before.
        """
        with capturedLogs() as events:
            for _ in range(10):
                for _ in range(60):
                    self.exchange(signedAnonymously())
                    self.clock.advance(1)
        summaries = self.warnings(events)
        self.assertEqual(len(summaries), 10)
        self.assertEqual([s["refused"] for s in summaries], [{"missing-attribute": 60}] * 10)

    def test_noTimerWhenIdle(self) -> None:
        """
        Nothing refused, nothing scheduled: and after a summary, no timer
        runs until the next refusal.
        """
        self.exchange(unsigned(Method.BINDING))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.exchange(signedAnonymously())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(60)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_challengesNotRefusals(self) -> None:
        """
        The 401 and 438 every client meets are authentication failures, not
        refusals: no summary for them.
        """
        self.exchange(EXCHANGES["allocate"]())
        self.exchange(EXCHANGES["stale nonce"]())
        self.assertEqual(self.server.authFailures, {"no-integrity": 1, "stale-nonce": 1})
        self.assertEqual(self.server.refusals, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopSumsUp(self) -> None:
        """
        Stopping the controller logs what the pending summary would have, and
        leaves no timer behind.
        """
        with capturedLogs() as events:
            self.exchange(signedAnonymously())
            self.server.stop()
        [summary] = self.warnings(events)
        self.assertEqual(summary["refused"], {"missing-attribute": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AuthenticatedRefusalTests(TURNTestCase):
    """
    Refused authenticated requests keep a warning each (their user is
    accountable), up to a budget per interval; the rest are summed up.
    """

    def test_budget(self) -> None:
        """
        Past L{REFUSED_WARNINGS_PER_INTERVAL} lines, refused authenticated
        requests are counted by code and summed up at the end of the
        interval; then the budget is full again.
        """
        relay = FakeRelay()
        client = relay.client()
        refresh = [(A.LIFETIME, 600)]
        extra = 50
        with capturedLogs() as events:
            # A Refresh without an allocation: 437, a line each.
            for _ in range(REFUSED_WARNINGS_PER_INTERVAL + extra):
                self.assertErrorCode(client.request(Method.REFRESH, refresh), 437)
            lines = [e for e in events if e.get("code") == 437]
            self.assertEqual(len(lines), REFUSED_WARNINGS_PER_INTERVAL)
            relay.reactor.advance(relay.server.refusalSummaryInterval)
        [summary] = [e for e in events if "unwarned" in e]
        self.assertEqual(summary["unwarned"], {"437": extra})
        with capturedLogs() as events:
            client.request(Method.REFRESH, refresh)
        self.assertEqual(len([e for e in events if e.get("code") == 437]), 1)
        relay.server.stop()
        self.assertEqual(relay.reactor.getDelayedCalls(), [])


class DefaultsTests(SynchronousTestCase):
    """
    A controller built without a source limit (an embedder's) still holds
    answers to the amplification limit.
    """

    def test_noSourceLimitByDefault(self) -> None:
        """
        Without C{sourceLimit}, answers are not limited per source.
        """
        server = TURNServer(Clock())
        link = FakeClientLink()
        for _ in range(100):
            server.stunReceived(unsigned(Method.BINDING), link)
        self.assertEqual(len(link.sent), 100)
