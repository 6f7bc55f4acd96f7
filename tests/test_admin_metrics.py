"""
The Prometheus endpoint (L{turnrelay.admin.metrics}): a relay on a fake
reactor with traffic driven through its controller, scraped over an HTTP
connection on a string transport; and one scrape over real loopback.
"""

from __future__ import annotations

import ipaddress
import os
import platform
from typing import Any, Dict, FrozenSet, Tuple

import attr
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

import turnrelay
import twisted
from tests._assertions import TURNTestCase
from tests._logs import LogRecorder
from tests._relays import (
    CLIENT_HOST,
    DENIED_PEER,
    PEER_A,
    FakeRelay,
    httpRequest,
    makeCertificate,
)
from tests._session import TURNClient
from tests._timing import reactor
from turnrelay.admin.metrics import (
    DESCRIPTOR_KINDS,
    PEER_REFUSALS,
    STREAM_LIMITS,
    AdminWebService,
    makeMetricsService,
)
from turnrelay.config import ListenerConfig
from turnrelay.service import RelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import encodeChannelData
from turnrelay.stun.message import MessageClass, Method, STUNMessage
from turnrelay.testing import FakeClientLink

METRICS_PORT = 9641
PEER = PEER_A
STRANGER = TransportAddress("198.51.100.99", 5001)
SETTINGS: Dict[str, Any] = {
    "listen": ["udp:3478:interface=192.0.2.1", "tcp:3478:interface=192.0.2.1"],
    "user_quota": 1,
    "metrics": f"tcp:{METRICS_PORT}:interface=127.0.0.1",
}

# What each label may say: small fixed vocabularies, never a user or address.
LABEL_VALUES = {
    "transport": {"udp", "tcp", "tls"},
    "family": {"ipv4", "ipv6"},
    "direction": {"to_peer", "from_peer"},
    "cause": {"permission", "invalid", "bandwidth", "congestion"},
    "method": {
        "binding",
        "allocate",
        "refresh",
        "create_permission",
        "channel_bind",
        "connect",
        "connection_bind",
        "unknown",
    },
    "reason": {
        "no-integrity",
        "missing-attribute",
        "stale-nonce",
        "bid-down",
        "bad-realm",
        "unknown-user",
        "expired",
        "bad-integrity",
        "malformed",
        "rate-limited",
        "amplification",
        *PEER_REFUSALS,
    },
    "limit": set(STREAM_LIMITS),
    "kind": set(DESCRIPTOR_KINDS),
    # turnrelay_build_info's.
    "version": {turnrelay.__version__},
    "python": {platform.python_version()},
    "twisted": {twisted.__version__},
}

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


def parseScrape(text: str) -> Samples:
    """
    Parse an exposition in the Prometheus text format.

    @return: C{(sample name, labels) -> value}.
    """
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """
    @return: the value of one sample.
    """
    return samples[name, frozenset(labels.items())]


class MetricsTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.fake = FakeRelay(**SETTINGS).start(self)
        self.reactor = self.fake.reactor
        self.relay = self.fake.service
        self.site = next(
            factory for port, factory, _, _ in self.reactor.tcpServers if port == METRICS_PORT
        )

    def client(
        self, username: str = "alice", password: str = "alice-password", transport: str = "udp"
    ) -> TURNClient:
        return self.fake.client(username, password, transport=transport)

    def scrapeText(self, accept: bytes = b"") -> Tuple[Dict[bytes, bytes], str]:
        headers = [b"Accept: " + accept] if accept else []
        status, responseHeaders, body = httpRequest(self.site, b"GET", b"/metrics", headers)
        self.assertEqual(status, 200)
        return responseHeaders, body.decode("utf-8")

    def scrape(self) -> Samples:
        return parseScrape(self.scrapeText()[1])

    def channelData(self, client: TURNClient, payload: bytes, number: int = 0x4000) -> None:
        self.relay.server.channelDataReceived(encodeChannelData(number, payload), client.link)

    def traffic(self) -> TURNClient:
        """
        Alice allocates over UDP, binds a channel, is refused two denied
        peers and a second allocation (quota), and relays both ways; Bob
        allocates over TCP; someone gets the password wrong.

        @return: Alice.
        """
        alice = self.client()
        self.assertSuccess(alice.allocate())
        bind = [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, PEER)]
        self.assertSuccess(alice.request(Method.CHANNEL_BIND, bind))
        denied = [(A.XOR_PEER_ADDRESS, DENIED_PEER)]
        self.assertErrorCode(alice.request(Method.CREATE_PERMISSION, denied), 403)
        deniedBind = [(A.CHANNEL_NUMBER, 0x4001), (A.XOR_PEER_ADDRESS, DENIED_PEER)]
        self.assertErrorCode(alice.request(Method.CHANNEL_BIND, deniedBind), 403)
        self.assertSuccess(self.client("bob", "bob-password", "tcp").allocate())
        self.assertErrorCode(self.client().allocate(), 486)
        self.assertErrorCode(self.client(password="wrong").allocate(), 401)
        self.channelData(alice, b"hello")
        self.channelData(alice, b"world")
        self.channelData(alice, b"??", number=0x4005)
        port = self.fake.relayPort(alice)
        port.protocol.datagramReceived(b"back!!", (PEER.host, PEER.port))
        port.protocol.datagramReceived(b"nope", (STRANGER.host, STRANGER.port))
        self.assertEqual(alice.link.sent, [encodeChannelData(0x4000, b"back!!")])
        alice.link.sent.clear()
        return alice


class ScrapeTests(MetricsTestCase):
    """
    What a scrape says after traffic through the controller.
    """

    def test_allocationsPermissionsChannels(self) -> None:
        """
        Live allocations are counted by transport and family, with
        permissions and channels.
        """
        self.traffic()
        samples = self.scrape()
        self.assertEqual(value(samples, "turnrelay_allocations", transport="udp", family="ipv4"), 1)
        self.assertEqual(value(samples, "turnrelay_allocations", transport="tcp", family="ipv4"), 1)
        self.assertEqual(value(samples, "turnrelay_allocations", transport="udp", family="ipv6"), 0)
        self.assertEqual(value(samples, "turnrelay_permissions"), 1)
        self.assertEqual(value(samples, "turnrelay_channels"), 1)
        self.assertEqual(value(samples, "turnrelay_tcp_peer_connections"), 0)
        self.assertEqual(value(samples, "turnrelay_allocations_ended_total", transport="udp"), 0)

    def test_relayedAndDropped(self) -> None:
        """
        Relayed packets and bytes are counted by transport and direction, and
        dropped packets by cause.
        """
        self.traffic()
        samples = self.scrape()
        relayed = "turnrelay_relayed_packets_total"
        self.assertEqual(value(samples, relayed, transport="udp", direction="to_peer"), 2)
        self.assertEqual(value(samples, relayed, transport="udp", direction="from_peer"), 1)
        self.assertEqual(value(samples, relayed, transport="tcp", direction="to_peer"), 0)
        relayedBytes = "turnrelay_relayed_bytes_total"
        self.assertEqual(value(samples, relayedBytes, transport="udp", direction="to_peer"), 10)
        self.assertEqual(value(samples, relayedBytes, transport="udp", direction="from_peer"), 6)
        dropped = "turnrelay_dropped_packets_total"
        self.assertEqual(value(samples, dropped, transport="udp", cause="permission"), 1)
        self.assertEqual(value(samples, dropped, transport="udp", cause="invalid"), 1)
        self.assertEqual(value(samples, dropped, transport="udp", cause="bandwidth"), 0)
        self.assertEqual(value(samples, dropped, transport="udp", cause="congestion"), 0)

    def test_requestsAndRejections(self) -> None:
        """
        Responses are counted by method and code; quota (486) and peer-policy
        (403) refusals and authentication failures have their own counters.
        """
        self.traffic()
        samples = self.scrape()
        requests = "turnrelay_requests_total"
        self.assertEqual(value(samples, requests, method="allocate", code="success"), 2)
        self.assertEqual(value(samples, requests, method="allocate", code="401"), 5)
        self.assertEqual(value(samples, requests, method="allocate", code="486"), 1)
        self.assertEqual(value(samples, requests, method="channel_bind", code="success"), 1)
        self.assertEqual(value(samples, requests, method="channel_bind", code="403"), 1)
        self.assertEqual(value(samples, requests, method="create_permission", code="403"), 1)
        self.assertEqual(value(samples, "turnrelay_quota_rejections_total"), 1)
        peer = "turnrelay_peer_rejections_total"
        self.assertEqual(value(samples, peer, method="create_permission"), 1)
        self.assertEqual(value(samples, peer, method="channel_bind"), 1)
        self.assertEqual(value(samples, peer, method="connect"), 0)
        failures = "turnrelay_auth_failures_total"
        self.assertEqual(value(samples, failures, reason="bad-integrity"), 1)
        self.assertEqual(value(samples, "turnrelay_tls_reloads_total"), 0)

    def test_challengesAreNotFailures(self) -> None:
        """
        The first 401 of every client and a 438 for a stale nonce are
        challenges, counted apart from authentication failures.
        """
        self.traffic()
        samples = self.scrape()
        challenges = "turnrelay_auth_challenges_total"
        self.assertEqual(value(samples, challenges, reason="no-integrity"), 4)
        self.assertEqual(value(samples, challenges, reason="stale-nonce"), 0)
        failures = {
            dict(labels)["reason"]
            for name, labels in samples
            if name == "turnrelay_auth_failures_total"
        }
        self.assertEqual(failures, {"bad-integrity"})

    def test_buildInfo(self) -> None:
        """
        turnrelay_build_info says which turnrelay, Python and Twisted run.
        """
        samples = self.scrape()
        labels = {
            "version": turnrelay.__version__,
            "python": platform.python_version(),
            "twisted": twisted.__version__,
        }
        self.assertEqual(value(samples, "turnrelay_build_info", **labels), 1)
        self.assertEqual(value(samples, "turnrelay_ready"), 1)

    def test_resourceLimits(self) -> None:
        """
        Connections without an allocation, what the stream limits closed,
        refused peers' connections and the descriptor budget are reported,
        every label at zero before it counts.
        """
        samples = self.scrape()
        closures = "turnrelay_stream_limit_closures_total"
        self.assertEqual(value(samples, closures, limit="shed"), 0)
        self.assertEqual(value(samples, "turnrelay_unallocated_connections"), 0)
        limits = self.relay.streamLimits
        assert limits is not None
        limits.closed["shed"] += 2
        self.relay.server.peerConnectionsRefused["max-peer-connections"] += 3
        descriptors = self.relay.server.descriptors
        assert descriptors is not None
        descriptors.refused["allocate"] += 1
        samples = self.scrape()
        self.assertEqual(value(samples, closures, limit="shed"), 2)
        self.assertEqual(value(samples, closures, limit="allocate-timeout"), 0)
        refusals = "turnrelay_peer_connection_refusals_total"
        self.assertEqual(value(samples, refusals, reason="max-peer-connections"), 3)
        kinds = "turnrelay_descriptor_refusals_total"
        self.assertEqual(value(samples, kinds, kind="allocate"), 1)
        self.assertEqual(value(samples, "turnrelay_descriptors_exhausted"), 0)
        self.assertEqual(
            value(samples, "turnrelay_descriptors_ceiling"),
            descriptors.limit - descriptors.reserve,
        )

    def test_drainingAndStartTime(self) -> None:
        """
        The draining gauge turns to 1 on drain; the start time is the relay's.
        """
        self.reactor.advance(1000)
        self.assertEqual(value(self.scrape(), "turnrelay_draining"), 0)
        self.relay.drain()
        samples = self.scrape()
        self.assertEqual(value(samples, "turnrelay_draining"), 1)
        self.assertEqual(value(samples, "turnrelay_start_time_seconds"), self.relay.startedAt)

    def test_live(self) -> None:
        """
        Counters grow while the allocation lives, and keep what ended
        allocations relayed.
        """
        alice = self.traffic()
        before = self.scrape()
        self.channelData(alice, b"more")
        after = self.scrape()
        labels = {"transport": "udp", "direction": "to_peer"}
        self.assertEqual(value(before, "turnrelay_relayed_packets_total", **labels), 2)
        self.assertEqual(value(after, "turnrelay_relayed_packets_total", **labels), 3)
        self.assertEqual(value(after, "turnrelay_relayed_bytes_total", **labels), 14)
        self.assertSuccess(alice.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        ended = self.scrape()
        self.assertEqual(value(ended, "turnrelay_relayed_packets_total", **labels), 3)
        self.assertEqual(value(ended, "turnrelay_allocations_ended_total", transport="udp"), 1)
        self.assertEqual(value(ended, "turnrelay_allocations", transport="udp", family="ipv4"), 0)
        self.assertEqual(value(ended, "turnrelay_permissions"), 0)

    def test_noUsersOrAddressesInLabels(self) -> None:
        """
        Every label value comes from a small fixed vocabulary: no username
        (static or REST) and no address appears.
        """
        self.traffic()
        username, password = self.relay.mintCredential("carol", ttl=600)
        self.assertSuccess(self.client(username, password).allocate())
        text = self.scrapeText()[1]
        for secretive in ("alice", "bob", "carol", username, CLIENT_HOST, PEER.host, "192.0.2.1"):
            self.assertNotIn(secretive, text)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for name, labelValue in sample.labels.items():
                    if name == "code":
                        self.assertTrue(labelValue == "success" or labelValue.isdigit())
                    else:
                        self.assertIn(labelValue, LABEL_VALUES[name], f"{name}={labelValue}")
                    self.assertRaises(ValueError, ipaddress.ip_address, labelValue)

    def test_conventions(self) -> None:
        """
        The relay's metrics are prefixed turnrelay_, counters end in _total
        and byte counts are in bytes.
        """
        self.traffic()
        families = list(text_string_to_metric_families(self.scrapeText()[1]))
        ours = [family for family in families if family.name.startswith("turnrelay_")]
        self.assertGreaterEqual(len(ours), 15)
        for family in families:
            self.assertTrue(family.name.startswith(("turnrelay_", "process_")), family.name)
            for sample in family.samples:
                if family.type == "counter":
                    self.assertTrue(sample.name.endswith("_total"), sample.name)
        names = {family.name for family in ours}
        self.assertIn("turnrelay_relayed_bytes", names)


class RefusalMetricsTests(MetricsTestCase):
    """
    Refused requests from sources not authenticated, and the per-source
    limit on unauthenticated UDP answers.
    """

    def test_refusedByReason(self) -> None:
        """
        Each refusal reason is a series, zero included: malformed requests,
        integrity without credentials, answers too large to send, and
        answers over the per-source rate.
        """
        link = FakeClientLink(TransportAddress(CLIENT_HOST, 40000))
        server = self.relay.server
        header = STUNMessage(Method.BINDING, MessageClass.REQUEST, b"t" * 12).encode()
        server.stunReceived(header[:2] + b"\x00\x04" + header[4:] + b"\x80\x22\x01\x00", link)
        anonymous = STUNMessage(Method.ALLOCATE, MessageClass.REQUEST, b"a" * 12)
        server.stunReceived(anonymous.encode(key=b"k" * 16), link)
        server.stunReceived(
            STUNMessage(Method.ALLOCATE, MessageClass.REQUEST, b"b" * 12).encode(), link
        )
        binding = STUNMessage(Method.BINDING, MessageClass.REQUEST, b"c" * 12).encode()
        for _ in range(100):
            server.stunReceived(binding, link)
        samples = self.scrape()
        refused = "turnrelay_refused_total"
        self.assertEqual(value(samples, refused, reason="malformed"), 1)
        self.assertEqual(value(samples, refused, reason="missing-attribute"), 1)
        self.assertEqual(value(samples, refused, reason="amplification"), 1)
        # The 400 and the 401 too large to send took two tokens of the burst
        # (40); 62 of the 100 Bindings found the bucket empty.
        self.assertEqual(value(samples, refused, reason="rate-limited"), 62)
        self.assertEqual(value(samples, refused, reason="bad-integrity"), 0)
        self.assertEqual(value(samples, "turnrelay_unauthenticated_sources"), 1)
        self.assertEqual(value(samples, "turnrelay_unauthenticated_sources_max"), 10000)
        self.assertEqual(value(samples, "turnrelay_unauthenticated_rate"), 20)
        self.assertEqual(value(samples, "turnrelay_unauthenticated_burst"), 40)


class EndpointTests(MetricsTestCase):
    """
    The HTTP side: paths, content types, registries and logs.
    """

    def test_contentType(self) -> None:
        """
        GET /metrics answers in the Prometheus text format, uncached.
        """
        headers, text = self.scrapeText()
        self.assertEqual(headers[b"content-type"], b"text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(headers[b"cache-control"], b"no-store")
        self.assertNotIn(b"server", headers)
        self.assertIn("# TYPE turnrelay_allocations gauge", text)

    def test_openMetrics(self) -> None:
        """
        A scraper that asks for OpenMetrics gets it.
        """
        accept = b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        headers, text = self.scrapeText(accept)
        self.assertTrue(headers[b"content-type"].startswith(b"application/openmetrics-text"))
        self.assertTrue(text.endswith("# EOF\n"))

    def test_elsewhere404(self) -> None:
        """
        Every path but /metrics and /healthz is 404, the root included.
        """
        paths = (b"/", b"/metric", b"/metrics/", b"/metrics/x", b"/credentials", b"/healthz/x")
        for path in paths:
            status, _, _ = httpRequest(self.site, b"GET", path)
            self.assertEqual(status, 404, path)

    def test_ownRegistry(self) -> None:
        """
        Nothing is registered in prometheus_client's global registry.
        """
        self.assertNotIn(b"turnrelay_", generate_latest(REGISTRY))

    def test_quiet(self) -> None:
        """
        A scrape logs nothing: no access log line, no factory start.
        """
        logs = LogRecorder(self, namespace="")
        self.site.doStart()
        self.scrapeText()
        self.site.doStop()
        self.assertEqual(logs.events, [])

    def test_listensAndStops(self) -> None:
        """
        The service listens where configured, is named "metrics" in the
        relay, and stops listening with the relay.
        """
        service = self.relay.getServiceNamed("metrics")
        self.assertEqual(service.address, TransportAddress("127.0.0.1", METRICS_PORT))
        port = service.port
        self.successResultOf(self.relay.stopService())
        self.assertFalse(port.listening)
        self.assertIsNone(service.port)


class HealthTests(MetricsTestCase):
    """
    GET /healthz on the metrics listener: 200 while serving, 503 otherwise.
    """

    def health(self) -> Tuple[int, Dict[bytes, bytes], bytes]:
        return httpRequest(self.site, b"GET", b"/healthz")

    def test_serving(self) -> None:
        """
        A started relay with every listener bound answers 200 "serving".
        """
        status, headers, body = self.health()
        self.assertEqual((status, body), (200, b"serving\n"))
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertEqual(headers[b"cache-control"], b"no-store")

    def test_draining(self) -> None:
        """
        A draining relay answers 503, saying it drains, and so does the
        turnrelay_ready gauge.
        """
        self.relay.drain()
        status, _, body = self.health()
        self.assertEqual((status, body), (503, b"not ready: draining\n"))
        self.assertEqual(value(self.scrape(), "turnrelay_ready"), 0)

    def test_listenerNotBound(self) -> None:
        """
        A relay one of whose listeners holds no socket is not ready.
        """
        listener = next(
            child for child in self.relay if getattr(child, "listener", None) is not None
        )
        port, listener.port = listener.port, None
        self.addCleanup(setattr, listener, "port", port)
        status, _, body = self.health()
        self.assertEqual(status, 503)
        self.assertIn(b"listener 3478 is not bound", body)

    def test_notStarted(self) -> None:
        """
        A relay that is not running is not ready.
        """
        self.successResultOf(self.relay.stopService())
        status, _, body = self.health()
        self.assertEqual((status, body), (503, b"not ready: not running\n"))


class TLSMetricsTests(TURNTestCase):
    """
    The TLS certificate's expiry, its reloads and its failed reloads.
    """

    def setUp(self) -> None:
        self.cert, self.key = makeCertificate(self)
        settings = {
            **SETTINGS,
            "listen": ["tls:5349:interface=192.0.2.1"],
            "tls_cert": self.cert,
            "tls_key": self.key,
        }
        self.fake = FakeRelay(**settings).start(self)
        self.site = next(
            factory for port, factory, _, _ in self.fake.reactor.tcpServers if port == METRICS_PORT
        )

    def scrape(self) -> Samples:
        status, _, body = httpRequest(self.site, b"GET", b"/metrics")
        self.assertEqual(status, 200)
        return parseScrape(body.decode("utf-8"))

    def test_expiry(self) -> None:
        """
        The certificate's notAfter is a gauge, in Unix time.
        """
        tls = self.fake.service.tlsOptions
        assert tls is not None
        expiry = tls.certificate.not_valid_after_utc.timestamp()
        samples = self.scrape()
        self.assertEqual(
            value(samples, "turnrelay_tls_certificate_expiry_timestamp_seconds"), expiry
        )

    def test_unchangedIsNoReload(self) -> None:
        """
        Reading unchanged files again (SIGHUP, reloadTLS()) is no reload;
        new files are one.
        """
        self.assertTrue(self.fake.service.reloadTLS())
        self.assertEqual(value(self.scrape(), "turnrelay_tls_reloads_total"), 0)
        cert, key = makeCertificate(self, "renewed")
        for new, old in ((cert, self.cert), (key, self.key)):
            os.replace(new, old)
        self.assertTrue(self.fake.service.reloadTLS())
        samples = self.scrape()
        self.assertEqual(value(samples, "turnrelay_tls_reloads_total"), 1)
        self.assertEqual(value(samples, "turnrelay_tls_reload_failures_total"), 0)

    def test_failedReload(self) -> None:
        """
        Files that cannot be used count as a failed reload; the reload
        counter does not move.
        """
        LogRecorder(self)
        with open(self.cert, "wb") as broken:
            broken.write(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        self.assertFalse(self.fake.service.reloadTLS())
        samples = self.scrape()
        self.assertEqual(value(samples, "turnrelay_tls_reload_failures_total"), 1)
        self.assertEqual(value(samples, "turnrelay_tls_reloads_total"), 0)


class KeepAliveClient(Protocol):
    """
    An HTTP client that sends one keep-alive request and waits.
    """

    def __init__(self) -> None:
        self.received = b""
        self.answered: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /metrics HTTP/1.1\r\nHost: relay.test\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class LoopbackTests(TestCase):
    """
    Scrapes over a real socket on 127.0.0.1.
    """

    def relay(self) -> Tuple[RelayService, AdminWebService, int]:
        fake = FakeRelay(**{**SETTINGS, "metrics": None}).start(self)
        relay, config = fake.service, fake.config
        metricsConfig = attr.evolve(config, metrics=ListenerConfig("tcp", 0, "127.0.0.1"))
        service = makeMetricsService(relay, metricsConfig, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.address is not None
        return relay, service, service.address.port

    async def test_scrape(self) -> None:
        """
        GET /metrics over loopback answers 200 with the text format.
        """
        relay, service, port = self.relay()
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        url = f"http://127.0.0.1:{port}/metrics".encode("ascii")
        response = await agent.request(b"GET", url)
        body = await readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        samples = parseScrape(body.decode("utf-8"))
        self.assertEqual(value(samples, "turnrelay_allocations", transport="udp", family="ipv4"), 0)
        missing = await readBody(await agent.request(b"GET", url.replace(b"/metrics", b"/")))
        self.assertEqual(missing, b"Not found\n")

    async def test_stopClosesConnections(self) -> None:
        """
        Stopping the service closes the connections kept alive, and fires
        when they are gone.
        """
        relay, service, port = self.relay()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = await connectProtocol(endpoint, KeepAliveClient())
        await client.answered
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 OK"))
        await service.stopService()
        await client.closed
