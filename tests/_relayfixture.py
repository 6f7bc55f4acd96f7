"""
A TURN relay with credentials, on the real reactor, for the tests that
drive independent TURN clients through it (C{test_interop_turn}).

The relay listens on UDP 127.0.0.1, knows one static user and one TURN
REST API secret, and relays to loopback peers.  Its log events are captured
so that tests can wait for what happens on the server side (an allocation
created, refreshed, deleted) instead of sleeping.

Everything started here stops at the test's cleanup, even when the test
fails: processes through L{tests._loopback.spawn}, the relay through the
cleanup L{startRelay} registers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tests._loopback import ChildProcess, reactor, relayAddress, spawn
from turnrelay.config import buildConfig
from turnrelay.service import RelayService, makeRelayService
from turnrelay.stun.address import TransportAddress
from turnrelay.turn.registry import AllocationRegistry

HOST = "127.0.0.1"
REALM = "example.org"
USERNAME = "alice"
PASSWORD = "alice-secret-pw"
REST_SECRET = "rest-secret-for-tests"
# Outside Linux's default ephemeral port range (32768-60999), so the client
# and peer sockets of the tests never take the relay's ports (the pool
# would skip a busy port anyway).
MIN_RELAY_PORT = 61000
MAX_RELAY_PORT = 61999

RELAY_SETTINGS: Mapping[str, Any] = {
    "listen": [f"udp:0:interface={HOST}"],
    "realm": REALM,
    "user": [f"{USERNAME}:{PASSWORD}"],
    "static-auth-secret": [REST_SECRET],
    # The peers of these tests are on loopback, which is otherwise denied.
    "allow-loopback-peers": True,
    "min-port": MIN_RELAY_PORT,
    "max-port": MAX_RELAY_PORT,
}


def requireTool(testCase: TestCase, name: str) -> str:
    """
    Find an external test client on C{PATH}.

    Without it the test is skipped, except on CI (C{CI=true}), where a
    silently skipped interoperability test would hide a broken setup.

    @return: the tool's path.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    _missing(testCase, f"{name} is not installed; `make test` installs Debian's coturn")


def requireModule(testCase: TestCase, name: str) -> None:
    """
    Check that the Python module C{name} can be imported by a child Python.

    Without it the test is skipped, except on CI (C{CI=true}).
    """
    if importlib.util.find_spec(name) is None:
        _missing(testCase, f"{name} is not installed; `make test` installs the test extra with it")


def _missing(testCase: TestCase, message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        testCase.fail(message + " (CI=true: not skipping)")
    raise SkipTest(message)


# The server's side: its log events ------------------------------------------


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


def assertRefusedUnauthenticated(testCase: TestCase, relay: RelayUnderTest, reason: str) -> None:
    """
    Assert that the relay refused requests whose source it could not
    authenticate, for C{reason} alone, as it does: counted by reason, and
    no log line of their own (a summary line comes once a minute).
    """
    server = relay.service.server
    testCase.assertEqual(set(server.refusals), {reason}, dict(server.refusals))
    testCase.assertEqual(relay.events.matching(isRefused), [])


def _fromRegistry(event: LogEvent) -> bool:
    return event.get("log_namespace", "").startswith("turnrelay.turn.registry") and (
        "relayed" in event
    )


@implementer(ILogObserver)
class ServerEvents:
    """
    The relay's log events as they happen, for assertions and for waiting.

    @ivar events: every C{turnrelay} event so far, in order.
    """

    def __init__(self) -> None:
        self.events: List[LogEvent] = []
        self._waiters: List[Tuple[Callable[[LogEvent], bool], Deferred[LogEvent]]] = []

    def __call__(self, event: LogEvent) -> None:
        if not event.get("log_namespace", "").startswith("turnrelay."):
            return
        self.events.append(event)
        waiting = []
        for predicate, waiter in self._waiters:
            if predicate(event):
                waiter.callback(event)
            else:
                waiting.append((predicate, waiter))
        self._waiters = waiting

    def matching(self, predicate: Callable[[LogEvent], bool]) -> List[LogEvent]:
        """
        @return: the events so far for which C{predicate} is true.
        """
        return [event for event in self.events if predicate(event)]

    def waitFor(self, predicate: Callable[[LogEvent], bool]) -> Deferred[LogEvent]:
        """
        @return: a L{Deferred} that fires with the first event, past or
            future, for which C{predicate} is true.  The test's timeout
            bounds the wait.
        """
        for event in self.events:
            if predicate(event):
                return succeed(event)
        waiter: Deferred[LogEvent] = Deferred()
        self._waiters.append((predicate, waiter))
        return waiter

    def abandon(self) -> None:
        """
        Forget the waits still pending: the test that made them is over.
        """
        self._waiters = []


# The relay -------------------------------------------------------------------


class RelayUnderTest:
    """
    A running relay and what the tests look at.

    @ivar service: the relay's service.
    @ivar address: where clients reach it over UDP.
    @ivar events: its log events.
    """

    def __init__(self, service: RelayService, events: ServerEvents) -> None:
        self.service = service
        self.address = relayAddress(service, "udp")
        self.events = events

    @property
    def registry(self) -> AllocationRegistry:
        """
        The live allocations.
        """
        return self.service.server.registry

    def whenEnded(self, relayed: str, reason: str = "deleted") -> Deferred[LogEvent]:
        """
        @param relayed: a relayed address, C{HOST:PORT}.
        @return: a L{Deferred} that fires with the event of the allocation on
            C{relayed} ending for C{reason}.
        """
        return self.events.waitFor(
            lambda event: (
                isEnded(event) and event["relayed"] == relayed and event["reason"] == reason
            )
        )

    async def stop(self) -> None:
        """
        End the allocations clients left behind (stopping the listener would
        end them too; this does not rely on it), then stop the relay and wait
        for its listening socket to close.
        """
        registry = self.registry
        for allocation in registry:
            registry.remove(allocation, "ended by the test's cleanup")
        if self.service.running:
            await self.service.stopService()


def startRelay(testCase: TestCase, **settings: Any) -> RelayUnderTest:
    """
    Start a relay with L{RELAY_SETTINGS} (updated with C{settings}, setting
    names with C{_} for C{-}) on the global reactor.  It stops at the test's
    cleanup.
    """
    values: Dict[str, Any] = dict(RELAY_SETTINGS)
    values.update({name.replace("_", "-"): value for name, value in settings.items()})
    events = ServerEvents()
    globalLogPublisher.addObserver(events)
    testCase.addCleanup(globalLogPublisher.removeObserver, events)
    testCase.addCleanup(events.abandon)
    service = makeRelayService(buildConfig(values), reactor)
    service.startService()
    relay = RelayUnderTest(service, events)
    testCase.addCleanup(relay.stop)
    return relay


def relayedKey(address: Any) -> str:
    """
    @param address: C{(host, port)}, as clients report it.
    @return: the address as the relay's log events write it.
    """
    return str(TransportAddress(address[0], int(address[1])))


# coturn's echo peer ----------------------------------------------------------


def freePortPair(host: str = HOST) -> int:
    """
    Find a UDP port that is free, with the port after it free too
    (C{turnutils_peer} binds both).

    The ports are released before returning; another process could take
    them in between, which L{startEchoPeer} detects.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((host, 0))
            port: int = first.getsockname()[1]
            if port >= 0xFFFF:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
        return port


async def startEchoPeer(testCase: TestCase) -> Tuple[TransportAddress, ChildProcess]:
    """
    Start coturn's UDP echo server, C{turnutils_peer}, on 127.0.0.1; it is
    killed at cleanup.

    It listens on a port and the one after it (for RTCP), and says so with
    one line each in verbose mode: the wait is for those two lines.  A port
    that is taken makes it print the C{errno} of the failed bind (and keep
    running, deaf), which fails the test at once.

    @return: its address (the first port) and its process.
    """
    tool = requireTool(testCase, "turnutils_peer")
    port = freePortPair()
    peer = spawn(testCase, [tool, "-v", "-L", HOST, "-p", str(port)])
    match = await peer.waitForOutput(rb"(?s)errno=\d+|(?:_socket:\d+:end.*?){2}")
    if b"errno" in match.group(0):
        testCase.fail(f"turnutils_peer could not bind {HOST}:{port}: {peer.output!r}")
    return TransportAddress(HOST, port), peer


def uclientCounters(output: bytes) -> Optional[Dict[str, int]]:
    """
    Read the final counters C{turnutils_uclient} prints::

        start_mclient: tot_send_msgs=10, tot_recv_msgs=10
        Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)

    @return: C{sent}, C{received}, C{lost} and C{sendDropped}, or L{None}
        if the client did not print them (it gave up before relaying).
    """
    totals = re.search(rb"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", output, re.MULTILINE)
    lost = re.search(rb"Total lost packets (\d+) .*total send dropped (\d+)", output)
    if totals is None or lost is None:
        return None
    return {
        "sent": int(totals.group(1)),
        "received": int(totals.group(2)),
        "lost": int(lost.group(1)),
        "sendDropped": int(lost.group(2)),
    }
