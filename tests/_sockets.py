"""
Clients on real sockets, on 127.0.0.1 and ::1, for the tests of a relay in
this process or in a child.

L{DatagramClient} and L{StreamClient} send and receive bytes (STUN Binding
and its checks, peers); L{TURNDatagramClient} and L{TURNStreamClient} carry
a L{SocketTURNSession}, the tests' one TURN client (L{tests._session}),
over UDP (with retransmissions) or over TCP or TLS.

Each helper that opens a socket registers its own cleanup with the test
case, so trial never finds a socket left in the reactor.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredQueue, succeed
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
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests._assertions import TURNTestCase
from tests._session import PASSWORD, USERNAME, Attributes, Exchange, TURNSession
from tests._timing import PROMPTLY, reactor, within
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import (
    CHANNEL_NUMBER_MAX_RFC5766,
    StreamFramer,
    decodeChannelData,
    encodeChannelData,
)
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage

# The first UDP retransmission comes after this many seconds, the next
# after twice as long, and so on (RFC 8489 section 6.2.1, shortened for
# loopback, where a loss means a busy receiver, not a slow network).
RETRANSMISSION_TIMEOUT = 0.25
RETRANSMISSIONS = 6

# The loopback address the tests listen on.
HOST = "127.0.0.1"
# The channel the round trips of the tests use.
CHANNEL = 0x4000


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


# STUN Binding ----------------------------------------------------------------


def bindingRequest(fingerprint: bool = False) -> Tuple[bytes, bytes]:
    """
    Build a Binding request with a fresh transaction ID.

    @param fingerprint: add FINGERPRINT.
    @return: C{(transactionID, encoded request)}.
    """
    transactionID = os.urandom(12)
    request = STUNMessage(Method.BINDING, MessageClass.REQUEST, transactionID)
    return transactionID, request.encode(fingerprint=fingerprint)


def bindingSuccess(testCase: SynchronousTestCase, data: bytes, transactionID: bytes) -> STUNMessage:
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


def mappedAddress(
    testCase: SynchronousTestCase, data: bytes, transactionID: bytes
) -> TransportAddress:
    """
    Assert that C{data} is the Binding success response to the request with
    C{transactionID}.

    @return: its XOR-MAPPED-ADDRESS.
    """
    mapped = bindingSuccess(testCase, data, transactionID).get(A.XOR_MAPPED_ADDRESS)
    testCase.assertIsInstance(mapped, TransportAddress)
    assert isinstance(mapped, TransportAddress)
    return mapped


# Bytes over UDP and TCP --------------------------------------------------------


class DatagramClient(DatagramProtocol):
    """
    A UDP socket that queues what it receives: a client, or a peer.

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


def listenUDP(testCase: SynchronousTestCase, protocol: DatagramProtocol, interface: str) -> None:
    """
    Bind C{protocol} to port 0 of C{interface} until cleanup.
    """
    port = reactor.listenUDP(0, protocol, interface=interface)
    testCase.addCleanup(port.stopListening)


def datagramClient(testCase: SynchronousTestCase, interface: str) -> DatagramClient:
    """
    Open a UDP socket on C{interface}, port 0, closed at cleanup.
    """
    client = DatagramClient()
    listenUDP(testCase, client, interface)
    return client


class StreamClient(Protocol):
    """
    A TCP client that cuts what it receives into STUN and ChannelData frames.

    @ivar frames: the frames received, in order.
    @ivar lostReason: why the connection was lost, or L{None} while open.
    @ivar address: the connection's own address, once connected.
    """

    def __init__(self) -> None:
        self._framer = StreamFramer()
        self.frames: DeferredQueue[bytes] = DeferredQueue()
        self.lostReason: Optional[Failure] = None
        self.address = TransportAddress("0.0.0.0", 0)
        self._closedWaiters: List[Deferred[None]] = []

    def connectionMade(self) -> None:
        host = self.transport.getHost()  # type: ignore[union-attr]
        assert isinstance(host, (IPv4Address, IPv6Address))
        self.address = TransportAddress(host.host, host.port)

    def dataReceived(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            self.frameReceived(frame)

    def frameReceived(self, frame: bytes) -> None:
        """
        Take one STUN or ChannelData message.
        """
        self.frames.put(frame)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lostReason = reason
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def send(self, data: bytes) -> None:
        """
        Write to the server.
        """
        self.transport.write(data)  # type: ignore[union-attr]

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
        Close the connection the way that leaves no socket behind on either
        end: send FIN, let the server close its side, and wait for that.

        The server's protocol is not half-closeable, so end of input makes it
        close its socket, which it does only after leaving the reactor; our
        C{connectionLost} therefore means both ends are gone.
        """
        if self.lostReason is None:
            self.transport.loseWriteConnection()  # type: ignore[union-attr]
        return self.whenClosed()


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


async def streamClient(testCase: SynchronousTestCase, address: TransportAddress) -> StreamClient:
    """
    Connect to C{address} over TCP; the connection is closed at cleanup.
    """
    client = await connectProtocol(streamEndpoint(address), StreamClient())
    testCase.addCleanup(client.close)
    return client


# The TURN client on a socket -------------------------------------------------


class SocketTURNSession(TURNSession):
    """
    A L{TURNSession} whose requests go out on a socket: responses are matched
    to requests by transaction ID, and what arrives unasked (ChannelData,
    Data indications) is queued.

    @ivar channelData: C{(channelNumber, data)} of each ChannelData message
        received.
    @ivar indications: each STUN indication received (Data indications).
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
        super().__init__(username, password)
        self._write = write
        self._retransmit = retransmit
        self._pad = pad
        self._pending: Dict[bytes, Deferred[STUNMessage]] = {}
        self._timers: Dict[bytes, IDelayedCall] = {}
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

    def transact(self, data: bytes) -> Deferred[STUNMessage]:
        """
        Send an encoded request.

        @return: a L{Deferred} that fires with the response.
        """
        transactionID = data[8:20]
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

    async def _run(self, exchange: Exchange) -> STUNMessage:
        data = next(exchange)
        while True:
            response = await self.transact(data)
            try:
                data = exchange.send(response)
            except StopIteration as done:
                final: STUNMessage = done.value
                return final

    async def request(self, method: int, attributes: Attributes = ()) -> STUNMessage:
        """
        Send an authenticated request (see L{TURNSession.exchange}).

        @return: the final response, its integrity checked.
        @raise AssertionError: the response's integrity is missing or wrong.
        """
        return await self._run(self.exchange(method, attributes))

    async def binding(self) -> STUNMessage:
        """
        Send a Binding request (unauthenticated).

        @return: the response.
        """
        return await self.transact(bindingRequest()[1])

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
        self._write(self.buildIndication(Method.SEND, (A.XOR_PEER_ADDRESS, peer), (A.DATA, data)))

    def sendChannelData(self, number: int, data: bytes) -> None:
        """
        Send C{data} to the peer bound to channel C{number}.
        """
        self._write(encodeChannelData(number, data, pad=self._pad))


class TURNDatagramClient(DatagramClient):
    """
    A TURN client on a UDP socket, talking to one server address.

    @ivar session: the client's requests and received data.
    @ivar server: where requests go; only datagrams from there are taken.
    """

    def __init__(self, server: TransportAddress, username: str, password: str) -> None:
        super().__init__()
        self.server = server
        self.session = SocketTURNSession(
            lambda data: self.send(data, self.server), username, password, retransmit=True
        )

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if TransportAddress(addr[0], addr[1]) == self.server:
            self.session.frameReceived(datagram)


def udpTURNClient(
    testCase: SynchronousTestCase,
    server: TransportAddress,
    interface: str = "127.0.0.1",
    username: str = USERNAME,
    password: str = PASSWORD,
) -> SocketTURNSession:
    """
    Open a UDP socket on C{interface} for a TURN client of C{server}; it
    closes at cleanup.

    @return: the client's session.
    """
    client = TURNDatagramClient(server, username, password)
    listenUDP(testCase, client, interface)
    testCase.addCleanup(client.session.stop)
    return client.session


@implementer(IHandshakeListener)
class TURNStreamClient(StreamClient):
    """
    A TURN client on a TCP connection, or TLS over one.

    @ivar session: the client's requests and received data.
    @ivar handshaken: whether a TLS handshake completed.
    """

    def __init__(self, username: str = USERNAME, password: str = PASSWORD) -> None:
        super().__init__()
        self.session = SocketTURNSession(self.send, username, password, pad=True)
        self.handshaken = False
        self._handshakeWaiters: List[Deferred[None]] = []

    def frameReceived(self, frame: bytes) -> None:
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
        super().connectionLost(reason)

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

    def close(self) -> Deferred[None]:
        """
        Drop the connection at once (even one that has stopped reading), and
        wait until it is gone on this side;
        L{tests._relays.ServerConnections} waits for the other.
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


async def streamTURNClient(
    testCase: SynchronousTestCase,
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


# Relaying through a channel --------------------------------------------------


async def bindChannel(
    testCase: TURNTestCase, session: SocketTURNSession, peer: TransportAddress
) -> TransportAddress:
    """
    Allocate a UDP relay and bind L{CHANNEL} to C{peer}.

    @return: the relayed address.
    """
    allocated = await within(session.allocate(), PROMPTLY, "Allocate")
    testCase.assertSuccess(allocated)
    bound = await within(session.channelBind(CHANNEL, peer), PROMPTLY, "ChannelBind")
    testCase.assertSuccess(bound)
    relayed = allocated.get(A.XOR_RELAYED_ADDRESS)
    assert isinstance(relayed, TransportAddress)
    return relayed


async def roundTrip(
    testCase: SynchronousTestCase,
    session: SocketTURNSession,
    peer: DatagramClient,
    relayed: TransportAddress,
    tag: bytes,
    number: int = CHANNEL,
) -> None:
    """
    Send C{tag} to C{peer} over channel C{number}, which it must receive
    from C{relayed}, and have the peer send it back reversed.
    """
    session.sendChannelData(number, tag)
    datagram, source = await within(peer.received.get(), PROMPTLY, f"ChannelData at {peer}")
    testCase.assertEqual((datagram, TransportAddress(source[0], source[1])), (tag, relayed))
    peer.send(tag[::-1], relayed)
    received = await within(session.channelData.get(), PROMPTLY, "ChannelData from the peer")
    testCase.assertEqual(received, (number, tag[::-1]))
