# -*- test-case-name: tests.test_turn_relaying -*-
"""
The data path: application data between clients and their peers, both ways.

This is the relay's hot loop, so it is kept flat: a dict lookup or two and
one write per packet, no per-packet objects but the payload, no Deferreds
and no log events.  Everything it drops is counted on the allocation, by
cause.  Requests (permissions, channels) are not its business: it reads
what they installed.  A faster path (batched I/O, a kernel program)
replaces L{DataPath} behind L{turnrelay.interfaces.IDataPath}.

A packet from a client to a peer::

    client --ChannelData--> listener --> DataPath.channelDataFromClient
                                           channel bound?  (else droppedInvalid)
                                           permission?     (else droppedPermission)
                                           bandwidth cap?  (else droppedBandwidth)
    peer <--payload-- relay socket.sendto  (EAGAIN: droppedCongestion)

    client --Send indication--> listener --> TURNServer.stunReceived
                                 (decoded) --> DataPath.sendIndicationFromClient
                                           peer allowed by the policy? DATA present?
                                           then as above

A packet from a peer to a client::

    peer --datagram--> relay socket --> DataPath.datagramFromPeer(allocation)
                                           permission?     (else droppedPermission)
                                           bandwidth cap?  (else droppedBandwidth)
                                           channel bound to the peer?
                                             yes: ChannelData (padded on streams)
                                             no:  Data indication
    client <-- link.relay  (a slow reader: droppedCongestion)

@see: RFC 8656 sections 11 and 12; the ChannelData format is
    L{turnrelay.stun.channeldata}'s, the Data indication encoder
    L{turnrelay.stun.message.encodeDataIndication}.
"""

from __future__ import annotations

from random import getrandbits
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Optional

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from turnrelay.interfaces import IClientLink, IDataPath
from turnrelay.stun import attributes as A
from turnrelay.stun.channeldata import encodeChannelData, splitChannelData
from turnrelay.stun.message import STUNMessage, encodeDataIndication

if TYPE_CHECKING:
    from turnrelay.turn.allocation import Allocation
    from turnrelay.turn.permissions import FailClosedFilter
    from turnrelay.turn.policy import PeerPolicy
    from turnrelay.turn.relay import RelayPortPool


def _indicationID() -> bytes:
    # An indication's transaction ID matches nothing and protects nothing
    # (RFC 8489 section 6): a fast non-cryptographic source is enough.
    return getrandbits(96).to_bytes(12, "big")


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


@implementer(IDataPath)
class DataPath:
    """
    Relays application data for every allocation, in user space, one
    datagram at a time.

    @ivar peerPolicy: the peer policy in force, asked about the peer of
        every Send indication (a reload may have denied it since its
        permission was installed); the controller sets a new one here.
    @ivar pools: the relay port pools by address family, to set DF on a
        relay socket when a Send indication asks for it.
    @ivar understood: the comprehension-required attributes a Send
        indication may carry; one it does not understand is dropped.
    @ivar peerFilter: the embedding application's filter, failing closed
        (L{FailClosedFilter<turnrelay.turn.permissions.FailClosedFilter>}):
        C{peerFilter(allocation, peer)} returning a reason to drop, also
        asked about the peer of every Send indication; L{None} (one
        attribute test per packet) when there is none.
    """

    peerFilter: Optional[FailClosedFilter] = None

    def __init__(
        self,
        peerPolicy: PeerPolicy,
        pools: Dict[int, RelayPortPool],
        understood: FrozenSet[int],
    ) -> None:
        self.peerPolicy = peerPolicy
        self.pools = pools
        self.understood = understood

    # From the client -----------------------------------------------------------

    def channelDataFromClient(self, data: bytes, link: IClientLink) -> None:
        allocation = link.allocation
        if allocation is None:
            return
        split = splitChannelData(data)
        if split is None:
            allocation.droppedInvalid += 1
            return
        number, payload = split
        binding = allocation.channels.get(number)
        if binding is None:
            allocation.droppedInvalid += 1
            return
        peer = binding.peer
        if peer[0] not in allocation.permissions:
            allocation.droppedPermission += 1
            return
        self.toPeer(allocation, payload, peer, binding.sendto)

    def sendIndicationFromClient(self, message: STUNMessage, link: IClientLink) -> None:
        allocation = link.allocation
        if allocation is None:
            return
        peer = message.get(A.XOR_PEER_ADDRESS)
        data = message.get(A.DATA)
        sendto = None if peer is None else allocation.sendtoFor(peer.family)
        if (
            sendto is None
            or data is None
            or message.unknownComprehensionRequired(self.understood)
            or self.peerPolicy.peerDenialReason(peer) is not None
            or (self.peerFilter is not None and self.peerFilter(allocation, peer) is not None)
        ):
            allocation.droppedInvalid += 1
            return
        if peer.host not in allocation.permissions:
            allocation.droppedPermission += 1
            return
        if A.DONT_FRAGMENT in message:
            # DF stays set on that relay socket from then on.
            pool = self.pools[peer.family]
            if not pool.setDontFragment(allocation.relays[peer.family].port):
                allocation.droppedInvalid += 1
                return
        self.toPeer(allocation, data, peer, sendto)

    def toPeer(
        self,
        allocation: Allocation,
        payload: bytes,
        peer: Any,
        sendto: Callable[[bytes, Any], Any],
    ) -> None:
        """
        Send a client's payload to a peer from the relayed address; the
        caller has checked the permission.

        @param sendto: the C{sendto} of the relay socket of the peer's family.
        """
        size = len(payload)
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(size):
            allocation.droppedBandwidth += 1
            return
        try:
            sendto(payload, peer)
        except OSError:
            # EAGAIN: the socket buffer is full; drop, as a router would.
            allocation.droppedCongestion += 1
            return
        allocation.packetsToPeer += 1
        allocation.bytesToPeer += size

    # From a peer ---------------------------------------------------------------

    def datagramFromPeer(self, allocation: Allocation, payload: bytes, peer: Any) -> None:
        if peer[0] not in allocation.permissions:
            allocation.droppedPermission += 1
            return
        size = len(payload)
        bucket = allocation.bucket
        if bucket is not None and not bucket.take(size):
            allocation.droppedBandwidth += 1
            return
        binding = allocation.channelsByPeer.get(peer)
        if binding is not None:
            # RFC 8656 section 12.5 makes ChannelData a MUST once bound.
            frame = encodeChannelData(
                binding.number,
                payload,
                size & 3 != 0 and allocation.fiveTuple.transportProtocol != "udp",
            )
        else:
            frame = encodeDataIndication(_indicationID(), peer, payload)
        if allocation.link.relay(frame):
            allocation.packetsFromPeer += 1
            allocation.bytesFromPeer += size
        else:
            allocation.droppedCongestion += 1
