"""
A real C{redis-server} for the fleet tests: on a free loopback port, with a
data directory of its own and nothing saved to disk, stopped at cleanup.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from twisted.trial.unittest import TestCase

from tests._processes import ChildProcess, freePortPair, requireTool, spawn
from tests._relays import LoopbackRelay
from tests._timing import PROMPTLY, within
from turnrelay.config import RedisURL
from turnrelay.fleet.node import FleetNode


class RedisServer:
    """
    C{redis-server} on 127.0.0.1, which a test may stop and start again on
    the same port (as a Redis restart, with its data lost).

    @ivar port: its port.
    @ivar url: its URL, for the C{redis} setting.
    """

    def __init__(
        self, testCase: TestCase, directory: str, tls: Optional[Tuple[str, str]] = None
    ) -> None:
        """
        @param tls: the certificate and key files (PEM) to serve TLS alone
            with (C{rediss://}), or L{None} for plain TCP.
        """
        self._testCase = testCase
        self._program = requireTool(testCase, "redis-server")
        self._directory = directory
        self._tls = tls
        self.port = freePortPair()
        self.url = RedisURL("127.0.0.1", self.port, tls=tls is not None)
        self.process: Optional[ChildProcess] = None

    def arguments(self) -> List[str]:
        if self._tls is not None:
            certificate, key = self._tls
            listen = ["--port", "0", "--tls-port", str(self.port)]
            listen += ["--tls-cert-file", certificate, "--tls-key-file", key]
            listen += ["--tls-auth-clients", "no"]
        else:
            listen = ["--port", str(self.port)]
        return [
            self._program,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            self._directory,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]

    async def start(self) -> RedisServer:
        """
        Start it, and return once it takes connections.
        """
        self.process = spawn(self._testCase, self.arguments())
        await within(
            self.process.waitForOutput(rb"Ready to accept connections"), PROMPTLY, "redis-server"
        )
        return self

    async def stop(self) -> None:
        """
        Stop it (its data is lost: nothing is saved).
        """
        if self.process is not None:
            process, self.process = self.process, None
            await within(process.stop(), PROMPTLY, "redis-server to stop")


async def startRedis(testCase: TestCase, tls: Optional[Tuple[str, str]] = None) -> RedisServer:
    """
    Start a Redis server for C{testCase}; it is stopped at cleanup (spawn's
    cleanup ends it whatever happens).

    @param tls: see L{RedisServer}.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    return await RedisServer(testCase, directory, tls).start()


def fleetOf(relay: LoopbackRelay) -> FleetNode:
    """
    @return: the fleet node of a relay started with C{redis}.
    """
    node = relay.service.fleet
    assert isinstance(node, FleetNode)
    return node
