"""
Tests for L{turnrelay.turn.descriptors}: the descriptor budget on a fake
clock, and relay sockets when the system runs out of descriptors.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, List

from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests._logs import LogRecorder
from turnrelay.turn.descriptors import (
    RECOUNT_INTERVAL,
    RESUME_INTERVAL,
    DescriptorBudget,
    countOpenDescriptors,
    watchAccepts,
)
from turnrelay.turn.relay import NoRelayPort, RelayPortPool


class FakeListener:
    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class DescriptorBudgetTests(SynchronousTestCase):
    """
    L{DescriptorBudget} refuses new work within the reserve, pauses
    listeners meanwhile and resumes them when descriptors are freed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.open = 50
        self.budget = DescriptorBudget(
            self.clock, reserve=10, limit=100, countOpen=lambda: self.open
        )
        self.listener = FakeListener()
        self.budget.addListener(self.listener)
        self.addCleanup(self.budget.stop)

    def test_grantsBelowCeiling(self) -> None:
        """
        Requests are granted up to the limit less the reserve, and counted.
        """
        self.assertTrue(self.budget.take("accept", 40))
        self.assertEqual(self.budget.openDescriptors(), 90)
        self.assertFalse(self.budget.take("accept"))
        self.assertEqual(dict(self.budget.refused), {"accept": 1})

    def test_pausesAndResumesListeners(self) -> None:
        """
        Reaching the reserve pauses the listeners; once a count finds
        descriptors freed, they accept again.
        """
        self.open = 90
        self.assertFalse(self.budget.take("allocate"))
        self.assertFalse(self.listener.reading)
        self.assertTrue(self.budget.exhausted)
        self.clock.advance(RESUME_INTERVAL)
        self.assertFalse(self.listener.reading)
        self.open = 60
        self.clock.advance(RESUME_INTERVAL)
        self.assertTrue(self.listener.reading)
        self.assertFalse(self.budget.exhausted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_estimateRecounted(self) -> None:
        """
        Descriptors closed since the last count are found by a recount when
        the estimate reaches the reserve, at most once per RECOUNT_INTERVAL.
        """
        self.assertTrue(self.budget.take("accept", 40))
        self.open = 20
        self.assertFalse(self.budget.take("accept"))
        self.clock.advance(RECOUNT_INTERVAL)
        self.assertTrue(self.budget.take("accept"))
        self.assertEqual(self.budget.openDescriptors(), 21)

    def test_listenerAddedWhileExhausted(self) -> None:
        """
        A listener added while descriptors are short starts paused.
        """
        self.open = 95
        self.budget.take("accept")
        late = FakeListener()
        self.budget.addListener(late)
        self.assertFalse(late.reading)

    def test_ranOutLoggedOnce(self) -> None:
        """
        EMFILE is counted every time but logged once a minute at most.
        """
        events = LogRecorder(self)
        for _ in range(100):
            self.budget.ranOut("a relay socket")
        self.assertEqual(self.budget.outOfDescriptors, 100)
        logged = events.matching(lambda e: "out of file descriptors" in e.get("log_format", ""))
        self.assertEqual(len(logged), 1)
        self.assertFalse(self.listener.reading)

    def test_noProc(self) -> None:
        """
        Where the open descriptors cannot be counted, every request is
        granted.
        """
        budget = DescriptorBudget(self.clock, reserve=10, limit=20, countOpen=lambda: None)
        self.assertTrue(budget.take("accept", 10))

    def test_countsThisProcess(self) -> None:
        """
        The default count sees a descriptor opened and closed.
        """
        before = countOpenDescriptors()
        if before is None:
            self.skipTest("no /proc here")
        s = socket.socket()
        self.assertEqual(countOpenDescriptors(), before + 1)
        s.close()


class OutOfDescriptorsReactor:
    """
    A reactor whose every socket fails with EMFILE.
    """

    def __init__(self) -> None:
        self.attempts: List[int] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", **kw: Any) -> Any:
        self.attempts.append(port)
        raise CannotListenError(interface, port, OSError(errno.EMFILE, "Too many open files"))


class RelayPortPoolOutOfDescriptorsTests(SynchronousTestCase):
    """
    A relay socket that cannot be opened for want of descriptors.
    """

    def test_oneAttemptAndCounted(self) -> None:
        """
        EMFILE ends the search for a port at once (another port would fail
        the same way) and is reported to the budget.
        """
        clock = Clock()
        budget = DescriptorBudget(clock, reserve=10, limit=100, countOpen=lambda: 50)
        self.addCleanup(budget.stop)
        reactor = OutOfDescriptorsReactor()
        pool = RelayPortPool(reactor, "192.0.2.1", 50000, 50099, descriptors=budget)  # type: ignore[arg-type]
        self.assertRaises(NoRelayPort, pool.open)
        self.assertEqual(len(reactor.attempts), 1)
        self.assertEqual(budget.outOfDescriptors, 1)


class RefusingSocket:
    """
    A listening socket whose accept fails with EMFILE.
    """

    def accept(self) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    def fileno(self) -> int:
        return 7


class WatchAcceptsTests(SynchronousTestCase):
    """
    L{watchAccepts} on a listening port.
    """

    def test_acceptOutOfDescriptors(self) -> None:
        """
        EMFILE from accept is reported to the budget, which pauses the port
        so that it does not fail (and log) again on every reactor turn; the
        error still reaches Twisted, and other attributes pass through.
        """
        clock = Clock()
        budget = DescriptorBudget(clock, reserve=10, limit=100, countOpen=lambda: 50)
        self.addCleanup(budget.stop)
        port = FakeListener()
        port.socket = RefusingSocket()  # type: ignore[attr-defined]
        watchAccepts(port, budget, "a tcp connection")
        self.assertRaises(OSError, port.socket.accept)  # type: ignore[attr-defined]
        self.assertEqual(budget.outOfDescriptors, 1)
        self.assertFalse(port.reading)
        self.assertEqual(port.socket.fileno(), 7)  # type: ignore[attr-defined]
