# -*- test-case-name: tests.test_turn_relaying -*-
"""
Allocations, with their permissions and channel bindings.

Lifetimes run on the injected clock: every allocation, permission and
channel binding has one timer, reset when it is refreshed, and an expiring
allocation closes its relay socket.

@see: RFC 8656 sections 2, 6, 9 and 12.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from turnrelay.interfaces import IClientLink, IKernelPath
from turnrelay.stun.address import FAMILY_IPV6, TransportAddress
from turnrelay.stun.attributes import TRANSPORT_UDP

if TYPE_CHECKING:
    from turnrelay.turn.datapath import TokenBucket

# What the data path counts on each allocation: relayed packets and bytes
# each way, and dropped packets by cause: no permission; not valid (an
# unbound channel, a short frame); over the bandwidth cap; a full socket
# buffer or a client reading too slowly.
DROP_COUNTERS = ("droppedPermission", "droppedInvalid", "droppedBandwidth", "droppedCongestion")
RELAYED_COUNTERS = ("packetsToPeer", "bytesToPeer", "packetsFromPeer", "bytesFromPeer")
TRAFFIC_COUNTERS = RELAYED_COUNTERS + DROP_COUNTERS

PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0


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
    @ivar link: the L{IClientLink} back to the client.
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
    @ivar kernelPath: the kernel fast path (an L{IKernelPath}) told when a
        permission or channel binding comes or goes, and when the allocation
        ends; L{None} when the relay has none.  The controller sets it when
        the allocation is registered.

    What the data path relays and drops is counted here by
    L{turnrelay.turn.datapath.DataPath}.
    """

    __slots__ = (
        "fiveTuple",
        "link",
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
        "kernelPath",
        "createdAt",
        "expiresAt",
        *TRAFFIC_COUNTERS,
        "_clock",
        "_timer",
        "_onExpiry",
        "_released",
    )

    def __init__(
        self,
        clock: IReactorTime,
        fiveTuple: FiveTuple,
        link: IClientLink,
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
        self.link = link
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
        self.kernelPath: Optional[IKernelPath] = None
        self.createdAt = clock.seconds()
        self.expiresAt = self.createdAt + lifetime
        # The counters of TRAFFIC_COUNTERS, declared here for the type checker.
        self.packetsToPeer = self.bytesToPeer = 0
        self.packetsFromPeer = self.bytesFromPeer = 0
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
        self._changed()
        relay.close(relay.port)

    @property
    def dropped(self) -> int:
        """
        Packets dropped, whatever the cause.
        """
        return sum(getattr(self, counter) for counter in DROP_COUNTERS)

    @property
    def lifetime(self) -> int:
        """
        Seconds left before the allocation expires.
        """
        return max(0, int(self.expiresAt - self._clock.seconds() + 0.5))

    def _changed(self) -> None:
        # What the kernel path may relay follows permissions and channels.
        kernelPath = self.kernelPath
        if kernelPath is not None:
            kernelPath.allocationChanged(self)

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
        if self._installPermission(host):
            self._changed()

    def _installPermission(self, host: str) -> bool:
        """
        @return: whether the permission is new (a refresh changes nothing
            the kernel path holds).
        """
        timer = self.permissions.get(host)
        if timer is None:
            self.permissions[host] = self._clock.callLater(
                PERMISSION_LIFETIME, self._permissionExpired, host
            )
            return True
        timer.reset(PERMISSION_LIFETIME)
        return False

    def _permissionExpired(self, host: str) -> None:
        del self.permissions[host]
        self._changed()

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
        changed = binding is None
        if binding is None:
            timer = self._clock.callLater(CHANNEL_LIFETIME, self._channelExpired, number)
            binding = ChannelBinding(number, peer, self.relays[peer.family].sendto, timer)
            self.channels[number] = binding
            self.channelsByPeer[peer] = binding
        else:
            binding.timer.reset(CHANNEL_LIFETIME)
        if self._installPermission(peer.host) or changed:
            self._changed()

    def _channelExpired(self, number: int) -> None:
        binding = self.channels.pop(number)
        del self.channelsByPeer[binding.peer]
        self._changed()

    # The end -------------------------------------------------------------------

    def release(self) -> None:
        """
        Stop every timer and close the relay socket.  Idempotent.
        """
        if self._released:
            return
        self._released = True
        kernelPath, self.kernelPath = self.kernelPath, None
        if kernelPath is not None:
            # First, while its entries still hold what the kernel relayed:
            # the usage read next includes it.
            kernelPath.allocationEnded(self)
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
            "dropped": self.dropped,
            **{counter: getattr(self, counter) for counter in TRAFFIC_COUNTERS},
        }
