"""
Tests for L{turnrelay.systemd}: readiness, and systemd's notification
protocol spoken to a real C{NOTIFY_SOCKET} the test binds, by the notifier
on a fake clock and by a real twistd child.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._processes import pythonEnvironment, spawn, turnrelayCommand
from tests._relays import FakeRelay
from tests._sockets import bindingRequest, datagramClient, mappedAddress
from tests._timing import PROMPTLY, reactor, within
from turnrelay.stun.address import TransportAddress
from turnrelay.systemd import SystemdNotifier, notifySystemd, whyNotReady


def notifySocketPath(testCase: SynchronousTestCase) -> str:
    """
    A path for a Unix socket, short enough for C{sun_path}, in a directory
    removed at cleanup.
    """
    directory = tempfile.mkdtemp(prefix="turnrelay-notify-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "notify")


class NotifyListener(DatagramProtocol):
    """
    systemd's end of C{NOTIFY_SOCKET}: the notifications received, and waits
    for one.

    @ivar received: every notification so far, oldest first.
    """

    def __init__(self) -> None:
        self.received: List[str] = []
        self._waiters: List[Tuple[re.Pattern[str], Deferred[str]]] = []

    def datagramReceived(self, datagram: bytes, address: Any) -> None:
        text = datagram.decode("utf-8")
        self.received.append(text)
        waiting = []
        for pattern, waiter in self._waiters:
            if pattern.search(text):
                waiter.callback(text)
            else:
                waiting.append((pattern, waiter))
        self._waiters = waiting

    def waitFor(self, pattern: str, after: int = 0) -> Deferred[str]:
        """
        @param after: how many notifications received to skip.
        @return: a L{Deferred} firing with the first notification from
            C{after} on that matches C{pattern}.
        """
        compiled = re.compile(pattern, re.MULTILINE)
        for text in self.received[after:]:
            if compiled.search(text):
                waiter: Deferred[str] = Deferred()
                waiter.callback(text)
                return waiter
        waiter = Deferred()
        self._waiters.append((compiled, waiter))
        return waiter


class ReadinessTests(SynchronousTestCase):
    """
    whyNotReady: running, every listener bound, not draining.
    """

    def test_states(self) -> None:
        """
        A relay is not ready before it starts, is ready once started, and
        not while draining.
        """
        fake = FakeRelay()
        self.assertEqual(whyNotReady(fake.service), "not running")
        fake.start(self)
        self.assertIsNone(whyNotReady(fake.service))
        fake.service.drain()
        self.assertEqual(whyNotReady(fake.service), "draining")


class NotifierTests(SynchronousTestCase):
    """
    L{SystemdNotifier} on a fake clock, sending to a real socket.
    """

    def setUp(self) -> None:
        self.path = notifySocketPath(self)
        self.receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.receiver.close)
        self.receiver.bind(self.path)
        self.receiver.setblocking(False)
        self.clock = Clock()
        self.fake = FakeRelay().start(self)

    def received(self) -> List[str]:
        messages = []
        while True:
            try:
                messages.append(self.receiver.recv(4096).decode("utf-8"))
            except BlockingIOError:
                return messages

    def notifier(self, **environ: str) -> SystemdNotifier:
        self.patch(os, "environ", environ)
        notifier = SystemdNotifier(self.clock, self.fake.service)
        self.addCleanup(notifier.stop)
        return notifier

    def test_readyAndWatchdog(self) -> None:
        """
        started() says READY=1 with the listening addresses, then
        WATCHDOG=1 every half WATCHDOG_USEC, with a new STATUS when a drain
        begins; stopping() says STOPPING=1.
        """
        notifier = self.notifier(NOTIFY_SOCKET=self.path, WATCHDOG_USEC="10000000")
        self.assertEqual(notifier.watchdogInterval, 5.0)
        notifier.started()
        [ready, ping] = self.received()
        self.assertIn("READY=1", ready.splitlines())
        self.assertIn("STATUS=serving on udp 192.0.2.1:3478", ready.splitlines())
        self.assertEqual(ping, "WATCHDOG=1")
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.received(), ["WATCHDOG=1", "WATCHDOG=1"])
        self.fake.service.drain()
        self.clock.advance(5)
        self.assertEqual(self.received(), ["WATCHDOG=1", "STATUS=not ready: draining"])
        notifier.stopping()
        self.assertEqual(self.received(), ["STOPPING=1\nSTATUS=stopping"])
        notifier.stop()
        self.clock.advance(5)
        self.assertEqual(self.received(), [])

    def test_notReady(self) -> None:
        """
        A relay that is not ready is not said to be: STATUS says why.
        """
        self.fake.service.drain()
        self.notifier(NOTIFY_SOCKET=self.path).started()
        self.assertEqual(self.received(), ["STATUS=not ready: draining"])

    def test_watchdogForAnotherProcess(self) -> None:
        """
        A WATCHDOG_PID not ours means the watchdog is someone else's.
        """
        notifier = self.notifier(
            NOTIFY_SOCKET=self.path, WATCHDOG_USEC="10000000", WATCHDOG_PID=str(os.getpid() + 1)
        )
        self.assertIsNone(notifier.watchdogInterval)

    def test_withoutSystemd(self) -> None:
        """
        Without NOTIFY_SOCKET nothing is sent and nothing is scheduled.
        """
        notifier = self.notifier(WATCHDOG_USEC="10000000")
        self.assertFalse(notifier.enabled)
        notifier.started()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.received(), [])

    def test_notifySystemd(self) -> None:
        """
        notifySystemd reads the process environment, and says STOPPING=1 at
        shutdown.
        """
        self.patch(os, "environ", {"NOTIFY_SOCKET": self.path})
        fakeReactor = MemoryReactorClock()
        notifier = notifySystemd(fakeReactor, self.fake.service)
        self.assertTrue(notifier.enabled)
        self.assertIn("READY=1", self.received()[0])
        triggers = fakeReactor.triggers["before"]["shutdown"]
        for trigger, args, kwargs in triggers:
            trigger(*args, **kwargs)
        self.assertEqual(self.received(), ["STOPPING=1\nSTATUS=stopping"])


class TwistdNotifyTests(TestCase):
    """
    A real twistd child under C{NOTIFY_SOCKET} and C{WATCHDOG_USEC}, as
    systemd's C{Type=notify} with C{WatchdogSec=} starts it.
    """

    timeout = 60

    async def test_readyAfterListenersThenWatchdog(self) -> None:
        """
        READY=1 arrives once the listeners are bound (a Binding to the port
        it names is answered), and WATCHDOG=1 pings follow; SIGTERM says
        STOPPING=1.
        """
        path = notifySocketPath(self)
        listener = NotifyListener()
        port = reactor.listenUNIXDatagram(path, listener)
        self.addCleanup(port.stopListening)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        env: Dict[str, str] = {
            **pythonEnvironment(),
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "200000",
        }
        args = turnrelayCommand(
            "--user",
            "alice:secret",
            listen=["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
        )
        twistd = spawn(self, args, env=env, path=workdir)
        ready = await within(listener.waitFor("^READY=1$"), PROMPTLY, "READY=1")
        status = re.search(
            r"^STATUS=serving on udp 127\.0\.0\.1:(\d+), tcp 127\.0\.0\.1:\d+$", ready, re.M
        )
        self.assertIsNotNone(status, ready)
        assert status is not None
        self.assertIn(f"MAINPID={twistd.transport.pid}", ready)  # type: ignore[union-attr]
        client = datagramClient(self, "127.0.0.1")
        transactionID, request = bindingRequest()
        client.send(request, TransportAddress("127.0.0.1", int(status.group(1))))
        self.assertEqual(mappedAddress(self, await client.receive(), transactionID), client.address)
        readyAt = listener.received.index(ready)
        await within(listener.waitFor("^WATCHDOG=1$", readyAt + 1), PROMPTLY, "a watchdog ping")
        pings = listener.received.count("WATCHDOG=1")
        await within(
            listener.waitFor("^WATCHDOG=1$", len(listener.received)), PROMPTLY, "another ping"
        )
        self.assertGreater(listener.received.count("WATCHDOG=1"), pings)
        self.assertNotIn("READY=1", "".join(listener.received[:readyAt]))
        twistd.signal("TERM")
        await within(listener.waitFor("^STOPPING=1$"), PROMPTLY, "STOPPING=1")
        await twistd.whenEnded()
        self.assertNotIn(b"Traceback", twistd.output + twistd.errors)
