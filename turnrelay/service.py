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

from ipaddress import ip_address
from typing import Any, List, Optional, Tuple

from twisted.application.service import MultiService, Service
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.tls import TLSMemoryBIOFactory

from turnrelay.auth.credentials import (
    ChainedCredentials,
    ICredentialStore,
    RESTSecrets,
    StaticCredentials,
)
from turnrelay.auth.longterm import LongTermAuthenticator
from turnrelay.auth.nonce import NonceMinter
from turnrelay.config import ConfigError, ListenerConfig, RelayConfig
from turnrelay.logs import Logger, setLogLevel
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import CHANNEL_NUMBER_MAX, CHANNEL_NUMBER_MAX_RFC5766
from turnrelay.transports.stream import StreamLimits, STUNStreamFactory
from turnrelay.transports.tls import ReloadingTLSOptions
from turnrelay.transports.udp import STUNDatagramProtocol
from turnrelay.turn.policy import PeerPolicy
from turnrelay.turn.relay import RelayPortPool
from turnrelay.turn.server import RelayLimits, TURNServer

log = Logger()

# Large enough for any STUN message or ChannelData frame.
MAX_DATAGRAM = 65535


class ListenerService(Service):
    """
    Keeps one listening socket open while the service runs.

    Listening happens synchronously in L{startService}, so a port that is in
    use stops twistd (or the embedder's startup) with the OS's reason.

    @ivar listener: what to listen on.
    @ivar port: the listening port while running, else L{None}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listener: ListenerConfig,
        server: TURNServer,
        streamLimits: Optional[StreamLimits] = None,
        tlsOptions: Optional[ReloadingTLSOptions] = None,
    ) -> None:
        """
        @param streamLimits: the limits shared by TCP and TLS listeners.
        @param tlsOptions: the TLS options of a C{tls} listener.
        """
        self._reactor = reactor
        self.listener = listener
        self._server = server
        self._streamLimits = streamLimits
        self._tlsOptions = tlsOptions
        self.port: Optional[IListeningPort] = None

    def startService(self) -> None:
        listener = self.listener
        if listener.transport == "udp":
            self.port = self._reactor.listenUDP(
                listener.port,
                STUNDatagramProtocol(self._server),
                interface=listener.interface,
                maxPacketSize=MAX_DATAGRAM,
            )
        else:
            factory: Any = STUNStreamFactory(self._server, listener.transport, self._streamLimits)
            if listener.transport == "tls":
                assert self._tlsOptions is not None
                factory = TLSMemoryBIOFactory(self._tlsOptions, False, factory)
            self.port = self._reactor.listenTCP(
                listener.port, factory, interface=listener.interface
            )
        super().startService()
        self.log.info(
            "listening for {transport} on {address}",
            transport=listener.transport,
            address=self.address,
        )

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    @property
    def address(self) -> Optional[TransportAddress]:
        """
        The bound address while listening (the real port when 0 was asked).
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        return TransportAddress(host.host, host.port)  # type: ignore[attr-defined]


class RelayService(MultiService):
    """
    A TURN relay: the controller and its listeners.

    @ivar config: the configuration it was built from.
    @ivar server: the controller all listeners share.
    """

    def __init__(
        self,
        config: RelayConfig,
        server: TURNServer,
        tlsOptions: Optional[ReloadingTLSOptions] = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.server = server
        self.tlsOptions = tlsOptions

    def startService(self) -> None:
        super().startService()
        if self.tlsOptions is not None:
            self.tlsOptions.startWatching()

    def stopService(self) -> Any:
        if self.tlsOptions is not None:
            self.tlsOptions.stopWatching()
        # Allocations first, while their clients can still be told nothing
        # more; then the listeners.  Done when every socket is closed.
        relaysClosed = self.server.stop()
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

    def listeningAddresses(self) -> List[Tuple[str, TransportAddress]]:
        """
        @return: C{(transport, address)} for every open listener.
        """
        addresses = []
        for child in self:
            if isinstance(child, ListenerService) and child.address is not None:
                addresses.append((child.listener.transport, child.address))
        return addresses


def makeTURNServer(config: RelayConfig, reactor: Any) -> TURNServer:
    """
    Build the controller and everything it owns from a configuration.

    @raise ConfigError: the configuration cannot be served (no relay IP).
    """
    relayIP = config.effectiveRelayIP()
    if relayIP is None:
        log.error(
            "no relay-ip is set and no listener has a specific IPv4 address: "
            "every Allocate will be refused with 508; set relay-ip to relay"
        )
    stores: List[ICredentialStore] = [StaticCredentials(config.realm, dict(config.users))]
    if config.authSecrets:
        secrets = [secret.encode() for secret in config.authSecrets]
        stores.append(RESTSecrets(reactor, secrets, config.restMaxTTL))
    credentials = ChainedCredentials(stores)
    authenticator = LongTermAuthenticator(
        config.realm, credentials, NonceMinter(reactor, lifetime=config.nonceLifetime)
    )
    # Our listening addresses are never peers.  The relay addresses are: two
    # clients of this server relay to each other through them, and the
    # controller keeps peers on them inside the relay port range.
    relayIP6 = config.effectiveRelayIP6()
    relayHosts = {relayIP, relayIP6, config.externalIP}
    ownAddresses = [
        listener.interface
        for listener in config.listeners
        if listener.interface not in relayHosts
        and not ip_address(listener.interface).is_unspecified
    ]
    policy = PeerPolicy(
        allow=config.allowPeers,
        deny=config.denyPeers,
        allowLoopback=config.allowLoopbackPeers,
        ownAddresses=ownAddresses,
    )
    limits = RelayLimits(
        maxLifetime=config.maxLifetime,
        userQuota=config.userQuota,
        totalQuota=config.totalQuota,
        maxPermissions=config.maxPermissions,
        maxChannels=config.maxChannels,
        bandwidth=config.bandwidth,
        maxChannelNumber=(
            CHANNEL_NUMBER_MAX if config.channelNumbers == "rfc8656" else CHANNEL_NUMBER_MAX_RFC5766
        ),
    )
    return TURNServer(
        clock=reactor,
        software=config.software,
        authenticator=authenticator,
        peerPolicy=policy,
        relayPorts=(
            RelayPortPool(reactor, relayIP, config.minPort, config.maxPort) if relayIP else None
        ),
        relayPorts6=(
            RelayPortPool(reactor, relayIP6, config.minPort, config.maxPort) if relayIP6 else None
        ),
        limits=limits,
        externalIP=config.externalIP,
    )


def makeRelayService(config: RelayConfig, reactor: Any) -> RelayService:
    """
    Build a relay from a configuration.

    @param config: a validated configuration.
    @param reactor: the reactor to listen, relay and schedule with.
    @return: a service to start, or to attach to a parent service.
    """
    setLogLevel(config.logLevel)
    server = makeTURNServer(config, reactor)
    tlsOptions = None
    if any(listener.transport == "tls" for listener in config.listeners):
        if config.tlsCert is None or config.tlsKey is None:
            raise ConfigError(
                "a tls listener needs a certificate: set tls-cert and tls-key "
                "(PEM files), or remove the tls listener"
            )
        try:
            tlsOptions = ReloadingTLSOptions(
                reactor, config.tlsCert, config.tlsKey, config.tlsChain, config.tlsCheckInterval
            )
        except ValueError as e:
            raise ConfigError(f"tls-cert: {e}") from None
    relay = RelayService(config, server, tlsOptions)
    streamLimits = StreamLimits(
        reactor,
        idleTimeout=config.streamIdleTimeout,
        handshakeTimeout=config.tlsHandshakeTimeout,
        maxUnallocated=config.maxUnallocatedConnections,
    )
    for listener in config.listeners:
        service = ListenerService(reactor, listener, server, streamLimits, tlsOptions)
        service.setServiceParent(relay)
    return relay
