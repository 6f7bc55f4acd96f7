"""
Tests for L{turnrelay.fleet.users}: users and REST secrets kept in a real
C{redis-server} in coturn's layout, on a fleet of two relays.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.trial.unittest import TestCase

from tests._assertions import errorCode
from tests._redis import RedisServer, fleetOf, startRedis
from tests._relays import LoopbackRelay, startRelay
from tests._session import REALM
from tests._sockets import udpTURNClient
from tests._timing import PROMPTLY, poll, reactor, within
from turnrelay.auth.credentials import mintRESTCredential
from turnrelay.fleet.link import RedisLink
from turnrelay.fleet.users import RedisUsers
from turnrelay.stun.message import MessageClass

# Refreshes are this often; what Redis holds is seen within a few.
REFRESH = 0.2
SEEN = REFRESH * 10

USER = "dave"
PASSWORD = "dave-password"
KEY = f"turn/realm/{REALM}/user/{USER}/key"


def coturnKey(username: str, password: str) -> str:
    """
    @return: the hex MD5 long-term key, as coturn's turnadmin writes it.
    """
    return hashlib.md5(f"{username}:{REALM}:{password}".encode()).hexdigest()


def usersOf(relay: LoopbackRelay) -> RedisUsers:
    """
    @return: the users in Redis of a relay started with C{redis-users}.
    """
    users = fleetOf(relay).users
    assert users is not None
    return users


async def fleetRelay(testCase: TestCase, redis: RedisServer, nodeID: str) -> LoopbackRelay:
    relay = startRelay(
        testCase,
        redis=str(redis.url),
        node_id=nodeID,
        redis_users=True,
        redis_users_refresh=REFRESH,
    )
    users = usersOf(relay)
    await poll(lambda: users.refreshes > 0, PROMPTLY, f"{nodeID}'s first read of the users")
    return relay


class RedisUsersTests(TestCase):
    """
    Two relays reading users and secrets from one Redis.
    """

    async def startFleet(self) -> None:
        self.redis = await startRedis(self)
        self.relays = [await fleetRelay(self, self.redis, nodeID) for nodeID in ("n1", "n2")]
        self.link = RedisLink(self.redis.url, reactor, timeout=1.0)
        self.link.startService()
        self.addCleanup(self.link.stopService)
        await poll(lambda: self.link.up, PROMPTLY, "the test's link to Redis")

    async def redisCommand(self, command: str, *arguments: object) -> object:
        return await within(self.link.call("test", command, *arguments), PROMPTLY, command)

    async def allocate(self, relay: LoopbackRelay, username: str, password: str) -> int:
        """
        @return: 0 for a success, else the error code.
        """
        session = udpTURNClient(self, relay.address(), username=username, password=password)
        response = await within(session.allocate(), PROMPTLY, "Allocate")
        if response.messageClass == MessageClass.SUCCESS_RESPONSE:
            return 0
        return errorCode(response) or -1

    async def untilEveryNode(self, username: str, password: str, expected: int) -> None:
        """
        Try an Allocate on each node until it answers C{expected}, within
        a few refreshes.
        """
        for relay in self.relays:
            users = usersOf(relay)
            deadline = reactor.seconds() + SEEN
            while True:
                seen = users.refreshes
                answer = await self.allocate(relay, username, password)
                if answer == expected:
                    break
                if reactor.seconds() > deadline:
                    self.fail(f"{username}: {answer} rather than {expected} after {SEEN} s")

                # Try again once the node has read Redis again.
                def refreshed(u: Any = users, s: int = seen) -> bool:
                    return bool(u.refreshes > s)

                await poll(refreshed, SEEN, "a refresh")

    async def test_userAddedAndDeleted(self) -> None:
        """
        A user written by coturn's tools can allocate on every node without
        a restart, and is refused once deleted.
        """
        await self.startFleet()
        self.assertEqual(await self.allocate(self.relays[0], USER, PASSWORD), 401)
        await self.redisCommand("set", KEY, coturnKey(USER, PASSWORD))
        await self.untilEveryNode(USER, PASSWORD, 0)
        self.assertEqual(await self.allocate(self.relays[1], USER, "wrong"), 401)
        await self.redisCommand("delete", KEY)
        await self.untilEveryNode(USER, PASSWORD, 401)

    async def test_clearPassword(self) -> None:
        """
        coturn's clear-text C{password} key works as well.
        """
        await self.startFleet()
        await self.redisCommand("set", f"turn/realm/{REALM}/user/erin/password", "erin-pw")
        await self.untilEveryNode("erin", "erin-pw", 0)

    async def test_restSecrets(self) -> None:
        """
        A secret in C{turn/realm/<realm>/secret} (a set) or in coturn's
        C{turn/realm/<realm>/secret/<id>} makes the REST credentials minted
        with it work.
        """
        await self.startFleet()
        now = reactor.seconds()
        username, password = mintRESTCredential(b"redis-secret", "frank", 600, now)
        self.assertEqual(await self.allocate(self.relays[0], username, password), 401)
        await self.redisCommand("sadd", f"turn/realm/{REALM}/secret", "redis-secret")
        await self.untilEveryNode(username, password, 0)

        username, password = mintRESTCredential(b"coturn-secret", "grace", 600, now)
        await self.redisCommand("set", f"turn/realm/{REALM}/secret/1368426581", "coturn-secret")
        await self.untilEveryNode(username, password, 0)
        self.assertEqual(usersOf(self.relays[0]).stats()["redisSecrets"], 2)

    async def test_redisDownKeepsTheCache(self) -> None:
        """
        With Redis down, the users last read stay in force.
        """
        await self.startFleet()
        await self.redisCommand("set", KEY, coturnKey(USER, PASSWORD))
        await self.untilEveryNode(USER, PASSWORD, 0)
        await self.redis.stop()
        await poll(
            lambda: not any(fleetOf(relay).link.up for relay in self.relays),
            PROMPTLY,
            "the links down",
        )
        refreshes = [usersOf(relay).refreshes for relay in self.relays]
        for relay in self.relays:
            self.assertEqual(await self.allocate(relay, USER, PASSWORD), 0)
        self.assertEqual([usersOf(relay).refreshes for relay in self.relays], refreshes)
