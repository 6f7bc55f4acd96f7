"""
Tests for L{turnrelay.fleet.quota}: per-user and total quotas held over a
fleet of relays sharing a real C{redis-server}.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._assertions import TURNTestCase, errorCode
from tests._redis import RedisServer, fleetOf, startRedis
from tests._relays import LoopbackRelay, startRelay
from tests._sockets import (
    SocketTURNSession,
    bindChannel,
    datagramClient,
    roundTrip,
    udpTURNClient,
)
from tests._timing import PROMPTLY, poll, reactor, within
from tests._twistd import TwistdRelay, twistdRelayArgs
from turnrelay.config import RelayConfig, buildConfig
from turnrelay.fleet.link import RedisLink, RedisUnavailable
from turnrelay.fleet.quota import RELEASE, FleetQuota
from turnrelay.stun import attributes as A
from turnrelay.stun.message import STUNMessage

USER = "alice"
USER_KEY = f"turnrelay:quota:user:{USER}"
TOTAL_KEY = "turnrelay:quota:total"

# A short lease keeps the tests that wait for one short.
LEASE_TTL = 2.0


# With a fake link ------------------------------------------------------------


class FakeLink:
    """
    A L{RedisLink} whose answers the test gives: each call waits in
    L{calls} unless C{answer} says what it gets at once.

    @ivar calls: C{(command, arguments, Deferred)} of each call.
    @ivar answer: gives the result of a call at once (a value or a
        L{Failure}), or L{None} to leave it waiting.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Tuple[Any, ...], Deferred[Any]]] = []
        self.answer: Callable[[str, Tuple[Any, ...]], Any] = lambda command, args: None
        self.upListeners: List[Callable[[], None]] = []

    def whenUp(self, listener: Callable[[], None]) -> None:
        self.upListeners.append(listener)

    def call(self, what: str, command: str, *arguments: Any) -> Deferred[Any]:
        answer = self.answer(command, arguments)
        if isinstance(answer, Failure):
            return fail(answer)
        d: Deferred[Any] = succeed(answer) if answer is not None else Deferred()
        self.calls.append((command, arguments, d))
        return d

    def scripts(self, script: Optional[str] = None) -> List[Tuple[Any, ...]]:
        """
        @return: the arguments of each EVAL of C{script} (any by default).
        """
        return [
            args
            for command, args, _ in self.calls
            if command == "eval" and (script is None or args[0] == script)
        ]


class FakeNode:
    """
    What L{FleetQuota} uses of a L{FleetNode<turnrelay.fleet.node.FleetNode>}.
    """

    prefix = "turnrelay:"

    def __init__(self, link: Any, nodeID: str = "n1", **settings: Any) -> None:
        self.link = link
        self.nodeID = nodeID
        self.reactor = Clock()
        self.config = quotaConfig(**settings)


def quotaConfig(**settings: Any) -> RelayConfig:
    """
    @return: a fleet node's configuration, with C{settings} (C{_} for C{-}).
    """
    values = {"redis": "redis://127.0.0.1:6379", "redis-lease-ttl": LEASE_TTL, "user-quota": 10}
    values.update({name.replace("_", "-"): value for name, value in settings.items()})
    return buildConfig(values)


def renewedCounts(args: Tuple[Any, ...]) -> Dict[str, int]:
    """
    @param args: the arguments of an EVAL of the renewal script.
    @return: the counts it writes, by key.
    """
    _, keys, argv = args
    written = {keys[1]: argv[3]}
    written.update(zip(keys[2:], argv[4:], strict=True))
    return written


class FleetQuotaFakeLinkTests(SynchronousTestCase):
    """
    L{FleetQuota}'s own bookkeeping, against a link whose answers the test
    gives.
    """

    def setUp(self) -> None:
        self.link = FakeLink()
        self.node = FakeNode(self.link)
        self.quota = FleetQuota(self.node)

    def grantAll(self, command: str, args: Tuple[Any, ...]) -> Any:
        return [1, 0] if command == "eval" else "OK"

    def reserve(self) -> Any:
        results: List[Any] = []
        self.quota.reserve(USER).addBoth(results.append)
        [result] = results
        return result

    def test_releaseNeverBelowZero(self) -> None:
        """
        A release counts one allocation less, in Redis too; a second release
        of it, or a release of what was never granted, is ignored.
        """
        self.link.answer = self.grantAll
        self.assertIs(self.reserve(), True)
        self.assertEqual(self.quota.held[USER], 1)
        self.quota.release(USER)
        self.quota.release(USER)
        self.quota.release("bob")
        self.assertEqual(self.quota.held[USER], 0)
        self.assertEqual(self.quota.stats()["quotaHeld"], 0)
        self.assertEqual(self.link.scripts(RELEASE), [(RELEASE, [USER_KEY, TOTAL_KEY], ["n1"])])

    def test_reserveAsks(self) -> None:
        """
        A reservation is one EVAL with the user's and total hashes, this
        node's lease key, and the quotas in force (a reload applies).
        """
        self.link.answer = self.grantAll
        defaultTotal = self.node.config.totalQuota
        self.reserve()
        self.node.config = quotaConfig(user_quota=3, total_quota=7)
        self.reserve()
        [first, second] = self.link.scripts()
        self.assertEqual(first[1], [USER_KEY, TOTAL_KEY, "turnrelay:lease:n1"])
        self.assertEqual(first[2][:3], ["n1", 10, defaultTotal])
        self.assertEqual(second[2][:3], ["n1", 3, 7])

    def test_refused(self) -> None:
        """
        A fleet quota reached: C{False}, counted, nothing held.
        """
        self.link.answer = lambda command, args: [0, 0]
        self.assertIs(self.reserve(), False)
        self.link.answer = lambda command, args: [-1, 0]
        self.assertIs(self.reserve(), False)
        self.assertEqual(self.quota.stats()["quotaRefused"], 2)
        self.assertEqual(self.quota.held[USER], 0)

    def test_unavailableLocal(self) -> None:
        """
        Redis not answering, with C{redis-unavailable = local}: granted,
        counted as a fallback, and held, so that the next renewal writes it.
        """
        self.link.answer = lambda command, args: Failure(RedisUnavailable("down"))
        self.assertIs(self.reserve(), True)
        self.assertEqual(self.quota.stats()["quotaFallbacks"], 1)
        self.link.answer = lambda command, args: None
        self.quota.renew()
        [renewal] = self.link.scripts()
        self.assertEqual(renewedCounts(renewal), {TOTAL_KEY: 1, USER_KEY: 1})

    def test_unavailableRefuse(self) -> None:
        """
        Redis not answering, with C{redis-unavailable = refuse}: the
        reservation fails with L{RedisUnavailable} (508 for the client).
        """
        self.node.config = quotaConfig(redis_unavailable="refuse")
        self.link.answer = lambda command, args: Failure(RedisUnavailable("down"))
        result = self.reserve()
        self.assertIsInstance(result, Failure)
        result.trap(RedisUnavailable)
        self.assertEqual(self.quota.stats()["quotaUnanswered"], 1)
        self.assertEqual(self.quota.held[USER], 0)

    def test_renewalCountsAsked(self) -> None:
        """
        A renewal while a reservation is asked counts it (Redis counts it
        before the renewal if granted); refused, the next renewal takes it
        back.
        """
        self.quota.reserve(USER)
        self.quota.renew()
        [reserving, renewing] = self.link.calls
        self.assertEqual(renewedCounts(renewing[1]), {TOTAL_KEY: 1, USER_KEY: 1})
        reserving[2].callback([0, 0])
        self.quota.renew()
        self.assertEqual(renewedCounts(self.link.calls[-1][1]), {TOTAL_KEY: 0, USER_KEY: 0})
        self.link.calls[-1][2].callback(1)
        # Gone from Redis: the next renewal leaves the user out.
        self.quota.renew()
        self.assertEqual(renewedCounts(self.link.calls[-1][1]), {TOTAL_KEY: 0})

    def test_renewalNeverFails(self) -> None:
        """
        A renewal Redis does not take fires with C{False}, uncounted.
        """
        self.link.answer = lambda command, args: Failure(RedisUnavailable("down"))
        results: List[bool] = []
        self.quota.renew().addCallback(results.append)
        self.assertEqual(results, [False])
        self.assertEqual(self.quota.stats()["leaseRenewals"], 0)

    def test_renewedOnTimerAndWhenUp(self) -> None:
        """
        Started, it renews the lease at once and every third of its TTL (a
        reload changes the interval), and when Redis answers again; stopped,
        it deletes its lease.
        """
        self.link.answer = self.grantAll
        self.quota.startService()
        self.assertEqual(len(self.link.scripts()), 1)
        self.node.reactor.advance(LEASE_TTL / 3)
        self.assertEqual(len(self.link.scripts()), 2)
        self.node.config = quotaConfig(redis_lease_ttl=30)
        self.quota.reconfigure(self.node.config)
        self.assertEqual(len(self.link.scripts()), 3)
        self.node.reactor.advance(LEASE_TTL)
        self.assertEqual(len(self.link.scripts()), 3)
        self.node.reactor.advance(10)
        self.assertEqual(len(self.link.scripts()), 4)
        for listener in self.link.upListeners:
            listener()
        self.assertEqual(len(self.link.scripts()), 5)
        self.assertEqual(self.quota.stats()["leaseRenewals"], 5)
        self.quota.stopService()
        self.assertEqual(self.link.calls[-1][:2], ("delete", ("turnrelay:lease:n1",)))
        self.node.reactor.advance(60)
        self.assertEqual(len(self.link.scripts()), 5)
        self.assertEqual(self.node.reactor.getDelayedCalls(), [])

    def test_leaseMissingRenews(self) -> None:
        """
        A reservation that finds this node's lease gone renews it at once.
        """
        self.quota.startService()
        self.link.answer = lambda command, args: [1, 1]
        self.assertIs(self.reserve(), True)
        [_, reserving, renewing] = self.link.scripts()
        self.assertEqual(renewedCounts(renewing), {TOTAL_KEY: 1, USER_KEY: 1})
        self.quota.stopService()


# Against a real Redis --------------------------------------------------------


async def redisLink(testCase: TestCase, redis: RedisServer) -> RedisLink:
    """
    @return: a link of the test's own to C{redis}, up; it stops at cleanup.
    """
    link = RedisLink(redis.url, reactor, timeout=1.0)
    link.startService()
    testCase.addCleanup(link.stopService)
    await poll(lambda: link.up, PROMPTLY, "the test's link to Redis")
    return link


async def hashes(link: RedisLink) -> Tuple[Dict[str, str], Dict[str, str]]:
    """
    @return: the fleet's per-node counts of L{USER}, and of all users.
    """
    user = await within(link.call("test", "hgetall", USER_KEY), PROMPTLY, "HGETALL")
    total = await within(link.call("test", "hgetall", TOTAL_KEY), PROMPTLY, "HGETALL")
    return dict(user), dict(total)


class FleetQuotaScriptTests(TestCase):
    """
    The scripts of L{FleetQuota} in a real Redis, nodes sharing one link.
    """

    async def test_sharedAndLeased(self) -> None:
        """
        Counts add up over nodes holding a lease; a field whose node's lease
        is gone is ignored and dropped; a release never takes a field below
        zero.
        """
        redis = await startRedis(self)
        link = await redisLink(self, redis)
        a = FleetQuota(FakeNode(link, "a", user_quota=2))
        b = FleetQuota(FakeNode(link, "b", user_quota=2))
        self.assertTrue(await within(a.renew(), PROMPTLY, "renewal"))
        self.assertTrue(await within(b.renew(), PROMPTLY, "renewal"))
        # A node long dead left 5 behind, and no lease.
        await link.call("test", "hset", USER_KEY, "dead", 5)
        self.assertIs(await a.reserve(USER), True)
        self.assertEqual(await hashes(link), ({"a": "1"}, {"a": "1"}))
        self.assertIs(await b.reserve(USER), True)
        self.assertIs(await a.reserve(USER), False)
        self.assertIs(await b.reserve(USER), False)
        self.assertEqual(await hashes(link), ({"a": "1", "b": "1"}, {"a": "1", "b": "1"}))
        b.release(USER)
        self.assertIs(await a.reserve(USER), True)
        self.assertEqual(await hashes(link), ({"a": "2"}, {"a": "2"}))
        # Released behind the quota's back: still never below zero.
        await link.call("quota", "eval", RELEASE, [USER_KEY, TOTAL_KEY], ["b"])
        self.assertEqual(await hashes(link), ({"a": "2"}, {"a": "2"}))
        # The total quota, read at each reservation.
        b.node.config = quotaConfig(user_quota=0, total_quota=2)
        self.assertIs(await b.reserve("bob"), False)
        self.assertEqual(b.stats()["quotaRefused"], 2)


# A fleet of relays -----------------------------------------------------------


async def fleetRelay(
    testCase: TestCase, redis: RedisServer, nodeID: str, **settings: Any
) -> LoopbackRelay:
    """
    Start a relay in this process, a node of the fleet on C{redis} with a
    user quota of 10, and wait until its lease is in Redis.
    """
    relay = startRelay(
        testCase,
        redis=str(redis.url),
        node_id=nodeID,
        user_quota=10,
        redis_lease_ttl=LEASE_TTL,
        **settings,
    )
    quota = fleetOf(relay).quota
    await poll(lambda: quota.renewals > 0, PROMPTLY, f"the lease of {nodeID}")
    return relay


async def allocate(testCase: TestCase, session: SocketTURNSession) -> STUNMessage:
    return await within(session.allocate(), PROMPTLY, "Allocate")


async def until(
    attempt: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """
    Call C{attempt} (a coroutine function) until it returns something true,
    every C{interval} seconds.

    @return: what it returned.
    @raise AssertionError: not within C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = await attempt()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)


class FleetQuotaRelayTests(TURNTestCase, TestCase):
    """
    Relays sharing a real Redis hold a user quota together.
    """

    async def allocateOn(self, relay: Any, count: int) -> List[SocketTURNSession]:
        """
        Make C{count} allocations for L{USER} on C{relay} (a
        L{LoopbackRelay}, or the UDP address of a twistd relay), each from
        a client of its own.
        """
        address = relay.address() if isinstance(relay, LoopbackRelay) else relay
        sessions = []
        for _ in range(count):
            session = udpTURNClient(self, address)
            self.assertSuccess(await allocate(self, session))
            sessions.append(session)
        return sessions

    async def assertRefused(self, relay: LoopbackRelay, code: int = 486) -> None:
        self.assertErrorCode(await allocate(self, udpTURNClient(self, relay.address())), code)

    async def test_userQuotaOverThreeNodes(self) -> None:
        """
        Allocations of one user spread over three nodes count together: the
        11th is refused (486) on each; once one is deleted, another is
        granted on another node.
        """
        redis = await startRedis(self)
        link = await redisLink(self, redis)
        relays = [await fleetRelay(self, redis, f"node-{index}") for index in range(3)]
        sessions: List[SocketTURNSession] = []
        for relay, count in zip(relays, (4, 3, 3), strict=True):
            sessions += await self.allocateOn(relay, count)
        for relay in relays:
            await self.assertRefused(relay)
        self.assertEqual(
            await hashes(link),
            ({"node-0": "4", "node-1": "3", "node-2": "3"},) * 2,
        )
        deleted = await within(sessions[0].refresh((A.LIFETIME, 0)), PROMPTLY, "Refresh")
        self.assertSuccess(deleted)

        # The release goes over node-0's connection to Redis, the next
        # reservation over node-2's: they may arrive in either order.
        async def released() -> bool:
            user, _ = await hashes(link)
            return user.get("node-0") == "3"

        await until(released, PROMPTLY, "node-0's release in Redis")
        await self.allocateOn(relays[2], 1)
        await self.assertRefused(relays[1])
        self.assertEqual([fleetOf(relay).quota.refused for relay in relays], [1, 2, 1])

    async def test_killedNodeShareReturns(self) -> None:
        """
        A node killed with SIGKILL holding some of the user's allocations:
        within the lease TTL its share is the fleet's again.
        """
        redis = await startRedis(self)
        link = await redisLink(self, redis)
        survivor = await fleetRelay(self, redis, "survivor")
        directory = self.mktemp()
        os.makedirs(directory)
        doomed = TwistdRelay(
            self,
            twistdRelayArgs(
                FilePath(os.path.abspath(directory)),
                "--redis",
                str(redis.url),
                "--node-id",
                "doomed",
                "--user-quota",
                "10",
                "--redis-lease-ttl",
                str(LEASE_TTL),
            ),
        )
        await within(doomed.started(), PROMPTLY * 3, "the twistd relay")
        # Its first renewal goes as soon as its link is up, before any
        # reservation (on the same connection).
        await within(
            doomed.child.waitForOutput(rb"Redis at \S+ answers"), PROMPTLY, "its link to Redis"
        )
        await self.allocateOn(doomed.addresses["udp"], 6)
        await self.allocateOn(survivor, 4)
        await self.assertRefused(survivor)
        self.assertEqual((await hashes(link))[0], {"doomed": "6", "survivor": "4"})

        pid = doomed.child.transport.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        await within(doomed.child.whenEnded(), PROMPTLY, "the killed relay to end")
        killedAt = reactor.seconds()
        session = udpTURNClient(self, survivor.address())

        async def granted() -> bool:
            response = await allocate(self, session)
            return errorCode(response) is None

        await until(granted, LEASE_TTL + PROMPTLY, "the doomed node's share to return")
        waited = reactor.seconds() - killedAt
        # The lease was renewed at most a third of its TTL before the kill;
        # the margin is for a loaded machine.
        self.assertLess(waited, LEASE_TTL + 1.0)
        await self.allocateOn(survivor, 5)
        await self.assertRefused(survivor)
        self.assertEqual(await hashes(link), ({"survivor": "10"}, {"survivor": "10"}))

    async def test_redisStopped(self) -> None:
        """
        Redis stopped: a new allocation is granted with C{redis-unavailable
        = local}, refused (508) with C{refuse}; existing allocations relay
        on.  Redis started again (empty): within one lease TTL its counts
        are the live allocations again.
        """
        redis = await startRedis(self)
        link = await redisLink(self, redis)
        local = await fleetRelay(self, redis, "local", redis_unavailable="local")
        refuse = await fleetRelay(self, redis, "refuse", redis_unavailable="refuse")
        peer = datagramClient(self, "127.0.0.1")
        localSession = udpTURNClient(self, local.address())
        localRelayed = await bindChannel(self, localSession, peer.address)
        [leaving] = await self.allocateOn(local, 1)
        refuseSession = udpTURNClient(self, refuse.address())
        refuseRelayed = await bindChannel(self, refuseSession, peer.address)
        self.assertEqual(await hashes(link), ({"local": "2", "refuse": "1"},) * 2)

        await redis.stop()
        links = [fleetOf(relay).link for relay in (local, refuse)]
        await poll(lambda: not any(link.up for link in links), PROMPTLY, "the links down")
        await self.allocateOn(local, 1)
        await self.assertRefused(refuse, 508)
        # Redis being down is said once by the link, not for each Allocate.
        self.assertEqual(self.flushLoggedErrors(RedisUnavailable), [])
        deleted = await within(leaving.refresh((A.LIFETIME, 0)), PROMPTLY, "Refresh")
        self.assertSuccess(deleted)
        await roundTrip(self, localSession, peer, localRelayed, b"local, Redis down")
        await roundTrip(self, refuseSession, peer, refuseRelayed, b"refuse, Redis down")
        self.assertEqual(fleetOf(local).quota.stats()["quotaFallbacks"], 1)
        self.assertEqual(fleetOf(refuse).quota.stats()["quotaUnanswered"], 1)

        await redis.start()
        await poll(
            lambda: link.up and all(link.up for link in links),
            PROMPTLY * 2,
            "the links up again",
        )
        live = {
            fleetOf(relay).nodeID: str(relay.registry.countForUser(USER))
            for relay in (local, refuse)
        }
        self.assertEqual(live, {"local": "2", "refuse": "1"})

        async def rewritten() -> bool:
            return await hashes(link) == (live, live)

        await until(rewritten, LEASE_TTL, "the counts rewritten in Redis", interval=0.05)
