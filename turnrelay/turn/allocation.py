# -*- test-case-name: tests.test_turn_allocation -*-
"""
Allocations, their permissions and channel bindings, and the one registry
that holds them all, whatever transport the clients came in on.

Lifetimes run on the injected clock: every allocation, permission and
channel binding has one timer, reset when it is refreshed, and an expiring
allocation closes its relay socket.

@see: RFC 8656 sections 2, 6, 9 and 12.
"""

from __future__ import annotations

import struct
from random import getrandbits
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from turnrelay.logs import Logger
from turnrelay.stun.address import FAMILY_IPV6, TransportAddress
from turnrelay.stun.attributes import TRANSPORT_UDP
from turnrelay.stun.message import encodeDataIndication

PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0

_channelDataHeader = struct.Struct("!HH").pack
# Zeros that pad ChannelData to 4 bytes on streams, by length modulo 4.
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")


def _indicationID() -> bytes:
    # An indication's transaction ID matches nothing and protects nothing
    # (RFC 8489 section 6): a fast non-cryptographic source is enough.
    return getrandbits(96).to_bytes(12, "big")


class FiveTuple(NamedTuple):
    """
    What identifies an allocation: the client's address, our address it
    reached and the transport (RFC 8656 section 2).
    """

    transportProtocol: str
    clientAddress: TransportAddress
    serverAddress: TransportAddress

    def __str__(self) -> str:
        return f"{self.transportProtocol}:{self.clientAddress}->{self.serverAddress}"


class TokenBucket:
    """
    A byte budget that refills at a steady rate: the per-allocation bandwidth
    cap (RFC 8656 section 21.3.1).  Excess traffic is dropped, not queued.

    @ivar rate: bytes per second.
    @ivar burst: the most bytes that can be saved up.
    """

    __slots__ = ("rate", "burst", "_tokens", "_last", "_clock")

    def __init__(self, clock: IReactorTime, rate: float, burst: Optional[float] = None) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = self.burst
        self._last = clock.seconds()

    def take(self, size: int) -> bool:
        """
        Spend C{size} bytes if the budget allows.

        @return: whether the packet may be sent.
        """
        now = self._clock.seconds()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens < size:
            self._tokens = tokens
            return False
        self._tokens = tokens - size
        return True


class Relay:
    """
    One relayed transport address of an allocation and its socket; a dual
    allocation (RFC 8656 section 7.2) has one for each address family.

    @ivar address: the address advertised in XOR-RELAYED-ADDRESS.
    @ivar port: the relay socket (an C{IUDPTransport} and C{IListeningPort}).
    @ivar sendto: the socket's own C{sendto}: Twisted's C{write()}
        re-validates the address text of every datagram, which costs as much
        as the rest of the data path.
    @ivar close: closes the socket and returns its port to its pool.
    """

    __slots__ = ("address", "port", "sendto", "close")

    def __init__(self, address: TransportAddress, port: Any, close: Callable[[Any], None]) -> None:
        self.address = address
        self.port = port
        # A TCP relayed address (RFC 6062) listens, and sends nothing itself.
        self.sendto = getattr(getattr(port, "socket", None), "sendto", None)
        self.close = close


class ChannelBinding:
    """
    A channel number bound to a peer transport address (RFC 8656 section 12).

    @ivar number: 0x4000 to 0x4FFF (or 0x7FFF, as RFC 5766 allowed).
    @ivar peer: the peer's address.
    @ivar sendto: the send function of the relay socket of the peer's family.
    """

    __slots__ = ("number", "peer", "sendto", "timer")

    def __init__(
        self, number: int, peer: TransportAddress, sendto: Any, timer: IDelayedCall
    ) -> None:
        self.number = number
        self.peer = peer
        self.sendto = sendto
        self.timer = timer


class Allocation:
    """
    One client's relayed transport address (or two, one per family) and
    everything bound to it.

    The relay sockets are opened by the caller and handed in; the allocation
    closes them when it ends.  Counters are plain integers, updated on the
    data path, and read by logs and the admin console.

    @ivar fiveTuple: the client's 5-tuple.
    @ivar channel: the L{IReplyChannel} back to the client.
    @ivar username: who authenticated the Allocate; later requests must match.
    @ivar transactionID: the Allocate's transaction ID, to spot retransmissions.
    @ivar allocateResponse: the bytes answered to that Allocate.
    @ivar relays: address family -> L{Relay}, in the order advertised.
    @ivar transport: the relayed transport, C{TRANSPORT_UDP} or
        C{TRANSPORT_TCP} (RFC 6062).
    @ivar peerConnections: CONNECTION-ID -> C{PeerConnection}, for TCP
        allocations.
    @ivar permissions: peer IP -> expiry timer.
    @ivar channels: channel number -> L{ChannelBinding}.
    @ivar channelsByPeer: peer address -> L{ChannelBinding}.
    @ivar bucket: the bandwidth cap, or L{None}.
    """

    log = Logger()

    __slots__ = (
        "fiveTuple",
        "channel",
        "username",
        "transactionID",
        "allocateResponse",
        "relays",
        "transport",
        "peerConnections",
        "permissions",
        "channels",
        "channelsByPeer",
        "bucket",
        "createdAt",
        "expiresAt",
        "packetsToPeer",
        "bytesToPeer",
        "packetsFromPeer",
        "bytesFromPeer",
        "droppedPermission",
        "droppedInvalid",
        "droppedBandwidth",
        "droppedCongestion",
        "_clock",
        "_timer",
        "_onExpiry",
        "_released",
    )

    def __init__(
        self,
        clock: IReactorTime,
        fiveTuple: FiveTuple,
        channel: Any,
        username: str,
        transactionID: bytes,
        relays: Sequence[Relay],
        lifetime: float,
        onExpiry: Any,
        bucket: Optional[TokenBucket] = None,
        transport: int = TRANSPORT_UDP,
    ) -> None:
        """
        @param relays: the relayed addresses, at most one per family.
        @param onExpiry: called with this allocation when its lifetime ends.
        """
        self._clock = clock
        self.fiveTuple = fiveTuple
        self.channel = channel
        self.username = username
        self.transactionID = transactionID
        self.allocateResponse = b""
        self.relays: Dict[int, Relay] = {relay.address.family: relay for relay in relays}
        self.transport = transport
        self.peerConnections: Dict[int, Any] = {}
        self.permissions: Dict[str, IDelayedCall] = {}
        self.channels: Dict[int, ChannelBinding] = {}
        self.channelsByPeer: Dict[TransportAddress, ChannelBinding] = {}
        self.bucket = bucket
        self.createdAt = clock.seconds()
        self.expiresAt = self.createdAt + lifetime
        self.packetsToPeer = self.bytesToPeer = 0
        self.packetsFromPeer = self.bytesFromPeer = 0
        # Dropped packets, by cause: no permission; not valid (an unbound
        # channel, a short frame); over the bandwidth cap; a full socket
        # buffer or a client reading too slowly.
        self.droppedPermission = self.droppedInvalid = 0
        self.droppedBandwidth = self.droppedCongestion = 0
        self._onExpiry = onExpiry
        self._released = False
        self._timer = clock.callLater(lifetime, onExpiry, self)

    def __repr__(self) -> str:
        return f"<Allocation {self.relayedAddress} for {self.username!r} {self.fiveTuple}>"

    @property
    def relayedAddress(self) -> TransportAddress:
        """
        The first relayed address (the only one unless dual).
        """
        return next(iter(self.relays.values())).address

    @property
    def relayedAddresses(self) -> List[TransportAddress]:
        """
        Every relayed address, one per family.
        """
        return [relay.address for relay in self.relays.values()]

    @property
    def relayPort(self) -> Any:
        """
        The socket of the first relayed address.
        """
        return next(iter(self.relays.values())).port

    def sendtoFor(self, family: int) -> Optional[Callable[[bytes, Any], Any]]:
        """
        @return: the send function of the relay socket of C{family}, or
            L{None} if the allocation has no relayed address of it.
        """
        relay = self.relays.get(family)
        return None if relay is None else relay.sendto

    def removeRelay(self, family: int) -> None:
        """
        Give up one family of a dual allocation (a Refresh with LIFETIME 0
        and REQUESTED-ADDRESS-FAMILY, RFC 8656 section 8.1): close its socket
        and forget its permissions and channels.
        """
        relay = self.relays.pop(family)
        for number, binding in list(self.channels.items()):
            if binding.peer.family == family:
                binding.timer.cancel()
                del self.channels[number]
                del self.channelsByPeer[binding.peer]
        for host in [h for h in self.permissions if (":" in h) == (family == FAMILY_IPV6)]:
            self.permissions.pop(host).cancel()
        relay.close(relay.port)

    @property
    def dropped(self) -> int:
        """
        Packets dropped, whatever the cause.
        """
        return (
            self.droppedPermission
            + self.droppedInvalid
            + self.droppedBandwidth
            + self.droppedCongestion
        )

    @property
    def lifetime(self) -> int:
        """
        Seconds left before the allocation expires.
        """
        return max(0, int(self.expiresAt - self._clock.seconds() + 0.5))

    def refresh(self, lifetime: float) -> None:
        """
        Set the time to expiry (RFC 8656 section 8).
        """
        self.expiresAt = self._clock.seconds() + lifetime
        self._timer.reset(lifetime)

    # Permissions (RFC 8656 section 9) ----------------------------------------

    def installPermission(self, host: str) -> None:
        """
        Install or refresh a permission for a peer IP; it lasts exactly 300 s.
        """
        timer = self.permissions.get(host)
        if timer is None:
            self.permissions[host] = self._clock.callLater(
                PERMISSION_LIFETIME, self._permissionExpired, host
            )
        else:
            timer.reset(PERMISSION_LIFETIME)

    def _permissionExpired(self, host: str) -> None:
        del self.permissions[host]

    # Channels (RFC 8656 section 12) ------------------------------------------

    def channelConflict(self, number: int, peer: TransportAddress) -> bool:
        """
        @return: whether C{number} is bound to another peer, or C{peer} to
            another number (either is a 400, RFC 8656 section 12.2).
        """
        byNumber = self.channels.get(number)
        byPeer = self.channelsByPeer.get(peer)
        return (byNumber is not None and byNumber.peer != peer) or (
            byPeer is not None and byPeer.number != number
        )

    def bindChannel(self, number: int, peer: TransportAddress) -> None:
        """
        Bind or refresh a channel (600 s) and its peer's permission (300 s).

        The caller has checked L{channelConflict}.
        """
        binding = self.channels.get(number)
        if binding is None:
            timer = self._clock.callLater(CHANNEL_LIFETIME, self._channelExpired, number)
            binding = ChannelBinding(number, peer, self.relays[peer.family].sendto, timer)
            self.channels[number] = binding
            self.channelsByPeer[peer] = binding
        else:
            binding.timer.reset(CHANNEL_LIFETIME)
        self.installPermission(peer.host)

    def _channelExpired(self, number: int) -> None:
        binding = self.channels.pop(number)
        del self.channelsByPeer[binding.peer]

    # The data path -------------------------------------------------------------

    def sendToPeer(self, payload: bytes, peer: Any, sendto: Callable[[bytes, Any], Any]) -> None:
        """
        Relay a client's payload to a peer from the relayed address.

        @param sendto: the send function of the relay socket of the peer's
            family (L{ChannelBinding.sendto}, L{sendtoFor}).  The caller has
            checked the permission.
        """
        size = len(payload)
        bucket = self.bucket
        if bucket is not None and not bucket.take(size):
            self.droppedBandwidth += 1
            return
        try:
            sendto(payload, peer)
        except OSError:
            # EAGAIN: the socket buffer is full; drop, as a router would.
            self.droppedCongestion += 1
            return
        self.packetsToPeer += 1
        self.bytesToPeer += size

    def peerDataReceived(self, payload: bytes, peer: Any) -> None:
        """
        Relay a peer's datagram to the client: ChannelData when a channel is
        bound to the peer (RFC 8656 section 12.5 makes that a MUST), a Data
        indication otherwise; nothing without a permission (section 9).
        """
        if peer[0] not in self.permissions:
            self.droppedPermission += 1
            return
        size = len(payload)
        bucket = self.bucket
        if bucket is not None and not bucket.take(size):
            self.droppedBandwidth += 1
            return
        binding = self.channelsByPeer.get(peer)
        if binding is not None:
            frame = _channelDataHeader(binding.number, size) + payload
            if size & 3 and self.fiveTuple.transportProtocol != "udp":
                frame += _PADDING[size & 3]
        else:
            frame = encodeDataIndication(_indicationID(), peer, payload)
        if self.channel.relay(frame):
            self.packetsFromPeer += 1
            self.bytesFromPeer += size
        else:
            self.droppedCongestion += 1

    # The end -------------------------------------------------------------------

    def release(self) -> None:
        """
        Stop every timer and close the relay socket.  Idempotent.
        """
        if self._released:
            return
        self._released = True
        if self._timer.active():
            self._timer.cancel()
        for timer in self.permissions.values():
            timer.cancel()
        for binding in self.channels.values():
            binding.timer.cancel()
        self.permissions.clear()
        self.channels.clear()
        self.channelsByPeer.clear()
        for relay in self.relays.values():
            relay.close(relay.port)
        # Peer connections end with their allocation (RFC 6062 section 5.5).
        for connection in list(self.peerConnections.values()):
            connection.close()

    def usage(self) -> Dict[str, Any]:
        """
        The allocation's usage so far, as structured log fields.
        """
        return {
            "username": self.username,
            "client": str(self.fiveTuple),
            "relayed": " ".join(str(address) for address in self.relayedAddresses),
            "duration": round(self._clock.seconds() - self.createdAt, 3),
            "packetsToPeer": self.packetsToPeer,
            "bytesToPeer": self.bytesToPeer,
            "packetsFromPeer": self.packetsFromPeer,
            "bytesFromPeer": self.bytesFromPeer,
            "dropped": self.dropped,
            "droppedPermission": self.droppedPermission,
            "droppedInvalid": self.droppedInvalid,
            "droppedBandwidth": self.droppedBandwidth,
            "droppedCongestion": self.droppedCongestion,
        }


class UsageTotals:
    """
    What ended allocations relayed, so that totals stay monotonic counters
    when allocations come and go (metrics add the live ones).
    """

    FIELDS = (
        "packetsToPeer",
        "bytesToPeer",
        "packetsFromPeer",
        "bytesFromPeer",
        "droppedPermission",
        "droppedInvalid",
        "droppedBandwidth",
        "droppedCongestion",
    )

    def __init__(self) -> None:
        self.allocations = 0
        self.counts: Dict[str, int] = dict.fromkeys(self.FIELDS, 0)

    def add(self, allocation: Allocation) -> None:
        """
        Count an allocation that ended.
        """
        self.allocations += 1
        for field in self.FIELDS:
            self.counts[field] += getattr(allocation, field)


class AllocationRegistry:
    """
    Every live allocation, keyed by 5-tuple, for all transports at once.

    Adding and removing keep each client's reply channel pointing at its
    allocation, so that the data path finds it with one attribute read.
    Removing releases the allocation's timers and relay socket and logs its
    usage.
    """

    log = Logger()

    def __init__(self) -> None:
        self._allocations: Dict[FiveTuple, Allocation] = {}
        self._byUser: Dict[str, Set[Allocation]] = {}
        self._emptyWaiters: List[Deferred[None]] = []
        # Totals of ended allocations, by client transport.
        self.ended: Dict[str, UsageTotals] = {}

    def whenEmpty(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires when no allocation is left (at
            once if none is).
        """
        if not self._allocations:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._emptyWaiters.append(d)
        return d

    def __len__(self) -> int:
        return len(self._allocations)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self._allocations.values()))

    def get(self, fiveTuple: FiveTuple) -> Optional[Allocation]:
        """
        @return: the allocation on C{fiveTuple}, or L{None}.
        """
        return self._allocations.get(fiveTuple)

    def countForUser(self, username: str) -> int:
        """
        @return: how many allocations C{username} holds (the 486 quota counts
            per username, RFC 8656 section 7.2).
        """
        return len(self._byUser.get(username, ()))

    def forUser(self, username: str) -> List[Allocation]:
        """
        @return: C{username}'s allocations.
        """
        return list(self._byUser.get(username, ()))

    def add(self, allocation: Allocation) -> None:
        """
        Register a new allocation and point its client's channel at it.
        """
        self._allocations[allocation.fiveTuple] = allocation
        self._byUser.setdefault(allocation.username, set()).add(allocation)
        allocation.channel.attach(allocation)
        self.log.info(
            "allocation {relayed} created for {username} on {client}, lifetime {lifetime} s",
            relayed=" ".join(str(address) for address in allocation.relayedAddresses),
            username=allocation.username,
            client=str(allocation.fiveTuple),
            lifetime=allocation.lifetime,
        )

    def remove(self, allocation: Allocation, reason: str) -> None:
        """
        End an allocation: unregister it, release it, log its usage.

        @param reason: C{"deleted"}, C{"expired"}, C{"closed"}, ...
        """
        if self._allocations.get(allocation.fiveTuple) is not allocation:
            return
        del self._allocations[allocation.fiveTuple]
        owned = self._byUser[allocation.username]
        owned.discard(allocation)
        if not owned:
            del self._byUser[allocation.username]
        allocation.channel.detach(allocation)
        allocation.release()
        self.log.info(
            "allocation {relayed} {reason}: {username} on {client}, {duration} s, "
            "{packetsToPeer} packets ({bytesToPeer} bytes) to peers, "
            "{packetsFromPeer} packets ({bytesFromPeer} bytes) from peers, {dropped} dropped",
            reason=reason,
            **allocation.usage(),
        )
        transport = allocation.fiveTuple.transportProtocol
        self.ended.setdefault(transport, UsageTotals()).add(allocation)
        if not self._allocations:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)
