"""
The embedding example (examples/telephony_app.py) runs: a Twisted
application with the relay in its service tree hands its page REST
credentials that the relay accepts, and uses every extension point: its
own credential store, allocation observers, a peer filter, and hanging up
a call.
"""

from __future__ import annotations

import importlib.util
import itertools
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
from turnrelay.stun.message import MessageClass, STUNMessage
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
        app = example.makeApplication(reactor, httpPort=httpPort, turnPort=0)
        app.services.startService()
        self.addCleanup(app.services.stopService)
        agent = Agent(reactor)
        base = f"http://127.0.0.1:{httpPort}".encode()
        response = await Deferred.fromCoroutine(_get(agent, base + b"/ice-servers?call=7"))
        server = json.loads(response)
        self.assertEqual(server["urls"][0].split(":")[0], "turn")
        page = await Deferred.fromCoroutine(_get(agent, base + b"/"))
        self.assertIn(b"RTCPeerConnection", page)
        client = TURNClient(
            app.relay.server,
            FakeClientLink(TransportAddress("127.0.0.1", 40001)),
            server["username"],
            server["credential"],
            False,
        )
        result = client.allocate()
        self.assertEqual(result.messageClass, MessageClass.SUCCESS_RESPONSE, result)
        self.assertEqual(result.get(A.XOR_RELAYED_ADDRESS).host, "127.0.0.1")
        client.request(0x004, [(A.LIFETIME, 0)])

    async def test_extensionPoints(self) -> None:
        """
        The SIP accounts log in from the office network only (and still
        after a reload); the call records follow each allocation to its
        end with its usage; blocked peers are refused; hanging up a call
        ends its allocations and no other.
        """
        example = loadExample()
        httpPort = freePort()
        app = example.makeApplication(reactor, httpPort=httpPort, turnPort=0)
        app.services.startService()
        self.addCleanup(app.services.stopService)
        relay, telephony = app.relay, app.telephony
        agent = Agent(reactor)
        base = f"http://127.0.0.1:{httpPort}".encode()

        ports = itertools.count(41000)

        def client(username: str, password: str, host: str = "127.0.0.1") -> TURNClient:
            link = FakeClientLink(TransportAddress(host, next(ports)))
            return TURNClient(relay.server, link, username, password, False)

        # The credential store: SIP accounts, from the office only.
        sip = "alice's SIP password"
        self.assertEqual(client("alice", sip, "192.0.2.9").allocate().get(A.ERROR_CODE).code, 401)
        relay.reloadConfig(relay.config)
        office = client("alice", sip)
        self.assertSuccess(office.allocate())

        # The peer filter: blocked peers get 403, after the policy.
        telephony.blockedPeers.add("127.0.0.66")
        refused = office.request(0x008, [(A.XOR_PEER_ADDRESS, TransportAddress("127.0.0.66", 9))])
        self.assertEqual(refused.get(A.ERROR_CODE).code, 403)
        peer = TransportAddress("127.0.0.67", 9)
        self.assertSuccess(office.request(0x008, [(A.XOR_PEER_ADDRESS, peer)]))

        # Two calls' credentials; hanging up call 7 ends its allocation only.
        calls = {}
        for call in (b"7", b"8"):
            body = await Deferred.fromCoroutine(_get(agent, base + b"/ice-servers?call=" + call))
            server = json.loads(body)
            calls[call] = client(server["username"], server["credential"])
            self.assertSuccess(calls[call].allocate())
        ended = await Deferred.fromCoroutine(_get(agent, base + b"/hangup?call=7", b"POST"))
        self.assertEqual(json.loads(ended), {"ended": 1})
        self.assertIsNone(calls[b"7"].link.allocation)
        self.assertIsNotNone(calls[b"8"].link.allocation)
        self.assertIsNotNone(office.link.allocation)

        # The call records, whatever the log level.
        records = {record.username: record for record in telephony.records.records.values()}
        self.assertEqual(records["alice"].events, ["created", f"permission for {peer.host}"])
        hungUp = records[calls[b"7"].username]
        self.assertEqual(hungUp.events, ["created", "ended: call 7 hung up"])
        self.assertEqual(hungUp.usage["packetsToPeer"], 0)
        self.assertIn("duration", hungUp.usage)

    def assertSuccess(self, response: STUNMessage) -> None:
        self.assertEqual(response.messageClass, MessageClass.SUCCESS_RESPONSE, response)


def freePort() -> int:
    """
    A TCP port nothing listens on now, on 127.0.0.1.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _get(agent: Agent, url: bytes, method: bytes = b"GET") -> bytes:
    response = await agent.request(method, url)
    body: bytes = await readBody(response)
    return body
