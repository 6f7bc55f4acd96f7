"""
Operating a running relay: drain, stats, minting credentials and reloading
the configuration (L{turnrelay.service.RelayService}), on a fake reactor.
"""

from __future__ import annotations

from typing import Any

from tests._assertions import TURNTestCase
from tests._relays import PEER_A, FakeRelay
from tests._session import TURNClient
from turnrelay.service import RelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import Method

PEER = PEER_A
# Alice alone: Bob is the user a reload adds.
SETTINGS: dict[str, Any] = {"user": ["alice:alice-password"]}


class OperationsTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.relay = self.makeRelay(SETTINGS)

    def makeRelay(self, settings: dict[str, Any]) -> RelayService:
        if hasattr(self, "relay"):
            self.relay.stopService()
        self.fake = FakeRelay(**settings).start(self)
        self.reactor = self.fake.reactor
        return self.fake.service

    def client(self, username: str = "alice", password: str = "alice-password") -> TURNClient:
        return self.fake.client(username, password)


class DrainTests(OperationsTestCase):
    """
    Draining: no new allocations, existing ones run their course.
    """

    def test_refusesNewAllocations(self) -> None:
        """
        Without an alternate server, a draining relay answers Allocate with 403.
        """
        self.relay.drain()
        self.assertErrorCode(self.client().allocate(), 403)

    def test_alternateServers(self) -> None:
        """
        With alternate servers, Allocate gets 300 Try Alternate, with integrity,
        the alternate of the client's family first (RFC 8489 section 10).
        """
        alternates = ["[2001:db8::7]:3478", "192.0.2.7:3478"]
        self.relay = self.makeRelay({**SETTINGS, "alternate_server": alternates})
        self.relay.drain()
        response = self.assertErrorCode(self.client().allocate(), 300)
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
        relay = self.makeRelay({**SETTINGS, "static_auth_secret": None})
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
        changed = self.fake.configWith(user=["bob:bob-password"])
        self.assertEqual(self.relay.reloadConfig(changed), [])
        self.assertSuccess(self.client("bob", "bob-password").allocate())
        self.assertErrorCode(self.client().allocate(), 401)
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
        self.assertErrorCode(client.request(Method.CREATE_PERMISSION, permit), 403)
        self.relay.reloadConfig(self.fake.configWith(allow_peer=["198.18.0.0/15"]))
        self.assertSuccess(client.request(Method.CREATE_PERMISSION, permit))

    def test_logLevel(self) -> None:
        """
        The log level changes on reload.
        """
        self.relay.reloadConfig(self.fake.configWith(log_level="warn"))
        self.assertEqual(self.relay.logLevels.level(), "warn")

    def test_restartNeeded(self) -> None:
        """
        Settings a running relay cannot change are reported.
        """
        changed = self.fake.configWith(listen=["udp:3479:interface=192.0.2.1"], min_port=50010)
        self.assertEqual(self.relay.reloadConfig(changed), ["listen", "min-port"])

    def test_unauthenticatedLimits(self) -> None:
        """
        The per-source limit on unauthenticated answers and the refusal
        summary's interval change on reload; the log file's bounds are for
        the next start.
        """
        limit = self.relay.server.sourceLimit
        assert limit is not None
        self.assertEqual((limit.rate, limit.burst, limit.maxSources), (20, 40, 10000))
        changed = self.fake.configWith(
            unauthenticated_rate=5,
            unauthenticated_burst=7,
            source_table_size=100,
            refusal_summary_interval=10,
            log_max_bytes=20000,
            log_max_files=3,
        )
        needRestart = self.relay.reloadConfig(changed)
        self.assertIs(self.relay.server.sourceLimit, limit)
        self.assertEqual((limit.rate, limit.burst, limit.maxSources), (5, 7, 100))
        self.assertEqual(self.relay.server.refusalSummaryInterval, 10)
        self.assertEqual(needRestart, ["log-max-bytes", "log-max-files"])

    def test_streamAndDescriptorLimits(self) -> None:
        """
        The limits on TCP and TLS connections and the descriptor reserve
        change on reload, for the connections that come next.
        """
        changed = self.fake.configWith(
            stream_allocate_timeout=5,
            max_unallocated_per_source=3,
            max_unallocated_connections=30,
            stream_max_unsent=100000,
            descriptor_reserve=100,
        )
        self.assertEqual(self.relay.reloadConfig(changed), [])
        limits = self.relay.streamLimits
        assert limits is not None
        self.assertEqual(
            (limits.allocateTimeout, limits.maxUnallocatedPerSource, limits.maxUnallocated),
            (5, 3, 30),
        )
        self.assertEqual(limits.maxUnsent, 100000)
        assert self.relay.server.descriptors is not None
        self.assertEqual(self.relay.server.descriptors.reserve, 100)
