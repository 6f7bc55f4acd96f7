# -*- test-case-name: tests.test_admin_metrics -*-
"""
The Prometheus endpoint: C{GET /metrics} on its own HTTP port.

Every figure is read from the running relay when Prometheus scrapes
(L{turnrelay.service.RelayService.stats} and the controller's counters), so
the values are live, allocations included, and the data path pays nothing
for them.  The metrics live in a registry of their own, never in
C{prometheus_client}'s global one, so an embedding application can export
its own metrics side by side.

Labels are drawn from small fixed sets (transport, address family,
direction, cause, method, response code, authentication failure reason):
never a username or an address, which would make one series per REST
credential or client.

The same listener answers C{GET /healthz}, for load balancers and
orchestrators: 200 while the relay serves (running, every listener bound,
not draining), 503 otherwise, with the reason in one line of text.

This module also holds L{AdminWebService}, the quiet HTTP listener that the
credentials endpoint (L{turnrelay.admin.credentials}) uses too.
"""

from __future__ import annotations

import platform
from typing import Any, Dict, Iterable, Iterator, List, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Request

import turnrelay
import twisted
from turnrelay.admin.web import AdminWebService, PagesRoot, QuietSite
from turnrelay.config import RelayConfig
from turnrelay.systemd import whyNotReady
from turnrelay.turn.server import CHALLENGES

# The transports and families every allocation gauge is reported for, zero
# included, so that a series exists before the first allocation.
_FAMILIES = ("ipv4", "ipv6")

# UsageTotals field -> (metric, label value).
_RELAYED = (
    ("packetsToPeer", "packets", "to_peer"),
    ("packetsFromPeer", "packets", "from_peer"),
    ("bytesToPeer", "bytes", "to_peer"),
    ("bytesFromPeer", "bytes", "from_peer"),
)
_DROPPED = (
    ("droppedPermission", "permission"),
    ("droppedInvalid", "invalid"),
    ("droppedBandwidth", "bandwidth"),
    ("droppedCongestion", "congestion"),
)

# The requests the peer policy refuses with 403 (RFC 8656 sections 10-12,
# RFC 6062 section 5.2); Allocate's 403 means draining instead.
_PEER_METHODS = ("CREATE_PERMISSION", "CHANNEL_BIND", "CONNECT")
# Why requests from unauthenticated sources are refused (TURNServer.refusals),
# each reported, zero included.
_REFUSAL_REASONS = (
    "amplification",
    "bad-integrity",
    "bad-realm",
    "bid-down",
    "expired",
    "malformed",
    "missing-attribute",
    "rate-limited",
    "unknown-user",
)
QUOTA_CODE = "486"
# The label values of the resource limits, reported at zero too.
STREAM_LIMITS = (
    "per-source",
    "shed",
    "allocate-timeout",
    "idle",
    "handshake-timeout",
    "unsent",
    "descriptors",
    "malformed",
    "proxy-header",
    "proxy-timeout",
    "proxy-source",
)
PEER_REFUSALS = ("permission", "max-peer-connections", "descriptors")
DESCRIPTOR_KINDS = ("accept", "allocate", "connect", "peer")
# The states of a fleet's nodes, each reported, zero included.
FLEET_STATES = ("serving", "draining")


def _counters(
    name: str, documentation: str, label: str, values: Iterable[str], counts: Dict[str, int]
) -> CounterMetricFamily:
    """
    A counter family with one label, every value of C{values} reported (at
    zero until it counts) so that series exist before the first event.
    """
    family = CounterMetricFamily(name, documentation, labels=[label])
    for labelValue in values:
        family.add_metric([labelValue], counts.get(labelValue, 0))
    return family


PEER_REFUSED_CODE = "403"


class RelayCollector(Collector):
    """
    Turns a relay's live figures into Prometheus metric families at each
    scrape.

    @ivar relay: the L{turnrelay.service.RelayService} to report on.
    """

    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def collect(self) -> Iterable[Metric]:
        """
        Read the relay now and describe it.

        @return: every C{turnrelay_} metric family.
        """
        relay = self.relay
        stats: Dict[str, Any] = relay.stats()
        transports = sorted(
            {listener.transport for listener in relay.config.listeners}
            | {transport for transport, _ in stats["allocationsByTransportAndFamily"]}
            | set(stats["relayed"])
        )
        yield from self._state(stats, transports)
        yield from self._traffic(stats, transports)
        yield from self._resources(stats)
        yield from self._requests(stats)
        yield from self._refusals(stats)
        yield from self._tls()
        yield from self._build()
        fleet = stats.get("fleet")
        if fleet is not None:
            yield from self._fleet(fleet)

    def _fleet(self, fleet: Dict[str, Any]) -> Iterator[Metric]:
        # Read with defaults: each part of the fleet adds its own figures,
        # and a node may run without some of them.
        yield GaugeMetricFamily(
            "turnrelay_redis_up",
            "1 while the fleet's Redis server answers, else 0.",
            1 if fleet.get("up") else 0,
        )
        failures = CounterMetricFamily(
            "turnrelay_redis_failures_total",
            "Redis commands that failed or timed out, by what they were for.",
            labels=["operation"],
        )
        for operation, count in sorted((fleet.get("failures") or {}).items()):
            failures.add_metric([operation], count)
        yield failures
        yield CounterMetricFamily(
            "turnrelay_redis_reconnects_total",
            "Times Redis answered again after it did not (the first time included).",
            fleet.get("reconnects", 0),
        )
        nodes = GaugeMetricFamily(
            "turnrelay_fleet_nodes",
            "Nodes of the fleet by state (serving, draining), this one included, as read at "
            "the last heartbeat.",
            labels=["state"],
        )
        byState: Dict[str, int] = fleet.get("nodesByState") or {}
        for state in sorted(set(FLEET_STATES) | set(byState)):
            nodes.add_metric([state], byState.get(state, 0))
        yield nodes
        if "usagePendingUsers" in fleet:
            yield GaugeMetricFamily(
                "turnrelay_fleet_usage_pending",
                "Users whose usage waits in memory to be added in Redis (one per day).",
                fleet["usagePendingUsers"],
            )
            yield CounterMetricFamily(
                "turnrelay_fleet_usage_dropped_allocations_total",
                "Allocations whose usage was never added in Redis: too many users waited "
                "while it failed.",
                fleet.get("usageDropped", 0),
            )

    def _build(self) -> Iterator[Metric]:
        info = InfoMetricFamily(
            "turnrelay_build", "The turnrelay, Python and Twisted versions running."
        )
        info.add_metric(
            [],
            {
                "version": turnrelay.__version__,
                "python": platform.python_version(),
                "twisted": twisted.__version__,
            },
        )
        yield info
        yield GaugeMetricFamily(
            "turnrelay_ready",
            "1 while the relay serves (running, every listener bound, not draining), else 0; "
            "/healthz says the same.",
            1 if whyNotReady(self.relay) is None else 0,
        )

    def _tls(self) -> Iterator[Metric]:
        tls = self.relay.tlsOptions
        yield CounterMetricFamily(
            "turnrelay_tls_reloads_total",
            "Times new TLS certificate files were put in service (files read again unchanged "
            "do not count).",
            0 if tls is None else tls.reloads,
        )
        yield CounterMetricFamily(
            "turnrelay_tls_reload_failures_total",
            "Times changed TLS certificate files could not be used (the old certificate "
            "stayed in service; the log says why).",
            0 if tls is None else tls.reloadFailures,
        )
        if tls is not None:
            yield GaugeMetricFamily(
                "turnrelay_tls_certificate_expiry_timestamp_seconds",
                "When the TLS certificate in service expires (notAfter), in Unix time.",
                tls.certificate.not_valid_after_utc.timestamp(),
            )

    def _state(self, stats: Dict[str, Any], transports: List[str]) -> Iterator[Metric]:
        allocations = GaugeMetricFamily(
            "turnrelay_allocations",
            "Live allocations by client transport and relayed address family "
            "(a dual allocation counts once in each family).",
            labels=["transport", "family"],
        )
        byTransportAndFamily = stats["allocationsByTransportAndFamily"]
        for transport in transports:
            for family in _FAMILIES:
                allocations.add_metric(
                    [transport, family], byTransportAndFamily.get((transport, family), 0)
                )
        yield allocations
        ended = CounterMetricFamily(
            "turnrelay_allocations_ended_total",
            "Allocations ended (deleted, expired or closed), by client transport.",
            labels=["transport"],
        )
        endedTotals = self.relay.server.registry.ended
        for transport in transports:
            totals = endedTotals.get(transport)
            ended.add_metric([transport], 0 if totals is None else totals.allocations)
        yield ended
        yield GaugeMetricFamily(
            "turnrelay_permissions", "Live permissions, all allocations.", stats["permissions"]
        )
        yield GaugeMetricFamily(
            "turnrelay_channels", "Live channel bindings, all allocations.", stats["channels"]
        )
        yield GaugeMetricFamily(
            "turnrelay_tcp_peer_connections",
            "Live RFC 6062 peer connections of TCP allocations.",
            stats["tcpPeerConnections"],
        )
        yield GaugeMetricFamily(
            "turnrelay_draining",
            "1 while the relay is draining (no new allocations), else 0.",
            1 if stats["draining"] else 0,
        )
        yield GaugeMetricFamily(
            "turnrelay_start_time_seconds",
            "When the relay was started, in Unix time.",
            self.relay.startedAt,
        )

    def _traffic(self, stats: Dict[str, Any], transports: List[str]) -> Iterator[Metric]:
        relayed = stats["relayed"]
        families = {
            unit: CounterMetricFamily(
                f"turnrelay_relayed_{unit}_total",
                f"Application data relayed, in {unit}, by client transport and direction "
                "(live and ended allocations).",
                labels=["transport", "direction"],
            )
            for unit in ("packets", "bytes")
        }
        dropped = CounterMetricFamily(
            "turnrelay_dropped_packets_total",
            "Packets not relayed, by client transport and cause: no permission, not valid "
            "(unbound channel, short frame), over the bandwidth cap, congestion.",
            labels=["transport", "cause"],
        )
        for transport in transports:
            counts = relayed.get(transport, {})
            for field, unit, direction in _RELAYED:
                families[unit].add_metric([transport, direction], counts.get(field, 0))
            for field, cause in _DROPPED:
                dropped.add_metric([transport, cause], counts.get(field, 0))
        yield families["packets"]
        yield families["bytes"]
        yield dropped
        yield from self._offload(stats.get("offload") or {})

    def _offload(self, offload: Dict[str, Any]) -> Iterator[Metric]:
        # Offloaded packets are in turnrelay_relayed_packets_total already
        # (the kernel's counters are added to the allocations'): this says
        # how much of it the kernel carried.
        yield GaugeMetricFamily(
            "turnrelay_offload_active",
            "1 while the kernel fast path relays UDP ChannelData (offload), else 0.",
            1 if offload.get("mode", "off") != "off" else 0,
        )
        offloaded = CounterMetricFamily(
            "turnrelay_offloaded_packets_total",
            "Packets the kernel fast path relayed, by direction (also counted in "
            "turnrelay_relayed_packets_total).",
            labels=["direction"],
        )
        offloaded.add_metric(["to_peer"], offload.get("packetsToPeer", 0))
        offloaded.add_metric(["from_peer"], offload.get("packetsFromPeer", 0))
        yield offloaded

    def _resources(self, stats: Dict[str, Any]) -> Iterator[Metric]:
        streams = stats["streams"]
        yield GaugeMetricFamily(
            "turnrelay_unallocated_connections",
            "TCP and TLS connections open without an allocation.",
            streams["unallocated"],
        )
        yield GaugeMetricFamily(
            "turnrelay_unallocated_sources",
            "Sources (IPv4 addresses, IPv6 /64s) holding connections without an allocation.",
            streams["sources"],
        )
        yield _counters(
            "turnrelay_stream_limit_closures_total",
            "TCP and TLS connections closed or refused by a limit, by limit: per-source, "
            "shed (to make room), allocate-timeout, idle, handshake-timeout, unsent "
            "(did not read), descriptors, malformed, proxy-header and proxy-timeout (no "
            "valid PROXY header in time on a proxy=yes listener), proxy-source (not from "
            "proxy-from).",
            "limit",
            STREAM_LIMITS,
            streams["closed"],
        )
        yield _counters(
            "turnrelay_peer_connection_refusals_total",
            "Peers' TCP connections to relayed addresses refused, by reason.",
            "reason",
            PEER_REFUSALS,
            stats["peerConnectionsRefused"],
        )
        descriptors = stats["descriptors"]
        if descriptors is None:
            return
        yield GaugeMetricFamily(
            "turnrelay_descriptors_ceiling",
            "Open file descriptors at which new work is refused: the limit less "
            "descriptor-reserve.",
            descriptors["limit"] - descriptors["reserve"],
        )
        yield GaugeMetricFamily(
            "turnrelay_descriptors_exhausted",
            "1 while listeners are paused for want of file descriptors, else 0.",
            1 if descriptors["exhausted"] else 0,
        )
        yield _counters(
            "turnrelay_descriptor_refusals_total",
            "New work refused to keep descriptor-reserve free, by kind: accept, "
            "allocate, connect, peer.",
            "kind",
            DESCRIPTOR_KINDS,
            descriptors["refused"],
        )
        yield CounterMetricFamily(
            "turnrelay_out_of_descriptors_total",
            "Times the system refused a descriptor (EMFILE, ENFILE).",
            descriptors["outOfDescriptors"],
        )

    def _refusals(self, stats: Dict[str, Any]) -> Iterator[Metric]:
        refusals: Dict[str, int] = stats["refusals"]
        refused = CounterMetricFamily(
            "turnrelay_refused_total",
            "Requests from sources not authenticated refused, by reason: failed "
            "authentication (but the first 401 and 438), malformed, and over UDP the "
            "answers not sent, over the per-source rate (rate-limited) or more than "
            "three times the request (amplification).",
            labels=["reason"],
        )
        for reason in sorted(set(_REFUSAL_REASONS) | set(refusals)):
            refused.add_metric([reason], refusals.get(reason, 0))
        yield refused
        yield GaugeMetricFamily(
            "turnrelay_unauthenticated_sources",
            "Sources (IPv4 addresses, IPv6 /64s) the per-source limit on unauthenticated "
            "UDP answers remembers now.",
            stats["unauthenticatedSources"],
        )
        config = self.relay.config
        yield GaugeMetricFamily(
            "turnrelay_unauthenticated_sources_max",
            "The most sources it remembers (source-table-size).",
            config.sourceTableSize,
        )
        yield GaugeMetricFamily(
            "turnrelay_unauthenticated_rate",
            "Unauthenticated UDP answers per second one source may get (unauthenticated-rate).",
            config.unauthenticatedRate,
        )
        yield GaugeMetricFamily(
            "turnrelay_unauthenticated_burst",
            "Unauthenticated UDP answers one source may get at once (unauthenticated-burst).",
            config.unauthenticatedBurst,
        )

    def _requests(self, stats: Dict[str, Any]) -> Iterator[Metric]:
        requests: Dict[Tuple[str, str], int] = stats["requests"]
        responses = CounterMetricFamily(
            "turnrelay_requests_total",
            "STUN and TURN requests answered, by method and response code "
            '("success" or the error code).',
            labels=["method", "code"],
        )
        for (method, outcome), count in sorted(requests.items()):
            responses.add_metric([method.lower(), outcome], count)
        yield responses
        yield CounterMetricFamily(
            "turnrelay_quota_rejections_total",
            "Allocations refused for a user or total quota (486).",
            sum(count for (_, code), count in requests.items() if code == QUOTA_CODE),
        )
        peer = CounterMetricFamily(
            "turnrelay_peer_rejections_total",
            "Requests refused by the peer policy (403), by method.",
            labels=["method"],
        )
        for method in _PEER_METHODS:
            peer.add_metric([method.lower()], requests.get((method, PEER_REFUSED_CODE), 0))
        yield peer
        failures = CounterMetricFamily(
            "turnrelay_auth_failures_total",
            "Requests whose long-term credentials were refused, by reason; the challenges "
            "every client meets (its first 401, a 438 for a stale nonce) are not failures "
            "(turnrelay_auth_challenges_total).",
            labels=["reason"],
        )
        challenges = CounterMetricFamily(
            "turnrelay_auth_challenges_total",
            "Challenges sent with a new nonce, by reason: no-integrity (the first 401 of every "
            "client) and stale-nonce (438).",
            labels=["reason"],
        )
        counts: Dict[str, int] = stats["authFailures"]
        for reason in sorted(CHALLENGES):
            challenges.add_metric([reason], counts.get(reason, 0))
        for reason, count in sorted(counts.items()):
            if reason not in CHALLENGES:
                failures.add_metric([reason], count)
        yield failures
        yield challenges


def makeMetricsRegistry(relay: Any) -> CollectorRegistry:
    """
    A registry of a relay's metrics and its process's (CPU, memory, file
    descriptors, where the platform tells), separate from
    C{prometheus_client}'s global registry.

    @param relay: a L{turnrelay.service.RelayService}.
    """
    registry = CollectorRegistry()
    registry.register(RelayCollector(relay))
    ProcessCollector(registry=registry)
    return registry


class MetricsPage(Resource):
    """
    The exposition of one registry, in the format the scraper asks for
    (OpenMetrics, or Prometheus text format 0.0.4 by default).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        encode, contentType = choose_encoder(
            (request.getHeader(b"accept") or b"").decode("latin-1")
        )
        request.setHeader(b"content-type", contentType.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encode(self._registry)


class HealthPage(Resource):
    """
    C{/healthz}: 200 C{serving} while the relay serves, 503 with the reason
    (C{not ready: not running}, C{not ready: draining}, a listener that is
    not bound) otherwise.  Plain text, uncached.
    """

    isLeaf = True

    def __init__(self, relay: Any) -> None:
        super().__init__()
        self._relay = relay

    def render_GET(self, request: Request) -> bytes:
        reason = whyNotReady(self._relay)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if reason is None:
            return b"serving\n"
        request.setResponseCode(503)
        return f"not ready: {reason}\n".encode()


def makeMetricsService(relay: Any, config: RelayConfig, reactor: Any) -> AdminWebService:
    """
    Build the Prometheus endpoint of a relay: C{GET /metrics} and
    C{GET /healthz} on C{config.metrics}.

    @param relay: the L{turnrelay.service.RelayService} to report on.
    @param config: the configuration; C{metrics} says where to listen.
    @param reactor: the reactor to listen with.
    @return: an L{IService<twisted.application.service.IService>} named
        C{"metrics"}, to attach to the relay.
    """
    assert config.metrics is not None, "metrics is not configured"
    root = PagesRoot({b"metrics": relay.metricsPage(), b"healthz": HealthPage(relay)})
    site = QuietSite(root, reactor=reactor)
    return AdminWebService(reactor, config.metrics, site, "metrics")
