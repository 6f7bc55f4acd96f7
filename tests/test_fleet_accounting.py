"""
Tests for L{turnrelay.fleet.accounting}: usage per user added up in a real
C{redis-server} by two nodes on loopback.
"""

from __future__ import annotations

from typing import Dict, List

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._assertions import TURNTestCase
from tests._redis import RedisServer, startRedis
from tests._relays import LoopbackRelay
from tests._sockets import datagramClient, udpTURNClient
from tests._timing import PROMPTLY, poll, reactor, within
from tests.test_fleet_registry import inspector, startNode
from turnrelay.fleet.accounting import _ADD_USAGE, USAGE_DAYS, Accounting, usageDay
from turnrelay.fleet.link import RedisLink
from turnrelay.stun import attributes as A
from turnrelay.turn.allocation import Allocation

PAYLOAD = b"x" * 100


def accounting(relay: LoopbackRelay) -> Accounting:
    fleet = relay.service.fleet
    assert fleet is not None
    found: Accounting = fleet.accounting
    return found


class UsageDayTests(SynchronousTestCase):
    """
    L{usageDay}: the UTC day usage is billed to.
    """

    def test_utc(self) -> None:
        self.assertEqual(usageDay(0), "1970-01-01")
        self.assertEqual(usageDay(1_700_000_000), "2023-11-14")
        self.assertEqual(usageDay(86400 * 365 - 0.5), "1970-12-31")


class FleetAccountingTests(TURNTestCase, TestCase):
    """
    Allocations that relay a few packets each way and end, on two nodes.
    """

    def setUp(self) -> None:
        self.durations: List[float] = []

    async def relayAndEnd(self, relay: LoopbackRelay, username: str = "alice") -> Allocation:
        """
        Allocate on C{relay}, relay three packets each way with a peer, and
        end the allocation (Refresh with lifetime 0).

        @return: the relay's allocation, ended.
        """
        session = udpTURNClient(
            self, relay.address("udp"), username=username, password=f"{username}-password"
        )
        allocated = self.assertSuccess(await within(session.allocate(), PROMPTLY, "Allocate"))
        relayed = allocated.get(A.XOR_RELAYED_ADDRESS)
        [allocation] = [a for a in relay.registry if a.username == username]
        peer = datagramClient(self, "127.0.0.1")
        self.assertSuccess(
            await within(session.createPermission(peer.address), PROMPTLY, "CreatePermission")
        )
        for _ in range(3):
            session.sendIndication(peer.address, PAYLOAD)
            self.assertEqual(await within(peer.receive(), PROMPTLY, "to the peer"), PAYLOAD)
            peer.send(PAYLOAD * 2, relayed)
            await within(session.indications.get(), PROMPTLY, "from the peer")
        self.assertSuccess(await within(session.refresh((A.LIFETIME, 0)), PROMPTLY, "Refresh 0"))
        self.assertEqual(list(relay.registry), [])
        # Its clock runs on after the end: what it lasted, as logged.
        self.durations.append(allocation.usage()["duration"])
        return allocation

    async def usage(self, link: RedisLink) -> Dict[str, str]:
        key = f"turnrelay:usage:{usageDay(reactor.seconds())}"
        usage: Dict[str, str] = await within(link.call("t", "hgetall", key), PROMPTLY, "HGETALL")
        return usage

    async def test_summedOverNodes(self) -> None:
        """
        The day's hash holds each user's bytes both ways, seconds and
        allocations, summed over the nodes, and expires.
        """
        redis = await startRedis(self)
        a = startNode(self, redis, "a")
        b = startNode(self, redis, "b")
        link = await inspector(self, redis)
        await poll(
            lambda: all(node.service.fleet.link.up for node in (a, b)),  # type: ignore[union-attr]
            PROMPTLY,
            "the nodes to reach Redis",
        )
        ended = [
            await self.relayAndEnd(a),
            await self.relayAndEnd(b),
            await self.relayAndEnd(b, "bob"),
        ]
        alice = ended[:2]
        self.assertEqual(alice[0].bytesToPeer, 3 * len(PAYLOAD))
        self.assertEqual(alice[0].bytesFromPeer, 6 * len(PAYLOAD))
        await poll(
            lambda: accounting(a).batchesWritten and accounting(b).batchesWritten,
            PROMPTLY,
            "the usage to be written",
        )
        await poll(lambda: accounting(b).stats()["usagePendingUsers"] == 0, PROMPTLY, "B to write")
        usage = await self.usage(link)
        self.assertEqual(int(usage["alice:allocations"]), 2)
        self.assertEqual(
            int(usage["alice:bytes"]), sum(x.bytesToPeer + x.bytesFromPeer for x in alice)
        )
        seconds = float(usage["alice:seconds"])
        self.assertLess(abs(seconds - sum(self.durations[:2])), 0.05)
        self.assertEqual(int(usage["bob:allocations"]), 1)
        self.assertEqual(int(usage["bob:bytes"]), 9 * len(PAYLOAD))
        key = f"turnrelay:usage:{usageDay(reactor.seconds())}"
        ttl = int(await within(link.call("t", "ttl", key), PROMPTLY, "TTL"))
        self.assertGreater(ttl, (USAGE_DAYS - 1) * 86400)

    async def test_redisDownAtTheEnd(self) -> None:
        """
        When Redis is down as an allocation ends, its usage waits in memory
        and is written, once, when Redis is back.
        """
        redis = await startRedis(self)
        a = startNode(self, redis, "a")
        fleet = a.service.fleet
        assert fleet is not None
        await poll(lambda: fleet.link.up, PROMPTLY, "the node to reach Redis")
        await redis.stop()
        await poll(lambda: not fleet.link.up, PROMPTLY, "the node to see Redis down")

        allocation = await self.relayAndEnd(a)
        await poll(lambda: fleet.link.failures["accounting"] >= 1, PROMPTLY, "the write to fail")
        self.assertEqual(accounting(a).stats()["usagePendingUsers"], 1)
        self.assertEqual(accounting(a).batchesWritten, 0)

        await redis.start()
        link = await inspector(self, redis)
        await poll(
            lambda: accounting(a).batchesWritten == 1, PROMPTLY * 2, "the usage to be written"
        )
        usage = await self.usage(link)
        self.assertEqual(int(usage["alice:allocations"]), 1)
        self.assertEqual(
            int(usage["alice:bytes"]), allocation.bytesToPeer + allocation.bytesFromPeer
        )
        self.assertEqual(accounting(a).stats()["usagePendingUsers"], 0)

    async def test_batchAppliedOnce(self) -> None:
        """
        A batch sent again (its first answer timed out, but Redis applied
        it) is not added twice.
        """
        redis: RedisServer = await startRedis(self)
        a = startNode(self, redis, "a")
        fleet = a.service.fleet
        assert fleet is not None
        link = await inspector(self, redis)
        await poll(lambda: fleet.link.up, PROMPTLY, "the node to reach Redis")
        counting = accounting(a)
        day = usageDay(reactor.seconds())
        keys, arguments = counting._script(7, {(day, "carol"): [10, 1.5, 1]})

        first = await within(link.call("t", "eval", _ADD_USAGE, keys, arguments), PROMPTLY, "EVAL")
        again = await within(link.call("t", "eval", _ADD_USAGE, keys, arguments), PROMPTLY, "EVAL")
        self.assertEqual((int(first), int(again)), (1, 0))
        usage = await self.usage(link)
        self.assertEqual(
            {k: v for k, v in usage.items() if k.startswith("carol:")},
            {"carol:bytes": "10", "carol:seconds": "1.5", "carol:allocations": "1"},
        )
