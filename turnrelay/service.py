# -*- test-case-name: tests.test_service -*-
"""
Build a relay as a Twisted service, for twistd and for embedders.

An application that already runs a reactor (a SIP stack, say) attaches the
relay to its own service tree::

    from turnrelay.config import RelayConfig, parseListen
    from turnrelay.service import makeRelayService

    config = RelayConfig(listeners=(parseListen("udp:3478:interface=0.0.0.0"),))
    makeRelayService(config, reactor).setServiceParent(application)

Nothing here installs log observers or signal handlers, or picks a reactor.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.protocols.tls import TLSMemoryBIOFactory

from turnrelay.auth.credentials import (
    ChainedCredentials,
    ICredentialStore,
    RESTSecrets,
    StaticCredentials,
    mintRESTCredential,
)
from turnrelay.auth.longterm import LongTermAuthenticator
from turnrelay.auth.nonce import NonceMinter
from turnrelay.config import SETTINGS, ConfigError, ListenerConfig, RelayConfig
from turnrelay.interfaces import IAllocationObserver
from turnrelay.listening import ListeningService
from turnrelay.logs import Logger, LogLevels
from turnrelay.offload.kernelpath import KernelPathService
from turnrelay.stun.address import FAMILY_IPV6, TransportAddress
from turnrelay.stun.channeldata import CHANNEL_NUMBER_MAX, CHANNEL_NUMBER_MAX_RFC5766
from turnrelay.transports.proxy import PROXYHeaderFactory
from turnrelay.transports.stream import StreamLimits, STUNStreamFactory
from turnrelay.transports.tls import ReloadingTLSOptions
from turnrelay.transports.udp import STUNDatagramProtocol
from turnrelay.turn.allocation import Allocation
from turnrelay.turn.descriptors import DescriptorBudget, watchAccepts
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.permissions import PeerFilter
from turnrelay.turn.policy import PeerPolicy, canonicalIP
from turnrelay.turn.registry import UsageTotals
from turnrelay.turn.relay import MAX_DATAGRAM, RelayPortPool
from turnrelay.turn.server import TURNServer
from turnrelay.turn.sources import SourceRateLimiter

# What reloadConfig cannot change in a running relay: the sockets and what
# they were made with.
_RESTART_SETTINGS = frozenset(
    {
        "listen",
        "proxy-from",
        "relay-ip",
        "relay-ip6",
        "external-ip",
        "min-port",
        "max-port",
        "nonce-lifetime",
        "tls-cert",
        "tls-key",
        "log-max-bytes",
        "log-max-files",
        "log-format",
        "demo-page",
        "redis",
        "node-id",
        "redis-tls-ca",
    }
)


class ListenerService(ListeningService):
    """
    One socket clients reach the relay on.

    @ivar listener: what to listen on.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listener: ListenerConfig,
        server: TURNServer,
        streamLimits: Optional[StreamLimits] = None,
        tlsOptions: Optional[ReloadingTLSOptions] = None,
        proxyFrom: Sequence[str] = (),
        inherited: Optional[int] = None,
    ) -> None:
        """
        @param streamLimits: the limits shared by TCP and TLS listeners.
        @param tlsOptions: the TLS options of a C{tls} listener.
        @param proxyFrom: the networks of the load balancers that may send
            a C{proxy=yes} listener PROXY headers; empty: any.
        @param inherited: the descriptor of a socket already bound (and
            listening, for TCP) to the listener's address, to serve instead
            of opening one: a worker's, made by its control process.
        """
        self._reactor = reactor
        self.listener = listener
        self._server = server
        self._streamLimits = streamLimits
        self._tlsOptions = tlsOptions
        self._proxyFrom = tuple(proxyFrom)
        self._inherited = inherited

    def listen(self) -> Any:
        listener = self.listener
        family = socket.AF_INET6 if ":" in listener.interface else socket.AF_INET
        if listener.transport == "udp" and self._inherited is not None:
            return self._reactor.adoptDatagramPort(
                self._inherited, family, STUNDatagramProtocol(self._server), MAX_DATAGRAM
            )
        if listener.transport == "udp":
            return self._reactor.listenUDP(
                listener.port,
                STUNDatagramProtocol(self._server),
                interface=listener.interface,
                maxPacketSize=MAX_DATAGRAM,
            )
        stream = STUNStreamFactory(self._server, listener.transport, self._streamLimits)
        factory: Any = stream
        if listener.transport == "tls":
            assert self._tlsOptions is not None
            factory = TLSMemoryBIOFactory(self._tlsOptions, False, factory)
        if listener.proxy:
            # A load balancer's PROXY header comes first, before any TLS.
            factory = PROXYHeaderFactory(
                factory, stream.limits, listener.transport, self._proxyFrom, self._server.logLevels
            )
        if self._inherited is not None:
            port = self._reactor.adoptStreamPort(self._inherited, family, factory)
        else:
            port = self._reactor.listenTCP(listener.port, factory, interface=listener.interface)
        # Stop accepting while descriptors are short (see DescriptorBudget).
        descriptors = self._server.descriptors
        if descriptors is not None and hasattr(port, "socket"):
            watchAccepts(port, descriptors, f"a {listener.transport} connection")
        return port

    def stopService(self) -> Deferred[Any]:
        descriptors = self._server.descriptors
        if descriptors is not None and self.port is not None:
            descriptors.removeListener(self.port)  # type: ignore[arg-type]
        return super().stopService()

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "listening for {transport} on {address}",
            transport=self.listener.transport,
            address=self.address,
            proxy=self.listener.proxy,
        )
        listener = self.listener
        loopback = canonicalIP(listener.interface).is_loopback
        if listener.proxy and not self._proxyFrom and not loopback:
            self.log.warn(
                "the {transport} listener on {address} takes PROXY headers from anyone: "
                "set proxy-from to the load balancers' addresses, or let only them reach it",
                transport=self.listener.transport,
                address=self.address,
            )


class RelayService(MultiService):
    """
    A TURN relay: the controller and its listeners.

    @ivar config: the configuration it was built from.
    @ivar server: the controller all listeners share.
    @ivar logLevels: the relay's own log levels (C{log-level}, the
        console's C{loglevel()}): C{relay.logLevels.setLevel("debug")}
        shows this relay's debug events, and no other relay's.
    @ivar configSource: what re-reads the configuration for a reload
        without a signal (the control socket's C{reload}): twistd's relay
        reads its file and command line again; L{None}, as for embedders,
        when there is nothing to re-read.
    """

    log = Logger()

    def __init__(
        self,
        config: RelayConfig,
        server: TURNServer,
        tlsOptions: Optional[ReloadingTLSOptions] = None,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.server = server
        self.logLevels = server.logLevels
        self.tlsOptions = tlsOptions
        self._reactor = reactor if reactor is not None else server.clock
        self.startedAt = self._reactor.seconds()
        self.streamLimits: Optional[StreamLimits] = None
        self.configSource: Optional[Callable[[], RelayConfig]] = None
        # The embedding application's credential store, asked first and
        # kept across configuration reloads.
        self.applicationCredentials: Optional[ICredentialStore] = None
        # The kernel fast path for UDP ChannelData (offload), a child
        # service; makeRelayService sets it.
        self.offload: Optional[KernelPathService] = None
        # Its part in a fleet (redis), a child service too; None alone.
        self.fleet: Optional[Any] = None

    def startService(self) -> None:
        super().startService()
        # Every socket the relay listens on (TURN listeners, admin console,
        # metrics, credentials endpoint) is bound now: none is ever a peer.
        policy = self.server.peerPolicy
        for child in self:
            if isinstance(child, ListeningService):
                address = child.address
                if address is not None and address.port != 0:
                    policy.addOwnService(address)
        if self.tlsOptions is not None:
            self.tlsOptions.startWatching()

    def stopService(self) -> Any:
        if self.tlsOptions is not None:
            self.tlsOptions.stopWatching()
        # Allocations first, while their clients can still be told nothing
        # more (what the kernel path relayed for them is counted as they
        # end); then the listeners and the kernel path, its entries removed
        # and its program detached.  Done when every socket is closed.
        relaysClosed = self.server.stop()
        if self.server.descriptors is not None:
            self.server.descriptors.stop()
        listenersClosed = maybeDeferred(super().stopService)
        return DeferredList([relaysClosed, listenersClosed])

    def reloadTLS(self) -> bool:
        """
        Re-read the TLS certificate files now (SIGHUP and the admin console
        call this).  New handshakes get the new certificate; established
        connections keep theirs.

        @return: whether new files are in service (L{False} also when no
            listener uses TLS).
        """
        return self.tlsOptions is not None and self.tlsOptions.reload()

    def drain(self, timeout: Optional[float] = None) -> Deferred[None]:
        """
        Take no new allocations (300 Try Alternate to C{alternate-server},
        or 403), and let the existing ones run to the end of their lifetime.

        @param timeout: seconds after which the allocations left are ended;
            C{drain-timeout} by default, 0 for none.
        @return: a L{Deferred} that fires when the last allocation has ended.
        """
        server = self.server
        server.draining = True
        left = len(server.registry)
        timeout = self.config.drainTimeout if timeout is None else timeout
        self.log.info(
            "draining: no new allocations; {left} left, ended after {timeout} s at the latest",
            left=left,
            timeout=timeout,
        )
        done = server.registry.whenEmpty()
        if timeout and left:

            def deadline() -> None:
                for allocation in server.registry:
                    server.registry.remove(allocation, "ended: the drain deadline passed")

            timer = self._reactor.callLater(timeout, deadline)

            def cancel(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result

            done.addBoth(cancel)
        return done

    def stats(self) -> Dict[str, Any]:
        """
        Live figures: allocations by transport and family, permissions,
        channels, TCP peer connections, what was relayed (live and ended
        allocations together), requests, refused authentications, and
        refused requests from unauthenticated sources by reason (with how
        many sources the per-source limit remembers), and the kernel path
        (C{offload}: the path in use, C{"tc"}, C{"xdp"} or C{"off"}, why, the
        packets the kernel relayed each way; those are in C{relayed} too).
        """
        server = self.server
        allocations: Counter[Tuple[str, str]] = Counter()
        relayed: Dict[str, Dict[str, int]] = {}
        permissions = channels = connections = 0
        for transport, totals in server.registry.ended.items():
            relayed[transport] = dict(totals.counts)
        for allocation in server.registry:
            transport = allocation.fiveTuple.transportProtocol
            for address in allocation.relayedAddresses:
                allocations[transport, "ipv6" if address.family == FAMILY_IPV6 else "ipv4"] += 1
            permissions += len(allocation.permissions)
            channels += len(allocation.channels)
            connections += len(allocation.peerConnections)
            counts = relayed.setdefault(transport, dict.fromkeys(UsageTotals.FIELDS, 0))
            for field in UsageTotals.FIELDS:
                counts[field] += getattr(allocation, field)
        return {
            "uptime": round(self._reactor.seconds() - self.startedAt, 3),
            "draining": server.draining,
            "allocations": len(server.registry),
            "allocationsByTransportAndFamily": dict(allocations),
            "permissions": permissions,
            "channels": channels,
            "tcpPeerConnections": connections,
            "relayed": relayed,
            "requests": dict(server.requests),
            "authFailures": dict(server.authFailures),
            "refusals": dict(server.refusals),
            "unauthenticatedSources": (
                0 if server.sourceLimit is None else len(server.sourceLimit)
            ),
            "tlsReloads": 0 if self.tlsOptions is None else self.tlsOptions.reloads,
            "streams": self._streamStats(),
            "descriptors": (None if server.descriptors is None else server.descriptors.stats()),
            "peerConnectionsRefused": dict(server.peerConnectionsRefused),
            "offload": self._offloadStats(),
            **({} if self.fleet is None else {"fleet": self.fleet.stats()}),
        }

    def _offloadStats(self) -> Dict[str, Any]:
        if self.offload is None:
            return {"mode": "off", "reason": "not built", "packetsToPeer": 0, "packetsFromPeer": 0}
        return self.offload.stats()

    def _streamStats(self) -> Dict[str, Any]:
        limits = self.streamLimits
        if limits is None:
            return {"unallocated": 0, "sources": 0, "closed": {}}
        return {
            "unallocated": limits.unallocated,
            "sources": limits.sources(),
            "closed": dict(limits.closed),
        }

    def mintCredential(self, userID: str, ttl: float = 86400.0) -> Tuple[str, str]:
        """
        Mint a TURN REST API credential with the first static-auth-secret,
        as a web application would.

        @param ttl: seconds it stays valid, at most rest-max-ttl.
        @return: C{(username, password)}.
        @raise ValueError: no static-auth-secret is configured.
        """
        return mintFromConfig(self.config, userID, ttl, self._reactor.seconds())

    def adminConsole(self, clock: Any) -> Any:
        """
        @return: the admin console's helpers for this relay (the SSH
            console's and the control socket's).
        """
        from turnrelay.admin.console import AdminConsole

        return AdminConsole(self, clock)

    def controlFactory(self, clock: Any) -> Any:
        """
        @return: the factory of the control socket's connections.
        """
        from turnrelay.admin.control import ControlFactory

        return ControlFactory(self, clock)

    def metricsPage(self) -> Any:
        """
        @return: the C{/metrics} page.
        """
        from turnrelay.admin.metrics import MetricsPage, makeMetricsRegistry

        return MetricsPage(makeMetricsRegistry(self))

    @property
    def draining(self) -> bool:
        """
        Whether new allocations are turned away (see L{drain}).
        """
        return self.server.draining

    def whyNotReady(self) -> Optional[str]:
        """
        Whether the relay serves new clients.

        @return: L{None} when it does; else why not, in a few words:
            C{"not running"}, C{"draining"}, or the listener not bound.
        """
        if not self.running:
            return "not running"
        if self.server.draining:
            return "draining"
        for child in self:
            if isinstance(child, ListenerService) and child.port is None:
                return f"{child.listener.transport} listener {child.listener.port} is not bound"
        return None

    def reloadConfig(self, config: RelayConfig) -> List[str]:
        """
        Apply a changed configuration without a restart: users, secrets,
        realm, peer policy, limits and quotas (those on streams, sources and
        descriptors too), alternate servers, SOFTWARE, log level (only when
        C{log-level} changed: a level set from the admin console survives a
        reload that leaves it as it was), and the TLS certificate files.
        Established allocations keep going.

        @return: the settings that changed but need a restart to apply
            (listeners, relay addresses and ports).
        """
        old, self.config = self.config, config
        server = self.server
        authenticator = server.authenticator
        authenticator.realm = config.realm
        authenticator.credentials = _credentials(config, self._reactor, self.applicationCredentials)
        server.setPeerPolicy(_peerPolicy(config))
        server.limits = _limits(config)
        server.software = config.software
        server.alternateServers = config.alternateServers
        if server.sourceLimit is not None:
            server.sourceLimit.rate = config.unauthenticatedRate
            server.sourceLimit.burst = config.unauthenticatedBurst
            server.sourceLimit.maxSources = config.sourceTableSize
        server.refusalSummaryInterval = config.refusalSummaryInterval
        if server.descriptors is not None:
            server.descriptors.reserve = config.descriptorReserve
        if self.streamLimits is not None:
            _updateStreamLimits(self.streamLimits, config)
        if config.logLevel != old.logLevel:
            # Otherwise a level set from the admin console stays in force.
            self.logLevels.setLevel(config.logLevel)
        if self.tlsOptions is not None:
            self.tlsOptions.reload()
        if self.fleet is not None:
            self.fleet.reconfigure(config)
        needRestart = [
            setting.name
            for setting in SETTINGS
            if setting.name in _RESTART_SETTINGS
            and getattr(old, setting.field) != getattr(config, setting.field)
        ]
        self.log.info(
            "configuration reloaded; needing a restart to apply: {needRestart}",
            needRestart=", ".join(needRestart) or "nothing",
        )
        return needRestart

    def endAllocations(
        self,
        username: Optional[str] = None,
        predicate: Optional[Callable[[Allocation], bool]] = None,
        reason: str = "ended by the application",
    ) -> int:
        """
        End a user's allocations, or a call's (those C{predicate} picks),
        at once: their relay sockets close and observers are told.

        @see: L{AllocationRegistry.endAllocations
            <turnrelay.turn.registry.AllocationRegistry.endAllocations>}
        @return: how many allocations were ended.
        """
        return self.server.registry.endAllocations(username, predicate, reason)

    def listeningAddresses(self) -> List[Tuple[str, TransportAddress]]:
        """
        @return: C{(transport, address)} for every open listener.
        """
        addresses = []
        for child in self:
            if isinstance(child, ListenerService) and child.address is not None:
                addresses.append((child.listener.transport, child.address))
        return addresses


def mintFromConfig(config: RelayConfig, userID: str, ttl: float, now: float) -> Tuple[str, str]:
    """
    Mint a TURN REST API credential with the first static-auth-secret of
    C{config}, valid C{ttl} seconds (at most rest-max-ttl) from C{now}.

    @return: C{(username, password)}.
    @raise ValueError: no static-auth-secret is configured.
    """
    if not config.authSecrets:
        raise ValueError("no static-auth-secret is configured: set one to mint credentials")
    secret = config.authSecrets[0].encode()
    return mintRESTCredential(secret, userID, min(ttl, config.restMaxTTL), now)


def _credentials(
    config: RelayConfig, reactor: Any, application: Optional[ICredentialStore] = None
) -> ChainedCredentials:
    stores: List[ICredentialStore] = [StaticCredentials(config.realm, dict(config.users))]
    if application is not None:
        stores.insert(0, application)
    if config.authSecrets:
        secrets = [secret.encode() for secret in config.authSecrets]
        stores.append(RESTSecrets(reactor, secrets, config.restMaxTTL))
    return ChainedCredentials(stores)


def _peerPolicy(config: RelayConfig) -> PeerPolicy:
    # Our listening addresses are never peers.  The relay addresses are: two
    # clients of this server relay to each other through them; the
    # controller tells the policy which they are, and the policy keeps peers
    # on them inside the relay port range (and ignores wildcards here).
    # RelayService.startService adds the ports of every listening socket.
    # The demo page's two peer connections meet on loopback relay addresses.
    listeners = [
        *config.listeners,
        config.manhole,
        config.metrics,
        config.credentialsEndpoint,
        config.demoPage,
    ]
    return PeerPolicy(
        allow=config.allowPeers,
        deny=config.denyPeers,
        allowLoopback=config.allowLoopbackPeers,
        ownAddresses=[listener.interface for listener in listeners if listener is not None],
        allowLoopbackRelays=config.demoPage is not None,
    )


def _updateStreamLimits(limits: StreamLimits, config: RelayConfig) -> None:
    # Connections already open keep the timers they were given.
    limits.idleTimeout = config.streamIdleTimeout
    limits.handshakeTimeout = config.tlsHandshakeTimeout
    limits.allocateTimeout = config.streamAllocateTimeout
    limits.maxUnallocated = config.maxUnallocatedConnections
    limits.maxUnallocatedPerSource = config.maxUnallocatedPerSource
    limits.maxUnsent = config.streamMaxUnsent


def _limits(config: RelayConfig) -> RelayLimits:
    return RelayLimits(
        maxLifetime=config.maxLifetime,
        userQuota=config.userQuota,
        totalQuota=config.totalQuota,
        maxPermissions=config.maxPermissions,
        maxChannels=config.maxChannels,
        bandwidth=config.bandwidth,
        maxPeerConnections=config.maxPeerConnections,
        maxChannelNumber=(
            CHANNEL_NUMBER_MAX if config.channelNumbers == "rfc8656" else CHANNEL_NUMBER_MAX_RFC5766
        ),
    )


def makeTURNServer(
    config: RelayConfig,
    reactor: Any,
    logLevels: Optional[LogLevels] = None,
    relayPorts: Optional[Tuple[int, int]] = None,
) -> TURNServer:
    """
    Build the controller and everything it owns from a configuration.

    @param logLevels: the relay's log levels; by default its own, at
        C{log-level}.
    @param relayPorts: the first and last relay port this relay binds, when
        it is one worker's slice of C{min-port}-C{max-port}.
    """
    if logLevels is None:
        logLevels = LogLevels()
        logLevels.setLevel(config.logLevel)
    relayIP = config.effectiveRelayIP()
    if relayIP is None:
        logLevels.logger(__name__).error(
            "no relay-ip is set and no listener has a specific IPv4 address: "
            "every Allocate will be refused with 508; set relay-ip to relay"
        )
    relayIP6 = config.effectiveRelayIP6()
    authenticator = LongTermAuthenticator(
        config.realm,
        _credentials(config, reactor),
        NonceMinter(reactor, lifetime=config.nonceLifetime),
    )
    server = TURNServer(
        clock=reactor,
        software=config.software,
        authenticator=authenticator,
        peerPolicy=_peerPolicy(config),
        relayPorts=(
            _relayPorts(reactor, relayIP, config, relayPorts, logLevels) if relayIP else None
        ),
        relayPorts6=(
            _relayPorts(reactor, relayIP6, config, relayPorts, logLevels) if relayIP6 else None
        ),
        limits=_limits(config),
        externalIP=config.externalIP,
        logLevels=logLevels,
    )
    server.alternateServers = config.alternateServers
    server.sourceLimit = SourceRateLimiter(
        reactor, config.unauthenticatedRate, config.unauthenticatedBurst, config.sourceTableSize
    )
    server.refusalSummaryInterval = config.refusalSummaryInterval
    return server


def _relayPorts(
    reactor: Any,
    relayIP: str,
    config: RelayConfig,
    relayPorts: Optional[Tuple[int, int]],
    logLevels: LogLevels,
) -> RelayPortPool:
    low, high = relayPorts or (config.minPort, config.maxPort)
    pool = RelayPortPool(reactor, relayIP, low, high, logLevels=logLevels)
    pool.groupPorts = range(config.minPort, config.maxPort + 1)
    return pool


def makeRelayService(
    config: RelayConfig,
    reactor: Any,
    serviceClass: Type[RelayService] = RelayService,
    credentials: Optional[ICredentialStore] = None,
    observers: Sequence[IAllocationObserver] = (),
    peerFilter: Optional[PeerFilter] = None,
    logLevels: Optional[LogLevels] = None,
    inherited: Mapping[int, int] = {},
    relayPorts: Optional[Tuple[int, int]] = None,
) -> RelayService:
    """
    Build a relay from a configuration.

    @param config: a validated configuration.
    @param reactor: the reactor to listen, relay and schedule with.
    @param serviceClass: the L{RelayService} (or subclass: twistd's, in
        L{turnrelay.tap}, sets up the log file) to build.
    @param credentials: the embedding application's own credential store
        (an L{ICredentialStore}, or an L{IClientCredentialStore
        <turnrelay.auth.credentials.IClientCredentialStore>} to see the
        client's address and transport), asked before the configured
        users and secrets, and kept when the configuration is reloaded.
    @param observers: L{IAllocationObserver}s told of every allocation's
        life (see L{AllocationRegistry.addObserver
        <turnrelay.turn.registry.AllocationRegistry.addObserver>}).
    @param peerFilter: C{peerFilter(allocation, peer)}, asked after the
        built-in peer policy, returns a reason to refuse the peer or
        L{None} (see L{TURNServer<turnrelay.turn.server.TURNServer>}).
    @param logLevels: the relay's log levels (L{RelayService.logLevels}):
        by default its own, so that another relay in the process, or the
        application, keeps its own level; set to C{log-level} here.
    @param inherited: sockets to serve rather than open, by the index of
        their listener in C{config.listeners}: descriptors of sockets bound
        (and listening, for TCP) to its address, as a worker process gets
        them from its control process.
    @param relayPorts: the first and last relay port to bind, when this
        relay is one worker's slice of C{min-port}-C{max-port} (the whole
        range is still the relay's, for the peer policy).
    @return: a service to start, or to attach to a parent service.
    """
    if logLevels is None:
        logLevels = LogLevels()
    logLevels.setLevel(config.logLevel)
    server = makeTURNServer(config, reactor, logLevels, relayPorts)
    if credentials is not None:
        server.authenticator.credentials = _credentials(config, reactor, credentials)
    for observer in observers:
        server.registry.addObserver(observer)
    server.peerFilter = peerFilter
    server.descriptors = DescriptorBudget(
        reactor, reserve=config.descriptorReserve, logLevels=logLevels
    )
    for pool in (server.relayPorts, server.relayPorts6):
        if pool is not None:
            pool.descriptors = server.descriptors
    tlsOptions = None
    if any(listener.transport == "tls" for listener in config.listeners):
        if config.tlsCert is None or config.tlsKey is None:
            raise ConfigError(
                "a tls listener needs a certificate: set tls-cert and tls-key "
                "(PEM files), or remove the tls listener"
            )
        try:
            tlsOptions = ReloadingTLSOptions(
                reactor,
                config.tlsCert,
                config.tlsKey,
                config.tlsChain,
                config.tlsCheckInterval,
                logLevels,
            )
        except ValueError as e:
            raise ConfigError(f"tls-cert: {e}") from None
    relay = serviceClass(config, server, tlsOptions, reactor)
    relay.applicationCredentials = credentials
    streamLimits = StreamLimits(reactor, descriptors=server.descriptors)
    _updateStreamLimits(streamLimits, config)
    relay.streamLimits = streamLimits
    # The kernel path loads (or says why not) when the relay starts, so
    # that a relay built only to check a configuration loads nothing.
    relay.offload = KernelPathService(
        server,
        reactor,
        config.offload,
        config.offloadInterfaces,
        logLevels,
        addresses=[listener.interface for listener in config.listeners]
        + [pool.relayIP for pool in server.pools.values()],
    )
    relay.offload.setServiceParent(relay)
    if config.redis is not None:
        # Imported only for a fleet: txredisapi's import costs the others.
        from turnrelay.fleet.node import FleetNode

        relay.fleet = FleetNode(relay, config, reactor, logLevels)
        relay.fleet.setServiceParent(relay)
        server.sharedQuota = relay.fleet.quota
    for index, listener in enumerate(config.listeners):
        service = ListenerService(
            reactor,
            listener,
            server,
            streamLimits,
            tlsOptions,
            config.proxyFrom,
            inherited.get(index),
        )
        service.setServiceParent(relay)
    attachSideDoors(relay, config, reactor)
    return relay


def attachSideDoors(relay: Any, config: RelayConfig, reactor: Any) -> None:
    """
    Attach the operator's side doors that C{config} asks for to C{relay}:
    the admin console, metrics, the credentials endpoint, the demo page,
    the control socket.

    @param relay: a L{RelayService}, or the control process of workers:
        either says how it is administered (C{adminConsole},
        C{controlFactory}, C{metricsPage}).
    """
    if config.manhole is not None:
        from turnrelay.admin.manhole import makeManholeService

        makeManholeService(relay, config, reactor).setServiceParent(relay)
    if config.metrics is not None:
        from turnrelay.admin.metrics import makeMetricsService

        makeMetricsService(relay, config, reactor).setServiceParent(relay)
    if config.credentialsEndpoint is not None:
        from turnrelay.admin.credentials import makeCredentialsService

        makeCredentialsService(relay, config, reactor).setServiceParent(relay)
    if config.demoPage is not None:
        from turnrelay.admin.demo import makeDemoService

        makeDemoService(relay, config, reactor).setServiceParent(relay)
    if config.controlSocket is not None:
        from turnrelay.admin.control import makeControlService

        makeControlService(relay, config, reactor).setServiceParent(relay)
