"""
A relay in a twistd child process, on free loopback ports, for the tests
that need a whole process: its memory, its descriptors, its workers.
"""

from __future__ import annotations

import os
from typing import Dict, List

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
from turnrelay.stun.address import TransportAddress
from turnrelay.transports.tls import makeSelfSignedCertificate


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
        "40000",
        "--max-port",
        "40999",
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
