# -*- test-case-name: tests.test_turn_relaying -*-
"""
CreatePermission and ChannelBind: what lets a peer's data through, and
which peers may be named at all.

The state they install (a permission per peer IP, a channel per number)
lives on the allocation; the data path reads it.

@see: RFC 8656 sections 9, 10 and 12.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from turnrelay.logs import Logger, LogLevels
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import isChannelNumber
from turnrelay.stun.message import STUNMessage
from turnrelay.turn.allocation import Allocation
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.policy import PeerPolicy
from turnrelay.turn.refusals import Refusal


def checkPeer(policy: PeerPolicy, peer: TransportAddress, withPort: bool) -> None:
    """
    Refuse a peer the policy denies (403).

    @param withPort: judge the port too; a permission is for an IP address,
        whatever the port (RFC 8656 section 9), so CreatePermission does not.
    @raise Refusal: 403, with the policy's reason.
    """
    reason = policy.peerDenialReason(peer) if withPort else policy.denialReason(peer.host)
    if reason is not None:
        raise Refusal(403, f"peer {peer} refused: {reason}")


PeerFilter = Callable[[Allocation, TransportAddress], Optional[str]]


class FailClosedFilter:
    """
    The embedding application's peer filter, failing closed: a filter that
    raises is logged, in its relay's log, and the peer refused.

    @ivar applicationFilter: the application's own filter.
    """

    log = Logger()

    def __init__(self, applicationFilter: PeerFilter, logLevels: Optional[LogLevels]) -> None:
        self.applicationFilter = applicationFilter
        self.logLevels = logLevels

    def __call__(self, allocation: Allocation, peer: TransportAddress) -> Optional[str]:
        """
        @return: the reason to refuse C{peer}, or L{None}.
        """
        try:
            return self.applicationFilter(allocation, peer)
        except Exception:
            self.log.failure("the application's peer filter failed on {peer}", peer=str(peer))
            return "the application's peer filter failed"


def checkFilter(
    peerFilter: Optional[PeerFilter], allocation: Allocation, peer: TransportAddress
) -> None:
    """
    Refuse a peer the embedding application's filter refuses (403), after
    the built-in policy accepted it.

    @param peerFilter: C{peerFilter(allocation, peer)} returns a reason to
        refuse, or L{None} to let the peer through; or no filter at all.
    @raise Refusal: 403, with the filter's reason.
    """
    if peerFilter is not None:
        reason = peerFilter(allocation, peer)
        if reason is not None:
            raise Refusal(403, f"peer {peer} refused by the application: {reason}")


def checkFamily(allocation: Allocation, peer: TransportAddress) -> None:
    """
    @raise Refusal: 443, the peer's family is not one the allocation relays.
    """
    if peer.family not in allocation.relays:
        raise Refusal(443, "peer address family differs from the allocation's")


def createPermission(
    request: STUNMessage,
    allocation: Allocation,
    policy: PeerPolicy,
    limits: RelayLimits,
    peerFilter: Optional[PeerFilter] = None,
    installed: Optional[List[str]] = None,
) -> STUNMessage:
    """
    Install or refresh permissions for every XOR-PEER-ADDRESS, or none.

    @param peerFilter: the application's filter, asked after the policy.
    @param installed: if given, the peer IPs installed are appended to it.
    """
    peers = request.getAll(A.XOR_PEER_ADDRESS)
    if not peers:
        raise Refusal(400, "no XOR-PEER-ADDRESS")
    # All or nothing: check every address before installing any.
    for peer in peers:
        checkFamily(allocation, peer)
    for peer in peers:
        checkPeer(policy, peer, withPort=False)
    for peer in peers:
        checkFilter(peerFilter, allocation, peer)
    hosts = {peer.host for peer in peers}
    if len(hosts | allocation.permissions.keys()) > limits.maxPermissions:
        raise Refusal(508, "permission limit reached")
    for host in hosts:
        allocation.installPermission(host)
    if installed is not None:
        installed.extend(sorted(hosts))
    return request.successResponse()


def channelBind(
    request: STUNMessage,
    allocation: Allocation,
    policy: PeerPolicy,
    limits: RelayLimits,
    peerFilter: Optional[PeerFilter] = None,
    installed: Optional[List[str]] = None,
) -> STUNMessage:
    """
    Bind or refresh a channel to a peer, and the peer's permission with it.

    @param peerFilter: the application's filter, asked after the policy.
    @param installed: if given, the peer IP is appended to it.
    """
    number = request.get(A.CHANNEL_NUMBER)
    peer = request.get(A.XOR_PEER_ADDRESS)
    if allocation.transport != A.TRANSPORT_UDP:
        raise Refusal(400, "channels are for UDP allocations")
    if number is None or peer is None:
        raise Refusal(400, "CHANNEL-NUMBER or XOR-PEER-ADDRESS missing")
    if not isChannelNumber(number, limits.maxChannelNumber):
        raise Refusal(400, f"channel 0x{number:04X} outside 0x4000-0x{limits.maxChannelNumber:04X}")
    if allocation.channelConflict(number, peer):
        raise Refusal(400, f"channel 0x{number:04X} or peer {peer} already bound otherwise")
    checkFamily(allocation, peer)
    checkPeer(policy, peer, withPort=True)
    checkFilter(peerFilter, allocation, peer)
    if number not in allocation.channels and (
        len(allocation.channels) >= limits.maxChannels
        or (
            peer.host not in allocation.permissions
            and len(allocation.permissions) >= limits.maxPermissions
        )
    ):
        raise Refusal(508, "channel or permission limit reached")
    allocation.bindChannel(number, peer)
    if installed is not None:
        installed.append(peer.host)
    return request.successResponse()
