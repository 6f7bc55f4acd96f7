"""
Tests for L{turnrelay.turn.sources}: the per-source limit on unauthenticated
answers, on a fake clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.turn.sources import SourceRateLimiter, sourceOf


class SourceOfTests(SynchronousTestCase):
    """
    What a per-source limit counts a client by.
    """

    def test_ipv4(self) -> None:
        """
        An IPv4 client is its own source.
        """
        self.assertEqual(sourceOf("192.0.2.1"), bytes([192, 0, 2, 1]))
        self.assertNotEqual(sourceOf("192.0.2.1"), sourceOf("192.0.2.2"))

    def test_ipv6Prefix(self) -> None:
        """
        IPv6 clients in one /64 are one source; another /64 is another.
        """
        self.assertEqual(sourceOf("2001:db8:1:2::1"), sourceOf("2001:db8:1:2:ffff:1:2:3"))
        self.assertNotEqual(sourceOf("2001:db8:1:2::1"), sourceOf("2001:db8:1:3::1"))

    def test_mappedIPv4(self) -> None:
        """
        An IPv4-mapped IPv6 address (a dual-stack socket's IPv4 client) is the
        IPv4 source it spells, not one /64 for every IPv4 client.
        """
        self.assertEqual(sourceOf("::ffff:192.0.2.1"), sourceOf("192.0.2.1"))
        self.assertNotEqual(sourceOf("::ffff:192.0.2.1"), sourceOf("::ffff:192.0.2.2"))

    def test_familiesNeverCollide(self) -> None:
        """
        No IPv4 source equals an IPv6 one.
        """
        self.assertNotEqual(sourceOf("0.0.0.1"), sourceOf("::1"))
        self.assertEqual((len(sourceOf("0.0.0.0")), len(sourceOf("::"))), (4, 8))


class SourceRateLimiterTests(SynchronousTestCase):
    """
    A token bucket per source in a bounded table.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = SourceRateLimiter(self.clock, rate=10.0, burst=5, maxSources=3)

    def allowed(self, host: str, attempts: int) -> int:
        return sum(self.limiter.allow(host) for _ in range(attempts))

    def test_burst(self) -> None:
        """
        A new source gets C{burst} answers at once, then none.
        """
        self.assertEqual(self.allowed("192.0.2.1", 100), 5)
        self.assertEqual(self.limiter.refused, 95)

    def test_refill(self) -> None:
        """
        Tokens come back at C{rate} per second, never beyond C{burst}.
        """
        self.allowed("192.0.2.1", 5)
        self.clock.advance(0.25)
        self.assertEqual(self.allowed("192.0.2.1", 10), 2)
        self.clock.advance(3600)
        self.assertEqual(self.allowed("192.0.2.1", 10), 5)

    def test_sustainedRate(self) -> None:
        """
        Over a long run, a source gets C{burst} plus C{rate} per second.
        """
        total = 0
        for _ in range(1000):
            total += self.allowed("192.0.2.1", 10)
            self.clock.advance(0.01)
        self.assertEqual(total, 5 + 100 - 1)

    def test_sourcesIndependent(self) -> None:
        """
        One source's empty bucket does not touch another's.
        """
        self.allowed("192.0.2.1", 100)
        self.assertEqual(self.allowed("192.0.2.2", 100), 5)

    def test_ipv6SharesPrefix(self) -> None:
        """
        Addresses of one IPv6 /64 share a bucket: changing addresses within
        it gains nothing.
        """
        hosts = [f"2001:db8:0:1::{n:x}" for n in range(1, 100)]
        self.assertEqual(sum(self.limiter.allow(host) for host in hosts), 5)
        self.assertTrue(self.limiter.allow("2001:db8:0:2::1"))

    def test_mappedSharesIPv4(self) -> None:
        """
        An IPv4 client seen through a dual-stack socket shares the bucket of
        its IPv4 address.
        """
        self.allowed("192.0.2.1", 3)
        self.assertEqual(self.allowed("::ffff:192.0.2.1", 10), 2)

    def test_tableBounded(self) -> None:
        """
        The table never holds more than C{maxSources} sources: the least
        recently seen is forgotten first.
        """
        for n in range(1, 100):
            self.limiter.allow(f"192.0.2.{n}")
            self.assertLessEqual(len(self.limiter), 3)
        self.assertEqual(len(self.limiter), 3)

    def test_leastRecentlySeenForgotten(self) -> None:
        """
        A source seen again stays; the one not seen for longest goes, and
        comes back with a full bucket.
        """
        self.allowed("192.0.2.1", 5)
        self.allowed("192.0.2.2", 5)
        self.allowed("192.0.2.3", 5)
        self.assertFalse(self.limiter.allow("192.0.2.1"))  # seen again: most recent
        self.limiter.allow("192.0.2.4")  # forgets 192.0.2.2
        self.assertFalse(self.limiter.allow("192.0.2.1"))
        self.assertFalse(self.limiter.allow("192.0.2.3"))
        self.assertEqual(self.allowed("192.0.2.2", 10), 5)

    def test_reconfigured(self) -> None:
        """
        A lower C{maxSources} (a reload) shrinks the table as sources come.
        """
        for n in range(1, 4):
            self.limiter.allow(f"192.0.2.{n}")
        self.limiter.maxSources = 1
        self.limiter.allow("192.0.2.9")
        self.assertEqual(len(self.limiter), 1)

    def test_badParameters(self) -> None:
        """
        A rate of 0, or a burst or table of less than one, is refused.
        """
        for rate, burst, size in [(0, 1, 1), (1, 0, 1), (1, 1, 0)]:
            self.assertRaises(ValueError, SourceRateLimiter, self.clock, rate, burst, size)
