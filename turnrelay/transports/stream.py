# -*- test-case-name: tests.test_transports_stream -*-
"""
TURN over a byte stream: TCP, and TLS over TCP.

Streams cost the server a socket and buffers for as long as they stay open,
and anyone can open one, so connections are held to limits a UDP client
never needs: one without an allocation must allocate in time and is closed
after a quiet spell, a TLS handshake must finish in time, only so many
connections may be without an allocation at once (and only so many from one
source), a client that does not read what it is sent is not read from, and
relayed data that a slow reader cannot take is dropped instead of queued.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Dict, Optional
from typing import Counter as CounterType

import attr
from automat import MethodicalMachine
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from turnrelay.interfaces import IClientLink
from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress, unmapIPv4
from turnrelay.stun.channeldata import StreamFramer
from turnrelay.stun.errors import STUNDecodeError
from turnrelay.turn.allocation import Allocation, FiveTuple
from turnrelay.turn.descriptors import DescriptorBudget
from turnrelay.turn.server import TURNServer
from turnrelay.turn.sources import sourceOf


@attr.define(eq=False)
class StreamLimits:
    """
    Limits shared by every stream listener of a relay, and the table of
    connections without an allocation that they hold.

    A connection without an allocation costs a descriptor and buffers, and
    anyone can open one.  So each must allocate within C{allocateTimeout}
    (Binding does not extend it), one source may hold only
    C{maxUnallocatedPerSource}, and when C{maxUnallocated} are open a
    newcomer still gets in: the source holding the most loses its oldest.
    One address cannot then lock others out by holding every place.

    @ivar clock: the time source for the timers below.
    @ivar idleTimeout: seconds a connection without an allocation may stay
        silent before it is closed.
    @ivar handshakeTimeout: seconds a TLS handshake may take.
    @ivar allocateTimeout: seconds a connection has to allocate, from its
        start or from the end of its allocation, whatever it sends.
    @ivar maxUnallocated: how many connections may be open without an
        allocation at once.
    @ivar maxUnallocatedPerSource: how many of those one source may hold.
    @ivar maxUnsent: bytes a connection may be sent after its transport
        asked us to pause; past that it is closed.
    @ivar descriptors: the process's descriptor budget, or L{None}.
    @ivar closed: connections closed or refused by a limit, by reason.
    """

    clock: IReactorTime
    idleTimeout: float = 60.0
    handshakeTimeout: float = 10.0
    allocateTimeout: float = 30.0
    maxUnallocated: int = 1000
    maxUnallocatedPerSource: int = 64
    maxUnsent: int = 262144
    descriptors: Optional[DescriptorBudget] = None
    closed: CounterType[str] = attr.Factory(Counter)
    _bySource: Dict[bytes, Dict[STUNStreamProtocol, None]] = attr.Factory(dict)
    _unallocated: int = 0

    @property
    def unallocated(self) -> int:
        """
        How many connections are open without an allocation now.
        """
        return self._unallocated

    def sources(self) -> int:
        """
        How many sources hold connections without an allocation now.
        """
        return len(self._bySource)

    def admit(self, protocol: STUNStreamProtocol, enforce: bool = True) -> Optional[str]:
        """
        Count a connection as one without an allocation.

        @param enforce: whether the per-source cap applies (it does not to a
            connection whose allocation just ended: it was let in already).
        @return: L{None} if admitted, else why it must be closed.
        """
        source = sourceOf(protocol.clientAddress.host)
        held = self._bySource.get(source)
        if enforce and held is not None and len(held) >= self.maxUnallocatedPerSource:
            return "per-source"
        if self._unallocated >= self.maxUnallocated:
            self._shed()
        self._bySource.setdefault(source, {})[protocol] = None
        self._unallocated += 1
        return None

    def release(self, protocol: STUNStreamProtocol) -> None:
        """
        A counted connection allocated or closed.
        """
        source = sourceOf(protocol.clientAddress.host)
        held = self._bySource.get(source)
        if held is not None and held.pop(protocol, 0) is None:
            self._unallocated -= 1
            if not held:
                del self._bySource[source]

    def _shed(self) -> None:
        # The source holding the most gives up its oldest connection.
        held = max(self._bySource.values(), key=len)
        oldest = next(iter(held))
        oldest.closeForLimit("shed")


@implementer(IClientLink, IPushProducer, IHandshakeListener)
class STUNStreamProtocol(Protocol):
    """
    One client connection carrying STUN messages and padded ChannelData back
    to back (RFC 8489 section 6.2.2, RFC 8656 section 12.5).

    Anything that cannot be STUN or ChannelData ends this connection, and
    only this one: a stream cannot be resynchronised.

    The protocol is the producer of what it writes to its transport: when
    the transport's buffer fills because the client reads slowly, we stop
    reading from the client (its further requests wait in the kernel, not
    in our memory), relayed data is dropped (and counted), and responses
    to what was already read still go out, up to C{maxUnsent} bytes before
    the connection is closed.  Twisted's buffer holds about 64 KB before it
    asks us to pause over TCP; over TLS about twice that, as Twisted's TLS
    layer keeps its own buffer above TCP's.

    Closing for a limit is counted in L{StreamLimits.closed} and logged at
    debug level only: anyone can open connections, and a line each would
    let them fill the log.

    The connection's life (admitted, with or without an allocation, an RFC
    6062 data connection, closed) is an Automat state machine, as
    magic-wormhole's transit relay drives its connections: each state
    decides where received bytes go and which timers run.

    @ivar server: the controller the messages go to.
    @ivar clientAddress: the client's address.
    @ivar serverAddress: our address the client connected to.
    @ivar droppedRelayed: relayed frames dropped for a slow reader.
    """

    log = Logger()
    _machine = MethodicalMachine()

    def __init__(self, server: TURNServer, transportProtocol: str, limits: StreamLimits) -> None:
        """
        @param transportProtocol: C{"tcp"}, or C{"tls"} when wrapped in TLS.
        """
        self.server = server
        self.logLevels = server.logLevels
        self.transportProtocol = transportProtocol
        self._limits = limits
        self._framer = StreamFramer()
        # Set by the state machine only: where received bytes go, and
        # whether anything may still be written.
        self._receive: Callable[[bytes], None] = self._discard
        self._open = True
        self._paused = False
        self._unsent = 0
        self._idleTimer: Optional[IDelayedCall] = None
        self._allocateTimer: Optional[IDelayedCall] = None
        self._handshakeTimer: Optional[IDelayedCall] = None
        self._peerConnection: Any = None
        self.droppedRelayed = 0
        self.clientAddress = TransportAddress("0.0.0.0", 0)
        self.serverAddress = TransportAddress("0.0.0.0", 0)
        self.fiveTuple = FiveTuple(self.transportProtocol, self.clientAddress, self.serverAddress)
        self.allocation: Optional[Allocation] = None

    # The connection's life, as a state machine ----------------------------------
    #
    #   new --admitted--> unallocated --allocationMade--> allocated
    #                        |      ^------allocationEnded-----'
    #                        '--bound (ConnectionBind)--> relaying (RFC 6062)
    #   every state --limitReached, lost--> closed
    #
    # Only "unallocated" is counted against the limits and timed; only
    # "relaying" carries raw bytes.

    @_machine.state(initial=True)
    def _new(self) -> None:
        "Connected; not yet admitted."

    @_machine.state()
    def _unallocated(self) -> None:
        "Counted against the limits, and timed: it must allocate in time."

    @_machine.state()
    def _allocated(self) -> None:
        "Holds an allocation: neither counted nor timed."

    @_machine.state()
    def _relaying(self) -> None:
        "An RFC 6062 data connection: raw bytes to and from one peer."

    @_machine.state()
    def _closed(self) -> None:
        "Closing or closed: nothing more is read or written."

    @_machine.input()
    def _admitted(self) -> None:
        "The limits let it in."

    @_machine.input()
    def _allocationMade(self) -> None:
        "The registry made an allocation for this client."

    @_machine.input()
    def _allocationEnded(self) -> None:
        "Its allocation ended, the connection stays."

    @_machine.input()
    def _bound(self, peerConnection: Any) -> None:
        "ConnectionBind claimed a peer connection for it."

    @_machine.input()
    def _limitReached(self, reason: str) -> None:
        "A limit says it must go."

    @_machine.input()
    def _lost(self) -> None:
        "The connection is gone."

    @_machine.output()
    def _startCounting(self) -> None:
        self._count()

    def _count(self) -> None:
        limits = self._limits
        self._receive = self._receiveFrames
        self._idleTimer = limits.clock.callLater(limits.idleTimeout, self.closeForLimit, "idle")
        self._allocateTimer = limits.clock.callLater(
            limits.allocateTimeout, self.closeForLimit, "allocate-timeout"
        )

    @_machine.output()
    def _readmit(self) -> None:
        # Already let in once: the per-source cap does not apply again.
        self._limits.admit(self, enforce=False)
        self._count()

    @_machine.output()
    def _stopCounting(self) -> None:
        self._limits.release(self)
        _cancel(self._idleTimer)
        _cancel(self._allocateTimer)
        self._idleTimer = self._allocateTimer = None

    @_machine.output()
    def _splice(self, peerConnection: Any) -> None:
        # The peer connection takes over the transport's producer slot.
        self._peerConnection = peerConnection
        self._receive = peerConnection.write
        _cancel(self._handshakeTimer)
        transport: Any = self.transport
        transport.unregisterProducer()
        if self._paused:
            self._paused = False
            transport.resumeProducing()

    @_machine.output()
    def _abort(self, reason: str) -> None:
        self._limits.closed[reason] += 1
        self.log.debug(
            "closing {transport} connection from {client}: {reason}",
            transport=self.transportProtocol,
            client=self.clientAddress,
            reason=reason,
        )
        self._shut()
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _shut(self) -> None:
        self._open = False
        self._receive = self._discard

    @_machine.output()
    def _endEverything(self) -> None:
        self._shut()
        if self._peerConnection is not None:
            self._peerConnection.close()
        _cancel(self._handshakeTimer)
        self.server.linkClosed(self, "closed with its connection")

    _new.upon(_admitted, enter=_unallocated, outputs=[_startCounting])
    _new.upon(_limitReached, enter=_closed, outputs=[_abort])
    _new.upon(_lost, enter=_closed, outputs=[_endEverything])
    _unallocated.upon(_allocationMade, enter=_allocated, outputs=[_stopCounting])
    _unallocated.upon(_allocationEnded, enter=_unallocated, outputs=[])
    _unallocated.upon(_bound, enter=_relaying, outputs=[_stopCounting, _splice])
    _unallocated.upon(_limitReached, enter=_closed, outputs=[_stopCounting, _abort])
    _unallocated.upon(_lost, enter=_closed, outputs=[_stopCounting, _endEverything])
    _allocated.upon(_allocationEnded, enter=_unallocated, outputs=[_readmit])
    _allocated.upon(_limitReached, enter=_closed, outputs=[_abort])
    _allocated.upon(_lost, enter=_closed, outputs=[_endEverything])
    _relaying.upon(_allocationEnded, enter=_relaying, outputs=[])
    _relaying.upon(_limitReached, enter=_closed, outputs=[_abort])
    _relaying.upon(_lost, enter=_closed, outputs=[_endEverything])
    _closed.upon(_allocationMade, enter=_closed, outputs=[])
    _closed.upon(_allocationEnded, enter=_closed, outputs=[])
    _closed.upon(_limitReached, enter=_closed, outputs=[])
    _closed.upon(_lost, enter=_closed, outputs=[_endEverything])

    # What Twisted and the controller call --------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        host = transport.getHost()
        assert isinstance(peer, (IPv4Address, IPv6Address))
        assert isinstance(host, (IPv4Address, IPv6Address))
        self.clientAddress = TransportAddress(unmapIPv4(peer.host), peer.port)
        self.serverAddress = TransportAddress(unmapIPv4(host.host), host.port)
        self.fiveTuple = FiveTuple(self.transportProtocol, self.clientAddress, self.serverAddress)
        limits = self._limits
        if limits.descriptors is not None and not limits.descriptors.take("accept"):
            self._limitReached("descriptors")
            return
        refusal = limits.admit(self, enforce=True)
        if refusal is not None:
            self._limitReached(refusal)
            return
        self._admitted()
        if self.transportProtocol == "tls":
            self._handshakeTimer = limits.clock.callLater(
                limits.handshakeTimeout, self.closeForLimit, "handshake-timeout"
            )
        transport.registerProducer(self, True)

    def handshakeCompleted(self) -> None:
        _cancel(self._handshakeTimer)
        self._handshakeTimer = None

    def connectionLost(self, reason: object = None) -> None:
        self._lost()

    def closeForLimit(self, reason: str) -> None:
        """
        Close this connection because a limit says so, and count it.

        @param reason: the limit, a short name such as C{"allocate-timeout"}.
        """
        self._limitReached(reason)

    def attach(self, allocation: Allocation) -> None:
        self.allocation = allocation
        self._allocationMade()

    def detach(self, allocation: Allocation) -> None:
        if self.allocation is allocation:
            self.allocation = None
            self._allocationEnded()

    def startRelayingTo(self, peerConnection: Any) -> None:
        """
        Become an RFC 6062 data connection: raw bytes to and from the peer.
        The peer connection then owns the transport's producer slot.
        """
        self._bound(peerConnection)

    # Receiving -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._receive(data)

    def _discard(self, data: bytes) -> None:
        pass

    def _receiveFrames(self, data: bytes) -> None:
        if self._idleTimer is not None:
            self._idleTimer.reset(self._limits.idleTimeout)
        try:
            frames = self._framer.feed(data)
        except STUNDecodeError:
            self.closeForLimit("malformed")
            return
        server = self.server
        # Made once, not per frame: each attribute read of a method makes a
        # new bound method.
        receiveFrames = self._receiveFrames
        for index, frame in enumerate(frames):
            if self._receive != receiveFrames:
                # Closed, or ConnectionBind succeeded: what follows is the
                # peer's, raw.
                rest = b"".join(frames[index:]) + self._framer.takePending()
                if rest:
                    self._receive(rest)
                return
            try:
                if frame[0] < 0x40:
                    server.stunReceived(frame, self)
                else:
                    server.channelDataReceived(frame, self)
            except Exception:
                self.log.failure("while handling a frame from {client}", client=self.clientAddress)
        if self._receive != receiveFrames and self._framer.pending:
            self._receive(self._framer.takePending())

    # Sending -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """
        Write a response to the client; close the connection instead if the
        client has left more than C{maxUnsent} bytes unread.
        """
        if not self._open:
            return
        if self._paused:
            self._unsent += len(data)
            if self._unsent > self._limits.maxUnsent:
                self.closeForLimit("unsent")
                return
        self.transport.write(data)  # type: ignore[union-attr]

    def relay(self, data: bytes) -> bool:
        """
        Write relayed data to the client, unless it is not keeping up.
        """
        if self._paused or not self._open:
            if not self.droppedRelayed:
                self.log.warn(
                    "{client} reads too slowly over {transport}: dropping relayed data "
                    "until it catches up",
                    client=self.clientAddress,
                    transport=self.transportProtocol,
                )
            self.droppedRelayed += 1
            return False
        self.transport.write(data)  # type: ignore[union-attr]
        return True

    def pauseProducing(self) -> None:
        # The client's buffer is full: read nothing more from it until it
        # drains, so that its requests cannot queue answers in our memory.
        if not self._paused:
            self._paused = True
            self._unsent = 0
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        # The transport is going away; connectionLost follows.
        self._shut()


def _cancel(timer: Optional[IDelayedCall]) -> None:
    if timer is not None and timer.active():
        timer.cancel()


class STUNStreamFactory(Factory):
    """
    Builds a L{STUNStreamProtocol} for each connection, all sharing one
    controller and one set of limits.
    """

    noisy = False

    def __init__(
        self,
        server: TURNServer,
        transportProtocol: str = "tcp",
        limits: Optional[StreamLimits] = None,
    ) -> None:
        self.server = server
        self.transportProtocol = transportProtocol
        self.limits = limits if limits is not None else StreamLimits(server.clock)

    def buildProtocol(self, addr: object) -> STUNStreamProtocol:
        protocol = STUNStreamProtocol(self.server, self.transportProtocol, self.limits)
        protocol.factory = self
        return protocol
