# -*- test-case-name: tests.test_turn_allocate -*-
"""
Allocate and Refresh: making an allocation (UDP, dual-stack, EVEN-PORT with
reservations, or TCP as RFC 6062 has it), keeping it alive, ending it.

@see: RFC 8656 sections 7 and 8; RFC 6062 section 5.1.
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from turnrelay.auth.longterm import AuthResult
from turnrelay.interfaces import (
    IAllocationQuota,
    IClientLink,
    QuotaUnavailable,
)
from turnrelay.logs import Logger
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.message import STUNMessage
from turnrelay.turn.allocation import Allocation, FiveTuple, Relay
from turnrelay.turn.datapath import TokenBucket
from turnrelay.turn.refusals import Refusal
from turnrelay.turn.registry import AllocationObserver
from turnrelay.turn.relay import NoRelayPort, RelayPortPool
from turnrelay.turn.tcprelay import IncomingPeerFactory

if TYPE_CHECKING:
    from turnrelay.turn.server import TURNServer

# An EVEN-PORT reservation is held at least 30 s (RFC 8656 section 7.2).
RESERVATION_LIFETIME = 30.0


class PendingAllocate:
    """
    An Allocate waiting for the shared quota's answer.

    @ivar transactionID: its transaction ID, to know its retransmissions.
    @ivar username: who asked.
    @ivar link: the client's link, to answer on.
    @ivar cancelled: whether its link closed or the relay stopped meanwhile:
        the allocation is then not made.
    """

    __slots__ = ("transactionID", "username", "link", "cancelled")

    def __init__(self, transactionID: bytes, username: str, link: IClientLink) -> None:
        self.transactionID = transactionID
        self.username = username
        self.link = link
        self.cancelled = False


class _SharedQuotaReleaser(AllocationObserver):
    """
    The registry observer that tells the L{Allocator} of every allocation's
    end, the one place every allocation ends (expiry, Refresh 0, the link
    closed, the relay stopping, the console...).
    """

    def __init__(self, ended: Callable[[Allocation], None]) -> None:
        self._ended = ended

    def allocationEnded(self, allocation: Any, reason: str, usage: Dict[str, Any]) -> None:
        self._ended(allocation)


class Allocator:
    """
    Answers Allocate and Refresh for the controller, and holds the relay
    ports reserved by EVEN-PORT until a later Allocate claims them.

    It reads the controller's live settings (limits, draining, the
    descriptor budget, the shared quota), which a reload may replace.

    With a shared quota (L{TURNServer.sharedQuota
    <turnrelay.turn.server.TURNServer.sharedQuota>}), an Allocate that
    passes every check here waits for the quota's grant before its
    allocation is made, and is answered then.  Each grant is released
    exactly once: when the registry removes the allocation it was used for,
    or at once when none was made (refused after all, link closed, relay
    stopped).
    """

    log = Logger()

    def __init__(self, server: TURNServer) -> None:
        self._server = server
        self.logLevels = server.logLevels
        self._reservations: Dict[bytes, Tuple[Any, RelayPortPool, IDelayedCall]] = {}
        # Allocates waiting for the shared quota, by 5-tuple.
        self._pending: Dict[FiveTuple, PendingAllocate] = {}
        # Live allocations the shared quota granted, and the quota that did:
        # each is released once, when the registry removes the allocation.
        self._sharedQuotaHeld: Dict[Allocation, IAllocationQuota] = {}
        self._releaser = _SharedQuotaReleaser(self._sharedQuotaEnded)

    def stop(self) -> None:
        """
        Give back every reserved port, and give up the Allocates waiting for
        the shared quota (a grant is released when it comes).
        """
        for pending in self._pending.values():
            pending.cancelled = True
        self._pending.clear()
        for token, (relayPort, pool, timer) in list(self._reservations.items()):
            timer.cancel()
            del self._reservations[token]
            pool.close(relayPort)

    # Allocate (RFC 8656 section 7.2) --------------------------------------------

    def allocate(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult
    ) -> Optional[STUNMessage]:
        """
        Answer an Allocate on a 5-tuple without an allocation.

        @return: the response, or L{None} when it comes later (a shared
            quota is asked first, see L{TURNServer.sharedQuota
            <turnrelay.turn.server.TURNServer.sharedQuota>}) or never (a
            retransmission of an Allocate still waiting for it).
        """
        server = self._server
        pending = self._pending.get(link.fiveTuple)
        if pending is not None:
            self._allocatePending(request, auth, pending)
            return None
        if server.draining:
            self._redirect(link)
        transport = request.get(A.REQUESTED_TRANSPORT)
        if transport is None:
            raise Refusal(400, "REQUESTED-TRANSPORT missing")
        if transport == A.TRANSPORT_TCP:
            return self._allocateTCP(request, link, auth)
        if transport != A.TRANSPORT_UDP:
            raise Refusal(442, f"REQUESTED-TRANSPORT {transport} not served")
        token = request.get(A.RESERVATION_TOKEN)
        evenPort = request.get(A.EVEN_PORT)
        requestedFamily = request.get(A.REQUESTED_ADDRESS_FAMILY)
        additionalFamily = request.get(A.ADDITIONAL_ADDRESS_FAMILY)
        if token is not None and (
            evenPort is not None or requestedFamily is not None or additionalFamily is not None
        ):
            raise Refusal(400, "RESERVATION-TOKEN with EVEN-PORT or an address family")
        if requestedFamily is not None and additionalFamily is not None:
            raise Refusal(400, "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY")
        pools = server.pools
        extra: List[Tuple[int, Any]] = []
        if additionalFamily is not None:
            # "IPv4, and IPv6 as well" (RFC 8656 section 7.2).
            if additionalFamily != FAMILY_IPV6 or evenPort:
                raise Refusal(400, "ADDITIONAL-ADDRESS-FAMILY not IPv6, or with EVEN-PORT R")
            families = [family for family in (FAMILY_IPV4, FAMILY_IPV6) if family in pools]
            if not families:
                raise Refusal(508, "no relay address configured")
            for missing in {FAMILY_IPV4, FAMILY_IPV6} - set(families):
                extra.append(
                    (A.ADDRESS_ERROR_CODE, A.AddressErrorCode(missing, 440, "Family not offered"))
                )
        else:
            family = FAMILY_IPV4 if requestedFamily is None else requestedFamily
            if family not in pools:
                raise Refusal(440, f"address family {family} not offered")
            families = [family]
        dontFragment = A.DONT_FRAGMENT in request
        if dontFragment and not all(pools[family].dontFragmentSupported for family in families):
            raise Refusal(
                420,
                "DONT-FRAGMENT cannot be honoured here",
                (A.UNKNOWN_ATTRIBUTES, (A.DONT_FRAGMENT,)),
            )
        assert auth.username is not None
        self._checkQuota(auth.username, len(families) + (1 if evenPort else 0))
        return self._withSharedQuota(
            request,
            link,
            auth,
            partial(
                self._allocateUDP,
                request,
                link,
                auth,
                families,
                token,
                evenPort,
                dontFragment,
                extra,
            ),
        )

    def _allocateUDP(
        self,
        request: STUNMessage,
        link: IClientLink,
        auth: AuthResult,
        families: List[int],
        token: Optional[bytes],
        evenPort: Any,
        dontFragment: bool,
        extra: List[Tuple[int, Any]],
    ) -> Tuple[Allocation, STUNMessage]:
        """
        Make a UDP allocation that passed every check: open its relay
        sockets (or claim a reserved one) and register it.

        @param families: the address families of its relayed addresses.
        @param token: the RESERVATION-TOKEN to claim, or L{None}.
        @param evenPort: the EVEN-PORT attribute, or L{None}.
        @param dontFragment: whether DONT-FRAGMENT was asked for.
        @param extra: attributes the success response carries too.
        @return: the allocation, and the success response.
        @raise Refusal: it could not be made.
        """
        server = self._server
        pools = server.pools
        relays: List[Relay] = []
        reservationToken = None
        try:
            if token is not None:
                reserved = self._reservations.pop(token, None)
                if reserved is None:
                    raise Refusal(508, "unknown or expired RESERVATION-TOKEN")
                relayPort, pool, timer = reserved
                timer.cancel()
                relays.append(self._relay(pool, relayPort))
            else:
                for family in families:
                    pool = pools[family]
                    primary = not relays
                    try:
                        relayPort, nextPort = pool.open(
                            even=primary and evenPort is not None,
                            reserveNext=primary and bool(evenPort),
                        )
                    except NoRelayPort:
                        raise Refusal(508, "no free relay port") from None
                    relays.append(self._relay(pool, relayPort))
                    if nextPort is not None:
                        reservationToken = self._reserve(pool, nextPort)
            if dontFragment:
                for relay in relays:
                    if not pools[relay.address.family].setDontFragment(relay.port):
                        raise Refusal(
                            420,
                            "DONT-FRAGMENT could not be set",
                            (A.UNKNOWN_ATTRIBUTES, (A.DONT_FRAGMENT,)),
                        )
        except Refusal:
            for relay in relays:
                relay.close(relay.port)
            raise
        allocation, response = self._register(request, link, auth, relays, A.TRANSPORT_UDP)
        # The relay sockets deliver peers' datagrams to the data path.
        for relay in relays:
            relay.port.protocol.deliver = partial(server.dataPath.datagramFromPeer, allocation)
        if reservationToken is not None:
            response.add(A.RESERVATION_TOKEN, reservationToken)
        response.attributes.extend(extra)
        return allocation, response

    def _redirect(self, link: IClientLink) -> None:
        """
        Turn a new allocation away while draining: 300 Try Alternate with
        ALTERNATE-SERVER, the first of the client's own family (RFC 8489
        section 10; sent only to authenticated requests, with integrity), or
        403 when no alternate is configured.
        """
        alternateServers = self._server.alternateServers
        if not alternateServers:
            raise Refusal(403, "the relay is draining")
        family = link.clientAddress.family
        alternates = sorted(alternateServers, key=lambda a: a.family != family)
        first = alternates[0]
        others = [a for a in alternates if a.family != first.family][:1]
        raise Refusal(
            300,
            "the relay is draining",
            *[(A.ALTERNATE_SERVER, alternate) for alternate in [first, *others]],
        )

    def _checkQuota(self, username: str, descriptors: int = 1) -> None:
        """
        Refuse an allocation beyond the quotas (486), or when the relay
        sockets it needs would eat into the descriptor reserve (508).

        @param descriptors: how many relay sockets it will open.
        """
        server = self._server
        limits, registry = server.limits, server.registry
        if (limits.userQuota and registry.countForUser(username) >= limits.userQuota) or (
            limits.totalQuota and len(registry) >= limits.totalQuota
        ):
            raise Refusal(486, "allocation quota reached")
        budget = server.descriptors
        if budget is not None and not budget.take("allocate", descriptors):
            raise Refusal(508, "out of file descriptors (descriptor-reserve)")

    def _allocateTCP(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult
    ) -> Optional[STUNMessage]:
        """
        An Allocate for a TCP relayed address (RFC 6062 section 5.1).
        """
        if link.transportProtocol == "udp":
            raise Refusal(400, "TCP allocations need a TCP or TLS control connection")
        for attribute in (A.DONT_FRAGMENT, A.EVEN_PORT, A.RESERVATION_TOKEN):
            if attribute in request:
                raise Refusal(400, f"{A.attributeName(attribute)} in a TCP Allocate")
        if A.ADDITIONAL_ADDRESS_FAMILY in request:
            raise Refusal(400, "ADDITIONAL-ADDRESS-FAMILY in a TCP Allocate")
        family = request.get(A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4)
        pool = self._server.pools.get(family)
        if pool is None:
            raise Refusal(440, f"address family {family} not offered")
        assert auth.username is not None
        self._checkQuota(auth.username)
        return self._withSharedQuota(
            request, link, auth, partial(self._allocateTCPRelay, request, link, auth, pool)
        )

    def _allocateTCPRelay(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult, pool: RelayPortPool
    ) -> Tuple[Allocation, STUNMessage]:
        """
        Make a TCP allocation that passed every check: listen on a relayed
        address from C{pool} and register it.

        @return: the allocation, and the success response.
        @raise Refusal: it could not be made.
        """
        factory = IncomingPeerFactory()
        try:
            listening = pool.openTCP(factory)
        except NoRelayPort:
            raise Refusal(508, "no free relay port") from None
        relay = self._relay(pool, listening, pool.closeTCP)
        allocation, response = self._register(request, link, auth, [relay], A.TRANSPORT_TCP)
        # Peers' connections are the RFC 6062 side's to take or refuse.
        factory.accept = partial(self._server.tcp.peerConnecting, allocation)
        return allocation, response

    # Quotas shared with other relays (--workers N) ------------------------------

    def _withSharedQuota(
        self,
        request: STUNMessage,
        link: IClientLink,
        auth: AuthResult,
        make: Callable[[], Tuple[Allocation, STUNMessage]],
    ) -> Optional[STUNMessage]:
        """
        Make an allocation that passed this relay's own checks: at once
        without a shared quota, else once the shared quota has granted it.

        @param make: makes it (L{_allocateUDP} or L{_allocateTCPRelay}, its
            arguments bound).
        @return: the success response, or L{None} when it is sent later.
        """
        quota = self._server.sharedQuota
        if quota is None:
            return make()[1]
        username = auth.username
        assert username is not None
        pending = PendingAllocate(request.transactionID, username, link)
        self._pending[link.fiveTuple] = pending
        d = maybeDeferred(quota.reserve, username)
        d.addCallbacks(
            self._reserved,
            self._reserveFailed,
            callbackArgs=(request, link, auth, make, quota, pending),
            errbackArgs=(request, link, auth, pending),
        )
        # Nothing above may raise, but an exception must never be left in
        # a Deferred nobody waits on.
        d.addErrback(
            lambda failure: self.log.failure(
                "answering the Allocate of {username} failed", failure, username=username
            )
        )
        return None

    def _allocatePending(
        self, request: STUNMessage, auth: AuthResult, pending: PendingAllocate
    ) -> None:
        """
        An Allocate on a 5-tuple whose Allocate waits for the shared quota:
        a retransmission of that one is dropped (its answer will come, and
        later retransmissions get it), anything else gets 437 as it would
        once the allocation is made (RFC 8656 section 7.2).

        @raise Refusal: it is not a retransmission.
        """
        if request.transactionID == pending.transactionID and auth.username == pending.username:
            self.log.debug(
                "dropped a retransmitted Allocate of {username}: it waits for the shared quota",
                username=auth.username,
            )
            return
        raise Refusal(437, "an Allocate on this 5-tuple waits for the shared quota")

    def _donePending(self, link: IClientLink, pending: PendingAllocate) -> bool:
        """
        The shared quota answered C{pending}: stop waiting for it.

        @return: whether its Allocate is still to be answered (its link was
            not closed, nor the relay stopped, meanwhile).
        """
        if self._pending.get(link.fiveTuple) is pending:
            del self._pending[link.fiveTuple]
        return not pending.cancelled

    def _reserved(
        self,
        granted: bool,
        request: STUNMessage,
        link: IClientLink,
        auth: AuthResult,
        make: Callable[[], Tuple[Allocation, STUNMessage]],
        quota: IAllocationQuota,
        pending: PendingAllocate,
    ) -> None:
        """
        The shared quota answered: make the allocation and answer the
        Allocate, or refuse it with 486.  A grant not used for an
        allocation is released at once.
        """
        server = self._server
        username = pending.username
        if not self._donePending(link, pending):
            if granted:
                quota.release(username)
            return
        if not granted:
            response = server.refused(
                request, link, auth, Refusal(486, "allocation quota reached across workers")
            )
        else:
            try:
                # Draining may have begun while the quota was asked.
                if server.draining:
                    self._redirect(link)
                allocation, response = make()
            except Refusal as refusal:
                quota.release(username)
                response = server.refused(request, link, auth, refusal)
            except BaseException:
                quota.release(username)
                raise
            else:
                registry = server.registry
                if registry.get(allocation.fiveTuple) is not allocation:
                    # An observer of its creation ended it already.
                    quota.release(username)
                else:
                    self._sharedQuotaHeld[allocation] = quota
                    # Whatever ends it, the registry tells the releaser.
                    if self._releaser not in registry.observers:
                        registry.addObserver(self._releaser)
        server.answer(request, response, link, auth)

    def _reserveFailed(
        self,
        failure: Failure,
        request: STUNMessage,
        link: IClientLink,
        auth: AuthResult,
        pending: PendingAllocate,
    ) -> None:
        """
        The shared quota could not be asked (the control process is gone,
        Redis is down): 508, as for any other resource the relay lacks.
        """
        if failure.check(QuotaUnavailable):
            # Its keeper logs that it is down; a line per Allocate would not.
            self.log.debug(
                "the shared quota is unavailable for an allocation of {username}: {why}",
                username=pending.username,
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "asking the shared quota for an allocation of {username} failed",
                failure,
                username=pending.username,
            )
        if self._donePending(link, pending):
            self._server.answer(request, request.errorResponse(508), link, auth)

    def _sharedQuotaEnded(self, allocation: Allocation) -> None:
        """
        An allocation ended (the registry removed it): release its
        reservation, if the shared quota granted it one.
        """
        quota = self._sharedQuotaHeld.pop(allocation, None)
        if quota is not None:
            quota.release(allocation.username)

    def linkClosed(self, link: IClientLink) -> None:
        """
        A client's link is gone: an Allocate of it waiting for the shared
        quota is not to be made (a grant is released when it comes).
        """
        pending = self._pending.pop(link.fiveTuple, None)
        if pending is not None:
            pending.cancelled = True

    @property
    def pendingAllocates(self) -> int:
        """
        How many Allocates wait for the shared quota now.
        """
        return len(self._pending)

    def _register(
        self,
        request: STUNMessage,
        link: IClientLink,
        auth: AuthResult,
        relays: List[Relay],
        transport: int,
    ) -> Tuple[Allocation, STUNMessage]:
        """
        Make and register an allocation over its relays.

        @return: it, and the success response to the Allocate (RFC 8656
            section 7.2: relayed addresses, LIFETIME, XOR-MAPPED-ADDRESS).
        """
        server = self._server
        limits = server.limits
        assert auth.username is not None
        # TCP relays are paced by TCP itself; the bucket is for datagrams.
        bucket = None
        if limits.bandwidth and transport == A.TRANSPORT_UDP:
            bucket = TokenBucket(server.clock, limits.bandwidth)
        allocation = Allocation(
            server.clock,
            link.fiveTuple,
            link,
            auth.username,
            request.transactionID,
            relays,
            limits.lifetime(request.get(A.LIFETIME)),
            self._expired,
            bucket,
            transport,
        )
        server.registry.add(allocation)
        response = request.successResponse(
            [(A.XOR_RELAYED_ADDRESS, relay.address) for relay in relays]
            + [(A.LIFETIME, allocation.lifetime), (A.XOR_MAPPED_ADDRESS, link.clientAddress)]
        )
        return allocation, response

    def _relay(
        self, pool: RelayPortPool, relayPort: Any, close: Optional[Callable[[Any], None]] = None
    ) -> Relay:
        """
        Wrap a relay socket, advertising the external IP for IPv4 behind NAT.

        @param close: how to close it; the pool's UDP C{close} by default.
        """
        server = self._server
        bound = pool.address(relayPort)
        host = bound.host
        if server.externalIP is not None and pool is server.relayPorts:
            host = server.externalIP
        return Relay(TransportAddress(host, bound.port), relayPort, close or pool.close)

    def _reserve(self, pool: RelayPortPool, relayPort: Any) -> bytes:
        """
        Hold a port for a later Allocate with the returned RESERVATION-TOKEN.
        """
        token = os.urandom(8)
        timer = self._server.clock.callLater(RESERVATION_LIFETIME, self._reservationExpired, token)
        self._reservations[token] = (relayPort, pool, timer)
        return token

    def _expired(self, allocation: Allocation) -> None:
        self._server.registry.remove(allocation, "expired")

    def _reservationExpired(self, token: bytes) -> None:
        relayPort, pool, _ = self._reservations.pop(token)
        pool.close(relayPort)

    # Refresh (RFC 8656 section 8) -----------------------------------------------

    def refresh(self, request: STUNMessage, link: IClientLink, auth: AuthResult) -> STUNMessage:
        server = self._server
        allocation = link.allocation
        assert allocation is not None
        family = request.get(A.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family not in allocation.relays:
            raise Refusal(443, "REQUESTED-ADDRESS-FAMILY differs from the allocation's")
        requested = request.get(A.LIFETIME)
        if requested == 0:
            if family is not None and len(allocation.relays) > 1:
                # One family of a dual allocation goes; the other stays.
                allocation.removeRelay(family)
                return request.successResponse([(A.LIFETIME, 0)])
            server.registry.remove(allocation, "deleted")
            return request.successResponse([(A.LIFETIME, 0)])
        lifetime = server.limits.lifetime(requested)
        allocation.refresh(lifetime)
        self.log.info(
            "allocation {relayed} refreshed by {username}, lifetime {lifetime} s",
            relayed=str(allocation.relayedAddress),
            username=allocation.username,
            lifetime=lifetime,
        )
        server.registry.refreshed(allocation, lifetime)
        return request.successResponse([(A.LIFETIME, lifetime)])
