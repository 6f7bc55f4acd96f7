"""
Operating a running relay: drain, stats, minting credentials and reloading
the configuration (L{turnrelay.service.RelayService}), on a fake reactor.
"""

from __future__ import annotations

from typing import Any

from tests._turnclient import TURNClient, TURNTestCase
from turnrelay.config import buildConfig
from turnrelay.logs import logLevel, setLogLevel
from turnrelay.service import RelayService, makeRelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import Method
from turnrelay.testing import FakeClientLink, FakeUDPReactor

PEER = TransportAddress("198.51.100.20", 5000)
SETTINGS: dict[str, Any] = {
    "listen": ["udp:3478:interface=192.0.2.1"],
    "relay-ip": "198.51.100.1",
    "realm": "example.org",
    "user": ["alice:alice-password"],
    "static-auth-secret": ["a shared secret"],
    "allow-peer": ["198.51.100.0/24"],
}


class OperationsTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.relay = self.makeRelay(SETTINGS)
        self.addCleanup(setLogLevel, "info")

    def makeRelay(self, settings: dict[str, Any]) -> RelayService:
        if hasattr(self, "relay"):
            self.relay.stopService()
        relay = makeRelayService(buildConfig(settings), self.reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay

    def client(self, username: str = "alice", password: str = "alice-password") -> TURNClient:
        self.port = getattr(self, "port", 40000) + 1
        link = FakeClientLink(TransportAddress("192.0.2.50", self.port))
        return TURNClient(self.relay.server, link, username, password, False)


class DrainTests(OperationsTestCase):
    """
    Draining: no new allocations, existing ones run their course.
    """

    def test_refusesNewAllocations(self) -> None:
        """
        Without an alternate server, a draining relay answers Allocate with 403.
        """
        self.relay.drain()
        self.assertError(self.client().allocate(), 403)

    def test_alternateServers(self) -> None:
        """
        With alternate servers, Allocate gets 300 Try Alternate, with integrity,
        the alternate of the client's family first (RFC 8489 section 10).
        """
        alternates = ["[2001:db8::7]:3478", "192.0.2.7:3478"]
        self.relay = self.makeRelay({**SETTINGS, "alternate-server": alternates})
        self.relay.drain()
        response = self.assertError(self.client().allocate(), 300)
        self.assertEqual(
            response.getAll(A.ALTERNATE_SERVER),
            [TransportAddress("192.0.2.7", 3478), TransportAddress("2001:db8::7", 3478)],
        )
        self.assertIsNotNone(response.messageIntegrity)

    def test_existingRunOn(self) -> None:
        """
        Allocations made before the drain keep working, and the drain is done
        when the last one ends.
        """
        client = self.client()
        client.allocate()
        done = self.relay.drain(timeout=0)
        self.assertNoResult(done)
        self.assertSuccess(client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)]))
        self.assertSuccess(client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        self.successResultOf(done)

    def test_deadline(self) -> None:
        """
        Allocations still there at the drain deadline are ended.
        """
        self.client().allocate((A.LIFETIME, 3600))
        done = self.relay.drain(timeout=100)
        self.reactor.advance(99)
        self.assertNoResult(done)
        self.reactor.advance(1)
        self.successResultOf(done)
        self.assertEqual(len(self.relay.server.registry), 0)

    def test_nothingToWaitFor(self) -> None:
        """
        Draining an idle relay is done at once.
        """
        self.successResultOf(self.relay.drain())


class StatsTests(OperationsTestCase):
    """
    RelayService.stats().
    """

    def test_counts(self) -> None:
        """
        stats() counts allocations, permissions, channels, requests and
        refused authentications, live.
        """
        client = self.client()
        client.allocate()
        client.request(
            Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, PEER)]
        )
        self.client(password="wrong").allocate()
        stats = self.relay.stats()
        self.assertEqual(stats["allocations"], 1)
        self.assertEqual(stats["allocationsByTransportAndFamily"], {("udp", "ipv4"): 1})
        self.assertEqual((stats["permissions"], stats["channels"]), (1, 1))
        self.assertEqual(stats["requests"][("ALLOCATE", "success")], 1)
        self.assertEqual(stats["requests"][("ALLOCATE", "401")], 3)
        self.assertEqual(stats["authFailures"], {"no-integrity": 2, "bad-integrity": 1})
        self.assertFalse(stats["draining"])


class MintCredentialTests(OperationsTestCase):
    """
    RelayService.mintCredential().
    """

    def test_mint(self) -> None:
        """
        A minted REST credential authenticates.
        """
        username, password = self.relay.mintCredential("carol", ttl=600)
        self.assertTrue(username.endswith(":carol"))
        self.assertSuccess(self.client(username, password).allocate())

    def test_noSecret(self) -> None:
        """
        Without a shared secret there is nothing to mint with.
        """
        settings = {k: v for k, v in SETTINGS.items() if k != "static-auth-secret"}
        relay = self.makeRelay(settings)
        self.assertRaises(ValueError, relay.mintCredential, "carol")


class ReloadConfigTests(OperationsTestCase):
    """
    RelayService.reloadConfig(): users, secrets, policy and log level change
    without a restart.
    """

    def test_users(self) -> None:
        """
        A user added by a reload can allocate; a removed one cannot, and the
        allocations already made live on until they expire.
        """
        alice = self.client()
        alice.allocate()
        changed = {**SETTINGS, "user": ["bob:bob-password"]}
        self.assertEqual(self.relay.reloadConfig(buildConfig(changed)), [])
        self.assertSuccess(self.client("bob", "bob-password").allocate())
        self.assertError(self.client().allocate(), 401)
        self.assertIsNotNone(alice.link.allocation)
        self.assertEqual(len(self.relay.server.registry), 2)

    def test_peerPolicy(self) -> None:
        """
        A peer range allowed by a reload can be given permissions.
        """
        client = self.client()
        client.allocate()
        other = TransportAddress("198.18.0.9", 1)
        permit = [(A.XOR_PEER_ADDRESS, other)]
        self.assertError(client.request(Method.CREATE_PERMISSION, permit), 403)
        self.relay.reloadConfig(buildConfig({**SETTINGS, "allow-peer": ["198.18.0.0/15"]}))
        self.assertSuccess(client.request(Method.CREATE_PERMISSION, permit))

    def test_logLevel(self) -> None:
        """
        The log level changes on reload.
        """
        self.relay.reloadConfig(buildConfig({**SETTINGS, "log-level": "warn"}))
        self.assertEqual(logLevel(), "warn")

    def test_restartNeeded(self) -> None:
        """
        Settings a running relay cannot change are reported.
        """
        changed = {**SETTINGS, "listen": ["udp:3479:interface=192.0.2.1"], "min-port": 50000}
        self.assertEqual(self.relay.reloadConfig(buildConfig(changed)), ["listen", "min-port"])

    def test_unauthenticatedLimits(self) -> None:
        """
        The per-source limit on unauthenticated answers and the refusal
        summary's interval change on reload; the log file's bounds are for
        the next start.
        """
        limit = self.relay.server.sourceLimit
        assert limit is not None
        self.assertEqual((limit.rate, limit.burst, limit.maxSources), (20, 40, 10000))
        changed = {
            **SETTINGS,
            "unauthenticated-rate": 5,
            "unauthenticated-burst": 7,
            "source-table-size": 100,
            "refusal-summary-interval": 10,
            "log-max-bytes": 20000,
            "log-max-files": 3,
        }
        needRestart = self.relay.reloadConfig(buildConfig(changed))
        self.assertIs(self.relay.server.sourceLimit, limit)
        self.assertEqual((limit.rate, limit.burst, limit.maxSources), (5, 7, 100))
        self.assertEqual(self.relay.server.refusalSummaryInterval, 10)
        self.assertEqual(needRestart, ["log-max-bytes", "log-max-files"])

    def test_streamAndDescriptorLimits(self) -> None:
        """
        The limits on TCP and TLS connections and the descriptor reserve
        change on reload, for the connections that come next.
        """
        changed = {
            **SETTINGS,
            "stream-allocate-timeout": 5,
            "max-unallocated-per-source": 3,
            "max-unallocated-connections": 30,
            "stream-max-unsent": 100000,
            "descriptor-reserve": 100,
        }
        self.assertEqual(self.relay.reloadConfig(buildConfig(changed)), [])
        limits = self.relay.streamLimits
        assert limits is not None
        self.assertEqual(
            (limits.allocateTimeout, limits.maxUnallocatedPerSource, limits.maxUnallocated),
            (5, 3, 30),
        )
        self.assertEqual(limits.maxUnsent, 100000)
        assert self.relay.server.descriptors is not None
        self.assertEqual(self.relay.server.descriptors.reserve, 100)
