"""
The relays of the tests, built from settings as twistd builds one
(L{turnrelay.config.buildConfig}, L{turnrelay.service.makeRelayService}):

  - L{FakeRelay}, on a L{FakeUDPReactor}: no socket, time advanced by hand,
    clients (L{tests._session.TURNClient}) fed to its controller;
  - L{startRelay}, on the global reactor and real sockets on loopback, its
    log events recorded (L{LoopbackRelay}).

Both know the users of L{tests._session} in its realm and take more
settings by name, with C{_} for C{-} (C{user_quota=1}); a setting given as
L{None} is left unset.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests._logs import LogRecorder, isCreated, isEnded, isRefused
from tests._session import REALM, REST_SECRETS, USERS, TURNClient
from tests._sockets import HOST
from tests._timing import reactor, within
from turnrelay.config import RelayConfig, buildConfig
from turnrelay.service import ListenerService, RelayService, makeRelayService
from turnrelay.stun.address import TransportAddress
from turnrelay.testing import FakeClientLink, FakeUDPPort, FakeUDPReactor
from turnrelay.transports.stream import StreamLimits, STUNStreamProtocol
from turnrelay.transports.tls import makeSelfSignedCertificate
from turnrelay.turn.registry import AllocationRegistry
from turnrelay.turn.server import TURNServer

CREDENTIALS: Mapping[str, Any] = {
    "realm": REALM,
    "user": [f"{username}:{password}" for username, password in USERS.items()],
    "static-auth-secret": list(REST_SECRETS),
}


def _settings(defaults: Mapping[str, Any], settings: Mapping[str, Any]) -> Dict[str, Any]:
    values = dict(defaults)
    for name, value in settings.items():
        key = name.replace("_", "-")
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


# On the fake reactor ---------------------------------------------------------

# Documentation addresses: no packet leaves the fake reactor.
LISTENER = TransportAddress("192.0.2.1", 3478)
CLIENT_HOST = "192.0.2.50"
RELAY_IP = "198.51.100.1"
RELAY_IP6 = "2001:db8:1::1"
# Peers in the tests: addresses the fake relay's policy allows;
# 203.0.113.0/24 stays denied.
ALLOWED = ["198.51.100.0/24", "2001:db8:1::/48"]
PEER_A = TransportAddress("198.51.100.20", 5000)
PEER_B = TransportAddress("198.51.100.21", 6000)
DENIED_PEER = TransportAddress("203.0.113.5", 5000)
PEER_6 = TransportAddress("2001:db8:1::20", 7000)

FAKE_SETTINGS: Mapping[str, Any] = {
    **CREDENTIALS,
    "listen": [f"udp:{LISTENER.port}:interface={LISTENER.host}"],
    "relay-ip": RELAY_IP,
    "allow-peer": ALLOWED,
    "min-port": 50000,
    "max-port": 50099,
    # The kernel path relays real packets on the host's interfaces: a fake
    # reactor has none (tests.test_offload_kernelpath fakes the program).
    "offload": "off",
}


def fakeConfig(**settings: Any) -> RelayConfig:
    """
    @return: the configuration of a fake relay: L{FAKE_SETTINGS} and
        C{settings}.
    """
    return buildConfig(_settings(FAKE_SETTINGS, settings))


class FakeRelay:
    """
    A relay on a fake reactor.  It is built, not started: its controller
    takes requests at once, and L{start} opens its listeners and admin
    services (on the fake reactor too).

    @ivar reactor: the fake reactor: its clock, and the ports opened.
    @ivar config: the relay's configuration.
    @ivar service: the relay.
    @ivar server: its controller.
    """

    def __init__(self, reactor: Optional[FakeUDPReactor] = None, **settings: Any) -> None:
        """
        @param reactor: the fake reactor to build on; a new one by default.
        @param settings: settings beyond L{FAKE_SETTINGS}.
        """
        self.reactor = FakeUDPReactor() if reactor is None else reactor
        self._settings = _settings(FAKE_SETTINGS, settings)
        self.config = buildConfig(self._settings)
        self.service = makeRelayService(self.config, self.reactor)
        self.server: TURNServer = self.service.server
        self._nextClientPort = 40000

    def configWith(self, **settings: Any) -> RelayConfig:
        """
        @return: this relay's configuration with C{settings} changed, to
            reload.
        """
        return buildConfig(_settings(self._settings, settings))

    def start(self, testCase: SynchronousTestCase) -> FakeRelay:
        """
        Start the relay; it stops at the test's cleanup.

        @return: this relay.
        """
        self.service.startService()
        testCase.addCleanup(self.service.stopService)
        return self

    def client(
        self,
        username: str = "alice",
        password: Optional[str] = None,
        host: str = CLIENT_HOST,
        sha256: bool = False,
        transport: str = "udp",
    ) -> TURNClient:
        """
        A client on a 5-tuple of its own, from the next port of C{host}.

        @param password: its password; the user's own by default.
        """
        self._nextClientPort += 1
        link = FakeClientLink(
            TransportAddress(host, self._nextClientPort), LISTENER, transportProtocol=transport
        )
        if password is None:
            password = USERS.get(username, "")
        return TURNClient(self.server, link, username, password, sha256)

    def relayPort(self, client: TURNClient) -> FakeUDPPort:
        """
        @return: the relay socket of C{client}'s allocation.
        """
        allocation = client.link.allocation
        assert allocation is not None
        port = allocation.relayPort
        assert isinstance(port, FakeUDPPort)
        return port


def httpRequest(
    factory: Any, method: bytes, path: bytes, headers: Sequence[bytes] = (), body: bytes = b""
) -> Tuple[int, Dict[bytes, bytes], bytes]:
    """
    Send one HTTP/1.1 request to a server factory (an admin service's) over
    a string transport.

    @return: the status code, the headers (lower-case names) and the body.
    """
    address = IPv4Address("TCP", "127.0.0.1", 54321)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    request = [
        method + b" " + path + b" HTTP/1.1",
        b"Host: relay.test",
        b"Connection: close",
        b"Content-Length: %d" % (len(body),),
    ]
    protocol.dataReceived(b"\r\n".join([*request, *headers]) + b"\r\n\r\n" + body)
    protocol.connectionLost(Failure(ConnectionDone()))
    head, _, content = transport.value().partition(b"\r\n\r\n")
    statusLine, *headerLines = head.split(b"\r\n")
    responseHeaders = {}
    for line in headerLines:
        name, _, value = line.partition(b":")
        responseHeaders[name.strip().lower()] = value.strip()
    assert len(content) == int(responseHeaders[b"content-length"]), "short body"
    return int(statusLine.split()[1]), responseHeaders, content


# On real sockets -------------------------------------------------------------

# Outside Linux's default ephemeral port range (32768-60999), so the client
# and peer sockets of the tests never take the relay's ports (the pool
# would skip a busy port anyway).
MIN_RELAY_PORT = 61000
MAX_RELAY_PORT = 61999

LOOPBACK_SETTINGS: Mapping[str, Any] = {
    **CREDENTIALS,
    "listen": [f"udp:0:interface={HOST}"],
    # The peers of these tests are on loopback, which is otherwise denied.
    "allow-loopback-peers": True,
    "min-port": MIN_RELAY_PORT,
    "max-port": MAX_RELAY_PORT,
    # Never attach an eBPF program to the host's interfaces from a test.
    "offload": "off",
}


def makeCertificate(testCase: SynchronousTestCase, name: str = "turns") -> Tuple[str, str]:
    """
    Write a self-signed certificate for C{localhost}, 127.0.0.1 and ::1, and
    its key, into a new temporary directory.

    @return: the certificate's and the key's paths.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    certificate = os.path.join(directory, f"{name}.crt")
    key = os.path.join(directory, f"{name}.key")
    makeSelfSignedCertificate(certificate, key)
    return certificate, key


class LoopbackRelay:
    """
    A relay running in this process on loopback sockets.

    @ivar service: the relay.
    @ivar events: its log events from its start.
    @ivar certificate: the PEM file of the certificate its TLS listener
        serves, if it has one.
    """

    def __init__(
        self, service: RelayService, events: LogRecorder, certificate: Optional[str]
    ) -> None:
        self.service = service
        self.events = events
        self.certificate = certificate

    @property
    def server(self) -> TURNServer:
        """
        Its controller.
        """
        return self.service.server

    @property
    def registry(self) -> AllocationRegistry:
        """
        The live allocations.
        """
        return self.service.server.registry

    def address(self, transport: str = "udp", family: Optional[int] = None) -> TransportAddress:
        """
        @param family: L{FAMILY_IPV4} or L{FAMILY_IPV6}, if the relay has
            listeners of both.
        @return: where clients reach its one C{transport} listener (of that
            address family).
        """
        addresses = [
            address
            for kind, address in self.service.listeningAddresses()
            if kind == transport and family in (None, address.family)
        ]
        if len(addresses) != 1:
            raise AssertionError(f"expected one {transport} listener, found {addresses!r}")
        return addresses[0]

    def created(self, relayed: str) -> LogEvent:
        """
        @param relayed: a relayed address, C{HOST:PORT}.
        @return: the log event of the allocation on C{relayed} being created.
        """
        [event] = self.events.matching(
            lambda event: isCreated(event) and event["relayed"] == relayed
        )
        return event

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
        for its sockets to close.
        """
        registry = self.registry
        for allocation in registry:
            registry.remove(allocation, "ended by the test's cleanup")
        if self.service.running:
            await self.service.stopService()


def startRelay(testCase: SynchronousTestCase, **settings: Any) -> LoopbackRelay:
    """
    Start a relay on the global reactor with L{LOOPBACK_SETTINGS} and
    C{settings}: by default one UDP listener on 127.0.0.1, every user of
    L{tests._session}, loopback peers allowed, relay ports
    L{MIN_RELAY_PORT}-L{MAX_RELAY_PORT}.  A TLS listener without C{tls_cert}
    serves a new self-signed certificate.

    Its allocations end, and it stops, at the test's cleanup.
    """
    values = _settings(LOOPBACK_SETTINGS, settings)
    certificate = values.get("tls-cert")
    if certificate is None and any(listen.startswith("tls:") for listen in values["listen"]):
        certificate, values["tls-key"] = makeCertificate(testCase)
        values["tls-cert"] = certificate
    events = LogRecorder(testCase)
    service = makeRelayService(buildConfig(values), reactor)
    service.startService()
    relay = LoopbackRelay(service, events, certificate)
    testCase.addCleanup(relay.stop)
    return relay


def assertRefusedUnauthenticated(
    testCase: SynchronousTestCase, relay: LoopbackRelay, reason: str
) -> None:
    """
    Assert that the relay refused requests whose source it could not
    authenticate, for C{reason} alone, as it does: counted by reason, and
    no log line of their own (a summary line comes once a minute).
    """
    refusals = relay.server.refusals
    testCase.assertEqual(set(refusals), {reason}, dict(refusals))
    testCase.assertEqual(relay.events.matching(isRefused), [])


def relayedKey(address: Any) -> str:
    """
    @param address: C{(host, port)}, as clients report it.
    @return: the address as the relay's log events write it.
    """
    return str(TransportAddress(address[0], int(address[1])))


class ServerConnections:
    """
    The relay's protocols for the connections to one of its stream
    listeners, as they are made, and whether they are still open.

    Create it right after starting the relay: its cleanup then runs after
    the clients' and waits until the relay has closed every connection.

    @ivar protocols: every server-side protocol, in order of connection.
    @ivar open: those whose connection is not yet lost.
    @ivar limits: the limits the listener holds connections to, with the
        count of those open without an allocation.
    """

    # How long cleanup waits for the relay to close its side.
    CLOSE_TIMEOUT = 5.0

    def __init__(self, testCase: SynchronousTestCase, relay: LoopbackRelay, transport: str) -> None:
        listeners = [
            child
            for child in relay.service
            if isinstance(child, ListenerService) and child.listener.transport == transport
        ]
        if len(listeners) != 1:
            raise AssertionError(f"expected one {transport} listener, found {listeners!r}")
        port: Any = listeners[0].port
        factory = port.factory
        # Under TLS, and under a PROXY header reader (tls and tcp).
        while isinstance(factory, WrappingFactory):
            factory = factory.wrappedFactory
        self.limits: StreamLimits = factory.limits
        self.protocols: List[STUNStreamProtocol] = []
        self.open: Set[STUNStreamProtocol] = set()
        self._waiters: List[Deferred[None]] = []
        original = factory.buildProtocol

        def buildProtocol(addr: Any) -> STUNStreamProtocol:
            protocol: STUNStreamProtocol = original(addr)
            self._track(protocol)
            return protocol

        testCase.patch(factory, "buildProtocol", buildProtocol)
        testCase.addCleanup(self._cleanUp)

    def _track(self, protocol: STUNStreamProtocol) -> None:
        self.protocols.append(protocol)
        self.open.add(protocol)
        lost = protocol.connectionLost

        def connectionLost(reason: object = None) -> None:
            self.open.discard(protocol)
            try:
                lost(reason)
            finally:
                if not self.open:
                    waiters, self._waiters = self._waiters, []
                    for waiter in waiters:
                        waiter.callback(None)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]

    def forClient(self, client: TransportAddress) -> STUNStreamProtocol:
        """
        @return: the server's protocol for the connection from C{client}.
        """
        for protocol in self.protocols:
            if protocol.clientAddress == client:
                return protocol
        raise AssertionError(f"no server-side connection from {client}")

    def whenAllClosed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once every connection so far is
            closed on the relay's side.
        """
        if not self.open:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    async def _cleanUp(self) -> None:
        try:
            await within(
                self.whenAllClosed(),
                self.CLOSE_TIMEOUT,
                "the relay did not close its side of every connection",
            )
        except AssertionError:
            stuck = list(self.open)
            for protocol in stuck:
                protocol.transport.abortConnection()  # type: ignore[union-attr]
            await self.whenAllClosed()
            raise AssertionError(
                f"{len(stuck)} server-side connection(s) still open after the clients closed"
            ) from None
