"""
The independent clients of the interop tests relay through C{twistd
turnrelay --workers 2} on 127.0.0.1, over UDP, TCP and TLS: coturn's
C{turnutils_uclient} (with C{turnutils_peer} as its echo peer) and aioice's
TURN client (the scripts of C{tests/interop/}).

Each client, or each of C{turnutils_uclient}'s clients, sends from a
socket of its own, and the control process steers it to a worker: over UDP
by its address and port, so the runs go on until both workers have carried
sessions (the chance that one run of L{CLIENTS} clients all land on one
worker is 1 in 2 ** (CLIENTS - 1); L{MAX_RUNS} runs bound it); over TCP and
TLS by its address alone (RFC 6062's data connections come from new ports),
so every session from 127.0.0.1 is carried by the one worker predicted.  Which worker carried a
session is known twice over: by its relayed port (each worker has its slice
of the range) and by the worker that logged its end; the two must agree.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Set

from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._processes import (
    aioiceStreamArgs,
    aioiceTURNArgs,
    assertRelayedAll,
    describe,
    finalReport,
    requireTool,
    runToCompletion,
    spawn,
    startEchoPeer,
    uclientArgs,
)
from tests._relays import relayedKey
from tests._session import PASSWORD, REST_SECRET, USERNAME
from tests._sockets import HOST
from tests._timing import reactor
from tests._twistd import TwistdRelay, WorkerEnded, relayWorker, twistdRelayArgs
from turnrelay.auth.credentials import mintRESTCredential
from turnrelay.workers.steering import steeringIndex

WORKERS = 2
# Clients run at once, each from a port of its own; runs until the workers
# expected for the transport carried a session.
CLIENTS = 4
MAX_RUNS = 4
# turnutils_uclient: messages per client and their size; aioice: round trips.
MESSAGES = 10
MESSAGE_SIZE = 200
ROUND_TRIPS = 5
# Signs of a bug in the relay's log.
TROUBLE = [b"Traceback", b"Unhandled", b"#critical]", b"#error]"]


def expectedWorkers(transport: str) -> Set[int]:
    """
    The workers that carry sessions from 127.0.0.1 over C{transport}.
    """
    if transport == "udp":
        return set(range(WORKERS))
    return {steeringIndex(HOST, 0, WORKERS, byPort=False)}


class WorkersInteropTestCase(TestCase):
    """
    A twistd relay with two workers, a static user and a REST secret.
    """

    async def startRelay(self) -> TwistdRelay:
        """
        Start the relay (stopped with SIGTERM at cleanup) and wait until both
        workers serve.  Its user quota is high enough for the probe
        allocations C{turnutils_uclient} leaves behind.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        args = twistdRelayArgs(
            directory,
            "--workers",
            str(WORKERS),
            "--static-auth-secret",
            REST_SECRET,
            "--user-quota",
            "100",
        )
        self.relay = await TwistdRelay(self, args).started()
        self.addCleanup(self.relay.stop)
        await self.relay.workersReady(WORKERS)
        self.certificate = directory.child("cert.pem").path
        return self.relay

    def assertWorkers(self, sessions: List[WorkerEnded], transport: str) -> None:
        """
        Assert that each session's relayed port is in the range of the
        worker that logged its end, that the workers expected for
        C{transport} carried them, and that the relay logged no trouble.
        """
        for ended in sessions:
            port = int(ended.relayed.rpartition(":")[2])
            self.assertEqual(relayWorker(port, WORKERS), ended.worker, ended)
        self.assertEqual({ended.worker for ended in sessions}, expectedWorkers(transport), sessions)
        for sign in TROUBLE:
            self.assertNotIn(sign, self.relay.child.output + self.relay.child.errors)


class CoturnUclientWorkersTests(WorkersInteropTestCase):
    """
    C{turnutils_uclient} runs L{CLIENTS} clients at once (C{-m}), over UDP,
    TCP (C{-t}) or TLS (C{-t -S}), without RTCP (C{-c}); each allocates,
    relays to C{turnutils_peer} and deletes its allocation.  Before its
    real allocation each makes a probe allocation that it never uses.
    """

    # Each run takes 1 to 6 s (the client counts in whole seconds).
    timeout = 120

    async def _relays(self, transport: str, *options: str) -> List[WorkerEnded]:
        """
        Run the client over C{transport} until the expected workers carried
        sessions; check that every message went to the peer and back, as
        the client and the workers count them.

        @return: the ends of the sessions that relayed, as the workers
            logged them.
        """
        requireTool(self, "turnutils_uclient")
        relay = await self.startRelay()
        peer, _ = await startEchoPeer(self)
        server = relay.addresses[transport]
        flags = {"udp": [], "tcp": ["-t"], "tls": ["-t", "-S"]}[transport]
        args = uclientArgs(
            self,
            server,
            peer,
            *flags,
            "-c",
            *options,
            clients=CLIENTS,
            messages=MESSAGES,
            size=MESSAGE_SIZE,
        )
        sessions: List[WorkerEnded] = []
        cursor = 0
        for _ in range(MAX_RUNS):
            child = await runToCompletion(self, args)
            assertRelayedAll(self, child, CLIENTS * MESSAGES)
            # Each client's allocation ends, perhaps after the client exited;
            # the probes that end (closed with their TCP connection) relayed
            # nothing.
            relaying = 0
            while relaying < CLIENTS:
                match = await relay.ended(start=cursor)
                cursor = match.end()
                ended = WorkerEnded.fromMatch(match)
                if ended.toPeers or ended.fromPeers:
                    sessions.append(ended)
                    relaying += 1
            if {ended.worker for ended in sessions} == expectedWorkers(transport):
                break
        for ended in sessions:
            self.assertEqual(
                (
                    ended.reason,
                    ended.transport,
                    ended.server,
                    ended.toPeers,
                    ended.bytesToPeers,
                    ended.fromPeers,
                    ended.bytesFromPeers,
                    ended.dropped,
                ),
                (
                    "deleted",
                    transport,
                    str(server),
                    MESSAGES,
                    MESSAGES * MESSAGE_SIZE,
                    MESSAGES,
                    MESSAGES * MESSAGE_SIZE,
                    0,
                ),
                ended,
            )
        self.assertWorkers(sessions, transport)
        return sessions

    async def test_udpChannels(self) -> None:
        """
        Over UDP, a static user's clients bind channels and relay through
        both workers without loss.
        """
        sessions = await self._relays("udp", "-u", USERNAME, "-w", PASSWORD)
        self.assertEqual({ended.username for ended in sessions}, {USERNAME})

    async def test_tcpSendIndications(self) -> None:
        """
        Over TCP, a static user's clients relay with Send and Data
        indications through the worker steered to without loss.
        """
        sessions = await self._relays("tcp", "-s", "-u", USERNAME, "-w", PASSWORD)
        self.assertEqual({ended.username for ended in sessions}, {USERNAME})

    async def test_tlsChannelsREST(self) -> None:
        """
        Over TLS, clients with TURN REST API credentials minted from the
        shared secret (C{-W}) bind channels and relay through the worker steered to
        without loss.
        """
        sessions = await self._relays("tls", "-u", "carol", "-W", REST_SECRET)
        for ended in sessions:
            self.assertRegex(ended.username, r"^\d+:carol$")


class CoturnTCPRelayWorkersTests(WorkersInteropTestCase):
    """
    C{turnutils_uclient -T}: clients allocate TCP relayed addresses (RFC
    6062), connect them to each other, and bind data connections, each a
    new TCP connection to the relay from a new port, which must reach the
    worker that holds its allocation: TCP is steered by address alone.
    """

    timeout = 90

    async def _relays(self, transport: str) -> None:
        """
        Run the clients over C{transport}; check the clients' counts, and
        that the predicted worker bound every data connection.
        """
        requireTool(self, "turnutils_uclient")
        relay = await self.startRelay()
        server = relay.addresses[transport]
        flags = ["-T", *(["-S"] if transport == "tls" else []), "-u", USERNAME, "-w", PASSWORD]
        # turnutils_uclient -T has no peer of its own: the clients are each
        # other's peers; -e and -r go unused.
        # Two clients, as the single-process test runs it: more make
        # turnutils_uclient -T over TLS lose messages of its own.
        args = uclientArgs(self, server, server, *flags, clients=2, messages=20, size=100)
        workers: Set[int] = set()
        for _ in range(MAX_RUNS):
            child = await runToCompletion(self, args)
            assertRelayedAll(self, child, 2 * 20)
            bound = relay.child.output.count(b"bound to ")
            self.assertGreater(bound, 0, relay.child.output)
            workers |= {
                int(line.split(b"worker ")[1].split(b":")[0])
                for line in relay.child.output.splitlines()
                if b"bound to " in line
            }
            if workers == expectedWorkers(transport):
                break
        self.assertEqual(workers, expectedWorkers(transport))

    async def test_tcpClientToClient(self) -> None:
        """
        Over TCP control and data connections, clients on one worker
        relay to each other through TCP allocations without loss.
        """
        await self._relays("tcp")

    async def test_tlsClientToClient(self) -> None:
        """
        Over TLS control and data connections, clients on one worker
        relay to each other through TCP allocations without loss.
        """
        await self._relays("tls")


class AioiceWorkersTests(WorkersInteropTestCase):
    """
    aioice's TURN client, L{CLIENTS} at once: over UDP
    (C{tests/interop/aioice_turn.py}) or TCP and TLS
    (C{tests/interop/aioice_stream.py}, verifying the relay's certificate),
    each allocates, binds a channel to its own UDP peer, relays round trips
    and deletes its allocation.
    """

    timeout = 60

    async def _relays(self, transport: str, username: str, password: str) -> List[WorkerEnded]:
        """
        Run the clients over C{transport} until the expected workers carried
        sessions; check both sides' accounts.

        @return: the ends of the sessions, as the workers logged them.
        """
        relay = await self.startRelay()
        server = relay.addresses[transport]
        options = ["--round-trips", str(ROUND_TRIPS)]
        if transport == "udp":
            args = aioiceTURNArgs(self, server, username, password, *options)
        else:
            cafile: Optional[str] = self.certificate if transport == "tls" else None
            args = aioiceStreamArgs(self, server, transport, cafile, username, password, *options)
        reports: List[Dict[str, Any]] = []
        for _ in range(MAX_RUNS):
            children = [spawn(self, args) for _ in range(CLIENTS)]
            for child in children:
                await child.whenEnded()
                report = finalReport(self, child)
                self.assertEqual((child.exitCode, report["error"]), (0, None), describe(child))
                self.assertEqual(report["roundTrips"], ROUND_TRIPS, report)
                self.assertTrue(report["deleted"], report)
                reports.append(report)
            ports = {int(report["relayed"][1]) for report in reports}
            if {relayWorker(port, WORKERS) for port in ports} == expectedWorkers(transport):
                break
        sessions = []
        for report in reports:
            ended = WorkerEnded.fromMatch(await relay.ended(relayedKey(report["relayed"])))
            # XOR-MAPPED-ADDRESS is the client's address in the 5-tuple.
            self.assertEqual(
                (
                    ended.reason,
                    ended.username,
                    ended.transport,
                    ended.client,
                    ended.server,
                    ended.toPeers,
                    ended.fromPeers,
                    ended.dropped,
                ),
                (
                    "deleted",
                    username,
                    transport,
                    relayedKey(report["mapped"]),
                    str(server),
                    ROUND_TRIPS,
                    ROUND_TRIPS,
                    0,
                ),
                report,
            )
            self.assertEqual(report["relayed"][0], HOST)
            sessions.append(ended)
        self.assertWorkers(sessions, transport)
        return sessions

    async def test_udp(self) -> None:
        """
        Over UDP, static users' aioice clients relay every round trip
        intact through both workers.
        """
        await self._relays("udp", USERNAME, PASSWORD)

    async def test_tcp(self) -> None:
        """
        Over TCP, static users' aioice clients relay every round trip
        intact through the worker steered to.
        """
        await self._relays("tcp", USERNAME, PASSWORD)

    async def test_tlsREST(self) -> None:
        """
        Over TLS, aioice clients verify the relay's certificate (which each
        worker serves) and relay with a TURN REST API credential through the
        worker steered to.
        """
        username, password = mintRESTCredential(
            REST_SECRET.encode(), "carol", ttl=600, now=reactor.seconds()
        )
        await self._relays("tls", username, password)
