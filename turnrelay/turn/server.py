# -*- test-case-name: tests.test_turn_server -*-
"""
The controller every transport hands its STUN messages and ChannelData to.

It authenticates requests, answers Binding, Allocate, Refresh,
CreatePermission and ChannelBind, relays Send indications and ChannelData,
and owns the one L{AllocationRegistry}.

@see: RFC 8656 sections 5-12, RFC 8489 sections 6.3 and 9.2.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple
from typing import Counter as CounterType

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from turnrelay.auth.credentials import ChainedCredentials
from turnrelay.auth.longterm import AuthResult, LongTermAuthenticator
from turnrelay.auth.nonce import NonceMinter
from turnrelay.interfaces import IReplyChannel
from turnrelay.logs import Logger
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress, unmapIPv4
from turnrelay.stun.channeldata import isChannelNumber
from turnrelay.stun.message import (
    MessageClass,
    Method,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
    isAllowedClass,
)
from turnrelay.turn.allocation import Allocation, AllocationRegistry, Relay, TokenBucket
from turnrelay.turn.descriptors import DescriptorBudget
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.policy import PeerPolicy
from turnrelay.turn.relay import NoRelayPort, RelayPortPool
from turnrelay.turn.sources import AMPLIFICATION_LIMIT, SourceRateLimiter
from turnrelay.turn.tcprelay import (
    IncomingPeerFactory,
    OutgoingPeerFactory,
    PeerConnection,
)

# The comprehension-required attributes turnrelay implements.  ICE's
# PRIORITY and USE-CANDIDATE, RFC 5780's CHANGE-REQUEST, PADDING and
# RESPONSE-PORT, and RFC 7635's ACCESS-TOKEN are not among them: a request
# carrying one gets 420 (checklist items 12 and 25).
UNDERSTOOD_ATTRIBUTES: FrozenSet[int] = frozenset(A.ATTRIBUTE_CODECS) - {
    A.PRIORITY,
    A.USE_CANDIDATE,
    A.CHANGE_REQUEST,
    A.PADDING,
    A.RESPONSE_PORT,
    A.ACCESS_TOKEN,
}

# The authentication failures every client meets on its way in (the first
# 401, a 438 when its nonce ages): counted in authFailures, not refusals.
_CHALLENGES = frozenset({"no-integrity", "stale-nonce"})

# Refused authenticated requests (quotas, peer policy...) are logged one by
# one, but at most this many per refusal-summary interval; the rest are
# counted in the summary.
REFUSED_WARNINGS_PER_INTERVAL = 100

# An EVEN-PORT reservation is held at least 30 s (RFC 8656 section 7.2).
RESERVATION_LIFETIME = 30.0


class _Reply(Exception):
    """
    Ends a request's processing with an error response.
    """

    def __init__(self, code: int, reason: str, *attributes: Tuple[int, Any]) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.attributes = attributes


class TURNServer:
    """
    Answers STUN and TURN messages from every transport.

    The transports frame bytes and hand each message here with an
    L{IReplyChannel}; every protocol decision is made here, once for all
    transports.

    @ivar registry: the allocations of all clients.
    @ivar authenticator: checks the long-term credentials of requests.
    @ivar peerPolicy: which peers may be relayed to.
    @ivar relayPorts: where IPv4 relay sockets come from, or L{None}.
    @ivar relayPorts6: where IPv6 relay sockets come from, or L{None}.
        Without either, Allocate gets 508.
    @ivar limits: lifetimes and quotas.
    @ivar externalIP: the address advertised in XOR-RELAYED-ADDRESS when
        the relay sits behind NAT, or L{None} to advertise the bound one.
    @ivar software: the SOFTWARE attribute added to responses, or L{None}.
    @ivar draining: whether new allocations are turned away (300 to an
        alternate server, or 403) while existing ones run their course.
    @ivar alternateServers: where a draining relay sends new clients.
    @ivar requests: responses sent, by C{(method, outcome)}; the outcome is
        C{"success"} or the error code.
    @ivar authFailures: refused authentications, by reason.
    @ivar refusals: requests refused whose source is not authenticated (or
        over UDP, not even verified), by reason: those of
        C{authFailures} except the first 401 and the 438 every client
        meets, C{"malformed"}, and the UDP answers not sent:
        C{"rate-limited"} (L{sourceLimit}) and C{"amplification"} (larger
        than L{AMPLIFICATION_LIMIT} times the request), so a refused
        request whose answer was not sent counts twice.  Never logged one
        by one (anyone can make them, from any address): a summary line
        every C{refusalSummaryInterval} seconds says how many of each.
    @ivar sourceLimit: the per-source limit on unauthenticated answers over
        UDP, or L{None} for none.
    @ivar refusalSummaryInterval: seconds between two summaries of
        refusals.
    @ivar descriptors: the process's descriptor budget, or L{None}.
    @ivar peerConnectionsRefused: peers' TCP connections to relayed
        addresses refused, by reason.
    """

    log = Logger()
    clock: IReactorTime
    # Set by whoever builds the relay; without one, descriptors are not
    # budgeted.
    descriptors: Optional[DescriptorBudget] = None
    # Set by whoever builds the relay too; without one, unauthenticated
    # answers are not limited per source.
    sourceLimit: Optional[SourceRateLimiter] = None
    refusalSummaryInterval: float = 60.0

    def __init__(
        self,
        clock: IReactorTime,
        software: Optional[str] = None,
        authenticator: Optional[LongTermAuthenticator] = None,
        registry: Optional[AllocationRegistry] = None,
        peerPolicy: Optional[PeerPolicy] = None,
        relayPorts: Optional[RelayPortPool] = None,
        limits: RelayLimits = RelayLimits(),
        externalIP: Optional[str] = None,
        relayPorts6: Optional[RelayPortPool] = None,
    ) -> None:
        self.clock = clock
        self.software = software
        self.authenticator = authenticator or LongTermAuthenticator(
            "turnrelay", ChainedCredentials([]), NonceMinter(clock)
        )
        self.registry = registry if registry is not None else AllocationRegistry()
        self.peerPolicy = peerPolicy if peerPolicy is not None else PeerPolicy()
        self.relayPorts = relayPorts
        self.relayPorts6 = relayPorts6
        self.draining = False
        self.alternateServers: Tuple[TransportAddress, ...] = ()
        self.requests: CounterType[Tuple[str, str]] = Counter()
        self.authFailures: CounterType[str] = Counter()
        self.refusals: CounterType[str] = Counter()
        # Since the last summary: refusals, and refused authenticated
        # requests (warned of, or counted by code once the budget is spent).
        self._refusedSince: CounterType[str] = Counter()
        self._warnedSince = 0
        self._unwarnedSince: CounterType[int] = Counter()
        self._summaryTimer: Optional[IDelayedCall] = None
        self._summaryStarted = 0.0
        self.limits = limits
        self.externalIP = externalIP
        self._pools: Dict[int, RelayPortPool] = {
            family: pool
            for family, pool in ((FAMILY_IPV4, relayPorts), (FAMILY_IPV6, relayPorts6))
            if pool is not None
        }
        self.setPeerPolicy(self.peerPolicy)
        self._reservations: Dict[bytes, Tuple[Any, RelayPortPool, IDelayedCall]] = {}
        # RFC 6062 peer connections by CONNECTION-ID, for ConnectionBind,
        # which arrives on a connection of its own.
        self.peerConnections: Dict[int, PeerConnection] = {}
        self.peerConnectionsRefused: CounterType[str] = Counter()
        self._requestHandlers: Dict[
            int, Callable[[STUNMessage, IReplyChannel, AuthResult], Optional[STUNMessage]]
        ] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._createPermission,
            Method.CHANNEL_BIND: self._channelBind,
            Method.CONNECT: self._connect,
            Method.CONNECTION_BIND: self._connectionBind,
        }

    # Entry points ----------------------------------------------------------------

    def stunReceived(self, data: bytes, channel: IReplyChannel) -> None:
        """
        Handle one STUN message from a client.

        Malformed messages are dropped with a debug log line; a malformed
        request is answered 400 only when the answer is no larger than the
        request, so that forged sources gain nothing (RFC 8489 section 6.3).
        Responses and unknown methods are dropped.  Over UDP, what answers
        an unauthenticated request is held to the per-source limit and to
        L{AMPLIFICATION_LIMIT} (see L{_answerUnverified}).

        @param data: exactly one STUN message.
        @param channel: the way back to the client.
        """
        try:
            message = decodeMessage(data)
        except STUNDecodeError as e:
            self._malformed(data, e, channel)
            return
        method, messageClass = message.method, message.messageClass
        if not isAllowedClass(method, messageClass):
            self._drop(message, channel, "unknown method or class not allowed for it")
        elif messageClass == MessageClass.INDICATION:
            if method == Method.SEND:
                self._sendIndication(message, channel)
            # A Binding indication is a keep-alive; others come from servers.
        elif messageClass != MessageClass.REQUEST:
            self._drop(message, channel, "a response")
        elif method == Method.BINDING:
            self._binding(message, channel, len(data))
        elif method in self._requestHandlers:
            self._request(message, channel, len(data))
        else:
            self._drop(message, channel, "method not served")

    def channelDataReceived(self, data: bytes, channel: IReplyChannel) -> None:
        """
        Relay one ChannelData message from a client to its peer.

        Dropped silently without an allocation, a bound channel or a
        permission, or when shorter than its length field (RFC 8656 section
        12.6).  This is the hot path: no objects beyond the payload.

        @param data: exactly one ChannelData message, padding included.
        @param channel: the way back to the client.
        """
        allocation = channel.allocation
        if allocation is None:
            return
        size = len(data)
        if size < 4:
            allocation.droppedInvalid += 1
            return
        binding = allocation.channels.get((data[0] << 8) | data[1])
        end = 4 + ((data[2] << 8) | data[3])
        if binding is None or size < end:
            allocation.droppedInvalid += 1
            return
        peer = binding.peer
        if peer[0] not in allocation.permissions:
            allocation.droppedPermission += 1
            return
        allocation.sendToPeer(data[4:end], peer, binding.sendto)

    def stop(self) -> Deferred[Any]:
        """
        End everything: every allocation (logging its usage) and every
        EVEN-PORT reservation.  A stopping service calls this.  Refusals
        not yet summed up are, now, and no timer is left running.

        @return: a L{Deferred} that fires when the relay sockets are closed.
        """
        self._summarizeRefusals()
        for allocation in self.registry:
            self.registry.remove(allocation, "ended: the relay is stopping")
        for token, (relayPort, pool, timer) in list(self._reservations.items()):
            timer.cancel()
            del self._reservations[token]
            pool.close(relayPort)
        return DeferredList([pool.closed() for pool in self._pools.values()])

    def channelClosed(self, channel: IReplyChannel, reason: str) -> None:
        """
        A client's channel is gone for good (a TCP connection closed, a UDP
        listener stopped): its allocation ends with it.

        @param reason: for the log, such as C{"closed with its connection"}.
        """
        allocation = channel.allocation
        if allocation is not None:
            self.registry.remove(allocation, reason)

    # Plumbing --------------------------------------------------------------------

    def _drop(self, message: STUNMessage, channel: IReplyChannel, reason: str) -> None:
        self.log.debug(
            "dropped {message!r} from {client} over {transport}: {reason}",
            message=message,
            client=channel.clientAddress,
            transport=channel.transportProtocol,
            reason=reason,
        )

    def _malformed(self, data: bytes, error: STUNDecodeError, channel: IReplyChannel) -> None:
        self.log.debug(
            "dropped {size} bytes from {client} over {transport}: {reason}",
            size=len(data),
            client=channel.clientAddress,
            transport=channel.transportProtocol,
            reason=error.reason,
        )
        self._refused("malformed")
        if (
            error.messageClass == MessageClass.REQUEST
            and error.transactionID is not None
            and error.method is not None
            and isAllowedClass(error.method, MessageClass.REQUEST)
        ):
            request = STUNMessage(error.method, MessageClass.REQUEST, error.transactionID)
            response = request.errorResponse(400).encode()
            if len(response) <= len(data) and self._withinSourceLimit(channel):
                channel.send(response)

    def _count(self, request: STUNMessage, response: STUNMessage) -> None:
        """
        Count a response in L{requests}.
        """
        error = response.get(A.ERROR_CODE)
        try:
            method = Method(request.method).name
        except ValueError:
            method = "unknown"
        self.requests[method, "success" if error is None else str(error.code)] += 1

    def _respond(
        self,
        request: STUNMessage,
        response: STUNMessage,
        channel: IReplyChannel,
        auth: Optional[AuthResult] = None,
    ) -> bytes:
        """
        Send a response: with SOFTWARE if configured, integrity when the
        request was authenticated (RFC 8489 section 9.2.4), FINGERPRINT when
        the request had one.

        @return: the bytes sent.
        """
        if self.software is not None:
            response.add(A.SOFTWARE, self.software)
        self._count(request, response)
        data = response.encode(
            key=auth.key if auth is not None else None,
            sha256=auth is not None and auth.useSHA256,
            fingerprint=request.fingerprint is not None,
        )
        channel.send(data)
        return data

    def _answerUnverified(
        self,
        request: STUNMessage,
        response: STUNMessage,
        channel: IReplyChannel,
        size: int,
        compact: Optional[Callable[[], STUNMessage]] = None,
    ) -> None:
        """
        Answer a request that is not authenticated.

        Over TCP and TLS the client's address is real: the response goes as
        L{_respond} would send it.  Over UDP it may be a victim's, so the
        response goes only within the source's limit (L{sourceLimit}), and
        only if it is at most L{AMPLIFICATION_LIMIT} times the request's
        C{size}: without SOFTWARE if need be, then as C{compact()} makes it.
        Otherwise it is dropped and counted in L{refusals}, as
        C{"rate-limited"} or C{"amplification"}.

        @param size: the request's size in bytes.
        @param compact: makes the smallest response the RFCs allow, if
            that is smaller than C{response}.
        @see: RFC 8489 section 16.1.2.
        """
        if channel.transportProtocol != "udp":
            self._respond(request, response, channel)
            return
        if not self._withinSourceLimit(channel):
            return
        limit = size * AMPLIFICATION_LIMIT
        fingerprint = request.fingerprint is not None
        data = b""
        if self.software is not None:
            withSoftware = STUNMessage(
                response.method,
                response.messageClass,
                response.transactionID,
                response.attributes + [(A.SOFTWARE, self.software)],
            )
            data = withSoftware.encode(fingerprint=fingerprint)
        if not data or len(data) > limit:
            data = response.encode(fingerprint=fingerprint)
        if len(data) > limit and compact is not None:
            response = compact()
            data = response.encode(fingerprint=fingerprint)
        if len(data) > limit:
            self._refused("amplification")
            return
        self._count(request, response)
        channel.send(data)

    def _withinSourceLimit(self, channel: IReplyChannel) -> bool:
        """
        Take a token from the source's bucket for an unauthenticated answer
        over UDP; TCP and TLS are not limited.

        @return: whether the answer may go; if not, it is counted in
            L{refusals} as C{"rate-limited"}.
        """
        if self.sourceLimit is None or channel.transportProtocol != "udp":
            return True
        if self.sourceLimit.allow(channel.clientAddress.host):
            return True
        self._refused("rate-limited")
        return False

    def _refused(self, reason: str) -> None:
        """
        Count a refusal, for the metrics and the next summary.

        @param reason: one of a small fixed set (see L{refusals}): never
            anything a client chose.
        """
        self.refusals[reason] += 1
        self._refusedSince[reason] += 1
        if self._summaryTimer is None:
            self._scheduleSummary()

    def _scheduleSummary(self) -> None:
        self._summaryStarted = self.clock.seconds()
        self._summaryTimer = self.clock.callLater(
            self.refusalSummaryInterval, self._summarizeRefusals
        )

    def _summarizeRefusals(self) -> None:
        """
        Log what was refused since the last summary, if anything, in one
        line for the refusals of unauthenticated sources and one for the
        refused authenticated requests that got no line of their own; then
        wait for the next refusal to start counting again.
        """
        timer, self._summaryTimer = self._summaryTimer, None
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        refused, self._refusedSince = self._refusedSince, Counter()
        unwarned, self._unwarnedSince = self._unwarnedSince, Counter()
        self._warnedSince = 0
        seconds = round(self.clock.seconds() - self._summaryStarted)
        if refused:
            # No total: a request refused (say, for bad integrity) whose
            # answer then went unsent (rate-limited) counts under both.
            self.log.warn(
                "refused unauthenticated requests in the last {seconds} s, by reason: {counts}",
                seconds=seconds,
                counts=", ".join(f"{why} {count}" for why, count in sorted(refused.items())),
                refused=dict(refused),
            )
        if unwarned:
            self.log.warn(
                "{total} more authenticated requests refused in {seconds} s, "
                "by response code: {counts}",
                total=sum(unwarned.values()),
                seconds=seconds,
                counts=", ".join(f"{code} {count}" for code, count in sorted(unwarned.items())),
                unwarned={str(code): count for code, count in unwarned.items()},
            )

    # Binding ---------------------------------------------------------------------

    def _binding(self, request: STUNMessage, channel: IReplyChannel, size: int) -> None:
        """
        Answer a Binding request with the client's reflexive address, without
        authentication (RFC 8489 sections 6.3.1.1 and 12).

        @param size: the request's size in bytes.
        """
        unknown = request.unknownComprehensionRequired(UNDERSTOOD_ATTRIBUTES)
        if unknown:
            response = request.errorResponse(420).add(A.UNKNOWN_ATTRIBUTES, tuple(unknown))
        else:
            response = request.successResponse([(A.XOR_MAPPED_ADDRESS, channel.clientAddress)])
        self._answerUnverified(request, response, channel, size)

    # Authenticated requests ------------------------------------------------------

    def _request(self, request: STUNMessage, channel: IReplyChannel, size: int) -> None:
        auth = self.authenticator.authenticate(request, channel.clientAddress)
        if not auth.ok:
            self._authFailed(request, channel, auth, size)
            return
        unknown = request.unknownComprehensionRequired(UNDERSTOOD_ATTRIBUTES)
        try:
            if unknown:
                raise _Reply(
                    420,
                    "unknown comprehension-required attributes",
                    (A.UNKNOWN_ATTRIBUTES, tuple(unknown)),
                )
            allocation = channel.allocation
            if request.method == Method.ALLOCATE:
                if allocation is not None:
                    self._allocateAgain(request, channel, auth, allocation)
                    return
            elif request.method == Method.CONNECTION_BIND:
                pass  # on a new connection: it has its own rules
            elif allocation is None:
                raise _Reply(437, "no allocation on this 5-tuple")
            elif allocation.username != auth.username:
                raise _Reply(441, "the allocation belongs to another user")
            response = self._requestHandlers[request.method](request, channel, auth)
            if response is None:
                return  # the handler answers, now or later
        except _Reply as reply:
            self._warnRefused(request, channel, auth, reply.code, reply.reason)
            response = request.errorResponse(reply.code)
            response.attributes.extend(reply.attributes)
        data = self._respond(request, response, channel, auth)
        if (
            request.method == Method.ALLOCATE
            and response.messageClass != MessageClass.ERROR_RESPONSE
        ):
            channel.allocation.allocateResponse = data

    def _authFailed(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult, size: int
    ) -> None:
        """
        Answer a request that failed authentication: a challenge (401 or 438
        with REALM and NONCE) or a 400.

        Anyone can send such requests, from any source address, as fast as
        they like: each is counted (L{authFailures}, and L{refusals} but for
        the challenges every client meets) and logged at debug level only;
        the warning is the periodic summary.
        """
        code = auth.errorCode
        assert code is not None
        self.authFailures[auth.reason] += 1
        if auth.reason not in _CHALLENGES:
            self._refused(auth.reason)
        self.log.debug(
            "{method} from {client} over {transport} refused with {code}: {reason}",
            method=Method(request.method).name,
            client=channel.clientAddress,
            transport=channel.transportProtocol,
            code=code,
            reason=auth.reason,
            username=request.get(A.USERNAME),
        )
        response = request.errorResponse(code)
        response.attributes.extend(auth.errorAttributes)
        compact = None
        if auth.errorAttributes:

            def compact() -> STUNMessage:
                # No reason phrase, REALM and a nonce without the cookie
                # (so without PASSWORD-ALGORITHMS): RFC 8489 section 9.2.4's
                # minimum.
                smaller = request.errorResponse(code, "")
                smaller.attributes.extend(
                    self.authenticator.challenge(channel.clientAddress, compact=True)
                )
                return smaller

        self._answerUnverified(request, response, channel, size, compact)

    def _warnRefused(
        self,
        request: STUNMessage,
        channel: IReplyChannel,
        auth: AuthResult,
        code: int,
        reason: str,
    ) -> None:
        """
        Log a refused authenticated request: its user is accountable, so it
        gets a line of its own, but no more than
        L{REFUSED_WARNINGS_PER_INTERVAL} such lines are written per
        C{refusalSummaryInterval}; the rest are counted in the summary.
        """
        if self._summaryTimer is None:
            self._scheduleSummary()
        if self._warnedSince >= REFUSED_WARNINGS_PER_INTERVAL:
            self._unwarnedSince[code] += 1
            return
        self._warnedSince += 1
        self.log.warn(
            "{method} from {username} on {client} over {transport} refused with {code}: {reason}",
            method=Method(request.method).name,
            username=auth.username,
            client=channel.clientAddress,
            transport=channel.transportProtocol,
            code=code,
            reason=reason,
        )

    # Allocate (RFC 8656 section 7.2) ----------------------------------------------

    def _allocateAgain(
        self,
        request: STUNMessage,
        channel: IReplyChannel,
        auth: AuthResult,
        allocation: Allocation,
    ) -> None:
        """
        An Allocate on a 5-tuple that has an allocation: a retransmission of
        the request that made it gets the same answer, anything else 437
        (RFC 8656 section 7.2, checklist item 43).
        """
        if (
            request.transactionID == allocation.transactionID
            and auth.username == allocation.username
            and allocation.allocateResponse
        ):
            channel.send(allocation.allocateResponse)
            return
        self._warnRefused(request, channel, auth, 437, "5-tuple already allocated")
        self._respond(request, request.errorResponse(437), channel, auth)

    def _allocate(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult
    ) -> STUNMessage:
        if self.draining:
            self._redirect(channel)
        transport = request.get(A.REQUESTED_TRANSPORT)
        if transport is None:
            raise _Reply(400, "REQUESTED-TRANSPORT missing")
        if transport == A.TRANSPORT_TCP:
            return self._allocateTCP(request, channel, auth)
        if transport != A.TRANSPORT_UDP:
            raise _Reply(442, f"REQUESTED-TRANSPORT {transport} not served")
        token = request.get(A.RESERVATION_TOKEN)
        evenPort = request.get(A.EVEN_PORT)
        requestedFamily = request.get(A.REQUESTED_ADDRESS_FAMILY)
        additionalFamily = request.get(A.ADDITIONAL_ADDRESS_FAMILY)
        if token is not None and (
            evenPort is not None or requestedFamily is not None or additionalFamily is not None
        ):
            raise _Reply(400, "RESERVATION-TOKEN with EVEN-PORT or an address family")
        if requestedFamily is not None and additionalFamily is not None:
            raise _Reply(400, "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY")
        pools = self._pools
        extra: list[Tuple[int, Any]] = []
        if additionalFamily is not None:
            # "IPv4, and IPv6 as well" (RFC 8656 section 7.2).
            if additionalFamily != FAMILY_IPV6 or evenPort:
                raise _Reply(400, "ADDITIONAL-ADDRESS-FAMILY not IPv6, or with EVEN-PORT R")
            families = [family for family in (FAMILY_IPV4, FAMILY_IPV6) if family in pools]
            if not families:
                raise _Reply(508, "no relay address configured")
            for missing in {FAMILY_IPV4, FAMILY_IPV6} - set(families):
                extra.append(
                    (A.ADDRESS_ERROR_CODE, A.AddressErrorCode(missing, 440, "Family not offered"))
                )
        else:
            family = FAMILY_IPV4 if requestedFamily is None else requestedFamily
            if family not in pools:
                raise _Reply(440, f"address family {family} not offered")
            families = [family]
        dontFragment = A.DONT_FRAGMENT in request
        if dontFragment and not all(pools[family].dontFragmentSupported for family in families):
            raise _Reply(
                420,
                "DONT-FRAGMENT cannot be honoured here",
                (A.UNKNOWN_ATTRIBUTES, (A.DONT_FRAGMENT,)),
            )
        assert auth.username is not None
        self._checkQuota(auth.username, len(families) + (1 if evenPort else 0))
        relays: list[Relay] = []
        reservationToken = None
        try:
            if token is not None:
                reserved = self._reservations.pop(token, None)
                if reserved is None:
                    raise _Reply(508, "unknown or expired RESERVATION-TOKEN")
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
                        raise _Reply(508, "no free relay port") from None
                    relays.append(self._relay(pool, relayPort))
                    if nextPort is not None:
                        reservationToken = self._reserve(pool, nextPort)
            if dontFragment:
                for relay in relays:
                    if not pools[relay.address.family].setDontFragment(relay.port):
                        raise _Reply(
                            420,
                            "DONT-FRAGMENT could not be set",
                            (A.UNKNOWN_ATTRIBUTES, (A.DONT_FRAGMENT,)),
                        )
        except _Reply:
            for relay in relays:
                relay.close(relay.port)
            raise
        allocation, response = self._register(request, channel, auth, relays, A.TRANSPORT_UDP)
        for relay in relays:
            relay.port.protocol.allocation = allocation
        if reservationToken is not None:
            response.add(A.RESERVATION_TOKEN, reservationToken)
        response.attributes.extend(extra)
        return response

    def _redirect(self, channel: IReplyChannel) -> None:
        """
        Turn a new allocation away while draining: 300 Try Alternate with
        ALTERNATE-SERVER, the first of the client's own family (RFC 8489
        section 10; sent only to authenticated requests, with integrity), or
        403 when no alternate is configured.
        """
        if not self.alternateServers:
            raise _Reply(403, "the relay is draining")
        family = channel.clientAddress.family
        alternates = sorted(self.alternateServers, key=lambda a: a.family != family)
        first = alternates[0]
        others = [a for a in alternates if a.family != first.family][:1]
        raise _Reply(
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
        limits = self.limits
        if (limits.userQuota and self.registry.countForUser(username) >= limits.userQuota) or (
            limits.totalQuota and len(self.registry) >= limits.totalQuota
        ):
            raise _Reply(486, "allocation quota reached")
        if self.descriptors is not None and not self.descriptors.take("allocate", descriptors):
            raise _Reply(508, "out of file descriptors (descriptor-reserve)")

    def _allocateTCP(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult
    ) -> STUNMessage:
        """
        An Allocate for a TCP relayed address (RFC 6062 section 5.1).
        """
        if channel.transportProtocol == "udp":
            raise _Reply(400, "TCP allocations need a TCP or TLS control connection")
        for attribute in (A.DONT_FRAGMENT, A.EVEN_PORT, A.RESERVATION_TOKEN):
            if attribute in request:
                raise _Reply(400, f"{A.attributeName(attribute)} in a TCP Allocate")
        if A.ADDITIONAL_ADDRESS_FAMILY in request:
            raise _Reply(400, "ADDITIONAL-ADDRESS-FAMILY in a TCP Allocate")
        family = request.get(A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV4)
        pool = self._pools.get(family)
        if pool is None:
            raise _Reply(440, f"address family {family} not offered")
        assert auth.username is not None
        self._checkQuota(auth.username)
        holder: list[Allocation] = []
        try:
            listening = pool.openTCP(
                IncomingPeerFactory(lambda addr: self._peerConnecting(holder[0], addr))
            )
        except NoRelayPort:
            raise _Reply(508, "no free relay port") from None
        relay = self._relay(pool, listening, pool.closeTCP)
        allocation, response = self._register(request, channel, auth, [relay], A.TRANSPORT_TCP)
        holder.append(allocation)
        return response

    def _register(
        self,
        request: STUNMessage,
        channel: IReplyChannel,
        auth: AuthResult,
        relays: list[Relay],
        transport: int,
    ) -> Tuple[Allocation, STUNMessage]:
        """
        Make and register an allocation over its relays.

        @return: it, and the success response to the Allocate (RFC 8656
            section 7.2: relayed addresses, LIFETIME, XOR-MAPPED-ADDRESS).
        """
        limits = self.limits
        assert auth.username is not None
        # TCP relays are paced by TCP itself; the bucket is for datagrams.
        bucket = None
        if limits.bandwidth and transport == A.TRANSPORT_UDP:
            bucket = TokenBucket(self.clock, limits.bandwidth)
        allocation = Allocation(
            self.clock,
            channel.fiveTuple,
            channel,
            auth.username,
            request.transactionID,
            relays,
            limits.lifetime(request.get(A.LIFETIME)),
            self._allocationExpired,
            bucket,
            transport,
        )
        self.registry.add(allocation)
        response = request.successResponse(
            [(A.XOR_RELAYED_ADDRESS, relay.address) for relay in relays]
            + [(A.LIFETIME, allocation.lifetime), (A.XOR_MAPPED_ADDRESS, channel.clientAddress)]
        )
        return allocation, response

    def _relay(
        self, pool: RelayPortPool, relayPort: Any, close: Optional[Callable[[Any], None]] = None
    ) -> Relay:
        """
        Wrap a relay socket, advertising the external IP for IPv4 behind NAT.

        @param close: how to close it; the pool's UDP C{close} by default.
        """
        bound = pool.address(relayPort)
        host = bound.host
        if self.externalIP is not None and pool is self.relayPorts:
            host = self.externalIP
        return Relay(TransportAddress(host, bound.port), relayPort, close or pool.close)

    def _reserve(self, pool: RelayPortPool, relayPort: Any) -> bytes:
        """
        Hold a port for a later Allocate with the returned RESERVATION-TOKEN.
        """
        token = os.urandom(8)
        timer = self.clock.callLater(RESERVATION_LIFETIME, self._reservationExpired, token)
        self._reservations[token] = (relayPort, pool, timer)
        return token

    def _allocationExpired(self, allocation: Allocation) -> None:
        self.registry.remove(allocation, "expired")

    def _reservationExpired(self, token: bytes) -> None:
        relayPort, pool, _ = self._reservations.pop(token)
        pool.close(relayPort)

    # Refresh (RFC 8656 section 8) -----------------------------------------------

    def _refresh(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult
    ) -> STUNMessage:
        allocation: Allocation = channel.allocation
        family = request.get(A.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family not in allocation.relays:
            raise _Reply(443, "REQUESTED-ADDRESS-FAMILY differs from the allocation's")
        requested = request.get(A.LIFETIME)
        if requested == 0:
            if family is not None and len(allocation.relays) > 1:
                # One family of a dual allocation goes; the other stays.
                allocation.removeRelay(family)
                return request.successResponse([(A.LIFETIME, 0)])
            self.registry.remove(allocation, "deleted")
            return request.successResponse([(A.LIFETIME, 0)])
        lifetime = self.limits.lifetime(requested)
        allocation.refresh(lifetime)
        self.log.info(
            "allocation {relayed} refreshed by {username}, lifetime {lifetime} s",
            relayed=str(allocation.relayedAddress),
            username=allocation.username,
            lifetime=lifetime,
        )
        return request.successResponse([(A.LIFETIME, lifetime)])

    # Permissions and channels (RFC 8656 sections 10 and 12) ----------------------

    def setPeerPolicy(self, policy: PeerPolicy) -> None:
        """
        Put a peer policy in force (at start, and when the configuration is
        reloaded).  Existing permissions stay until they expire.

        The policy learns this controller's relay addresses (peers on them
        are kept to the relay port range) and keeps the own services the
        policy in force knew (the sockets do not change on a reload).
        """
        for pool in self._pools.values():
            policy.addRelayAddress(pool.relayIP, range(pool.minPort, pool.maxPort + 1))
        if self.externalIP is not None:
            ipv4 = self.relayPorts
            ports = range(0) if ipv4 is None else range(ipv4.minPort, ipv4.maxPort + 1)
            policy.addRelayAddress(self.externalIP, ports)
        for service in self.peerPolicy.ownServices:
            policy.addOwnService(service)
        self.peerPolicy = policy

    def _checkPeer(self, allocation: Allocation, peer: TransportAddress, withPort: bool) -> None:
        """
        Refuse a peer the policy denies (403); C{withPort}: check the port
        too (a permission is for an IP address, whatever the port).
        """
        policy = self.peerPolicy
        reason = policy.peerDenialReason(peer) if withPort else policy.denialReason(peer.host)
        if reason is not None:
            raise _Reply(403, f"peer {peer} refused: {reason}")

    def _createPermission(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult
    ) -> STUNMessage:
        allocation: Allocation = channel.allocation
        peers = request.getAll(A.XOR_PEER_ADDRESS)
        if not peers:
            raise _Reply(400, "no XOR-PEER-ADDRESS")
        # All or nothing: check every address before installing any.
        for peer in peers:
            if peer.family not in allocation.relays:
                raise _Reply(443, "peer address family differs from the allocation's")
        for peer in peers:
            # A permission is for an IP address: the port is arbitrary.
            self._checkPeer(allocation, peer, withPort=False)
        hosts = {peer.host for peer in peers}
        if len(hosts | allocation.permissions.keys()) > self.limits.maxPermissions:
            raise _Reply(508, "permission limit reached")
        for host in hosts:
            allocation.installPermission(host)
        return request.successResponse()

    def _channelBind(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult
    ) -> STUNMessage:
        allocation: Allocation = channel.allocation
        number = request.get(A.CHANNEL_NUMBER)
        peer = request.get(A.XOR_PEER_ADDRESS)
        if allocation.transport != A.TRANSPORT_UDP:
            raise _Reply(400, "channels are for UDP allocations")
        if number is None or peer is None:
            raise _Reply(400, "CHANNEL-NUMBER or XOR-PEER-ADDRESS missing")
        if not isChannelNumber(number, self.limits.maxChannelNumber):
            raise _Reply(
                400, f"channel 0x{number:04X} outside 0x4000-0x{self.limits.maxChannelNumber:04X}"
            )
        if allocation.channelConflict(number, peer):
            raise _Reply(400, f"channel 0x{number:04X} or peer {peer} already bound otherwise")
        if peer.family not in allocation.relays:
            raise _Reply(443, "peer address family differs from the allocation's")
        self._checkPeer(allocation, peer, withPort=True)
        limits = self.limits
        if number not in allocation.channels and (
            len(allocation.channels) >= limits.maxChannels
            or (
                peer.host not in allocation.permissions
                and len(allocation.permissions) >= limits.maxPermissions
            )
        ):
            raise _Reply(508, "channel or permission limit reached")
        allocation.bindChannel(number, peer)
        return request.successResponse()

    # TCP allocations (RFC 6062) -----------------------------------------------

    def _newConnectionID(self) -> int:
        while True:
            connectionID = int.from_bytes(os.urandom(4), "big")
            if connectionID not in self.peerConnections:
                return connectionID

    def _newPeerConnection(
        self,
        allocation: Allocation,
        peer: TransportAddress,
        onConnected: Callable[[PeerConnection], None],
    ) -> PeerConnection:
        connection = PeerConnection(
            self.clock,
            allocation,
            peer,
            self._newConnectionID(),
            onConnected,
            self._peerConnectionClosed,
        )
        self.peerConnections[connection.connectionID] = connection
        allocation.peerConnections[connection.connectionID] = connection
        return connection

    def _peerConnectionClosed(self, connection: PeerConnection) -> None:
        self.peerConnections.pop(connection.connectionID, None)
        connection.allocation.peerConnections.pop(connection.connectionID, None)

    def _connect(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult
    ) -> Optional[STUNMessage]:
        """
        Connect the relayed address to a peer; answer when connected (with
        CONNECTION-ID) or when that failed (447) (RFC 6062 section 5.2).
        """
        allocation: Allocation = channel.allocation
        if allocation.transport != A.TRANSPORT_TCP:
            raise _Reply(400, "Connect needs a TCP allocation")
        peer = request.get(A.XOR_PEER_ADDRESS)
        if peer is None:
            raise _Reply(400, "no XOR-PEER-ADDRESS")
        if peer.family not in allocation.relays:
            raise _Reply(443, "peer address family differs from the allocation's")
        self._checkPeer(allocation, peer, withPort=True)
        if any(c.peer == peer for c in allocation.peerConnections.values()):
            raise _Reply(446, f"a connection with {peer} exists already")
        if len(allocation.peerConnections) >= self.limits.maxPeerConnections:
            raise _Reply(508, "max-peer-connections reached on this allocation")
        if self.descriptors is not None and not self.descriptors.take("connect"):
            raise _Reply(508, "out of file descriptors (descriptor-reserve)")

        def connected(connection: PeerConnection) -> None:
            response = request.successResponse([(A.CONNECTION_ID, connection.connectionID)])
            self._respond(request, response, channel, auth)

        def failed(connection: PeerConnection, reason: Any) -> None:
            self._warnRefused(request, channel, auth, 447, f"{peer}: {reason.getErrorMessage()}")
            self._respond(request, request.errorResponse(447), channel, auth)

        connection = self._newPeerConnection(allocation, peer, connected)
        relayPort = allocation.relays[peer.family].address.port
        self._pools[peer.family].connectTCP(
            relayPort, peer, OutgoingPeerFactory(connection, failed), self.limits.tcpConnectTimeout
        )
        return None

    def _peerConnecting(self, allocation: Allocation, address: Any) -> Optional[PeerConnection]:
        """
        A peer connects to a TCP relayed address: take it only with a
        permission, and tell the client with a ConnectionAttempt indication
        (RFC 6062 section 5.3).
        """
        peer = TransportAddress(unmapIPv4(address.host), address.port)
        # Peers are strangers who can connect as often as they like: count
        # what is refused, and log it only at debug level.
        refusal = None
        if peer.host not in allocation.permissions:
            refusal = "permission"
        elif len(allocation.peerConnections) >= self.limits.maxPeerConnections:
            refusal = "max-peer-connections"
        elif self.descriptors is not None and not self.descriptors.take("peer"):
            refusal = "descriptors"
        if refusal is not None:
            self.peerConnectionsRefused[refusal] += 1
            self.log.debug(
                "TCP connection from {peer} to {relayed} refused: {reason}",
                peer=str(peer),
                relayed=str(allocation.relayedAddress),
                reason=refusal,
            )
            return None

        def connected(connection: PeerConnection) -> None:
            indication = STUNMessage(
                Method.CONNECTION_ATTEMPT,
                MessageClass.INDICATION,
                os.urandom(12),
                [(A.XOR_PEER_ADDRESS, peer), (A.CONNECTION_ID, connection.connectionID)],
            )
            allocation.channel.send(indication.encode())

        return self._newPeerConnection(allocation, peer, connected)

    def _connectionBind(
        self, request: STUNMessage, channel: IReplyChannel, auth: AuthResult
    ) -> Optional[STUNMessage]:
        """
        Claim a peer connection on a new client connection, which then carries
        that peer's bytes as they are (RFC 6062 section 5.4).
        """
        if channel.transportProtocol == "udp":
            raise _Reply(400, "ConnectionBind needs a TCP or TLS connection")
        if channel.allocation is not None:
            raise _Reply(400, "ConnectionBind on a connection that holds an allocation")
        connection = self.peerConnections.get(request.get(A.CONNECTION_ID, -1))
        if connection is None or connection.state != "pending":
            raise _Reply(400, "no pending connection with that CONNECTION-ID")
        if connection.allocation.username != auth.username:
            raise _Reply(441, "the connection belongs to another user")
        # The success response is the last STUN on this connection: send it,
        # then splice.
        self._respond(request, request.successResponse(), channel, auth)
        channel.startRelayingTo(connection)
        connection.bind(channel)
        self.log.info(
            "TCP connection {connectionID:08x} of {relayed} with {peer} bound to {client}",
            connectionID=connection.connectionID,
            relayed=str(connection.allocation.relayedAddress),
            peer=str(connection.peer),
            client=channel.clientAddress,
        )
        return None

    # Send indications (RFC 8656 section 11.2) -----------------------------------

    def _sendIndication(self, message: STUNMessage, channel: IReplyChannel) -> None:
        """
        Relay a Send indication's DATA to its peer, or drop it silently.
        """
        allocation = channel.allocation
        if allocation is None:
            return
        peer = message.get(A.XOR_PEER_ADDRESS)
        data = message.get(A.DATA)
        sendto = None if peer is None else allocation.sendtoFor(peer.family)
        if (
            sendto is None
            or data is None
            or message.unknownComprehensionRequired(UNDERSTOOD_ATTRIBUTES)
            or self.peerPolicy.peerDenialReason(peer) is not None
        ):
            allocation.droppedInvalid += 1
            return
        if peer.host not in allocation.permissions:
            allocation.droppedPermission += 1
            return
        if A.DONT_FRAGMENT in message:
            # DF stays set on that relay socket from then on.
            pool = self._pools[peer.family]
            if not pool.setDontFragment(allocation.relays[peer.family].port):
                allocation.droppedInvalid += 1
                return
        allocation.sendToPeer(data, peer, sendto)
