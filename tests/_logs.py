"""
What the relay logs, recorded while a test runs: to assert on, to wait for
instead of sleeping, and to measure as twistd would write it.
"""

from __future__ import annotations

import re
from typing import Callable, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
    timeFormatRFC3339,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer


@implementer(ILogObserver)
class LogRecorder:
    """
    The log events of one test, from its start to its cleanup.

    @ivar events: every event recorded so far, oldest first.
    """

    def __init__(self, testCase: SynchronousTestCase, namespace: str = "turnrelay.") -> None:
        """
        Start recording, until the test's cleanup.

        @param namespace: record only events whose namespace starts with
            this (all of them for C{""}).
        """
        self.events: List[LogEvent] = []
        self._namespace = namespace
        self._waiters: List[Tuple[Callable[[LogEvent], bool], Deferred[LogEvent]]] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)
        testCase.addCleanup(self._abandon)

    def __call__(self, event: LogEvent) -> None:
        if not event.get("log_namespace", "").startswith(self._namespace):
            return
        self.events.append(event)
        waiting = []
        for predicate, waiter in self._waiters:
            if predicate(event):
                waiter.callback(event)
            else:
                waiting.append((predicate, waiter))
        self._waiters = waiting

    def _abandon(self) -> None:
        # Whatever still waits belongs to a test that is over.
        self._waiters = []

    def matching(self, predicate: Callable[[LogEvent], bool]) -> List[LogEvent]:
        """
        @return: the events so far for which C{predicate} is true.
        """
        return [event for event in self.events if predicate(event)]

    def logged(self, pattern: str, level: Optional[str] = None) -> List[LogEvent]:
        """
        @return: the events so far whose text matches the regular expression
            C{pattern}, at C{level} (C{"info"}, C{"warn"}, ...) if given.
        """
        return self.matching(
            lambda event: (
                re.search(pattern, formatEvent(event)) is not None
                and (level is None or event["log_level"].name == level)
            )
        )

    def waitFor(self, predicate: Callable[[LogEvent], bool]) -> Deferred[LogEvent]:
        """
        @return: a L{Deferred} that fires with the first event, past or
            future, for which C{predicate} is true.  The caller bounds the
            wait (L{tests._timing.within}, or the test's timeout).
        """
        for event in self.events:
            if predicate(event):
                return succeed(event)
        waiter: Deferred[LogEvent] = Deferred()
        self._waiters.append((predicate, waiter))
        return waiter

    def text(self) -> str:
        """
        @return: every event formatted, one per line, failures' tracebacks
            included.
        """
        lines = []
        for event in self.events:
            lines.append(formatEvent(event))
            failure = event.get("log_failure")
            if failure is not None:
                lines.append(failure.getTraceback())
        return "\n".join(lines)

    def logFileText(self) -> str:
        """
        @return: the events as twistd writes them to its log file (time,
            C{[namespace#level]}, message).
        """
        return "".join(
            formatEventAsClassicLogText(
                event, formatTime=lambda when: formatTime(when, timeFormatRFC3339)
            )
            or ""
            for event in self.events
        )

    def assertClean(self, testCase: SynchronousTestCase) -> None:
        """
        Assert that nothing was logged as a failure or an error.
        """
        bad = [
            formatEvent(event)
            for event in self.events
            if event.get("log_failure") is not None
            or event["log_level"].name in ("error", "critical")
        ]
        testCase.assertEqual(bad, [])
        testCase.assertNotIn("Traceback", self.text())


# What the relay's events say -------------------------------------------------


def _fromRegistry(event: LogEvent) -> bool:
    return event.get("log_namespace", "").startswith("turnrelay.turn.registry") and (
        "relayed" in event
    )


def isCreated(event: LogEvent) -> bool:
    """
    @return: whether C{event} says an allocation was created.
    """
    return _fromRegistry(event) and "reason" not in event


def isEnded(event: LogEvent) -> bool:
    """
    @return: whether C{event} says an allocation ended (deleted, expired,
        ...), with its usage counters.
    """
    return _fromRegistry(event) and "reason" in event


def isRefreshed(event: LogEvent) -> bool:
    """
    @return: whether C{event} says an allocation was refreshed.
    """
    return (
        event.get("log_namespace", "").startswith("turnrelay.turn.allocate")
        and "relayed" in event
        and "lifetime" in event
    )


def isRefused(event: LogEvent) -> bool:
    """
    @return: whether C{event} says a request was refused with an error.
    """
    return event.get("log_namespace", "").startswith("turnrelay.") and "code" in event
