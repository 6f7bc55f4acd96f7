"""
A TURN client on real sockets, and a relay with credentials to point it at,
for the loopback tests of TLS, streams and IPv6.

L{TURNSession} is the client's logic without a socket: it builds requests
with long-term credentials (answering the 401 challenge and a 438 with a
fresh nonce), matches responses to requests by transaction ID, checks the
integrity of authenticated responses, and queues what arrives unasked
(ChannelData, Data indications).  L{TURNDatagramClient} carries it over
UDP, with retransmissions; L{TURNStreamClient} over TCP or TLS.

L{ServerConnections} watches the relay's side of stream connections: the
tests look at its protocols (their buffers and counters), and its cleanup
waits until every one of them is closed, so trial never finds a socket
left in the reactor.
"""

from __future__ import annotations

import os
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from OpenSSL import SSL
from twisted.internet.defer import (
    Deferred,
    DeferredQueue,
    TimeoutError,
    ensureDeferred,
    succeed,
)
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests._loopback import reactor
from tests._relayfixture import (
    MAX_RELAY_PORT,
    MIN_RELAY_PORT,
    PASSWORD,
    REALM,
    USERNAME,
    ServerEvents,
)
from turnrelay.config import buildConfig
from turnrelay.service import ListenerService, RelayService, makeRelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import (
    CHANNEL_NUMBER_MAX_RFC5766,
    StreamFramer,
    decodeChannelData,
    encodeChannelData,
)
from turnrelay.stun.credentials import longTermKey
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.transports.stream import StreamLimits, STUNStreamProtocol

# The first UDP retransmission comes after this many seconds, the next
# after twice as long, and so on (RFC 8489 section 6.2.1, shortened for
# loopback, where a loss means a busy receiver, not a slow network).
RETRANSMISSION_TIMEOUT = 0.25
RETRANSMISSIONS = 6

T = TypeVar("T")


# The relay -------------------------------------------------------------------


def startTURNRelay(testCase: TestCase, **settings: Any) -> Tuple[RelayService, ServerEvents]:
    """
    Start an in-process relay on the global reactor that knows the user
    L{USERNAME} (password L{PASSWORD}) in L{REALM}, relays from ports
    L{MIN_RELAY_PORT}-L{MAX_RELAY_PORT} and to loopback peers.

    The relay's allocations end, and it stops, at the test's cleanup.

    @param settings: more settings, names with C{_} for C{-}
        (C{listen=["tcp:0:interface=127.0.0.1"]}, C{stream_idle_timeout=1}).
    @return: the relay and its log events from now on.
    """
    values: Dict[str, Any] = {
        "realm": REALM,
        "user": [f"{USERNAME}:{PASSWORD}"],
        "allow-loopback-peers": True,
        "min-port": MIN_RELAY_PORT,
        "max-port": MAX_RELAY_PORT,
    }
    values.update({name.replace("_", "-"): value for name, value in settings.items()})
    events = ServerEvents()
    globalLogPublisher.addObserver(events)
    testCase.addCleanup(globalLogPublisher.removeObserver, events)
    testCase.addCleanup(events.abandon)
    relay = makeRelayService(buildConfig(values), reactor)
    relay.startService()

    async def stop() -> None:
        registry = relay.server.registry
        for allocation in registry:
            registry.remove(allocation, "ended by the test's cleanup")
        if relay.running:
            await relay.stopService()

    testCase.addCleanup(stop)
    return relay, events


def listenerAddress(relay: RelayService, transport: str, family: str = ".") -> TransportAddress:
    """
    @param family: C{"."} for the IPv4 listener, C{":"} for the IPv6 one.
    @return: the address of the relay's one C{transport} listener of that
        family.
    """
    addresses = [
        address
        for kind, address in relay.listeningAddresses()
        if kind == transport and family in address.host
    ]
    if len(addresses) != 1:
        raise AssertionError(f"expected one {transport} listener, found {addresses!r}")
    return addresses[0]


def within(
    waiting: Union[Deferred[T], Coroutine[Any, Any, T]], seconds: float, what: str
) -> Deferred[T]:
    """
    Bound a wait: fail with C{what} in the message unless C{waiting} (a
    L{Deferred} or a coroutine) is done within C{seconds}.
    """

    def timedOut(failure: Failure) -> Failure:
        if failure.check(TimeoutError):
            raise AssertionError(f"{what}: nothing after {seconds} s")
        return failure

    deferred: Deferred[T] = ensureDeferred(waiting)
    deferred.addTimeout(seconds, reactor)
    return deferred.addErrback(timedOut)


# The client's logic ------------------------------------------------------------


class TURNSession:
    """
    One TURN client's requests and what comes back, whatever carries them.

    @ivar channelData: C{(channelNumber, data)} of each ChannelData message
        received.
    @ivar indications: each STUN indication received (Data indications).
    @ivar realm: the realm of the last 401, once challenged.
    @ivar nonce: the nonce in use, once challenged.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        username: str = USERNAME,
        password: str = PASSWORD,
        retransmit: bool = False,
        pad: bool = False,
    ) -> None:
        """
        @param write: sends bytes to the server.
        @param retransmit: retransmit requests until answered (for UDP).
        @param pad: pad ChannelData to a multiple of 4 bytes (TCP and TLS).
        """
        self._write = write
        self.username = username
        self.password = password
        self._retransmit = retransmit
        self._pad = pad
        self._pending: Dict[bytes, Deferred[STUNMessage]] = {}
        self._timers: Dict[bytes, IDelayedCall] = {}
        self.realm: Optional[str] = None
        self.nonce: Optional[str] = None
        self.channelData: DeferredQueue[Tuple[int, bytes]] = DeferredQueue()
        self.indications: DeferredQueue[STUNMessage] = DeferredQueue()

    # Receiving -------------------------------------------------------------

    def frameReceived(self, frame: bytes) -> None:
        """
        Take one STUN message or ChannelData message from the server.
        """
        if frame[0] >= 0x40:
            self.channelData.put(decodeChannelData(frame, CHANNEL_NUMBER_MAX_RFC5766))
            return
        message = decodeMessage(frame)
        if message.messageClass == MessageClass.INDICATION:
            self.indications.put(message)
            return
        timer = self._timers.pop(message.transactionID, None)
        if timer is not None and timer.active():
            timer.cancel()
        waiter = self._pending.pop(message.transactionID, None)
        if waiter is not None:
            waiter.callback(message)
        # Anything else answers a retransmission already answered.

    def stop(self) -> None:
        """
        Stop retransmitting: the connection is gone or the test is over.
        """
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    # Sending ---------------------------------------------------------------

    def transact(self, message: STUNMessage, data: bytes) -> Deferred[STUNMessage]:
        """
        Send an encoded request.

        @param message: the request, for its transaction ID.
        @param data: the request, encoded.
        @return: a L{Deferred} that fires with the response.
        """
        transactionID = message.transactionID
        waiter: Deferred[STUNMessage] = Deferred()
        self._pending[transactionID] = waiter
        self._write(data)
        if self._retransmit:
            self._schedule(transactionID, data, RETRANSMISSION_TIMEOUT, RETRANSMISSIONS)
        return waiter

    def _schedule(self, transactionID: bytes, data: bytes, delay: float, left: int) -> None:
        if left:
            self._timers[transactionID] = reactor.callLater(
                delay, self._again, transactionID, data, delay * 2, left - 1
            )
        else:
            self._timers.pop(transactionID, None)

    def _again(self, transactionID: bytes, data: bytes, delay: float, left: int) -> None:
        if transactionID in self._pending:
            self._write(data)
            self._schedule(transactionID, data, delay, left)

    def key(self) -> bytes:
        """
        The long-term key, in the realm of the last challenge.
        """
        return longTermKey(self.username, self.realm or REALM, self.password)

    def build(self, method: int, attributes: Iterable[Tuple[int, Any]] = ()) -> STUNMessage:
        """
        A request with a fresh transaction ID (not yet encoded).
        """
        return STUNMessage(method, MessageClass.REQUEST, os.urandom(12), list(attributes))

    async def request(self, method: int, attributes: Iterable[Tuple[int, Any]] = ()) -> STUNMessage:
        """
        Send an authenticated request: first an unauthenticated one to learn
        the realm and nonce if none is known, and once more with a fresh
        nonce after 438 (RFC 8489 section 9.2.4).

        @return: the final response, its integrity checked.
        @raise AssertionError: the response's integrity is missing or wrong.
        """
        attributes = list(attributes)
        if self.nonce is None:
            challenge = await self.transact(*self._plain(method, attributes))
            self._learn(challenge, 401)
        response = await self.transact(*self._signed(method, attributes))
        if _errorCode(response) == 438:
            self._learn(response, 438)
            response = await self.transact(*self._signed(method, attributes))
        if not response.verifyMessageIntegrity(self.key()):
            raise AssertionError(f"response without valid MESSAGE-INTEGRITY: {response!r}")
        return response

    def _plain(self, method: int, attributes: List[Tuple[int, Any]]) -> Tuple[STUNMessage, bytes]:
        message = self.build(method, attributes)
        return message, message.encode()

    def _signed(self, method: int, attributes: List[Tuple[int, Any]]) -> Tuple[STUNMessage, bytes]:
        message = self.build(method, attributes)
        message.add(A.USERNAME, self.username)
        message.add(A.REALM, self.realm or REALM)
        message.add(A.NONCE, self.nonce or "")
        return message, message.encode(key=self.key())

    def _learn(self, response: STUNMessage, code: int) -> None:
        if _errorCode(response) != code:
            raise AssertionError(f"expected a {code} challenge, got {response!r}")
        self.nonce = response.get(A.NONCE)
        self.realm = response.get(A.REALM, self.realm)

    async def binding(self) -> STUNMessage:
        """
        Send a Binding request (unauthenticated).

        @return: the response.
        """
        return await self.transact(*self._plain(Method.BINDING, []))

    async def allocate(
        self, *attributes: Tuple[int, Any], transport: int = A.TRANSPORT_UDP
    ) -> STUNMessage:
        """
        Ask for an allocation with C{REQUESTED-TRANSPORT} and C{attributes}.
        """
        return await self.request(
            Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, transport), *attributes]
        )

    async def createPermission(self, *peers: TransportAddress) -> STUNMessage:
        """
        Ask for permissions for C{peers}.
        """
        return await self.request(
            Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, peer) for peer in peers]
        )

    async def channelBind(self, number: int, peer: TransportAddress) -> STUNMessage:
        """
        Bind channel C{number} to C{peer}.
        """
        return await self.request(
            Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, peer)]
        )

    async def refresh(self, *attributes: Tuple[int, Any]) -> STUNMessage:
        """
        Refresh the allocation with C{attributes} (C{LIFETIME},
        C{REQUESTED-ADDRESS-FAMILY}).
        """
        return await self.request(Method.REFRESH, attributes)

    def sendIndication(self, peer: TransportAddress, data: bytes) -> None:
        """
        Send C{data} to C{peer} in a Send indication.
        """
        indication = STUNMessage(
            Method.SEND,
            MessageClass.INDICATION,
            os.urandom(12),
            [(A.XOR_PEER_ADDRESS, peer), (A.DATA, data)],
        )
        self._write(indication.encode())

    def sendChannelData(self, number: int, data: bytes) -> None:
        """
        Send C{data} to the peer bound to channel C{number}.
        """
        self._write(encodeChannelData(number, data, pad=self._pad))


def _errorCode(response: STUNMessage) -> Optional[int]:
    if response.messageClass != MessageClass.ERROR_RESPONSE:
        return None
    error = response.get(A.ERROR_CODE)
    return None if error is None else int(error.code)


def assertSuccess(testCase: TestCase, response: STUNMessage) -> STUNMessage:
    """
    Assert that C{response} is a success response.

    @return: C{response}.
    """
    testCase.assertEqual(
        response.messageClass,
        MessageClass.SUCCESS_RESPONSE,
        f"expected success, got error {response.get(A.ERROR_CODE)}",
    )
    return response


def assertErrorCode(testCase: TestCase, response: STUNMessage, code: int) -> STUNMessage:
    """
    Assert that C{response} is an error response with C{code}.

    @return: C{response}.
    """
    testCase.assertEqual(
        (response.messageClass, _errorCode(response)),
        (MessageClass.ERROR_RESPONSE, code),
        f"expected error {code}, got {response!r}",
    )
    return response


# Carrying it over UDP ---------------------------------------------------------


class TURNDatagramClient(DatagramProtocol):
    """
    A TURN client on a UDP socket, talking to one server address.

    @ivar session: the client's requests and received data.
    @ivar server: where requests go; only datagrams from there are taken.
    """

    def __init__(self, server: TransportAddress, username: str, password: str) -> None:
        self.server = server
        self.session = TURNSession(self._write, username, password, retransmit=True)

    def _write(self, data: bytes) -> None:
        self.transport.write(data, (self.server.host, self.server.port))  # type: ignore[union-attr]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if TransportAddress(addr[0], addr[1]) == self.server:
            self.session.frameReceived(datagram)

    @property
    def address(self) -> TransportAddress:
        """
        The socket's own address.
        """
        host = self.transport.getHost()  # type: ignore[union-attr]
        return TransportAddress(host.host, host.port)


def udpTURNClient(
    testCase: TestCase,
    server: TransportAddress,
    interface: str = "127.0.0.1",
    username: str = USERNAME,
    password: str = PASSWORD,
) -> TURNSession:
    """
    Open a UDP socket on C{interface} for a TURN client of C{server}; it
    closes at cleanup.

    @return: the client's session.
    """
    client = TURNDatagramClient(server, username, password)
    port = reactor.listenUDP(0, client, interface=interface)
    testCase.addCleanup(port.stopListening)
    testCase.addCleanup(client.session.stop)
    return client.session


# Carrying it over TCP and TLS -------------------------------------------------


@implementer(IHandshakeListener)
class TURNStreamClient(Protocol):
    """
    A TURN client on a TCP connection, or TLS over one.

    @ivar session: the client's requests and received data.
    @ivar lostReason: why the connection was lost, or L{None} while open.
    @ivar handshaken: whether a TLS handshake completed.
    @ivar address: the connection's own address, once connected.
    """

    def __init__(self, username: str = USERNAME, password: str = PASSWORD) -> None:
        self.session = TURNSession(self._write, username, password, pad=True)
        self._framer = StreamFramer()
        self.lostReason: Optional[Failure] = None
        self.handshaken = False
        self.address = TransportAddress("0.0.0.0", 0)
        self._closedWaiters: List[Deferred[None]] = []
        self._handshakeWaiters: List[Deferred[None]] = []

    def _write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            self.session.frameReceived(frame)

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        waiters, self._handshakeWaiters = self._handshakeWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lostReason = reason
        self.session.stop()
        handshakeWaiters, self._handshakeWaiters = self._handshakeWaiters, []
        for handshakeWaiter in handshakeWaiters:
            handshakeWaiter.errback(reason)
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def connectionMade(self) -> None:
        host: Any = self.transport.getHost()  # type: ignore[union-attr]
        self.address = TransportAddress(host.host, host.port)

    def whenHandshaken(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires when the TLS handshake completes,
            or fails with the reason the connection was lost before that.
        """
        if self.handshaken:
            return succeed(None)
        if self.lostReason is not None:
            failed: Deferred[None] = Deferred()
            failed.errback(self.lostReason)
            return failed
        waiter: Deferred[None] = Deferred()
        self._handshakeWaiters.append(waiter)
        return waiter

    def whenClosed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the connection is lost (see
            L{lostReason} for why).
        """
        if self.lostReason is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def close(self) -> Deferred[None]:
        """
        Drop the connection at once (even one that has stopped reading), and
        wait until it is gone on this side; L{ServerConnections} waits for
        the other.
        """
        if self.lostReason is None:
            self.transport.abortConnection()  # type: ignore[union-attr]
        return self.whenClosed()


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClient:
    """
    TLS client options that accept any certificate, so that a test can look
    at the one served, and may offer exactly one protocol version.
    """

    def __init__(self, version: Optional[int] = None) -> None:
        """
        @param version: C{SSL.TLS1_1_VERSION}, C{SSL.TLS1_2_VERSION}, ...;
            L{None} for OpenSSL's defaults.
        """
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_verify(SSL.VERIFY_NONE)
        if version is not None:
            context.set_min_proto_version(version)
            context.set_max_proto_version(version)
            # OpenSSL 3 offers TLS 1.1 only at security level 0.
            context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_connect_state()
        return connection


def streamEndpoint(
    address: TransportAddress, tls: Optional[IOpenSSLClientConnectionCreator] = None
) -> IStreamClientEndpoint:
    """
    @param tls: TLS client options, or L{None} for plain TCP.
    @return: an endpoint connecting to C{address}.
    """
    endpoint: IStreamClientEndpoint
    if ":" in address.host:
        endpoint = TCP6ClientEndpoint(reactor, address.host, address.port)
    else:
        endpoint = TCP4ClientEndpoint(reactor, address.host, address.port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    return endpoint


async def streamTURNClient(
    testCase: TestCase,
    address: TransportAddress,
    tls: Optional[IOpenSSLClientConnectionCreator] = None,
    username: str = USERNAME,
    password: str = PASSWORD,
) -> TURNStreamClient:
    """
    Connect a TURN client to C{address} over TCP, or TLS with C{tls}; the
    connection is dropped at cleanup.

    Over TLS, this returns once TCP is connected: wait for
    L{TURNStreamClient.whenHandshaken} for the handshake.
    """
    client = await connectProtocol(
        streamEndpoint(address, tls), TURNStreamClient(username, password)
    )
    testCase.addCleanup(client.close)
    return client


# The relay's side of stream connections -------------------------------------


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

    def __init__(self, testCase: TestCase, relay: RelayService, transport: str) -> None:
        listeners = [
            child
            for child in relay
            if isinstance(child, ListenerService) and child.listener.transport == transport
        ]
        if len(listeners) != 1:
            raise AssertionError(f"expected one {transport} listener, found {listeners!r}")
        port: Any = listeners[0].port
        factory = port.factory
        if isinstance(factory, WrappingFactory):
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
