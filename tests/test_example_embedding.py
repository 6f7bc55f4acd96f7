"""
The embedding example (examples/telephony_app.py) runs: a Twisted
application with the relay in its service tree hands its page REST
credentials that the relay accepts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from types import ModuleType

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests._session import TURNClient
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import MessageClass
from turnrelay.testing import FakeClientLink

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "telephony_app.py")


def loadExample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("telephony_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EmbeddingExampleTests(TestCase):
    """
    The example application, on the real reactor over loopback.
    """

    timeout = 30

    async def test_credentialsWork(self) -> None:
        """
        The application's /ice-servers endpoint mints a credential the
        embedded relay accepts for an allocation, and its page is served.
        """
        example = loadExample()
        httpPort = freePort()
        application, relay = example.makeApplication(reactor, httpPort=httpPort, turnPort=0)
        application.startService()
        self.addCleanup(application.stopService)
        agent = Agent(reactor)
        base = f"http://127.0.0.1:{httpPort}".encode()
        response = await Deferred.fromCoroutine(_get(agent, base + b"/ice-servers"))
        server = json.loads(response)
        self.assertEqual(server["urls"][0].split(":")[0], "turn")
        page = await Deferred.fromCoroutine(_get(agent, base + b"/"))
        self.assertIn(b"RTCPeerConnection", page)
        client = TURNClient(
            relay.server,
            FakeClientLink(TransportAddress("127.0.0.1", 40001)),
            server["username"],
            server["credential"],
            False,
        )
        result = client.allocate()
        self.assertEqual(result.messageClass, MessageClass.SUCCESS_RESPONSE, result)
        self.assertEqual(result.get(A.XOR_RELAYED_ADDRESS).host, "127.0.0.1")
        client.request(0x004, [(A.LIFETIME, 0)])


def freePort() -> int:
    """
    A TCP port nothing listens on now, on 127.0.0.1.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _get(agent: Agent, url: bytes) -> bytes:
    response = await agent.request(b"GET", url)
    body: bytes = await readBody(response)
    return body
