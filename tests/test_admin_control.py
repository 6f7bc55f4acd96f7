"""
The control socket (L{turnrelay.admin.control}): its AMP commands, driven
through L{twisted.test.iosim} against a relay on a fake reactor, and its
Unix socket (mode, stale files, removal at stop) on the real reactor in a
temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from typing import Any, Dict, List, Type

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import TestCase

from tests._assertions import TURNTestCase
from tests._logs import LogRecorder
from tests._relays import CLIENT_HOST, FakeRelay
from tests._timing import PROMPTLY, reactor, within
from turnrelay.admin import control
from turnrelay.admin.control import ControlError, ControlFactory, ControlService, LongText
from turnrelay.config import ConfigError
from turnrelay.service import makeRelayService


class ControlProtocolTests(TURNTestCase):
    """
    Each command, over AMP, against a relay on a fake reactor.
    """

    def setUp(self) -> None:
        self.fake = FakeRelay().start(self)
        self.relay = self.fake.service
        self.logs = LogRecorder(self)
        factory = ControlFactory(self.relay, self.fake.reactor)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP
        )

    def call(self, command: Type[amp.Command], **arguments: Any) -> Dict[str, Any]:
        """
        Send C{command}; return its answer with C{data} decoded.
        """
        answering = self.client.callRemote(command, **arguments)
        self.pump.flush()
        answer: Dict[str, Any] = dict(self.successResultOf(answering))
        answer["data"] = json.loads(answer["data"])
        return answer

    def fails(self, command: Type[amp.Command], **arguments: Any) -> str:
        """
        Send C{command}, which must fail; return the error's message.
        """
        failures: List[Failure] = []
        # Caught before the answer arrives: AMP drops the connection over an
        # error nothing has caught by then.
        self.client.callRemote(command, **arguments).addErrback(failures.append)
        self.pump.flush()
        [failure] = failures
        failure.trap(ControlError)
        return str(failure.value)

    def allocate(self, username: str = "alice") -> str:
        client = self.fake.client(username)
        self.assertSuccess(client.allocate())
        allocation = client.link.allocation
        assert allocation is not None
        return str(allocation.relayedAddress)

    def test_status(self) -> None:
        """
        status answers the console's text and the relay's figures as JSON,
        tuple keys joined with a slash.
        """
        self.allocate()
        answer = self.call(control.Status)
        self.assertIn("allocations", answer["text"])
        self.assertEqual(answer["data"]["allocations"], 1)
        self.assertEqual(answer["data"]["allocationsByTransportAndFamily"], {"udp/ipv4": 1})

    def test_allocationsFiltered(self) -> None:
        """
        allocations answers a record per allocation, only the user's with
        C{user}, only the matching ones with C{address}.
        """
        aliceRelayed = self.allocate("alice")
        self.allocate("bob")
        everything = self.call(control.Allocations)["data"]
        self.assertEqual(sorted(record["user"] for record in everything), ["alice", "bob"])
        answer = self.call(control.Allocations, user="alice")
        [record] = answer["data"]
        self.assertEqual(record["relayed"], [aliceRelayed])
        self.assertEqual(record["transport"], "udp")
        self.assertTrue(record["client"].startswith(CLIENT_HOST + ":"))
        self.assertIn("alice", answer["text"])
        self.assertNotIn("bob", answer["text"])
        [byAddress] = self.call(control.Allocations, address=aliceRelayed)["data"]
        self.assertEqual(byAddress["user"], "alice")
        self.assertEqual(self.call(control.Allocations, user="carol")["data"], [])

    def test_kill(self) -> None:
        """
        kill ends the allocation with a relayed address and says how many it
        ended; nothing to kill is an error.
        """
        relayed = self.allocate()
        answer = self.call(control.Kill, target=relayed)
        self.assertEqual(answer["data"], {"killed": 1})
        self.assertEqual(len(self.relay.server.registry), 0)
        message = self.fails(control.Kill, target="nobody")
        self.assertIn("nothing killed", message)
        self.assertNotIn("\n", message)

    def test_drain(self) -> None:
        """
        drain makes the relay take no new allocations.
        """
        self.allocate()
        answer = self.call(control.Drain, timeout=0.0)
        self.assertTrue(self.relay.server.draining)
        self.assertEqual(answer["data"], {"draining": True, "allocationsLeft": 1})
        self.assertIn("draining", answer["text"])

    def test_reload(self) -> None:
        """
        reload puts the configuration the relay's source gives in force, and
        names the settings that need a restart.
        """
        self.relay.configSource = lambda: self.fake.configWith(realm="elsewhere", min_port=50001)
        answer = self.call(control.Reload)
        self.assertEqual(self.relay.config.realm, "elsewhere")
        self.assertEqual(answer["data"], {"reloaded": True, "needRestart": ["min-port"]})
        self.assertIn("min-port", answer["text"])

    def test_reloadBadConfiguration(self) -> None:
        """
        A configuration that does not load changes nothing and is an error
        naming why.
        """

        def broken() -> Any:
            raise ConfigError("realm: must not be empty")

        self.relay.configSource = broken
        before = self.relay.config
        message = self.fails(control.Reload)
        self.assertIn("nothing changed", message)
        self.assertIn("realm: must not be empty", message)
        self.assertIs(self.relay.config, before)

    def test_reloadWithoutSource(self) -> None:
        """
        An embedded relay, with nothing to re-read, says so.
        """
        self.assertIsNone(self.relay.configSource)
        self.assertIn("no configuration to re-read", self.fails(control.Reload))

    def test_reloadTLSWithoutTLS(self) -> None:
        """
        reload-tls on a relay without a TLS listener is an error.
        """
        self.assertIn("no tls listener", self.fails(control.ReloadTLS))

    def test_mint(self) -> None:
        """
        mint answers a REST credential the relay accepts, valid for C{ttl}
        seconds; its password is not logged.
        """
        answer = self.call(control.Mint, userID="carol", ttl=600.0)
        record = answer["data"]
        self.assertTrue(record["username"].endswith(":carol"))
        self.assertEqual(record["valid"], 600)
        self.assertIn(record["password"], answer["text"])
        client = self.fake.client(record["username"], record["password"])
        self.assertSuccess(client.allocate())
        self.assertNotIn(record["password"], repr([dict(e) for e in self.logs.events]))

    def test_mintWithoutSecret(self) -> None:
        """
        Without a static-auth-secret, mint is an error saying what to set.
        """
        self.relay.config = self.fake.configWith(static_auth_secret=None)
        self.assertIn("static-auth-secret", self.fails(control.Mint, userID="carol"))

    def test_loglevel(self) -> None:
        """
        loglevel shows the level, sets it, and refuses a level that does not
        exist.
        """
        self.assertEqual(self.call(control.LogLevel)["data"], {"level": "info", "was": "info"})
        self.assertEqual(
            self.call(control.LogLevel, level="debug")["data"], {"level": "debug", "was": "info"}
        )
        self.assertEqual(self.relay.logLevels.level(), "debug")
        self.assertIn("not one of", self.fails(control.LogLevel, level="loud"))
        self.assertEqual(self.relay.logLevels.level(), "debug")

    def test_longAnswer(self) -> None:
        """
        Text beyond AMP's 64 kB a value is carried in numbered keys and put
        back together.
        """
        text = "é" * 100_000
        strings: Dict[bytes, bytes] = {}
        LongText().toBox(b"text", strings, {"text": text}, None)
        self.assertEqual(sorted(strings), [b"text", b"text.2", b"text.3", b"text.4"])
        self.assertTrue(all(len(value) <= 0xFFFF for value in strings.values()))
        box = amp.AmpBox(strings)
        parsed = amp.parseString(box.serialize())[0]
        objects: Dict[str, Any] = {}
        LongText().fromBox(b"text", parsed, objects, None)
        self.assertEqual(objects["text"], text)


class WiringTests(TURNTestCase):
    """
    The relay gets a control socket only when one is configured.
    """

    def test_configured(self) -> None:
        """
        With control-socket, the relay has a child service named
        C{"control"} on that path; without, none.
        """
        directory = tempfile.mkdtemp(prefix="turnrelay-control-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "control.sock")
        relay = FakeRelay(control_socket=path).service
        service = relay.getServiceNamed("control")
        assert isinstance(service, ControlService)
        self.assertEqual(service.path, path)
        self.assertRaises(KeyError, FakeRelay().service.getServiceNamed, "control")


class ClosingClient(amp.AMP):
    """
    An AMP client that says when its connection closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.closed.callback(None)


class ControlSocketTests(TestCase):
    """
    The socket file, on the real reactor in a temporary directory.
    """

    def setUp(self) -> None:
        # Not under trial's temporary directory: a Unix socket's path must
        # fit in 108 bytes.
        directory = tempfile.mkdtemp(prefix="turnrelay-control-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.path = os.path.join(directory, "control.sock")
        self.fake = FakeRelay()

    def service(self) -> ControlService:
        return ControlService(reactor, self.path, ControlFactory(self.fake.service, reactor))

    async def test_modeAndRemoval(self) -> None:
        """
        The socket is created with mode 0600 and removed when the service
        stops.
        """
        service = self.service()
        service.startService()
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))
        self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), 0o600)
        await service.stopService()
        self.assertFalse(os.path.exists(self.path))

    async def test_realClient(self) -> None:
        """
        An AMP client on the socket gets answers; stopping the service
        closes its connection.
        """
        service = self.service()
        service.startService()
        endpoint = UNIXClientEndpoint(reactor, self.path)
        client = await within(
            endpoint.connect(Factory.forProtocol(ClosingClient)), PROMPTLY, "connecting"
        )
        answer = await within(client.callRemote(control.LogLevel), PROMPTLY, "loglevel")
        self.assertEqual(json.loads(answer["data"])["level"], "info")
        await within(service.stopService(), PROMPTLY, "the service to stop")
        await within(client.closed, PROMPTLY, "the client's connection to close")

    async def test_staleSocketReplaced(self) -> None:
        """
        A socket file nobody listens on (left by a crash) is replaced.
        """
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()
        service = self.service()
        service.startService()
        self.addCleanup(service.stopService)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(probe.close)
        probe.connect(self.path)

    async def test_socketInUse(self) -> None:
        """
        A socket a running relay answers on is left alone, and the second
        relay does not start.
        """
        first = self.service()
        first.startService()
        self.addCleanup(first.stopService)
        error = self.assertRaises(ConfigError, self.service().startService)
        self.assertIn("in use by a running relay", str(error))
        self.assertTrue(os.path.exists(self.path))

    def test_notASocket(self) -> None:
        """
        Another kind of file at the path is never removed.
        """
        with open(self.path, "w") as f:
            f.write("keep me")
        error = self.assertRaises(ConfigError, self.service().startService)
        self.assertIn("is not a socket", str(error))
        with open(self.path) as f:
            self.assertEqual(f.read(), "keep me")

    def test_checkedWhenBuilt(self) -> None:
        """
        makeRelayService refuses a socket path that cannot work, so that
        twistd says so in one line rather than with a traceback at start.
        """
        first = self.service()
        first.startService()
        self.addCleanup(first.stopService)
        for path, message in [
            (self.path, "in use by a running relay"),
            ("/" + "x" * 120, "longer than"),
        ]:
            config = self.fake.configWith(control_socket=path)
            error = self.assertRaises(ConfigError, makeRelayService, config, self.fake.reactor)
            self.assertIn(message, str(error))

    def test_missingDirectory(self) -> None:
        """
        A path in a directory that does not exist is refused, saying so.
        """
        self.path = os.path.join(self.path + ".d", "control.sock")
        error = self.assertRaises(ConfigError, self.service().startService)
        self.assertIn("does not exist", str(error))
