"""
Tests for L{turnrelay.fleet.registry}: three nodes on loopback, on the real
reactor, sharing a real C{redis-server}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._assertions import TURNTestCase, errorCode
from tests._redis import RedisServer, startRedis
from tests._relays import LoopbackRelay, httpRequest, startRelay
from tests._sockets import SocketTURNSession, udpTURNClient
from tests._timing import PROMPTLY, poll, reactor, within
from turnrelay.admin.credentials import iceServerURLs
from turnrelay.admin.metrics import RelayCollector
from turnrelay.config import buildConfig
from turnrelay.fleet.link import RedisLink
from turnrelay.fleet.registry import (
    DRAINING,
    SERVING,
    NodeRecord,
    NodeRegistry,
    advertisedAddresses,
)
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress

# Short, so that a dead node is seen gone soon.
LEASE = 2.0
TOKEN = "fleet-test-token"


def startNode(
    testCase: SynchronousTestCase, redis: RedisServer, nodeID: str, **settings: Any
) -> LoopbackRelay:
    """
    Start a relay that is a node of the fleet on C{redis}: UDP and TCP
    listeners on 127.0.0.1, ports chosen by the system.
    """
    return startRelay(
        testCase,
        listen=["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
        redis=str(redis.url),
        node_id=nodeID,
        redis_lease_ttl=LEASE,
        **settings,
    )


def registry(relay: LoopbackRelay) -> NodeRegistry:
    """
    @return: a node's registry.
    """
    fleet = relay.service.fleet
    assert fleet is not None
    found: NodeRegistry = fleet.registry
    return found


async def inspector(testCase: TestCase, redis: RedisServer) -> RedisLink:
    """
    A link of the test's own, to look into Redis.
    """
    link = RedisLink(redis.url, reactor, timeout=PROMPTLY)
    link.startService()
    testCase.addCleanup(link.stopService)
    await poll(lambda: link.up, PROMPTLY, "the test's link to Redis")
    return link


async def allocateOn(
    testCase: TestCase, relay: LoopbackRelay, count: int
) -> List[SocketTURNSession]:
    """
    Make C{count} UDP allocations on C{relay}.
    """
    sessions = []
    for _ in range(count):
        session = udpTURNClient(testCase, relay.address("udp"))
        response = await within(session.allocate(), PROMPTLY, "Allocate")
        testCase.assertIsNone(errorCode(response))
        sessions.append(session)
    return sessions


class AdvertisedAddressTests(SynchronousTestCase):
    """
    L{advertisedAddresses}: the addresses a node publishes.
    """

    def test_wildcards(self) -> None:
        """
        A wildcard IPv4 listener advertises external-ip, else the relay IP;
        a specific one its own address (unless external-ip is set); a
        wildcard IPv6 one the IPv6 relay IP.
        """
        listeners = [
            ("udp", TransportAddress("0.0.0.0", 3478)),
            ("tcp", TransportAddress("192.0.2.1", 3479)),
            ("udp", TransportAddress("::", 3478)),
        ]
        config = buildConfig(
            {"listen": ["udp:3478"], "relay-ip": "198.51.100.1", "relay-ip6": "2001:db8::1"}
        )
        self.assertEqual(
            advertisedAddresses(config, listeners),
            [
                ("udp", TransportAddress("198.51.100.1", 3478)),
                ("tcp", TransportAddress("192.0.2.1", 3479)),
                ("udp", TransportAddress("2001:db8::1", 3478)),
            ],
        )
        natted = buildConfig(
            {"listen": ["udp:3478"], "relay-ip": "10.0.0.1", "external-ip": "203.0.113.10"}
        )
        self.assertEqual(
            advertisedAddresses(natted, listeners[:2]),
            [
                ("udp", TransportAddress("203.0.113.10", 3478)),
                ("tcp", TransportAddress("203.0.113.10", 3479)),
            ],
        )

    def test_recordRoundTrip(self) -> None:
        """
        A record reads back as it was written; a damaged one is refused.
        """
        record = NodeRecord(
            node="n1",
            state=SERVING,
            allocations=3,
            packetsPerSecond=1.5,
            addresses=(("udp", TransportAddress("192.0.2.1", 3478)),),
            urls=("turn:192.0.2.1:3478?transport=udp",),
            heartbeat=1700000000.0,
        )
        self.assertEqual(NodeRecord.fromJSON(record.toJSON()), record)
        with self.assertRaises(ValueError):
            NodeRecord.fromJSON(json.dumps({"node": "n1"}))
        with self.assertRaises(ValueError):
            NodeRecord.fromJSON("{")


class FleetRegistryTests(TURNTestCase, TestCase):
    """
    Three nodes, A, B and C, on one Redis server.
    """

    async def startFleet(self, **settings: Any) -> Tuple[RedisServer, List[LoopbackRelay]]:
        redis = await startRedis(self)
        nodes = [startNode(self, redis, name, **settings) for name in ("a", "b", "c")]
        await poll(
            lambda: all(len(registry(node).nodes) == 3 for node in nodes),
            PROMPTLY,
            "every node to see the three",
            describe=lambda: [sorted(registry(node).nodes) for node in nodes],
        )
        return redis, nodes

    async def test_seeEachOtherAndLeave(self) -> None:
        """
        Each node sees the other two, with the addresses they listen on,
        within a heartbeat or two; a node that dies (it loses Redis, and
        stops renewing) is gone within the lease; one that stops cleanly is
        gone at the next heartbeat.
        """
        started = reactor.seconds()
        redis, (a, b, c) = await self.startFleet()
        self.assertLess(reactor.seconds() - started, PROMPTLY)
        for node in (a, b, c):
            for other in (a, b, c):
                record = registry(node).nodes[registry(other).node.nodeID]
                self.assertEqual(record.state, SERVING)
                self.assertEqual(
                    set(record.addresses),
                    {("udp", other.address("udp")), ("tcp", other.address("tcp"))},
                )
        link = await inspector(self, redis)
        self.assertEqual(
            sorted(
                await within(link.call("t", "zrange", "turnrelay:nodes", 0, -1), PROMPTLY, "ZRANGE")
            ),
            ["a", "b", "c"],
        )
        ttl = await within(
            link.call("t", "execute_command", "PTTL", "turnrelay:node:c"), PROMPTLY, "PTTL"
        )
        self.assertTrue(0 < int(ttl) <= LEASE * 1000, ttl)

        # C dies as far as the fleet can tell: no more heartbeats.
        fleet = c.service.fleet
        assert fleet is not None
        fleet.link.stopService()
        died = reactor.seconds()
        await poll(
            lambda: all("c" not in registry(node).nodes for node in (a, b)),
            LEASE + PROMPTLY,
            "C to be gone",
        )
        # Within the lease, and a heartbeat to notice.
        self.assertLess(reactor.seconds() - died, LEASE + 1.5)

        # B stops cleanly: its record is deleted at once.
        await b.stop()
        self.assertIsNone(await within(link.call("t", "get", "turnrelay:node:b"), PROMPTLY, "GET"))
        await poll(lambda: "b" not in registry(a).nodes, PROMPTLY, "B to be gone")
        self.assertEqual(set(registry(a).nodes), {"a"})

    async def test_drainSendsToLeastLoaded(self) -> None:
        """
        While A drains, a new Allocate there gets 300 with ALTERNATE-SERVER
        of the least-loaded serving node (C: B has allocations); the
        configured alternate-server is back once A serves again.  The
        others see A draining, and so do A's metrics.
        """
        configured = TransportAddress("192.0.2.9", 3478)
        redis, (a, b, c) = await self.startFleet(alternate_server=[str(configured)])
        await allocateOn(self, b, 2)
        await poll(
            lambda: registry(a).nodes["b"].allocations == 2,
            PROMPTLY,
            "A to see B's allocations",
        )

        a.service.drain()
        await poll(lambda: registry(a).alternates, PROMPTLY, "A to steer to another node")
        self.assertEqual(a.server.alternateServers, (c.address("udp"),))
        session = udpTURNClient(self, a.address("udp"))
        response = await within(session.allocate(), PROMPTLY, "Allocate")
        self.assertEqual(errorCode(response), 300)
        self.assertEqual(response.get(A.ALTERNATE_SERVER), c.address("udp"))

        await poll(
            lambda: registry(b).nodes["a"].state == DRAINING,
            PROMPTLY,
            "B to see A draining",
        )
        self.assertEqual(registry(b).stats()["nodesByState"], {SERVING: 2, DRAINING: 1})
        families = {family.name: family for family in RelayCollector(a.service).collect()}
        self.assertEqual(families["turnrelay_redis_up"].samples[0].value, 1)
        nodes = {
            sample.labels["state"]: sample.value
            for sample in families["turnrelay_fleet_nodes"].samples
        }
        self.assertEqual(nodes, {SERVING: 2, DRAINING: 1})
        self.assertIn("turnrelay_redis_failures", families)

        # Serving again (an operator's undo): the configured alternate.
        a.server.draining = False
        await poll(lambda: not registry(a).alternates, PROMPTLY, "A to stop steering")
        self.assertEqual(a.server.alternateServers, (configured,))

    async def test_credentialsOfferLeastLoaded(self) -> None:
        """
        The credentials endpoint of a node adds the URLs of the fleet's
        least-loaded other node when it is less loaded than this one, and
        nothing when this node is the least loaded.
        """
        tokenFile = os.path.abspath(self.mktemp())
        with open(tokenFile, "w") as f:
            f.write(TOKEN)
        redis, (a, b, c) = await self.startFleet(
            credentials_endpoint="tcp:0:interface=127.0.0.1",
            credentials_token_file=tokenFile,
        )
        await allocateOn(self, a, 2)
        await allocateOn(self, b, 1)
        await poll(
            lambda: (
                registry(a).nodes["b"].allocations == 1 and registry(b).nodes["a"].allocations == 2
            ),
            PROMPTLY,
            "the nodes to see each other's allocations",
        )

        def urls(relay: LoopbackRelay) -> List[str]:
            return iceServerURLs(relay.service.config, relay.service.listeningAddresses())

        self.assertEqual(self.credentialURLs(a), urls(a) + urls(c))
        self.assertEqual(self.credentialURLs(b), urls(b) + urls(c))
        self.assertEqual(self.credentialURLs(c), urls(c))

    def credentialURLs(self, relay: LoopbackRelay) -> List[str]:
        site = relay.service.getServiceNamed("credentials").site
        code, _, body = httpRequest(
            site,
            b"GET",
            b"/credentials?user=carol",
            [b"Authorization: Bearer " + TOKEN.encode()],
        )
        self.assertEqual(code, 200, body)
        answer: Dict[str, Any] = json.loads(body)
        urls: List[str] = answer["urls"]
        return urls
