# -*- test-case-name: tests.test_turn_descriptors -*-
"""
The process's file descriptors, as a budget that new work asks before it
opens one.

Every TCP or TLS client, relay socket and RFC 6062 peer connection holds a
descriptor, and outsiders decide how many of those there are.  A process
that reaches its limit (EMFILE) can accept nobody: not the next client, not
the operator's console.  So turnrelay keeps a reserve below the limit and
refuses new work before reaching it: listeners stop accepting, Allocate
and Connect get 508, and peers' connections are closed as they arrive.
Work already running is untouched, and when descriptors are freed the
listeners accept again.

Counting the open descriptors means listing C{/proc/self/fd}, which costs a
system call per descriptor; so the budget keeps an estimate (the last count
plus what was handed out since) and counts again only when the estimate
says the reserve is reached, at most once per L{RECOUNT_INTERVAL}.  Closed
descriptors are not tracked: the estimate only ever errs high, and a
recount corrects it.
"""

from __future__ import annotations

import errno
import os
import resource
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Protocol
from typing import Counter as CounterType

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from turnrelay.logs import Logger, LogLevels

# Seconds between two counts of the open descriptors while the budget is
# short, and between checks whether paused listeners may accept again.
RECOUNT_INTERVAL = 0.05
RESUME_INTERVAL = 1.0

# How often, at most, running out of descriptors is logged.
EMFILE_LOG_INTERVAL = 60.0

# The errors that mean the process or the system has no descriptor to spare.
OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE))


def countOpenDescriptors() -> Optional[int]:
    """
    @return: how many descriptors this process has open, or L{None} where
        the system does not say (no C{/proc}).
    """
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def descriptorLimit() -> int:
    """
    @return: the process's soft limit on open descriptors (C{ulimit -n}).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Pausable(Protocol):
    """
    What a listener must offer to be paused while descriptors are short:
    C{stopReading} and C{startReading}, as Twisted's listening ports do.
    """

    def stopReading(self) -> None: ...

    def startReading(self) -> None: ...


class _AcceptingSocket:
    """
    A listening socket that tells the budget when C{accept} fails for want
    of descriptors.  Twisted logs such a failure and leaves the socket
    readable, so it would log again on every turn of the reactor; the
    budget pauses the listener instead, and logs once.
    """

    def __init__(self, socket: Any, budget: DescriptorBudget, what: str) -> None:
        self._socket = socket
        self._budget = budget
        self._what = what

    def accept(self) -> Any:
        try:
            return self._socket.accept()
        except OSError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                self._budget.ranOut(self._what)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def watchAccepts(port: Any, budget: DescriptorBudget, what: str) -> None:
    """
    Have C{budget} pause C{port} when descriptors are short, and learn when
    accepting on it fails with EMFILE or ENFILE.

    @param port: a listening TCP port of Twisted's (C{tcp.Port}).
    @param what: what it accepts, for the log.
    """
    port.socket = _AcceptingSocket(port.socket, budget, what)
    budget.addListener(port)


class DescriptorBudget:
    """
    How many more descriptors the relay may open before its reserve.

    @ivar limit: the most descriptors the process may have open.
    @ivar reserve: descriptors kept free below C{limit}: for the admin
        console, log files, and the sockets already in flight.
    @ivar refused: new work refused for want of descriptors, by what it was
        (C{"accept"}, C{"allocate"}, C{"connect"}, C{"peer"}).
    @ivar exhausted: whether the listeners are paused now.
    @ivar outOfDescriptors: times the system itself said EMFILE or ENFILE.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        reserve: int = 64,
        limit: Optional[int] = None,
        countOpen: Callable[[], Optional[int]] = countOpenDescriptors,
        logLevels: Optional[LogLevels] = None,
    ) -> None:
        """
        @param limit: the process's limit; by default its C{RLIMIT_NOFILE}.
        @param countOpen: counts the open descriptors now; L{None} from it
            turns the budget off (every request is granted).
        @param logLevels: the relay's log levels.
        """
        self.logLevels = logLevels
        self._clock = clock
        self.limit = descriptorLimit() if limit is None else limit
        self.reserve = reserve
        self._countOpen = countOpen
        self._estimate = 0
        self._countedAt: Optional[float] = None
        self._listeners: List[Pausable] = []
        self._resumeTimer: Optional[IDelayedCall] = None
        self._lastEMFILELog: Optional[float] = None
        self.exhausted = False
        self.refused: CounterType[str] = Counter()
        self.outOfDescriptors = 0

    @property
    def ceiling(self) -> int:
        """
        The number of open descriptors at which new work is refused.
        """
        return self.limit - self.reserve

    def openDescriptors(self) -> int:
        """
        @return: the best estimate of how many descriptors are open now.
        """
        return self._estimate

    def _recount(self) -> None:
        counted = self._countOpen()
        self._countedAt = self._clock.seconds()
        self._estimate = 0 if counted is None else counted

    def take(self, what: str, count: int = 1) -> bool:
        """
        Ask for descriptors for new work, and count them as open if granted.

        @param what: what they are for, to count refusals by.
        @param count: how many it needs.
        @return: whether the work may go ahead.
        """
        if self._countedAt is None:
            self._recount()
        if self._estimate + count > self.ceiling:
            if self._clock.seconds() - (self._countedAt or 0.0) >= RECOUNT_INTERVAL:
                self._recount()
            if self._estimate + count > self.ceiling:
                self.refused[what] += 1
                self._exhaust()
                return False
        self._estimate += count
        return True

    def ranOut(self, where: str) -> None:
        """
        The system said EMFILE or ENFILE: count it, log it at most once per
        L{EMFILE_LOG_INTERVAL}, and stop accepting until descriptors are
        freed.

        @param where: what was being opened, for the log.
        """
        self.outOfDescriptors += 1
        now = self._clock.seconds()
        if self._lastEMFILELog is None or now - self._lastEMFILELog >= EMFILE_LOG_INTERVAL:
            self._lastEMFILELog = now
            self.log.error(
                "out of file descriptors while opening {where} ({count} times so far): "
                "raise the limit (ulimit -n, LimitNOFILE=) or descriptor-reserve",
                where=where,
                count=self.outOfDescriptors,
            )
        self._recount()
        self._exhaust()

    # Listeners -------------------------------------------------------------------

    def addListener(self, listener: Pausable) -> None:
        """
        Pause this listener whenever descriptors are short.
        """
        self._listeners.append(listener)
        if self.exhausted:
            listener.stopReading()

    def removeListener(self, listener: Pausable) -> None:
        """
        Forget a listener (it is closing).
        """
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _exhaust(self) -> None:
        if self.exhausted:
            return
        self.exhausted = True
        self.log.warn(
            "{count} of {limit} file descriptors are open, within the reserve of "
            "{reserve}: not accepting connections until some are freed",
            count=self._estimate,
            limit=self.limit,
            reserve=self.reserve,
        )
        for listener in self._listeners:
            listener.stopReading()
        self._resumeTimer = self._clock.callLater(RESUME_INTERVAL, self._tryResume)

    def _tryResume(self) -> None:
        self._resumeTimer = None
        self._recount()
        if self._estimate >= self.ceiling:
            self._resumeTimer = self._clock.callLater(RESUME_INTERVAL, self._tryResume)
            return
        self.exhausted = False
        self.log.info(
            "{count} of {limit} file descriptors are open: accepting connections again",
            count=self._estimate,
            limit=self.limit,
        )
        for listener in self._listeners:
            listener.startReading()

    def stop(self) -> None:
        """
        Cancel the timer that would resume the listeners.
        """
        if self._resumeTimer is not None and self._resumeTimer.active():
            self._resumeTimer.cancel()
        self._resumeTimer = None

    def stats(self) -> Dict[str, object]:
        """
        @return: the figures the metrics and the console show.
        """
        return {
            "open": self._estimate,
            "limit": self.limit,
            "reserve": self.reserve,
            "exhausted": self.exhausted,
            "refused": dict(self.refused),
            "outOfDescriptors": self.outOfDescriptors,
        }
