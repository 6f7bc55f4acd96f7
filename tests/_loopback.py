"""
Real-socket helpers shared by the loopback, interop and twistd tests.

Each helper that opens a socket or starts a process registers its own
cleanup with the test case, and that cleanup waits until the socket is
closed or the process has ended, so trial never finds a dirty reactor.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from twisted.internet import reactor as _globalReactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredQueue, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import turnrelay
from turnrelay.config import RelayConfig, parseListen
from turnrelay.service import RelayService, makeRelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import StreamFramer
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage

# The global reactor trial runs; typed loosely because it provides many
# interfaces at once.
reactor: Any = _globalReactor

# The checkout (or installation) turnrelay is imported from: a child Python
# process given this on PYTHONPATH finds turnrelay and its twistd plugin.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(turnrelay.__file__)))


# STUN ------------------------------------------------------------------------


def noIPv6Loopback() -> Optional[str]:
    """
    @return: why IPv6 tests cannot run here, or L{None} if ::1 can be bound.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        return f"this machine has no IPv6 loopback address ::1 to bind ({e})"
    return None


def bindingRequest(fingerprint: bool = False) -> Tuple[bytes, bytes]:
    """
    Build a Binding request with a fresh transaction ID.

    @param fingerprint: add FINGERPRINT.
    @return: C{(transactionID, encoded request)}.
    """
    transactionID = os.urandom(12)
    request = STUNMessage(Method.BINDING, MessageClass.REQUEST, transactionID)
    return transactionID, request.encode(fingerprint=fingerprint)


def bindingSuccess(testCase: TestCase, data: bytes, transactionID: bytes) -> STUNMessage:
    """
    Assert that C{data} is the Binding success response to the request with
    C{transactionID}.

    @return: the decoded response.
    """
    response = decodeMessage(data)
    testCase.assertEqual(response.transactionID.hex(), transactionID.hex())
    testCase.assertEqual(response.method, Method.BINDING)
    testCase.assertEqual(response.messageClass, MessageClass.SUCCESS_RESPONSE)
    return response


def mappedAddress(testCase: TestCase, data: bytes, transactionID: bytes) -> TransportAddress:
    """
    Assert that C{data} is the Binding success response to the request with
    C{transactionID}.

    @return: its XOR-MAPPED-ADDRESS.
    """
    mapped = bindingSuccess(testCase, data, transactionID).get(A.XOR_MAPPED_ADDRESS)
    testCase.assertIsInstance(mapped, TransportAddress)
    assert isinstance(mapped, TransportAddress)
    return mapped


# The relay -------------------------------------------------------------------


def startRelay(testCase: TestCase, *listen: str) -> RelayService:
    """
    Start an in-process relay on the global reactor; it stops, and its
    ports close, when the test is cleaned up.

    @param listen: C{--listen} values, for example C{"udp:0:interface=::1"}.
    """
    config = RelayConfig(listeners=tuple(parseListen(text) for text in listen))
    relay = makeRelayService(config, reactor)
    relay.startService()
    testCase.addCleanup(relay.stopService)
    return relay


def relayAddress(relay: RelayService, transport: str) -> TransportAddress:
    """
    @return: the address of the relay's only listener for C{transport}.
    """
    addresses = [address for kind, address in relay.listeningAddresses() if kind == transport]
    if len(addresses) != 1:
        raise AssertionError(f"expected one {transport} listener, found {addresses!r}")
    return addresses[0]


# Clients ---------------------------------------------------------------------


class DatagramClient(DatagramProtocol):
    """
    A UDP socket that queues what it receives.

    @ivar received: C{(datagram, (host, port))} in order of arrival.
    """

    def __init__(self) -> None:
        self.received: DeferredQueue[Tuple[bytes, Tuple[Any, ...]]] = DeferredQueue()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.put((datagram, addr))

    @property
    def address(self) -> TransportAddress:
        """
        The socket's own address.
        """
        host = self.transport.getHost()  # type: ignore[union-attr]
        return TransportAddress(host.host, host.port)

    def send(self, data: bytes, to: TransportAddress) -> None:
        """
        Send one datagram.
        """
        self.transport.write(data, (to.host, to.port))  # type: ignore[union-attr]

    async def receive(self) -> bytes:
        """
        @return: the next datagram received.
        """
        datagram, _ = await self.received.get()
        return datagram


def datagramClient(testCase: TestCase, interface: str) -> DatagramClient:
    """
    Open a UDP socket on C{interface}, port 0, closed at cleanup.
    """
    client = DatagramClient()
    port = reactor.listenUDP(0, client, interface=interface)
    testCase.addCleanup(port.stopListening)
    return client


class StreamClient(Protocol):
    """
    A TCP client that cuts what it receives into STUN and ChannelData frames.

    @ivar frames: the frames received, in order.
    @ivar disconnected: whether the connection has been lost.
    """

    def __init__(self) -> None:
        self._framer = StreamFramer()
        self.frames: DeferredQueue[bytes] = DeferredQueue()
        self.disconnected = False
        self._closedWaiters: List[Deferred[None]] = []

    def dataReceived(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            self.frames.put(frame)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.disconnected = True
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def address(self) -> TransportAddress:
        """
        The socket's own address.
        """
        host = self.transport.getHost()  # type: ignore[union-attr]
        assert isinstance(host, (IPv4Address, IPv6Address))
        return TransportAddress(host.host, host.port)

    def send(self, data: bytes) -> None:
        """
        Write to the server.
        """
        self.transport.write(data)  # type: ignore[union-attr]

    def whenClosed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the connection is lost.
        """
        if self.disconnected:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def close(self) -> Deferred[None]:
        """
        Close the connection the way that leaves no socket behind on either
        end: send FIN, let the server close its side, and wait for that.

        The server's protocol is not half-closeable, so end of input makes it
        close its socket, which it does only after leaving the reactor; our
        C{connectionLost} therefore means both ends are gone.
        """
        if not self.disconnected:
            self.transport.loseWriteConnection()  # type: ignore[union-attr]
        return self.whenClosed()


async def streamClient(testCase: TestCase, address: TransportAddress) -> StreamClient:
    """
    Connect to C{address} over TCP; the connection is closed at cleanup.
    """
    endpoint: TCP4ClientEndpoint | TCP6ClientEndpoint
    if ":" in address.host:
        endpoint = TCP6ClientEndpoint(reactor, address.host, address.port)
    else:
        endpoint = TCP4ClientEndpoint(reactor, address.host, address.port)
    client = await connectProtocol(endpoint, StreamClient())
    testCase.addCleanup(client.close)
    return client


# Child processes -------------------------------------------------------------


class ChildProcess(ProcessProtocol):
    """
    A child process whose output is collected.

    @ivar output: everything written to its standard output so far.
    @ivar errors: everything written to its standard error so far.
    @ivar endReason: why it ended (L{ProcessDone} or L{ProcessTerminated}),
        or L{None} while it runs.
    """

    def __init__(self) -> None:
        self.output = b""
        self.errors = b""
        self.endReason: Optional[Failure] = None
        self._endWaiters: List[Deferred[None]] = []
        self._outputWaiters: List[Tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def connectionMade(self) -> None:
        # Nothing is ever written to a child: let it see end of input.
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.output += data
        waiting = []
        for pattern, waiter in self._outputWaiters:
            match = pattern.search(self.output)
            if match is None:
                waiting.append((pattern, waiter))
            else:
                waiter.callback(match)
        self._outputWaiters = waiting

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.endReason = reason
        outputWaiters, self._outputWaiters = self._outputWaiters, []
        for pattern, waiter in outputWaiters:
            waiter.errback(self._endedBefore(pattern))
        endWaiters, self._endWaiters = self._endWaiters, []
        for endWaiter in endWaiters:
            endWaiter.callback(None)

    def _endedBefore(self, pattern: re.Pattern[bytes]) -> AssertionError:
        return AssertionError(
            f"the process ended ({self.endReason and self.endReason.value}) before printing"
            f" {pattern.pattern!r}; output: {self.output!r}; errors: {self.errors!r}"
        )

    def waitForOutput(self, pattern: bytes) -> Deferred[re.Match[bytes]]:
        """
        @param pattern: a regular expression.
        @return: a L{Deferred} that fires with the first match of C{pattern}
            in the standard output, or fails if the process ends first.
        """
        compiled = re.compile(pattern)
        match = compiled.search(self.output)
        if match is not None:
            return succeed(match)
        if self.endReason is not None:
            return fail(self._endedBefore(compiled))
        waiter: Deferred[re.Match[bytes]] = Deferred()
        self._outputWaiters.append((compiled, waiter))
        return waiter

    def whenEnded(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the process has ended (see
            L{endReason} for how).
        """
        if self.endReason is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._endWaiters.append(waiter)
        return waiter

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"TERM"}, C{"KILL"}) unless the process has ended.
        """
        if self.endReason is None:
            try:
                self.transport.signalProcess(name)  # type: ignore[union-attr]
            except ProcessExitedAlready:
                pass

    def stop(self) -> Deferred[None]:
        """
        Kill the process if it still runs, and wait for it to end.

        For cleanup, when the test is over: whatever still waits for output
        or the end belongs to a test that timed out, which trial has already
        failed, so those waits are abandoned rather than resumed.
        """
        self._outputWaiters = []
        self._endWaiters = []
        self.signal("KILL")
        return self.whenEnded()

    @property
    def exitCode(self) -> Optional[int]:
        """
        The exit status once ended; L{None} while running or if a signal
        ended it.
        """
        return self.endStatus[0]

    @property
    def endStatus(self) -> Tuple[Optional[int], Optional[int]]:
        """
        C{(exit status, signal number)} once ended, one of them L{None};
        C{(None, None)} while running.
        """
        if self.endReason is None:
            return None, None
        ended = self.endReason.value
        assert isinstance(ended, (ProcessDone, ProcessTerminated))
        return ended.exitCode, ended.signal


def spawn(
    testCase: TestCase,
    args: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    path: Optional[str] = None,
) -> ChildProcess:
    """
    Start C{args}; the process is killed, if still running, at cleanup.

    @param env: its environment; ours by default.
    @param path: its working directory.
    """
    child = ChildProcess()
    reactor.spawnProcess(
        child, args[0], list(args), env=dict(os.environ if env is None else env), path=path
    )
    testCase.addCleanup(child.stop)
    return child


async def runToCompletion(
    testCase: TestCase,
    args: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    path: Optional[str] = None,
) -> ChildProcess:
    """
    Run C{args} until it exits (trial's timeout bounds the wait).

    @return: the ended process, with its output and exit code.
    """
    child = spawn(testCase, args, env, path)
    await child.whenEnded()
    return child


def pythonEnvironment() -> dict[str, str]:
    """
    @return: our environment with L{SOURCE_ROOT} first on C{PYTHONPATH}, so
        that a child Python finds this turnrelay and its twistd plugin.
    """
    env = dict(os.environ)
    paths = [SOURCE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env
