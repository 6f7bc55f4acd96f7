# -*- test-case-name: tests.test_turn_server -*-
"""
The controller every transport hands its STUN messages and ChannelData to.

Like C{twisted.names}' server factory, it is the narrow seam between the
transports and the protocol: a transport hands over one message with the
client's link (L{stunReceived}, L{channelDataReceived}) and the answer goes
back through the link.  Here requests are authenticated and dispatched;
each concept has a module of its own:

    - L{turnrelay.turn.allocate}: Allocate and Refresh;
    - L{turnrelay.turn.permissions}: CreatePermission and ChannelBind;
    - L{turnrelay.turn.tcprelay}: RFC 6062's Connect and ConnectionBind;
    - L{turnrelay.turn.datapath}: ChannelData and Send/Data, both ways;
    - L{turnrelay.turn.policy}: which peers may be named;
    - L{turnrelay.turn.refusals}: how refusals are counted and logged;
    - L{turnrelay.turn.unverified}: what unauthenticated sources are sent;
    - L{turnrelay.turn.registry}: the one registry of allocations.

@see: RFC 8656 sections 5-12, RFC 8489 sections 6.3 and 9.2.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple
from typing import Counter as CounterType

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from turnrelay.auth.credentials import ChainedCredentials
from turnrelay.auth.longterm import AuthResult, LongTermAuthenticator
from turnrelay.auth.nonce import NonceMinter
from turnrelay.interfaces import IAllocationQuota, IClientLink, IKernelPath
from turnrelay.logs import Logger, LogLevels
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.message import (
    MessageClass,
    Method,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
    isAllowedClass,
)
from turnrelay.turn.allocate import Allocator
from turnrelay.turn.allocation import Allocation
from turnrelay.turn.datapath import DataPath
from turnrelay.turn.descriptors import DescriptorBudget
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.permissions import FailClosedFilter, channelBind, createPermission
from turnrelay.turn.policy import PeerPolicy
from turnrelay.turn.refusals import Refusal, RefusalLog
from turnrelay.turn.registry import AllocationObserver, AllocationRegistry
from turnrelay.turn.relay import RelayPortPool
from turnrelay.turn.sources import SourceRateLimiter
from turnrelay.turn.tcprelay import PeerConnection, TCPRelaying
from turnrelay.turn.unverified import UnverifiedAnswers

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
CHALLENGES = frozenset({"no-integrity", "stale-nonce"})

RequestHandler = Callable[[STUNMessage, IClientLink, AuthResult], Optional[STUNMessage]]


class _KernelPathAttacher(AllocationObserver):
    """
    The registry observer that hands every new allocation the controller's
    kernel path, so that the allocation tells it of its permissions and
    channels from then on.
    """

    def __init__(self, server: TURNServer) -> None:
        self._server = server

    def allocationCreated(self, allocation: Any) -> None:
        allocation.kernelPath = self._server.kernelPath


class TURNServer:
    """
    Answers STUN and TURN messages from every transport.

    The transports frame bytes and hand each message here with an
    L{IClientLink}; every protocol decision is made here or in the modules
    this dispatches to, once for all transports.

    @ivar registry: the allocations of all clients.
    @ivar authenticator: checks the long-term credentials of requests.
    @ivar peerPolicy: which peers may be relayed to.
    @ivar relayPorts: where IPv4 relay sockets come from, or L{None}.
    @ivar relayPorts6: where IPv6 relay sockets come from, or L{None}.
        Without either, Allocate gets 508.
    @ivar pools: those pools by address family.
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
    @ivar refusalLog: counts refusals and writes their summaries.
    @ivar dataPath: relays application data, both ways.
    @ivar allocator: answers Allocate and Refresh.
    @ivar tcp: answers RFC 6062's requests and holds the peer connections.
    @ivar unverified: answers requests of sources not authenticated.
    @ivar sourceLimit: the per-source limit on unauthenticated answers over
        UDP, or L{None} for none.
    @ivar descriptors: the process's descriptor budget, or L{None}.
    @ivar peerFilter: the embedding application's own check of peers,
        asked after the built-in peer policy for CreatePermission,
        ChannelBind, Connect and every Send indication:
        C{peerFilter(allocation, peer)} returns a reason to refuse (403;
        Send indications are dropped) or L{None}.  L{None} for no filter.
    @ivar sharedQuota: the quotas shared with other relays (the workers of
        one control process), asked by every Allocate that passes this
        relay's own checks before its allocation is made (486 if refused,
        508 if it cannot answer), or L{None} for this relay's quotas alone.
    @ivar kernelPath: the kernel fast path for UDP ChannelData (an
        L{IKernelPath}), told of every allocation's permissions, channels
        and end, and of policy changes; L{None} (the default) when the data
        path is user space alone.
    """

    log = Logger()
    clock: IReactorTime
    # Set by whoever builds the relay; without them, descriptors are not
    # budgeted and unauthenticated answers are not limited per source.
    descriptors: Optional[DescriptorBudget] = None
    sourceLimit: Optional[SourceRateLimiter] = None
    sharedQuota: Optional[IAllocationQuota] = None
    _kernelPath: Optional[IKernelPath] = None
    _kernelPathAttacher: Optional[_KernelPathAttacher] = None

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
        logLevels: Optional[LogLevels] = None,
    ) -> None:
        self.logLevels = LogLevels() if logLevels is None else logLevels
        self.clock = clock
        self.software = software
        self.authenticator = authenticator or LongTermAuthenticator(
            "turnrelay", ChainedCredentials([]), NonceMinter(clock)
        )
        self.registry = registry if registry is not None else AllocationRegistry(self.logLevels)
        self.peerPolicy = peerPolicy if peerPolicy is not None else PeerPolicy()
        self.relayPorts = relayPorts
        self.relayPorts6 = relayPorts6
        self.draining = False
        self.alternateServers: Tuple[TransportAddress, ...] = ()
        self.requests: CounterType[Tuple[str, str]] = Counter()
        self.authFailures: CounterType[str] = Counter()
        self.refusalLog = RefusalLog(clock, logLevels=self.logLevels)
        self.limits = limits
        self.externalIP = externalIP
        self.pools: Dict[int, RelayPortPool] = {
            family: pool
            for family, pool in ((FAMILY_IPV4, relayPorts), (FAMILY_IPV6, relayPorts6))
            if pool is not None
        }
        self.dataPath = DataPath(self.peerPolicy, self.pools, UNDERSTOOD_ATTRIBUTES)
        self.setPeerPolicy(self.peerPolicy)
        self.allocator = Allocator(self)
        self.tcp = TCPRelaying(self)
        self.unverified = UnverifiedAnswers(self)
        self._requestHandlers: Dict[int, RequestHandler] = {
            Method.ALLOCATE: self.allocator.allocate,
            Method.REFRESH: self.allocator.refresh,
            Method.CREATE_PERMISSION: self._permissionHandler(createPermission),
            Method.CHANNEL_BIND: self._permissionHandler(channelBind),
            Method.CONNECT: self.tcp.connect,
            Method.CONNECTION_BIND: self.tcp.connectionBind,
        }

    def _permissionHandler(self, handler: Callable[..., STUNMessage]) -> RequestHandler:
        def handle(request: STUNMessage, link: IClientLink, auth: AuthResult) -> STUNMessage:
            installed: List[str] = []
            allocation = link.allocation
            response = handler(
                request,
                allocation,
                self.peerPolicy,
                self.limits,
                self.dataPath.peerFilter,
                installed,
            )
            for host in installed:
                self.registry.permissionAdded(allocation, host)
            return response

        return handle

    @property
    def peerFilter(self) -> Optional[Callable[[Allocation, TransportAddress], Optional[str]]]:
        """
        The application's peer filter, or L{None}; see the class docstring.
        """
        failClosed = self.dataPath.peerFilter
        return None if failClosed is None else failClosed.applicationFilter

    @peerFilter.setter
    def peerFilter(
        self, peerFilter: Optional[Callable[[Allocation, TransportAddress], Optional[str]]]
    ) -> None:
        self.dataPath.peerFilter = (
            None if peerFilter is None else FailClosedFilter(peerFilter, self.logLevels)
        )
        if self._kernelPath is not None:
            self._kernelPath.policyChanged()

    @property
    def kernelPath(self) -> Optional[IKernelPath]:
        """
        The kernel fast path, or L{None}; see the class docstring.
        Allocations made from now on follow the one set here (those already
        made stay on the user-space path).
        """
        return self._kernelPath

    @kernelPath.setter
    def kernelPath(self, kernelPath: Optional[IKernelPath]) -> None:
        self._kernelPath = kernelPath
        if kernelPath is not None and self._kernelPathAttacher is None:
            self._kernelPathAttacher = _KernelPathAttacher(self)
            self.registry.addObserver(self._kernelPathAttacher)
        elif kernelPath is None and self._kernelPathAttacher is not None:
            self.registry.removeObserver(self._kernelPathAttacher)
            self._kernelPathAttacher = None

    # What the metrics, the console and embedders read ----------------------------

    @property
    def refusals(self) -> CounterType[str]:
        """
        Requests of unauthenticated (over UDP, unverified) sources refused,
        by reason: the failed authentications but the first 401 and the 438
        every client meets, C{"malformed"}, and the UDP answers not sent:
        C{"rate-limited"} and C{"amplification"}.
        """
        return self.refusalLog.refusals

    @property
    def refusalSummaryInterval(self) -> float:
        """
        Seconds between two summaries of refusals.
        """
        return self.refusalLog.interval

    @refusalSummaryInterval.setter
    def refusalSummaryInterval(self, seconds: float) -> None:
        self.refusalLog.interval = seconds

    @property
    def peerConnections(self) -> Dict[int, PeerConnection]:
        """
        RFC 6062 peer connections by CONNECTION-ID.
        """
        return self.tcp.peerConnections

    @property
    def peerConnectionsRefused(self) -> CounterType[str]:
        """
        Peers' TCP connections to relayed addresses refused, by reason.
        """
        return self.tcp.refused

    # Entry points ----------------------------------------------------------------

    def stunReceived(self, data: bytes, link: IClientLink) -> None:
        """
        Handle one STUN message from a client.

        Malformed messages are dropped and counted; a malformed request is
        answered 400 only when the answer is no larger than the request, so
        that forged sources gain nothing (RFC 8489 section 6.3).  Responses
        and unknown methods are dropped.  Over UDP, what answers an
        unauthenticated request is held to the per-source limit and to
        three times its size (see L{turnrelay.turn.unverified}).

        @param data: exactly one STUN message.
        @param link: the way back to the client.
        """
        try:
            message = decodeMessage(data)
        except STUNDecodeError as e:
            self._malformed(data, e, link)
            return
        method, messageClass = message.method, message.messageClass
        if not isAllowedClass(method, messageClass):
            self._drop(message, link, "unknown method or class not allowed for it")
        elif messageClass == MessageClass.INDICATION:
            if method == Method.SEND:
                self.dataPath.sendIndicationFromClient(message, link)
            # A Binding indication is a keep-alive; others come from servers.
        elif messageClass != MessageClass.REQUEST:
            self._drop(message, link, "a response")
        elif method == Method.BINDING:
            self._binding(message, link, len(data))
        elif method in self._requestHandlers:
            self._request(message, link, len(data))
        else:
            self._drop(message, link, "method not served")

    def channelDataReceived(self, data: bytes, link: IClientLink) -> None:
        """
        Relay one ChannelData message from a client to its peer (see
        L{turnrelay.turn.datapath}).

        @param data: exactly one ChannelData message, padding included.
        @param link: the way back to the client.
        """
        self.dataPath.channelDataFromClient(data, link)

    def stop(self) -> Deferred[Any]:
        """
        End everything: every allocation (logging its usage) and every
        EVEN-PORT reservation.  A stopping service calls this.  Refusals
        not yet summed up are, now, and no timer is left running.

        @return: a L{Deferred} that fires when the relay sockets are closed.
        """
        self.refusalLog.summarize()
        for allocation in self.registry:
            self.registry.remove(allocation, "ended: the relay is stopping")
        self.allocator.stop()
        return DeferredList([pool.closed() for pool in self.pools.values()])

    def linkClosed(self, link: IClientLink, reason: str) -> None:
        """
        A client's link is gone for good (a TCP connection closed, a UDP
        listener stopped): its allocation ends with it, and an Allocate of
        it still waiting for the shared quota is given up.

        @param reason: for the log, such as C{"closed with its connection"}.
        """
        self.allocator.linkClosed(link)
        allocation = link.allocation
        if allocation is not None:
            self.registry.remove(allocation, reason)

    def setPeerPolicy(self, policy: PeerPolicy) -> None:
        """
        Put a peer policy in force (at start, and when the configuration is
        reloaded).  Existing permissions stay until they expire.

        The policy learns this controller's relay addresses (peers on them
        are kept to the relay port range) and keeps the own services the
        policy in force knew (the sockets do not change on a reload).
        """
        for pool in self.pools.values():
            policy.addRelayAddress(pool.relayIP, pool.groupPorts)
        if self.externalIP is not None:
            ipv4 = self.relayPorts
            ports = range(0) if ipv4 is None else ipv4.groupPorts
            policy.addRelayAddress(self.externalIP, ports)
        for service in self.peerPolicy.ownServices:
            policy.addOwnService(service)
        self.peerPolicy = self.dataPath.peerPolicy = policy
        if self._kernelPath is not None:
            # A peer the new policy denies loses its kernel entries now,
            # as it would lose the user-space path's next Send.
            self._kernelPath.policyChanged()

    # Answering -------------------------------------------------------------------

    def respond(
        self,
        request: STUNMessage,
        response: STUNMessage,
        link: IClientLink,
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
        self.count(request, response)
        data = response.encode(
            key=auth.key if auth is not None else None,
            sha256=auth is not None and auth.useSHA256,
            fingerprint=request.fingerprint is not None,
        )
        link.send(data)
        return data

    def answer(
        self, request: STUNMessage, response: STUNMessage, link: IClientLink, auth: AuthResult
    ) -> None:
        """
        Answer an authenticated request (see L{respond}), now or once a
        handler has what it waited for.  A successful Allocate's answer is
        kept on its allocation, for retransmissions of the request.
        """
        data = self.respond(request, response, link, auth)
        if (
            request.method == Method.ALLOCATE
            and response.messageClass != MessageClass.ERROR_RESPONSE
            and link.allocation is not None
        ):
            link.allocation.allocateResponse = data

    def refused(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult, refusal: Refusal
    ) -> STUNMessage:
        """
        Log a refused authenticated request (L{warnRefused}).

        @return: its error response, to L{answer} with.
        """
        self.warnRefused(request, link, auth, refusal.code, refusal.reason)
        response = request.errorResponse(refusal.code)
        response.attributes.extend(refusal.attributes)
        return response

    def warnRefused(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult, code: int, reason: str
    ) -> None:
        """
        Log a refused authenticated request (see L{RefusalLog}).
        """
        self.refusalLog.refusedAuthenticated(
            code,
            method=Method(request.method).name,
            username=auth.username,
            client=link.clientAddress,
            transport=link.transportProtocol,
            reason=reason,
        )

    def count(self, request: STUNMessage, response: STUNMessage) -> None:
        """
        Count a response in L{requests}.
        """
        error = response.get(A.ERROR_CODE)
        try:
            method = Method(request.method).name
        except ValueError:
            method = "unknown"
        self.requests[method, "success" if error is None else str(error.code)] += 1

    def _drop(self, message: STUNMessage, link: IClientLink, reason: str) -> None:
        self.log.debug(
            "dropped {message!r} from {client} over {transport}: {reason}",
            message=message,
            client=link.clientAddress,
            transport=link.transportProtocol,
            reason=reason,
        )

    def _malformed(self, data: bytes, error: STUNDecodeError, link: IClientLink) -> None:
        self.log.debug(
            "dropped {size} bytes from {client} over {transport}: {reason}",
            size=len(data),
            client=link.clientAddress,
            transport=link.transportProtocol,
            reason=error.reason,
        )
        self.refusalLog.refused("malformed")
        if (
            error.messageClass == MessageClass.REQUEST
            and error.transactionID is not None
            and error.method is not None
            and isAllowedClass(error.method, MessageClass.REQUEST)
        ):
            request = STUNMessage(error.method, MessageClass.REQUEST, error.transactionID)
            response = request.errorResponse(400).encode()
            if len(response) <= len(data) and self.unverified.withinSourceLimit(link):
                link.send(response)

    # Binding ---------------------------------------------------------------------

    def _binding(self, request: STUNMessage, link: IClientLink, size: int) -> None:
        """
        Answer a Binding request with the client's reflexive address, without
        authentication (RFC 8489 sections 6.3.1.1 and 12).

        @param size: the request's size in bytes.
        """
        unknown = request.unknownComprehensionRequired(UNDERSTOOD_ATTRIBUTES)
        if unknown:
            response = request.errorResponse(420).add(A.UNKNOWN_ATTRIBUTES, tuple(unknown))
        else:
            response = request.successResponse([(A.XOR_MAPPED_ADDRESS, link.clientAddress)])
        self.unverified.answer(request, response, link, size)

    # Authenticated requests ------------------------------------------------------

    def _request(self, request: STUNMessage, link: IClientLink, size: int) -> None:
        auth = self.authenticator.authenticate(request, link.clientAddress, link.transportProtocol)
        if not auth.ok:
            self._authFailed(request, link, auth, size)
            return
        unknown = request.unknownComprehensionRequired(UNDERSTOOD_ATTRIBUTES)
        try:
            if unknown:
                raise Refusal(
                    420,
                    "unknown comprehension-required attributes",
                    (A.UNKNOWN_ATTRIBUTES, tuple(unknown)),
                )
            allocation = link.allocation
            if request.method == Method.ALLOCATE:
                if allocation is not None:
                    self._allocateAgain(request, link, auth, allocation)
                    return
            elif request.method == Method.CONNECTION_BIND:
                pass  # on a new connection: it has its own rules
            elif allocation is None:
                raise Refusal(437, "no allocation on this 5-tuple")
            elif allocation.username != auth.username:
                raise Refusal(441, "the allocation belongs to another user")
            response = self._requestHandlers[request.method](request, link, auth)
            if response is None:
                return  # the handler answers, now or later
        except Refusal as refusal:
            response = self.refused(request, link, auth, refusal)
        self.answer(request, response, link, auth)

    def _authFailed(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult, size: int
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
        if auth.reason not in CHALLENGES:
            self.refusalLog.refused(auth.reason)
        self.log.debug(
            "{method} from {client} over {transport} refused with {code}: {reason}",
            method=Method(request.method).name,
            client=link.clientAddress,
            transport=link.transportProtocol,
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
                    self.authenticator.challenge(link.clientAddress, compact=True)
                )
                return smaller

        self.unverified.answer(request, response, link, size, compact)

    def _allocateAgain(
        self, request: STUNMessage, link: IClientLink, auth: AuthResult, allocation: Allocation
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
            link.send(allocation.allocateResponse)
            return
        self.warnRefused(request, link, auth, 437, "5-tuple already allocated")
        self.respond(request, request.errorResponse(437), link, auth)
