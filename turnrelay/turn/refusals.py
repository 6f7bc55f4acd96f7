# -*- test-case-name: tests.test_turn_refusals -*-
"""
How refused requests are answered in the log: counted always, written one
by one only when someone is accountable for them.

Anyone can send requests that get refused, from any source address, as
fast as they like; a line each would let them fill the disk.  So refusals
of unauthenticated (over UDP, unverified) sources are counted by reason
and summed up in one line per interval, and refused authenticated
requests, whose user is accountable, get a line each but only so many per
interval.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional
from typing import Counter as CounterType

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from turnrelay.logs import Logger, LogLevels

# Refused authenticated requests (quotas, peer policy...) are logged one by
# one, but at most this many per refusal-summary interval; the rest are
# counted in the summary.
REFUSED_WARNINGS_PER_INTERVAL = 100


class Refusal(Exception):
    """
    Ends a request's processing with an error response.

    @ivar code: the error code (RFC 8489 section 14.8).
    @ivar reason: why, for the log (never sent).
    @ivar attributes: attributes the error response carries.
    """

    def __init__(self, code: int, reason: str, *attributes: tuple[int, Any]) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.attributes = attributes


class RefusalLog:
    """
    Counts refusals and writes the periodic summaries.

    @ivar refusals: refusals of unauthenticated sources since the start, by
        reason (never anything a client chose).
    @ivar interval: seconds between two summaries.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, interval: float = 60.0, logLevels: Optional[LogLevels] = None
    ) -> None:
        """
        @param logLevels: the relay's log levels.
        """
        self.logLevels = logLevels
        self._clock = clock
        self.interval = interval
        self.refusals: CounterType[str] = Counter()
        # Since the last summary: refusals, and refused authenticated
        # requests (warned of, or counted by code once the budget is spent).
        self._refusedSince: CounterType[str] = Counter()
        self._warnedSince = 0
        self._unwarnedSince: CounterType[int] = Counter()
        self._timer: Optional[IDelayedCall] = None
        self._started = 0.0

    def refused(self, reason: str) -> None:
        """
        Count a refusal of an unauthenticated source, for the metrics and
        the next summary.
        """
        self.refusals[reason] += 1
        self._refusedSince[reason] += 1
        if self._timer is None:
            self._schedule()

    def refusedAuthenticated(self, code: int, **fields: Any) -> None:
        """
        Log a refused authenticated request, unless
        L{REFUSED_WARNINGS_PER_INTERVAL} lines were written this interval:
        then count it for the summary.

        @param fields: the log event's fields: method, username, client,
            transport and reason.
        """
        if self._timer is None:
            self._schedule()
        if self._warnedSince >= REFUSED_WARNINGS_PER_INTERVAL:
            self._unwarnedSince[code] += 1
            return
        self._warnedSince += 1
        self.log.warn(
            "{method} from {username} on {client} over {transport} refused with {code}: {reason}",
            code=code,
            **fields,
        )

    def _schedule(self) -> None:
        self._started = self._clock.seconds()
        self._timer = self._clock.callLater(self.interval, self.summarize)

    def summarize(self) -> None:
        """
        Log what was refused since the last summary, if anything, in one
        line for the refusals of unauthenticated sources and one for the
        refused authenticated requests that got no line of their own; then
        wait for the next refusal to start counting again.  Stopping calls
        this too, so that no timer is left.
        """
        timer, self._timer = self._timer, None
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        refused, self._refusedSince = self._refusedSince, Counter()
        unwarned, self._unwarnedSince = self._unwarnedSince, Counter()
        self._warnedSince = 0
        seconds = round(self._clock.seconds() - self._started)
        if refused:
            # No total: a request refused (say, for bad integrity) whose
            # answer then went unsent (rate-limited) counts under both.
            self.log.warn(
                "refused unauthenticated requests in the last {seconds} s, by reason: {counts}",
                seconds=seconds,
                counts=", ".join(f"{why} {count}" for why, count in sorted(refused.items())),
                refused=dict(refused),
            )
        if unwarned:
            self.log.warn(
                "{total} more authenticated requests refused in {seconds} s, "
                "by response code: {counts}",
                total=sum(unwarned.values()),
                seconds=seconds,
                counts=", ".join(f"{code} {count}" for code, count in sorted(unwarned.items())),
                unwarned={str(code): count for code, count in unwarned.items()},
            )
