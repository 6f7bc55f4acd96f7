"""
A relay in a twistd child process, on free loopback ports, for the tests
that need a whole process: its memory, its descriptors, its workers.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, NamedTuple

from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase
from tests._processes import pythonEnvironment, spawn, turnrelayCommand
from tests._session import PASSWORD, REALM, USERNAME
from tests._sockets import (
    UnverifiedClient,
    bindChannel,
    datagramClient,
    roundTrip,
    streamTURNClient,
    udpTURNClient,
)
from tests._timing import PROMPTLY, within
from turnrelay.config import buildConfig
from turnrelay.stun.address import TransportAddress
from turnrelay.transports.tls import makeSelfSignedCertificate
from turnrelay.workers.worker import relayPortSlice

# The relay port range of L{twistdRelayArgs}.
MIN_PORT, MAX_PORT = 40000, 40999


def workerEndedPattern(relayed: str = "") -> bytes:
    """
    @param relayed: a relayed address, C{HOST:PORT}; any by default.
    @return: a pattern for a worker's allocation (on C{relayed}) ending, as
        the control process logs it; L{WorkerEnded.fromMatch} reads a match.
    """
    address = re.escape(relayed.encode()) if relayed else rb"\S+"
    return (
        rb"worker (?P<worker>\d+): allocation (?P<relayed>" + address + rb") (?P<reason>[^:]+): "
        rb"(?P<username>\S+) on (?P<transport>\w+):(?P<client>\S+)->(?P<server>\S+), \S+ s, "
        rb"(?P<toPeers>\d+) packets \((?P<bytesToPeers>\d+) bytes\) to peers, "
        rb"(?P<fromPeers>\d+) packets \((?P<bytesFromPeers>\d+) bytes\) from peers, "
        rb"(?P<dropped>\d+) dropped"
    )


def twistdRelayArgs(directory: FilePath[str], *extra: str) -> List[str]:
    """
    The command line of a twistd relay on 127.0.0.1 with every transport on
    free ports, a static user, and loopback peers allowed.
    """
    cert, key = directory.child("cert.pem"), directory.child("key.pem")
    if not cert.exists():
        makeSelfSignedCertificate(cert.path, key.path)
    return turnrelayCommand(
        "--tls-cert",
        cert.path,
        "--tls-key",
        key.path,
        "--realm",
        REALM,
        "--user",
        f"{USERNAME}:{PASSWORD}",
        "--allow-loopback-peers",
        "--min-port",
        str(MIN_PORT),
        "--max-port",
        str(MAX_PORT),
        "--state-dir",
        directory.path,
        *extra,
        listen=[f"{transport}:0:interface=127.0.0.1" for transport in ("udp", "tcp", "tls")],
    )


class TwistdRelay:
    """
    A relay in a twistd child process, and the addresses it listens on.
    """

    def __init__(self, testCase: TestCase, args: List[str]) -> None:
        self.child = spawn(testCase, args, env=pythonEnvironment())
        self.addresses: Dict[str, TransportAddress] = {}

    async def started(self) -> TwistdRelay:
        for transport in ("udp", "tcp", "tls"):
            line = await self.child.waitForOutput(
                b"listening for " + transport.encode() + rb" on 127\.0\.0\.1:(\d+)"
            )
            self.addresses[transport] = TransportAddress("127.0.0.1", int(line.group(1)))
        return self

    async def workersReady(self, count: int) -> None:
        """
        Wait until the control process has said that each of C{count}
        workers serves (C{worker N (pid M) ready}).
        """
        for index in range(count):
            await within(
                self.child.waitForOutput(rb"worker %d \(pid \d+\) ready" % index),
                PROMPTLY * 5,
                f"worker {index} ready",
            )

    async def ended(self, relayed: str = "", start: int = 0) -> re.Match[bytes]:
        """
        Wait for a worker to log the end of an allocation (on C{relayed}),
        in the output from C{start} on.

        @return: the match of L{workerEndedPattern}: see
            L{WorkerEnded.fromMatch}.
        """
        return await within(
            self.child.waitForOutput(workerEndedPattern(relayed), start),
            PROMPTLY,
            f"the end of allocation {relayed or 'any'}",
        )

    async def stop(self) -> None:
        """
        Stop the relay as an operator does, with SIGTERM, and wait until it
        has stopped its workers and exited.
        """
        self.child.signal("TERM")
        await within(self.child.whenEnded(), PROMPTLY * 3, "twistd to exit on SIGTERM")

    def rss(self) -> int:
        """
        @return: the child's resident memory, in bytes.
        """
        with open(f"/proc/{self.child.transport.pid}/status") as f:  # type: ignore[union-attr]
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def openDescriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.child.transport.pid}/fd"))  # type: ignore[union-attr]


def relayWorker(port: int, count: int) -> int:
    """
    The worker of a relay of L{twistdRelayArgs} with C{--workers count}
    that holds the allocation on relayed port C{port}: each worker has its
    own slice of the port range.
    """
    config = buildConfig({"min-port": MIN_PORT, "max-port": MAX_PORT})
    for index in range(count):
        low, high = relayPortSlice(config, index, count)
        if low <= port <= high:
            return index
    raise AssertionError(f"relayed port {port} is in no worker's range")


class WorkerEnded(NamedTuple):
    """
    A worker's allocation ending, as the control process logged it (a match
    of L{workerEndedPattern}).
    """

    worker: int
    relayed: str
    reason: str
    username: str
    transport: str
    client: str
    server: str
    toPeers: int
    bytesToPeers: int
    fromPeers: int
    bytesFromPeers: int
    dropped: int

    @classmethod
    def fromMatch(cls, match: re.Match[bytes]) -> WorkerEnded:
        fields: Dict[str, Any] = {k: v.decode() for k, v in match.groupdict().items()}
        for name in ("worker", "toPeers", "bytesToPeers", "fromPeers", "bytesFromPeers", "dropped"):
            fields[name] = int(fields[name])
        return cls(**fields)


async def allEnter(testCase: TURNTestCase, relay: TwistdRelay) -> None:
    """
    New clients over UDP, TCP and TLS allocate and relay a round trip.
    """
    peer = datagramClient(testCase, "127.0.0.1")
    session = udpTURNClient(testCase, relay.addresses["udp"])
    relayed = await bindChannel(testCase, session, peer.address)
    await roundTrip(testCase, session, peer, relayed, b"udp")
    for transport, tls in (("tcp", None), ("tls", UnverifiedClient())):
        client = await streamTURNClient(testCase, relay.addresses[transport], tls)
        if tls is not None:
            await within(client.whenHandshaken(), PROMPTLY, "the TLS handshake")
        relayed = await bindChannel(testCase, client.session, peer.address)
        await roundTrip(testCase, client.session, peer, relayed, transport.encode())
        await client.close()
