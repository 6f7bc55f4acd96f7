"""
The seams between turnrelay's layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class IClientLink(Interface):
    """
    A client's link: the way back to one client over the transport its
    message came in on (a UDP source address on a listener, or a TCP or TLS
    connection).

    Transport protocols provide it and hand it, with each STUN message or
    ChannelData frame, to the controller (L{turnrelay.turn.server.TURNServer}),
    which answers through it without knowing which transport it is.  TURN's
    own "channels" are the channel bindings of an allocation, not this.
    """

    transportProtocol = Attribute('C{"udp"}, C{"tcp"} or C{"tls"}.')
    clientAddress = Attribute(
        "The client's L{TransportAddress}, IPv4-mapped IPv6 addresses already turned into IPv4."
    )
    serverAddress = Attribute("The L{TransportAddress} of our socket the client reached.")
    fiveTuple = Attribute("The L{FiveTuple} that identifies the client's allocation.")
    allocation = Attribute("The client's L{Allocation}, or L{None}: the data path's shortcut.")

    def startRelayingTo(peerConnection: Any) -> None:
        """
        From now on, carry raw bytes to and from C{peerConnection}, with no
        STUN framing: a data connection of an RFC 6062 TCP allocation, after
        its ConnectionBind succeeded.  Streams only.
        """

    def attach(allocation: Any) -> None:
        """
        The registry made C{allocation} for this client: keep it, and keep
        this link, until L{detach}.
        """

    def detach(allocation: Any) -> None:
        """
        C{allocation} ended: forget it.
        """

    def send(data: bytes) -> None:
        """
        Send a response to the client: one datagram, or a write on the stream.
        """

    def relay(data: bytes) -> bool:
        """
        Send relayed data (ChannelData, a Data indication) to the client, or
        drop it if the client cannot take it now.

        @return: whether it was sent.
        """


class IDataPath(Interface):
    """
    What relays application data between clients and peers, both ways
    (L{turnrelay.turn.datapath.DataPath}).  Every drop is counted on the
    allocation; nothing is logged.
    """

    peerFilter = Attribute(
        "The embedding application's C{peerFilter(allocation, peer)} (a reason to drop, or"
        " L{None}), asked about every Send indication's peer; L{None} for none."
    )

    def channelDataFromClient(data: bytes, link: IClientLink) -> None:
        """
        Relay one ChannelData message (padding included) from a client to
        the peer its channel is bound to.
        """

    def sendIndicationFromClient(message: Any, link: IClientLink) -> None:
        """
        Relay a decoded Send indication's DATA to its XOR-PEER-ADDRESS.
        """

    def toPeer(allocation: Any, payload: bytes, peer: Any, sendto: Any) -> None:
        """
        Send a payload to a permitted peer from the allocation's relayed
        address, within its bandwidth cap.
        """

    def datagramFromPeer(allocation: Any, payload: bytes, peer: Any) -> None:
        """
        Relay a datagram a peer sent to a relayed address to its client: as
        ChannelData if a channel is bound to the peer, else in a Data
        indication.
        """


class IAllocationObserver(Interface):
    """
    What an embedding application implements to follow allocations' lives
    (billing, call records, dashboards), added with
    L{AllocationRegistry.addObserver<turnrelay.turn.registry.AllocationRegistry.addObserver>}.

    Calls are made synchronously on the reactor thread whatever the log
    level; an observer that raises is logged and does not disturb the
    relay or the other observers.  Keep them quick: they run inside request
    handling.
    """

    def allocationCreated(allocation: Any) -> None:
        """
        An L{Allocation<turnrelay.turn.allocation.Allocation>} was made.
        """

    def allocationRefreshed(allocation: Any, lifetime: float) -> None:
        """
        Its client refreshed it for C{lifetime} more seconds.
        """

    def allocationPermissionAdded(allocation: Any, host: str) -> None:
        """
        A permission for peer IP C{host} was installed or refreshed
        (CreatePermission or ChannelBind).
        """

    def allocationEnded(allocation: Any, reason: str, usage: Dict[str, Any]) -> None:
        """
        It ended (deleted, expired, closed, ended by the application...).

        @param usage: what it relayed: L{Allocation.usage
            <turnrelay.turn.allocation.Allocation.usage>}'s fields.
        """


class QuotaUnavailable(Exception):
    """
    A shared quota could not be asked (its keeper does not answer): the
    Allocate gets 508.  Expected while it is down, so not logged for each
    Allocate; the keeper says when it goes and comes back.
    """


class IAllocationQuota(Interface):
    """
    Quotas shared with other relays (the workers of one control process,
    C{--workers N}): the per-user and total allocation quotas of
    L{RelayLimits<turnrelay.turn.limits.RelayLimits>} held across all of
    them, not each on its own.

    Set on L{TURNServer.sharedQuota<turnrelay.turn.server.TURNServer.sharedQuota>}:
    every Allocate that passes the relay's own checks asks L{reserve} before
    the allocation is made, and the relay calls L{release} exactly once for
    every reservation granted, when its allocation ends or could not be
    made after all.  Only Allocate asks; the data path never does.
    """

    def reserve(username: str) -> Deferred[bool]:
        """
        One more allocation for C{username}.

        @return: a L{Deferred} that fires with C{True} if granted (it is then
            counted until L{release}), C{False} when a user or total quota is
            reached; it fails when the answer cannot be had (the relay then
            answers 508): with L{QuotaUnavailable} when that is expected.
        """

    def release(username: str) -> None:
        """
        An allocation L{reserve} granted for C{username} has ended (or was
        never made).
        """


class IKernelPath(Interface):
    """
    The control plane of a kernel fast path for ChannelData
    (L{KernelPath<turnrelay.offload.kernelpath.KernelPath>}): what the
    controller tells it when what may be relayed changes, so that the
    kernel relays exactly what the user-space data path would.

    Set on L{TURNServer.kernelPath<turnrelay.turn.server.TURNServer.kernelPath>};
    every allocation made meanwhile calls it from
    L{Allocation<turnrelay.turn.allocation.Allocation>}'s own changes.
    Calls are synchronous, on the reactor thread, and never raise.
    """

    def allocationChanged(allocation: Any) -> None:
        """
        A permission or channel binding of C{allocation} was installed,
        refreshed into being, or expired: bring the kernel's entries for it
        in line.
        """

    def allocationEnded(allocation: Any) -> None:
        """
        C{allocation} is ending: fold what the kernel relayed for it into
        its counters, then remove its entries.  Called before its usage is
        read for the log and the totals.
        """

    def policyChanged() -> None:
        """
        The peer policy or the application's peer filter changed: bring
        every allocation's entries in line with it.
        """
