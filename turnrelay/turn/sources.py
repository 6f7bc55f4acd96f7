# -*- test-case-name: tests.test_turn_sources -*-
"""
How much a source whose address is not verified may get out of the relay.

Over UDP anyone can put any source address on a request, so every answer
to a request that is not authenticated (Binding, the 401 challenge, a 400)
can be aimed at a victim: that is reflection, and amplification when the
answer is larger than the request.  Two limits bound it:

  - L{SourceRateLimiter}: per source, a token bucket of unauthenticated
    answers, in a table whose size is bounded (the least recently seen
    source is forgotten first);
  - L{AMPLIFICATION_LIMIT}: an answer larger than this many times its
    request is not sent at all.

A source is what one party usually holds whole: an IPv4 address, or the /64
of an IPv6 address (a host gets a /64 and can pick any address in it).

TCP and TLS need a handshake from the real source, so neither limit applies
to them.

@see: RFC 8489 section 16.1.2; C{security-notes.md} section 2.1.
"""

from __future__ import annotations

from collections import OrderedDict
from ipaddress import ip_address
from typing import List, Union

from twisted.internet.interfaces import IReactorTime

from turnrelay.stun.address import unmapIPv4

# Unauthenticated answers over UDP are at most this many times the size of
# the request they answer; larger ones are dropped (and counted).
AMPLIFICATION_LIMIT = 3


def sourceOf(host: str) -> bytes:
    """
    The source a per-source limit counts a client by.

    @param host: the client's IP address, as a socket reports it; an
        IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}, from a dual-stack
        socket) counts as the IPv4 address it is.
    @return: the packed IPv4 address (4 bytes), or the first 8 bytes of the
        packed IPv6 address (its /64).  The lengths differ, so an IPv4 source
        never equals an IPv6 one.
    @raise ValueError: C{host} is not an IP address.
    """
    packed = ip_address(unmapIPv4(host)).packed
    return packed if len(packed) == 4 else packed[:8]


class SourceRateLimiter:
    """
    A token bucket per source: each answer takes a token, and a source
    earns C{rate} tokens a second up to C{burst}.

    The table holds at most C{maxSources} sources.  When a new source comes
    and the table is full, the least recently seen source is forgotten; if
    it comes back it starts with a full bucket.  So memory is bounded
    whatever the number of (forged) sources, and a victim can get at most
    C{burst} more answers for each C{maxSources} other sources an attacker
    makes the relay answer meanwhile.

    @ivar clock: the time source.
    @ivar rate: tokens a source earns per second.
    @ivar burst: the most tokens a source can hold, and what a new source
        starts with.
    @ivar maxSources: the most sources remembered at once.
    @ivar refused: how many answers were refused, all sources together.
    """

    def __init__(self, clock: IReactorTime, rate: float, burst: int, maxSources: int) -> None:
        """
        @param clock: the time source.
        @param rate: tokens per second, more than 0.
        @param burst: the bucket's size, at least 1.
        @param maxSources: the table's size, at least 1.
        @raise ValueError: a parameter out of range.
        """
        if rate <= 0 or burst < 1 or maxSources < 1:
            raise ValueError(
                f"rate {rate!r}, burst {burst!r} and maxSources {maxSources!r}: "
                "expected a rate above 0 and a burst and size of at least 1"
            )
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.maxSources = maxSources
        self.refused = 0
        # source -> [tokens, time of the last update], least recently seen first.
        self._buckets: OrderedDict[bytes, List[float]] = OrderedDict()

    def __len__(self) -> int:
        """
        @return: how many sources the table holds now.
        """
        return len(self._buckets)

    def allow(self, host: Union[str, bytes]) -> bool:
        """
        Take a token for one answer to C{host}, if its bucket has one.

        @param host: the client's IP address, or a source from
            L{sourceOf}.
        @return: whether the answer may be sent.
        """
        source = host if isinstance(host, bytes) else sourceOf(host)
        now = self.clock.seconds()
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            while len(buckets) >= self.maxSources:
                buckets.popitem(last=False)
            bucket = buckets[source] = [float(self.burst), now]
        else:
            buckets.move_to_end(source)
            bucket[0] = min(float(self.burst), bucket[0] + max(0.0, now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            self.refused += 1
            return False
        bucket[0] -= 1.0
        return True
