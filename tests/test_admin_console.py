"""
The admin console's helpers (L{turnrelay.admin.console}) on a relay driven
through its controller on a fake reactor: the namespace a session starts
with, allocations(), kill(), and the helpers that operate the relay.
"""

from __future__ import annotations

import os
import re
from typing import Any, List, Optional

from twisted.logger import LogEvent

from tests._assertions import TURNTestCase
from tests._logs import LogRecorder
from tests._relays import CLIENT_HOST, PEER_A, FakeRelay
from tests._session import TURNClient
from turnrelay.admin.console import HELPERS, OBJECTS, AdminConsole, ConsoleText
from turnrelay.service import RelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.message import Method
from turnrelay.transports.tls import makeSelfSignedCertificate

PEER = PEER_A


class ConsoleTestCase(TURNTestCase):
    """
    A relay on a fake reactor, its admin console, and TURN clients.
    """

    def setUp(self) -> None:
        self.relay = self.makeRelay()
        self.reactor = self.fake.reactor
        self.console = AdminConsole(self.relay, self.reactor)
        self.logs = LogRecorder(self, namespace="")

    def makeRelay(self, **settings: Any) -> RelayService:
        """
        Start a relay with C{settings}, on the fake reactor of the one
        before if there was one.
        """
        self.fake = FakeRelay(getattr(self, "reactor", None), **settings).start(self)
        return self.fake.service

    def client(self, username: str = "alice", password: Optional[str] = None) -> TURNClient:
        return self.fake.client(username, password)

    def allocated(self, username: str = "alice") -> TURNClient:
        """
        @return: a client of C{username} that holds an allocation.
        """
        client = self.client(username)
        self.assertSuccess(client.allocate())
        return client

    def relayedOf(self, client: TURNClient) -> str:
        allocation = client.link.allocation
        assert allocation is not None
        return str(allocation.relayedAddress)


class NamespaceTests(ConsoleTestCase):
    """
    What a console session starts with.
    """

    def test_liveObjects(self) -> None:
        """
        The namespace holds the relay, its controller, registry and
        configuration themselves, not copies.
        """
        names = self.console.namespace()
        self.assertIs(names["relay"], self.relay)
        self.assertIs(names["server"], self.relay.server)
        self.assertIs(names["registry"], self.relay.server.registry)
        self.assertIs(names["config"], self.relay.config)
        self.assertIs(names["console"], self.console)

    def test_helpers(self) -> None:
        """
        Every helper is in the namespace, bound to this console.
        """
        names = self.console.namespace()
        for name in HELPERS:
            self.assertEqual(names[name], getattr(self.console, name))

    def test_configInForceAtEachSession(self) -> None:
        """
        Each session's namespace has the configuration in force when it
        starts, so a reload shows in the next session.
        """
        newConfig = self.fake.configWith(realm="example.com")
        self.relay.reloadConfig(newConfig)
        self.assertIs(self.console.namespace()["config"], newConfig)

    def test_consoleText(self) -> None:
        """
        Helpers answer with text whose repr is the text itself, so that the
        console shows it unquoted; it is still an ordinary str.
        """
        text = self.console.stats()
        self.assertIsInstance(text, ConsoleText)
        self.assertEqual(repr(text), str(text))
        self.assertIn("\n", repr(text))
        self.assertEqual(text + "", str(text))


class AllocationsTests(ConsoleTestCase):
    """
    allocations(): the table and its filters.
    """

    def test_none(self) -> None:
        """
        An idle relay says it has no allocations.
        """
        self.assertEqual(self.console.allocations(), "no allocations")

    def test_table(self) -> None:
        """
        One aligned row per allocation, oldest first, under a header, with a
        count at the end.
        """
        alice = self.allocated("alice")
        self.reactor.advance(5)
        bob = self.allocated("bob")
        lines = self.console.allocations().splitlines()
        self.assertEqual(len(lines), 4)
        header, first, second, count = lines
        for column in ("USER", "CLIENT", "TRANSPORT", "RELAYED", "AGE", "LEFT", "PERMS"):
            self.assertIn(column, header)
        for column in ("CHANNELS", "TO PEERS", "FROM PEERS", "DROPPED"):
            self.assertIn(column, header)
        self.assertTrue(first.startswith("alice "))
        self.assertTrue(second.startswith("bob "))
        self.assertIn(f"{alice.link.clientAddress}->{alice.link.serverAddress}", first)
        self.assertIn(self.relayedOf(alice), first)
        self.assertIn(self.relayedOf(bob), second)
        self.assertEqual(header.index("CLIENT"), first.index(CLIENT_HOST))
        self.assertEqual(header.index("CLIENT"), second.index(CLIENT_HOST))
        self.assertEqual(count, "2 allocations")

    def test_ageAndLifetimeLeft(self) -> None:
        """
        The age and the lifetime left follow the clock.
        """
        self.allocated()
        self.reactor.advance(65)
        row = self.console.allocations().splitlines()[1]
        self.assertIn(" 1m05s ", row)
        self.assertIn(" 8m55s ", row)

    def test_permissionsChannelsAndTraffic(self) -> None:
        """
        Permissions and channels are counted, and what was relayed each way
        is shown in packets and bytes.
        """
        client = self.allocated()
        self.assertSuccess(
            client.request(
                Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, PEER)]
            )
        )
        client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER), (A.DATA, b"hello"))
        client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER), (A.DATA, b"again"))
        header, row = self.console.allocations().splitlines()[:2]
        cells = re.split(r"\s{2,}", row)
        self.assertEqual(cells[6:], ["1", "1", "2 pkts, 10 B", "0 pkts, 0 B", "0"])
        self.assertEqual(re.split(r"\s{2,}", header)[6:9], ["PERMS", "CHANNELS", "TO PEERS"])

    def test_byUser(self) -> None:
        """
        user= keeps that username's allocations, and the count says of how
        many.
        """
        self.allocated("alice")
        self.allocated("bob")
        lines = self.console.allocations(user="bob").splitlines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(lines[1].startswith("bob "))
        self.assertEqual(lines[2], "1 allocation of 2 matching user='bob'")

    def test_byAddress(self) -> None:
        """
        address= finds an allocation by its client's address (with or
        without the port), its relayed address, or a peer's.
        """
        alice = self.allocated("alice")
        bob = self.allocated("bob")
        self.assertSuccess(bob.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER)]))
        client = str(alice.link.clientAddress)
        for address in (client, self.relayedOf(alice)):
            rows = self.console.allocations(address=address).splitlines()[1:-1]
            self.assertEqual([row.split()[0] for row in rows], ["alice"], address)
        rows = self.console.allocations(address=PEER.host).splitlines()[1:-1]
        self.assertEqual([row.split()[0] for row in rows], ["bob"])
        rows = self.console.allocations(address=CLIENT_HOST).splitlines()[1:-1]
        self.assertEqual(len(rows), 2)

    def test_noMatch(self) -> None:
        """
        A filter that matches nothing says so.
        """
        self.allocated()
        self.assertEqual(
            self.console.allocations(user="carol", address="192.0.2.99"),
            "no allocation matches user='carol' and address='192.0.2.99'",
        )


class KillTests(ConsoleTestCase):
    """
    kill(): ending allocations by hand.
    """

    def ended(self) -> List[LogEvent]:
        return [e for e in self.logs.events if e.get("reason") == "killed by the administrator"]

    def test_byRelayedAddress(self) -> None:
        """
        A relayed address ends that allocation only, logged with the reason
        "killed by the administrator".
        """
        alice = self.allocated("alice")
        self.allocated("bob")
        relayed = self.relayedOf(alice)
        text = self.console.kill(relayed)
        self.assertTrue(text.startswith("killed 1 allocation:"), text)
        self.assertIn(relayed, text)
        self.assertEqual([a.username for a in self.relay.server.registry], ["bob"])
        self.assertEqual([e["relayed"] for e in self.ended()], [relayed])

    def test_byUser(self) -> None:
        """
        A username ends every allocation of that user.
        """
        self.allocated("alice")
        self.allocated("alice")
        self.allocated("bob")
        text = self.console.kill("alice")
        self.assertTrue(text.startswith("killed 2 allocations:"), text)
        self.assertEqual([a.username for a in self.relay.server.registry], ["bob"])
        self.assertEqual(len(self.ended()), 2)

    def test_byObject(self) -> None:
        """
        An allocation object, or several, end those allocations; one that
        already ended is said to have.
        """
        alice = self.allocated("alice")
        bob = self.allocated("bob")
        allocation = alice.link.allocation
        self.assertTrue(self.console.kill(allocation).startswith("killed 1 allocation:"))
        text = self.console.kill([allocation, bob.link.allocation])
        self.assertTrue(text.startswith("killed 1 allocation:"), text)
        self.assertIn("had already ended", text)
        self.assertEqual(len(self.relay.server.registry), 0)

    def test_byClientAddress(self) -> None:
        """
        A client address, as allocations() takes it, ends that client's
        allocation ("ip:port") or every allocation of that host ("ip").
        """
        alice = self.allocated("alice")
        self.allocated("bob")
        carol = self.fake.client("bob", host="192.0.2.77")
        self.assertSuccess(carol.allocate())
        text = self.console.kill(str(alice.link.clientAddress))
        self.assertTrue(text.startswith("killed 1 allocation:"), text)
        self.assertEqual(len(self.relay.server.registry), 2)
        text = self.console.kill(CLIENT_HOST)
        self.assertTrue(text.startswith("killed 1 allocation:"), text)
        [left] = self.relay.server.registry
        self.assertIs(left, carol.link.allocation)

    def test_clientLearnsAtNextRequest(self) -> None:
        """
        The killed allocation's client gets 437 at its next request.
        """
        alice = self.allocated("alice")
        self.console.kill("alice")
        self.assertErrorCode(alice.request(Method.REFRESH, [(A.LIFETIME, 600)]), 437)

    def test_nothingToKill(self) -> None:
        """
        A target that matches nothing, or is not a target, kills nothing and
        says why.
        """
        self.allocated()
        self.assertIn("nothing killed", self.console.kill("198.51.100.1:1"))
        self.assertIn("kill() takes an allocation", self.console.kill(42))
        self.assertEqual(len(self.relay.server.registry), 1)


class RelayHelperTests(ConsoleTestCase):
    """
    stats(), drain(), reloadTLS(), mint(), loglevel() and help().
    """

    def test_stats(self) -> None:
        """
        stats() shows allocations by transport and family, requests and
        refused authentications, and what was relayed.
        """
        client = self.allocated()
        client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER), (A.DATA, b"hello"))
        self.client(password="wrong").allocate()
        text = self.console.stats()
        self.assertRegex(text, r"(?m)^uptime\s+0s$")
        self.assertRegex(text, r"(?m)^draining\s+no$")
        self.assertRegex(text, r"(?m)^allocations\s+1$")
        self.assertRegex(text, r"(?m)^  by transport\s+udp/ipv4 1$")
        self.assertRegex(text, r"(?m)^requests answered\s+.*ALLOCATE success 1")
        self.assertRegex(text, r"(?m)^refused authentications\s+bad-integrity 1$")
        self.assertRegex(text, r"(?m)^challenges \(first 401, 438\)\s+no-integrity 2$")
        self.assertIn("udp: to peers 0 pkts, 0 B; from peers 0 pkts, 0 B; 1 dropped", text)

    def test_drain(self) -> None:
        """
        drain() turns new allocations away and says how many are left.
        """
        self.allocated()
        text = self.console.drain()
        self.assertTrue(self.relay.server.draining)
        self.assertIn("new allocations are refused (403)", text)
        self.assertIn("1 allocation is left", text)
        self.assertIn("any left in 1h00m will be ended", text)
        self.assertErrorCode(self.client("bob").allocate(), 403)

    def test_drainIdle(self) -> None:
        """
        Draining an idle relay is complete at once; alternates are named.
        """
        self.relay.stopService()
        self.relay = self.makeRelay(alternate_server=["192.0.2.7:3478"])
        self.console = AdminConsole(self.relay, self.reactor)
        text = self.console.drain(timeout=0)
        self.assertIn("new allocations are sent to 192.0.2.7:3478", text)
        self.assertIn("the drain is complete", text)

    def test_reloadTLSWithoutTLS(self) -> None:
        """
        Without a tls listener there is nothing to reload.
        """
        self.assertEqual(
            self.console.reloadTLS(), "no tls listener: there is no certificate to reload"
        )

    def test_reloadTLS(self) -> None:
        """
        reloadTLS() reads the certificate files again and names the
        certificate now in service, or says the old one stays.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        makeSelfSignedCertificate(cert, key)
        self.relay.stopService()
        self.relay = self.makeRelay(
            listen=["udp:3478:interface=192.0.2.1", "tls:5349:interface=192.0.2.1"],
            tls_cert=cert,
            tls_key=key,
        )
        self.console = AdminConsole(self.relay, self.reactor)
        makeSelfSignedCertificate(cert, key)
        text = self.console.reloadTLS()
        self.assertRegex(text, r"^TLS certificate reloaded: CN=.*, SHA-256 [0-9A-F:]{95}$")
        text = self.console.reloadTLS()
        self.assertRegex(text, r"^TLS certificate files unchanged, still: CN=.*, SHA-256 ")
        with open(cert, "w") as f:
            f.write("not a certificate")
        self.assertIn("the old certificate stays in service", self.console.reloadTLS())

    def test_mint(self) -> None:
        """
        mint() shows a REST credential that authenticates; the log names
        the user ID, never the password.
        """
        text = self.console.mint("carol", ttl=600)
        username = re.search(r"(?m)^username: (\S+)$", text)
        password = re.search(r"(?m)^password: (\S+)$", text)
        assert username is not None and password is not None
        self.assertTrue(username.group(1).endswith(":carol"))
        self.assertIn("valid for 10m00s", text)
        self.assertSuccess(self.client(username.group(1), password.group(1)).allocate())
        self.assertTrue(self.logs.logged("minted a TURN REST credential for carol"))
        self.assertNotIn(password.group(1), self.logs.text())

    def test_mintWithoutSecret(self) -> None:
        """
        Without a shared secret, mint() says what to configure.
        """
        self.relay.stopService()
        self.console = AdminConsole(self.makeRelay(static_auth_secret=None), self.reactor)
        self.assertIn("no static-auth-secret is configured", self.console.mint("carol"))

    def test_loglevel(self) -> None:
        """
        loglevel() shows the level, sets a known one, and refuses others.
        """
        self.assertTrue(self.console.loglevel().startswith("log level: info"))
        self.assertEqual(self.console.loglevel("debug"), "log level: debug (was info)")
        self.assertEqual(self.relay.logLevels.level(), "debug")
        self.assertIn("not one of", self.console.loglevel("loud"))
        self.assertEqual(self.relay.logLevels.level(), "debug")

    def test_loglevelWarning(self) -> None:
        """
        loglevel("warning"), in any case, is the warn level.
        """
        self.assertEqual(self.console.loglevel("warning"), "log level: warn (was info)")
        self.assertEqual(self.relay.logLevels.level(), "warn")
        self.assertEqual(self.console.loglevel("WARN"), "log level: warn (was warn)")

    def test_loglevelSurvivesReload(self) -> None:
        """
        A level set from the console stays in force across a reload that
        leaves log-level as it was; a reload that changes log-level wins.
        """
        self.console.loglevel("debug")
        self.relay.reloadConfig(self.fake.configWith())
        self.assertEqual(self.relay.logLevels.level(), "debug")
        self.relay.reloadConfig(self.fake.configWith(log_level="error"))
        self.assertEqual(self.relay.logLevels.level(), "error")

    def test_help(self) -> None:
        """
        help() lists every helper with its parameters and one line, and
        every live object.
        """
        text = self.console.help()
        for name in HELPERS:
            self.assertRegex(text, rf"(?m)^  {name}\(.*\)  +\S")
        for name, _ in OBJECTS:
            self.assertRegex(text, rf"(?m)^  {name} +\S")
        self.assertIn("allocations(user=None, address=None)", text)
        self.assertIn("mint(userID, ttl=86400)", text)

    def test_helpOnOne(self) -> None:
        """
        help(helper) shows its whole documentation without epytext markup;
        help(object) is pydoc's text, never its pager.
        """
        text = self.console.help(self.console.kill)
        self.assertTrue(text.startswith("kill(target)\n"))
        self.assertIn("killed by the administrator", text)
        self.assertNotIn("L{", text)
        self.assertIn("AllocationRegistry", self.console.help(self.relay.server.registry))
