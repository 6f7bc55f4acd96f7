"""
Independent TURN clients relay through an in-process relay over UDP on
127.0.0.1, with static and TURN REST API credentials: coturn's
C{turnutils_uclient} (C, with coturn's C{turnutils_peer} as the echo peer)
and aioice's TURN client (C{tests/interop/aioice_turn.py}, in a child
Python).

The clients' own reports say what they sent and got back; the relay's
registry and log events say what it allocated, relayed and deleted.  Every
wait ends on an event (a process exiting, a line printed, a log event), and
the tests' timeouts are only a safety net.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Tuple

from twisted.trial.unittest import SkipTest, TestCase

from tests._logs import isCreated, isEnded, isRefreshed
from tests._processes import (
    ChildProcess,
    aioiceTURNArgs,
    assertRelayedAll,
    runToCompletion,
    startEchoPeer,
    uclientArgs,
    uclientCounters,
)
from tests._relays import (
    MAX_RELAY_PORT,
    MIN_RELAY_PORT,
    LoopbackRelay,
    assertRefusedUnauthenticated,
    relayedKey,
    startRelay,
)
from tests._session import PASSWORD, REST_SECRET, USERNAME
from tests._sockets import HOST
from tests._timing import reactor
from turnrelay.auth.credentials import mintRESTCredential, restPassword
from turnrelay.stun.address import TransportAddress

# turnutils_uclient sends this many messages of this size, one every 5 ms.
MESSAGES = 10
MESSAGE_SIZE = 200


class CoturnUclientTests(TestCase):
    """
    coturn's C{turnutils_uclient} allocates, relays to C{turnutils_peer} and
    counts the echoes.

    It runs with C{-c} (no RTCP allocation: C{turnutils_uclient} would
    otherwise leave an EVEN-PORT reservation behind) and one client.  Before
    its real allocation it makes a probe allocation that it never uses nor
    deletes; the relay's cleanup ends it.
    """

    # Each run of the client takes 1 to 5 s (it counts in whole seconds).
    timeout = 60

    async def _uclient(
        self, relay: LoopbackRelay, peer: TransportAddress, *options: str, rtcp: bool = False
    ) -> ChildProcess:
        """
        Run the client to its end.

        @param rtcp: make an RTCP allocation next to the RTP one (without
            C{-c}), the pair reserved with EVEN-PORT.
        """
        args = uclientArgs(
            self,
            relay.address(),
            peer,
            *([] if rtcp else ["-c"]),
            *options,
            messages=MESSAGES,
            size=MESSAGE_SIZE,
        )
        return await runToCompletion(self, args)

    async def _relays(self, *options: str) -> Tuple[LoopbackRelay, Dict[str, Any], bytes]:
        """
        Run the client with C{options} and check that every message went to
        the peer and came back through the relay, as both the client and
        the relay count them, and that the client deleted its allocation.

        @return: the relay, its log event of the allocation's end, and what
            the client printed.
        """
        relay = startRelay(self)
        peer, _ = await startEchoPeer(self)
        child = await self._uclient(relay, peer, *options)
        assertRelayedAll(self, child, MESSAGES)
        # The client may exit before the relay has read its last request.
        ended = await relay.events.waitFor(
            lambda event: isEnded(event) and event["reason"] == "deleted"
        )
        self.assertEqual(
            (
                ended["packetsToPeer"],
                ended["bytesToPeer"],
                ended["packetsFromPeer"],
                ended["bytesFromPeer"],
                ended["dropped"],
            ),
            (MESSAGES, MESSAGES * MESSAGE_SIZE, MESSAGES, MESSAGES * MESSAGE_SIZE, 0),
            ended,
        )
        created = relay.events.matching(
            lambda event: isCreated(event) and event["relayed"] == ended["relayed"]
        )
        self.assertEqual([event["username"] for event in created], [ended["username"]])
        relayedPort = int(ended["relayed"].rpartition(":")[2])
        self.assertTrue(MIN_RELAY_PORT <= relayedPort <= MAX_RELAY_PORT, ended["relayed"])
        # What remains is the probe allocation, which never relayed anything.
        self.assertEqual(
            [a for a in relay.registry if a.packetsToPeer or a.packetsFromPeer or a.dropped], []
        )
        return relay, ended, child.output

    async def _refused(self, username: str, password: str, reason: str) -> None:
        """
        Run the client with credentials the relay must refuse, and check that
        it gave up without an allocation.

        @param reason: why the relay refuses, as it counts it.
        """
        relay = startRelay(self)
        peer, _ = await startEchoPeer(self)
        child = await self._uclient(relay, peer, "-s", "-u", username, "-w", password)
        self.assertNotEqual(child.exitCode, 0, child.output)
        self.assertIn(b"Cannot complete Allocation", child.output)
        self.assertIsNone(uclientCounters(child.output), child.output)
        self.assertEqual(len(relay.registry), 0)
        self.assertEqual(relay.events.matching(isCreated), [])
        assertRefusedUnauthenticated(self, relay, reason)

    async def test_staticChannels(self) -> None:
        """
        With a static user, the client binds channels, numbers from RFC 5766's
        range 0x4000-0x7FFF included, and relays ChannelData to the peer and
        back without loss.
        """
        _, ended, output = await self._relays("-v", "-u", USERNAME, "-w", PASSWORD)
        self.assertEqual(ended["username"], USERNAME)
        # -v: the client prints each successful ChannelBind with its number;
        # it binds two channels (to the peer's port and the next), twice each.
        numbers = [int(n, 16) for n in re.findall(rb"success: 0x([0-9a-f]+)", output)]
        self.assertEqual(len(numbers), 4, output)
        self.assertTrue(all(0x4000 <= n <= 0x7FFF for n in numbers), numbers)

    async def test_staticSendIndications(self) -> None:
        """
        With a static user and C{-s}, the client creates a permission and
        relays with Send indications, getting Data indications back, without
        loss.
        """
        _, ended, _ = await self._relays("-s", "-u", USERNAME, "-w", PASSWORD)
        self.assertEqual(ended["username"], USERNAME)

    async def test_restCredentials(self) -> None:
        """
        Given the shared secret with C{-W}, the client mints its own TURN
        REST API credential (a day ahead), which the relay accepts.
        """
        now = reactor.seconds()
        _, ended, _ = await self._relays("-u", "carol", "-W", REST_SECRET)
        match = re.fullmatch(r"(\d+):carol", ended["username"])
        self.assertIsNotNone(match, ended["username"])
        assert match is not None
        self.assertTrue(now < int(match.group(1)) <= reactor.seconds() + 86400, ended)

    async def test_wrongPassword(self) -> None:
        """
        A static user with the wrong password is refused with 401 and the
        client gives up without an allocation.
        """
        await self._refused(USERNAME, "not-" + PASSWORD, "bad-integrity")

    async def test_expiredREST(self) -> None:
        """
        A REST credential whose expiry has passed is refused with 401 although
        the secret signed it.
        """
        username = f"{int(reactor.seconds()) - 3600}:{USERNAME}"
        await self._refused(username, restPassword(REST_SECRET.encode(), username), "expired")

    async def test_stopEndsReservations(self) -> None:
        """
        Stopping the relay service ends what clients left behind, the
        EVEN-PORT reservations too, and closes every relay socket.
        """
        relay = startRelay(self)
        peer, _ = await startEchoPeer(self)
        # With RTCP, the client's last Allocate reserves the next port (EVEN-PORT
        # with R) and leaves the reservation unused.
        child = await self._uclient(relay, peer, "-s", "-u", USERNAME, "-w", PASSWORD, rtcp=True)
        self.assertEqual(child.exitCode, 0, child.output)
        pool = relay.service.server.relayPorts
        assert pool is not None
        if pool.inUse <= len(relay.registry):
            raise SkipTest("this turnutils_uclient left no EVEN-PORT reservation behind")
        await relay.service.stopService()
        self.assertEqual((len(relay.registry), pool.inUse), (0, 0))


class AioiceTURNTests(TestCase):
    """
    aioice's TURN client, run by C{tests/interop/aioice_turn.py}: it
    allocates, binds a channel to its own peer socket, relays round trips,
    and deletes the allocation when its transport closes.
    """

    timeout = 30
    roundTrips = 5

    async def _aioice(
        self, relay: LoopbackRelay, username: str, password: str, *options: str
    ) -> Tuple[ChildProcess, Dict[str, Any]]:
        args = aioiceTURNArgs(
            self,
            relay.address(),
            username,
            password,
            "--round-trips",
            str(self.roundTrips),
            *options,
        )
        child = await runToCompletion(self, args)
        lines = child.output.decode("utf-8").splitlines()
        self.assertEqual(len(lines), 1, (child.output, child.errors))
        result: Dict[str, Any] = json.loads(lines[0])
        return child, result

    async def _relays(
        self, username: str, password: str, *options: str
    ) -> Tuple[LoopbackRelay, Dict[str, Any]]:
        """
        Relay round trips with aioice and check both sides' accounts.

        @return: the relay, and the script's report.
        """
        relay = startRelay(self)
        child, result = await self._aioice(relay, username, password, *options)
        self.assertEqual((child.exitCode, result["error"]), (0, None), (result, child.errors))
        self.assertEqual(result["roundTrips"], self.roundTrips)
        self.assertTrue(result["deleted"], result)
        host, port = result["relayed"]
        self.assertEqual(host, HOST)
        self.assertTrue(MIN_RELAY_PORT <= port <= MAX_RELAY_PORT, result)
        self.assertEqual(result["mapped"][0], HOST)

        relayed = relayedKey(result["relayed"])
        ended = await relay.whenEnded(relayed)
        self.assertEqual(
            (ended["username"], ended["packetsToPeer"], ended["packetsFromPeer"], ended["dropped"]),
            (username, self.roundTrips, self.roundTrips, 0),
        )
        [created] = relay.events.matching(
            lambda event: isCreated(event) and event["relayed"] == relayed
        )
        # XOR-MAPPED-ADDRESS is the client's address in the 5-tuple.
        self.assertTrue(
            created["client"].startswith(f"udp:{relayedKey(result['mapped'])}->"), created
        )
        self.assertEqual(list(relay.registry), [])
        return relay, result

    async def _refused(self, username: str, password: str, reason: str) -> None:
        """
        Check that the relay refuses aioice's Allocate with 401 and holds no
        allocation.

        @param reason: why the relay refuses, as it counts it.
        """
        relay = startRelay(self)
        child, result = await self._aioice(relay, username, password)
        self.assertEqual((child.exitCode, result["errorCode"]), (2, 401), result)
        self.assertIsNone(result["relayed"])
        self.assertEqual(len(relay.registry), 0)
        self.assertEqual(relay.events.matching(isCreated), [])
        # A retransmission of the Allocate would be refused again, alike.
        assertRefusedUnauthenticated(self, relay, reason)

    async def test_staticCredentials(self) -> None:
        """
        With a static user, aioice allocates, relays every round trip intact
        through a channel, and deletes its allocation.
        """
        _, result = await self._relays(USERNAME, PASSWORD)
        bound = [line for line in result["log"] if line.startswith("TURN channel bound")]
        self.assertEqual(len(bound), 1, result["log"])

    async def test_restCredentials(self) -> None:
        """
        A TURN REST API credential minted with the shared secret is accepted
        like a static user.
        """
        username, password = mintRESTCredential(
            REST_SECRET.encode(), "carol", ttl=600, now=reactor.seconds()
        )
        await self._relays(username, password)

    async def test_refresh(self) -> None:
        """
        aioice's Refresh with a LIFETIME is granted that lifetime, and its
        channel binding refreshes (the same number, before every datagram)
        succeed without disturbing the relaying.
        """
        relay, result = await self._relays(
            USERNAME, PASSWORD, "--refresh-lifetime", "1200", "--rebind-channel"
        )
        self.assertEqual(result["refreshedLifetime"], 1200)
        refreshed = relay.events.matching(isRefreshed)
        self.assertEqual(
            [(event["relayed"], event["lifetime"]) for event in refreshed],
            [(relayedKey(result["relayed"]), 1200)],
        )
        bound = {line for line in result["log"] if line.startswith("TURN channel bound")}
        self.assertEqual(len(bound), 1, result["log"])
        self.assertEqual(
            sum(line.startswith("TURN channel bound") for line in result["log"]), self.roundTrips
        )

    async def test_wrongPassword(self) -> None:
        """
        A static user with the wrong password gets 401, which aioice reports
        as a failed allocation, and the relay holds no allocation.
        """
        await self._refused(USERNAME, "not-" + PASSWORD, "bad-integrity")

    async def test_expiredREST(self) -> None:
        """
        A REST credential whose expiry has passed gets 401 although the
        secret signed it.
        """
        username = f"{int(reactor.seconds()) - 60}:carol"
        await self._refused(username, restPassword(REST_SECRET.encode(), username), "expired")
