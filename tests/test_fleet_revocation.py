"""
Tests for L{turnrelay.fleet.revocation}: revoking a user on a fleet of three
relays sharing a real C{redis-server}, and the pieces on their own.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._assertions import errorCode
from tests._redis import RedisServer, fleetOf, startRedis
from tests._relays import LoopbackRelay, startRelay
from tests._session import REALM, REST_SECRET, USERS
from tests._sockets import SocketTURNSession, udpTURNClient
from tests._timing import PROMPTLY, poll, reactor, within
from turnrelay import ctl
from turnrelay.admin import control
from turnrelay.admin.console import AdminConsole
from turnrelay.auth.credentials import StaticCredentials, mintRESTCredential
from turnrelay.fleet.link import RedisLink
from turnrelay.fleet.revocation import RevokingCredentials, revokedBy
from turnrelay.stun.attributes import PASSWORD_ALGORITHM_MD5
from turnrelay.stun.message import MessageClass

USER = "alice"
OTHER = "bob"

# What "every node within 1 s" is checked against: the second itself, with
# the scheduling slack of a loaded two-core machine.
WITHIN_A_SECOND = 1.5

# Each node's control socket, by node id.
SOCKETS: Dict[str, str] = {}


class RevokedByTests(SynchronousTestCase):
    """
    What a revoked name refuses.
    """

    def test_exactName(self) -> None:
        """
        A revoked name refuses that username, not others.
        """
        self.assertTrue(revokedBy("alice", {"alice"}))
        self.assertFalse(revokedBy("alicia", {"alice"}))
        self.assertFalse(revokedBy("bob", {"alice"}))

    def test_restUserID(self) -> None:
        """
        A revoked name refuses every TURN REST API username whose user id
        it is; a revoked REST username refuses that one only.
        """
        self.assertTrue(revokedBy("1700000000:alice", {"alice"}))
        self.assertFalse(revokedBy("1700000000:bob", {"alice"}))
        self.assertTrue(revokedBy("1700000000:alice", {"1700000000:alice"}))
        self.assertFalse(revokedBy("1700086400:alice", {"1700000000:alice"}))
        # Not a REST username: no expiry before the colon.
        self.assertFalse(revokedBy("team:alice", {"alice"}))


class RevokingCredentialsTests(SynchronousTestCase):
    """
    L{RevokingCredentials} hides revoked users' keys.
    """

    def test_keys(self) -> None:
        """
        A revoked user has no keys; the others keep theirs.
        """
        revoked = {"alice"}
        store = RevokingCredentials(
            StaticCredentials(REALM, dict(USERS)), lambda name: revokedBy(name, revoked)
        )
        self.assertEqual(store.keysFor("alice", REALM, PASSWORD_ALGORITHM_MD5), [])
        self.assertEqual(len(store.keysFor("bob", REALM, PASSWORD_ALGORITHM_MD5)), 1)
        revoked.clear()
        self.assertEqual(len(store.keysFor("alice", REALM, PASSWORD_ALGORITHM_MD5)), 1)


async def fleetRelay(testCase: TestCase, redis: RedisServer, nodeID: str) -> LoopbackRelay:
    """
    Start a relay in this process, a node of the fleet on C{redis}, with a
    control socket, and wait until it has read the revoked set.
    """
    directory = tempfile.mkdtemp(prefix="turnrelay-revoke-")
    testCase.addCleanup(os.rmdir, directory)
    path = os.path.join(directory, "control.sock")

    def unlink() -> None:
        if os.path.exists(path):
            os.unlink(path)

    testCase.addCleanup(unlink)
    relay = startRelay(testCase, redis=str(redis.url), node_id=nodeID, control_socket=path)
    SOCKETS[nodeID] = path
    link = fleetOf(relay).link
    await poll(lambda: link.up, PROMPTLY, f"{nodeID}'s link to Redis")
    return relay


async def operatorLink(testCase: TestCase, redis: RedisServer) -> RedisLink:
    """
    @return: a plain connection of the test's own, as an operator's tool.
    """
    link = RedisLink(redis.url, reactor, timeout=1.0)
    link.startService()
    testCase.addCleanup(link.stopService)
    await poll(lambda: link.up, PROMPTLY, "the test's link to Redis")
    return link


class FleetRevocationTests(TestCase):
    """
    Three relays on one Redis; a user with allocations on each.
    """

    async def startFleet(self) -> None:
        self.redis = await startRedis(self)
        self.relays = [await fleetRelay(self, self.redis, nodeID) for nodeID in ("n1", "n2", "n3")]
        self.link = await operatorLink(self, self.redis)

    def client(self, relay: LoopbackRelay, username: str = USER) -> SocketTURNSession:
        return udpTURNClient(self, relay.address(), username=username, password=USERS[username])

    async def allocateEverywhere(self, username: str = USER) -> None:
        for relay in self.relays:
            response = await within(self.client(relay, username).allocate(), PROMPTLY, "Allocate")
            self.assertEqual(response.messageClass, MessageClass.SUCCESS_RESPONSE, response)
            self.assertEqual(relay.registry.countForUser(username), 1)

    async def assertEndedEverywhere(self, username: str = USER) -> None:
        """
        Within about a second, no node has an allocation of C{username} and
        each refuses a new one with 401; the other user keeps its own.
        """
        started = reactor.seconds()
        await poll(
            lambda: all(relay.registry.countForUser(username) == 0 for relay in self.relays),
            WITHIN_A_SECOND,
            f"{username}'s allocations to end on every node",
            describe=lambda: [relay.registry.countForUser(username) for relay in self.relays],
        )
        self.assertLess(reactor.seconds() - started, WITHIN_A_SECOND)
        for relay in self.relays:
            self.assertEqual(relay.registry.countForUser(OTHER), 1)
            response = await within(self.client(relay, username).allocate(), PROMPTLY, "Allocate")
            self.assertEqual(errorCode(response), 401, response)

    async def assertLetIn(self, username: str = USER) -> None:
        """
        Within about a second, every node takes a new allocation of
        C{username} again.
        """
        for relay in self.relays:
            revocations: Any = fleetOf(relay).revocations

            def letIn(r: Any = revocations) -> bool:
                return not r.isRevoked(username)

            await poll(
                letIn,
                WITHIN_A_SECOND,
                f"{fleetOf(relay).nodeID} to let {username} in",
            )
            response = await within(self.client(relay, username).allocate(), PROMPTLY, "Allocate")
            self.assertEqual(response.messageClass, MessageClass.SUCCESS_RESPONSE, response)

    async def control(self, relay: LoopbackRelay, command: Any, username: str) -> Any:
        return await ctl.call(
            reactor, SOCKETS[fleetOf(relay).nodeID], command, {"username": username}, PROMPTLY
        )

    async def test_revokeWithTheControlCommand(self) -> None:
        """
        C{turnrelayctl revoke alice} on one node: every node ends alice's
        allocations within a second and refuses her (401), and Redis holds
        the revocation; C{unrevoke} lets her in again.
        """
        await self.startFleet()
        await self.allocateEverywhere(USER)
        await self.allocateEverywhere(OTHER)

        answer = await self.control(self.relays[0], control.Revoke, USER)
        self.assertIn("'alice' revoked on every node; 1 allocation ended here", answer["text"])
        self.assertIn('"ended": 1', answer["data"])
        await self.assertEndedEverywhere(USER)
        members = await within(self.link.call("test", "smembers", "turnrelay:revoked"), 5, "")
        self.assertEqual(set(members), {USER})
        for relay in self.relays:
            self.assertEqual(fleetOf(relay).revocations.stats()["revoked"], 1)

        answer = await self.control(self.relays[1], control.Unrevoke, USER)
        self.assertIn("no longer revoked", answer["text"])
        await self.assertLetIn(USER)

    async def test_revokeFromTheConsole(self) -> None:
        """
        The console's C{revoke()} does the same; revoking a user id refuses
        the TURN REST API credentials minted for it.
        """
        await self.startFleet()
        username, password = mintRESTCredential(
            REST_SECRET.encode(), "carol", 3600, reactor.seconds()
        )
        for relay in self.relays:
            session = udpTURNClient(self, relay.address(), username=username, password=password)
            response = await within(session.allocate(), PROMPTLY, "Allocate")
            self.assertEqual(response.messageClass, MessageClass.SUCCESS_RESPONSE, response)
        console = AdminConsole(self.relays[2].service, reactor)
        text = await within(console.revoke("carol"), PROMPTLY, "revoke()")  # type: ignore[arg-type]
        self.assertIn("'carol' revoked on every node", text)
        await poll(
            lambda: all(relay.registry.countForUser(username) == 0 for relay in self.relays),
            WITHIN_A_SECOND,
            "carol's REST allocations to end on every node",
        )
        for relay in self.relays:
            session = udpTURNClient(self, relay.address(), username=username, password=password)
            response = await within(session.allocate(), PROMPTLY, "Allocate")
            self.assertEqual(errorCode(response), 401, response)

    async def test_revokeWithRawRedis(self) -> None:
        """
        An operator's own tooling revokes with SADD and PUBLISH, and
        unrevokes with SREM alone.
        """
        await self.startFleet()
        await self.allocateEverywhere(USER)
        await self.allocateEverywhere(OTHER)
        await within(self.link.call("test", "sadd", "turnrelay:revoked", USER), PROMPTLY, "SADD")
        await within(
            self.link.call("test", "publish", "turnrelay:revocations", USER), PROMPTLY, "PUBLISH"
        )
        await self.assertEndedEverywhere(USER)
        await within(self.link.call("test", "srem", "turnrelay:revoked", USER), PROMPTLY, "SREM")
        await self.assertLetIn(USER)

    async def test_reloadKeepsRevocations(self) -> None:
        """
        A configuration reload rebuilds the credential chain: revoked users
        stay refused.
        """
        await self.startFleet()
        relay = self.relays[0]
        await self.control(relay, control.Revoke, USER)
        relay.service.reloadConfig(relay.service.config)
        response = await within(self.client(relay).allocate(), PROMPTLY, "Allocate")
        self.assertEqual(errorCode(response), 401, response)

    async def test_redisDown(self) -> None:
        """
        With Redis down, a node keeps refusing what it had read, and a
        revocation fails, saying so, rather than apply on one node.
        """
        await self.startFleet()
        await self.control(self.relays[0], control.Revoke, USER)
        # Every node has heard of it before Redis goes.
        await poll(
            lambda: all(fleetOf(relay).revocations.isRevoked(USER) for relay in self.relays),
            PROMPTLY,
            "every node to know of the revocation",
        )
        await self.redis.stop()
        await poll(
            lambda: not any(fleetOf(relay).link.up for relay in self.relays),
            PROMPTLY,
            "the links down",
        )
        for relay in self.relays:
            response = await within(self.client(relay).allocate(), PROMPTLY, "Allocate")
            self.assertEqual(errorCode(response), 401, response)
        with self.assertRaises(ctl.CommandFailed) as raised:
            await self.control(self.relays[1], control.Revoke, OTHER)
        self.assertIn("'bob' not revoked", str(raised.exception))


class SingleRelayTests(TestCase):
    """
    Without C{redis}, revocation says it needs it.
    """

    def test_needsRedis(self) -> None:
        relay = startRelay(self)
        answer = AdminConsole(relay.service, reactor).revoke(USER)
        self.assertIn("set redis to revoke", str(answer))
        failures: List[Any] = []
        AdminConsole(relay.service, reactor).revocationRecord(USER, True).addErrback(
            failures.append
        )
        [failure] = failures
        self.assertIn("set redis", failure.getErrorMessage())
