"""
C{--workers 2} under a real twistd: clients spread over both workers and stay
with theirs, quotas hold across them, and a worker killed outright is
restarted while the other's clients go on relaying.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from typing import Any, Dict, List, Tuple
from urllib.request import urlopen

from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase
from tests._processes import controlJSON, freePortPair
from tests._sockets import (
    SocketTURNSession,
    UnverifiedClient,
    bindChannel,
    datagramClient,
    roundTrip,
    streamTURNClient,
    udpTURNClient,
)
from tests._timing import PROMPTLY, poll, reactor, within
from tests._twistd import TwistdRelay, relayWorker, twistdRelayArgs
from tests.test_admin_metrics import parseScrape, value
from turnrelay.auth.credentials import mintRESTCredential
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import Method

SECRET = "worker-tests-shared-secret"
READY = rb"worker (\d) \(pid (\d+)\) ready"


def workerOf(relayed: TransportAddress) -> int:
    """
    The worker that holds an allocation, known by its relayed port.
    """
    return relayWorker(relayed.port, 2)


class WorkersTestCase(TURNTestCase, TestCase):
    async def startRelay(self, *extra: str) -> TwistdRelay:
        directory = FilePath(self.mktemp())
        directory.makedirs()
        args = twistdRelayArgs(directory, "--workers", "2", "--static-auth-secret", SECRET, *extra)
        relay = await TwistdRelay(self, args).started()
        # Both workers serve before the test begins.
        await within(relay.child.waitForOutput(READY), PROMPTLY * 5, "a worker")
        await poll(
            lambda: len(re.findall(READY, relay.child.output)) >= 2, PROMPTLY * 5, "both workers"
        )
        return relay

    def client(self, relay: TwistdRelay, username: str, password: str) -> SocketTURNSession:
        return udpTURNClient(self, relay.addresses["udp"], username=username, password=password)

    def credential(self, userID: str) -> Tuple[str, str]:
        return mintRESTCredential(SECRET.encode(), userID, 3600, time.time())

    def pids(self, relay: TwistdRelay) -> Dict[int, int]:
        """
        The latest pid of each worker, from the log.
        """
        return {int(m[0]): int(m[1]) for m in re.findall(READY, relay.child.output)}


class SteeringTests(WorkersTestCase):
    """
    Clients from many ports spread over both workers, and each relays
    through its own without loss; quotas count across workers.
    """

    async def test_spreadAndQuota(self) -> None:
        """
        200 UDP and 50 TLS allocations, each with a user of its own, land on
        both workers (each relays at least 30% of the packets) and relay a
        round trip each, paced, without loss.  A user's 11th allocation is
        refused with 486 whichever worker it lands on.
        """
        relay = await self.startRelay("--user-quota", "10")
        peer = datagramClient(self, "127.0.0.1")
        packets = [0, 0]
        for number in range(200):
            username, password = self.credential(f"udp{number}")
            session = udpTURNClient(
                self, relay.addresses["udp"], username=username, password=password
            )
            relayed = await bindChannel(self, session, peer.address)
            await roundTrip(self, session, peer, relayed, b"u%d" % number)
            packets[workerOf(relayed)] += 2
        for number in range(50):
            username, password = self.credential(f"tls{number}")
            client = await streamTURNClient(
                self, relay.addresses["tls"], UnverifiedClient(), username, password
            )
            await within(client.whenHandshaken(), PROMPTLY, "the TLS handshake")
            relayed = await bindChannel(self, client.session, peer.address)
            await roundTrip(self, client.session, peer, relayed, b"t%d" % number)
            packets[workerOf(relayed)] += 2
        total = sum(packets)
        self.assertEqual(total, 500)
        for worker, count in enumerate(packets):
            self.assertGreaterEqual(count / total, 0.3, f"worker {worker}: {packets}")

        # One user, eleven allocations from eleven ports.
        username, password = self.credential("quota")
        workers: List[int] = []
        for _ in range(10):
            session = udpTURNClient(
                self, relay.addresses["udp"], username=username, password=password
            )
            allocated = await within(session.allocate(), PROMPTLY, "Allocate")
            self.assertSuccess(allocated)
            workers.append(workerOf(allocated.get(A.XOR_RELAYED_ADDRESS)))
        self.assertEqual(set(workers), {0, 1}, "the ten allocations are all on one worker")
        for _ in range(4):
            session = udpTURNClient(
                self, relay.addresses["udp"], username=username, password=password
            )
            self.assertErrorCode(await within(session.allocate(), PROMPTLY, "Allocate"), 486)


class RestartTests(WorkersTestCase):
    """
    A worker killed outright is restarted; the other worker's clients do
    not notice, and the dead one's clients allocate again.
    """

    async def test_killedWorker(self) -> None:
        """
        After C{kill -9} of worker 0, the control process restarts it
        within 2 s, worker 1's clients relay every packet throughout, and
        worker 0's clients, whose allocations are reported ended, get a new
        allocation when they retry.
        """
        relay = await self.startRelay()
        peer = datagramClient(self, "127.0.0.1")
        clients: Dict[int, List[Tuple[SocketTURNSession, TransportAddress]]] = {0: [], 1: []}
        number = 0
        while min(len(c) for c in clients.values()) < 5 and number < 100:
            username, password = self.credential(f"client{number}")
            session = udpTURNClient(
                self, relay.addresses["udp"], username=username, password=password
            )
            relayed = await bindChannel(self, session, peer.address)
            clients[workerOf(relayed)].append((session, relayed))
            number += 1
        doomed = self.pids(relay)[0]
        killedAt = reactor.seconds()
        os.kill(doomed, signal.SIGKILL)

        # Worker 1's clients relay on, packet after packet, while worker 0
        # is down and while it comes back.
        rounds = 0
        while self.pids(relay)[0] == doomed or rounds < 3:
            for session, relayed in clients[1]:
                await roundTrip(self, session, peer, relayed, b"r%d" % rounds)
            rounds += 1
            self.assertLess(reactor.seconds() - killedAt, 2.0, "worker 0 was not restarted in 2 s")
        self.assertIn(b"was killed by SIGKILL", relay.child.output)
        self.assertRegex(relay.child.output, rb"its \d+ allocations ended")

        # Worker 0's clients find their allocation gone, and allocate anew
        # on the same 5-tuple, through the same (restarted) worker.
        for session, _ in clients[0]:
            refreshed = await within(session.request(Method.REFRESH, []), PROMPTLY, "Refresh")
            self.assertErrorCode(refreshed, 437)
            relayed = await bindChannel(self, session, peer.address)
            self.assertEqual(workerOf(relayed), 0)
            await roundTrip(self, session, peer, relayed, b"again")


class AdminTests(WorkersTestCase):
    """
    One control socket and one metrics endpoint see every worker.
    """

    async def test_controlAndMetrics(self) -> None:
        """
        C{turnrelayctl} lists the allocations of both workers, kills a user's
        on whichever worker holds them, adds up the figures with a line per
        worker, and drains all; C{/metrics} adds the workers' metrics up and
        counts each worker's allocations.
        """
        # Not under trial's temporary directory: a Unix socket's path must
        # fit in 108 bytes.
        directory = tempfile.mkdtemp(prefix="turnrelay-workers-")
        self.addCleanup(shutil.rmtree, directory, True)
        socketPath = os.path.join(directory, "control.sock")
        metricsPort = freePortPair()
        relay = await self.startRelay(
            "--control-socket",
            socketPath,
            "--metrics",
            f"tcp:{metricsPort}:interface=127.0.0.1",
        )
        peer = datagramClient(self, "127.0.0.1")
        workers: Dict[str, int] = {}
        for number in range(12):
            username, password = self.credential(f"user{number}")
            relayed = await bindChannel(self, self.client(relay, username, password), peer.address)
            workers[username] = workerOf(relayed)
        self.assertEqual(set(workers.values()), {0, 1})

        async def ctl(*argv: str) -> Any:
            return await within(
                controlJSON(self, socketPath, *argv), PROMPTLY, f"turnrelayctl {' '.join(argv)}"
            )

        records = await ctl("allocations")
        self.assertEqual(sorted((r["user"], r["worker"]) for r in records), sorted(workers.items()))
        victim = next(user for user, worker in workers.items() if worker == 1)
        self.assertEqual((await ctl("kill", victim))["killed"], 1)
        status = await ctl("status")
        self.assertEqual(status["allocations"], 11)
        self.assertEqual([w["worker"] for w in status["workers"]], [0, 1])
        self.assertEqual(sum(w["allocations"] for w in status["workers"]), 11)

        scrape = await deferToThread(
            lambda: urlopen(f"http://127.0.0.1:{metricsPort}/metrics", timeout=5).read()
        )
        families = parseScrape(scrape.decode())
        self.assertEqual(
            value(families, "turnrelay_allocations", transport="udp", family="ipv4"), 11
        )
        self.assertEqual(
            value(families, "turnrelay_worker_allocations", worker="0")
            + value(families, "turnrelay_worker_allocations", worker="1"),
            11,
        )
        self.assertEqual(value(families, "turnrelay_workers_serving"), 2)

        reloaded = await ctl("reload-tls")
        self.assertEqual(reloaded["reloaded"], True)
        self.assertEqual((await ctl("reload"))["needRestart"], [])
        self.assertEqual((await ctl("loglevel", "debug"))["level"], "debug")
        await within(
            relay.child.waitForOutput(rb"worker 1: log level set to debug"), PROMPTLY, "worker 1"
        )

        drained = await ctl("drain", "--timeout", "0")
        self.assertTrue(drained["draining"])
        session = self.client(relay, *self.credential("late"))
        self.assertErrorCode(await within(session.allocate(), PROMPTLY, "Allocate"), 403)
