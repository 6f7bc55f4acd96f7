"""
The SSH admin console: its helpers (L{turnrelay.admin.console}) on a relay
driven through its controller on a fake reactor; logging in through the
portal; SSH sessions on a fake connection; the service and its host key;
and the real OpenSSH client over loopback, piping a script into C{ssh -tt}
and resizing a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import struct
import termios
from typing import Any, Dict, List, Optional, Tuple, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.error import ConchError
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole import ColoredManhole
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.session import (
    SSHSession,
    packRequest_pty_req,
    packRequest_window_change,
)
from twisted.cred.credentials import SSHPrivateKey, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from tests._loopback import reactor
from tests._relayfixture import requireTool, startRelay
from tests._turnclient import TURNClient, TURNTestCase
from tests._turnsocket import within
from turnrelay.admin.console import HELPERS, OBJECTS, AdminConsole, ConsoleText
from turnrelay.admin.manhole import (
    HOST_KEY_NAME,
    ConsoleManhole,
    ConsoleSession,
    ManholeService,
    keyFingerprint,
    makePortal,
)
from turnrelay.config import ConfigError, RelayConfig, buildConfig
from turnrelay.logs import logLevel, setLogLevel
from turnrelay.service import RelayService, makeRelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import Method
from turnrelay.testing import FakeClientLink, FakeUDPReactor
from turnrelay.transports.tls import makeSelfSignedCertificate

PEER = TransportAddress("198.51.100.20", 5000)
CLIENT_HOST = "192.0.2.50"
SETTINGS: Dict[str, Any] = {
    "listen": ["udp:3478:interface=192.0.2.1"],
    "relay-ip": "198.51.100.1",
    "realm": "example.org",
    "user": ["alice:alice-password", "bob:bob-password"],
    "static-auth-secret": ["a shared secret"],
    "allow-peer": ["198.51.100.0/24"],
}
# Bounds on waits for what takes milliseconds on loopback.
PROMPTLY = 15.0


@implementer(ILogObserver)
class LogCapture:
    """
    Every log event while a test runs.

    @ivar events: the events, oldest first.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: List[LogEvent] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def text(self) -> str:
        """
        @return: every event formatted, one per line, failures included.
        """
        lines = []
        for event in self.events:
            lines.append(formatEvent(event))
            failure = event.get("log_failure")
            if failure is not None:
                lines.append(failure.getTraceback())
        return "\n".join(lines)

    def matching(self, pattern: str, level: Optional[str] = None) -> List[LogEvent]:
        """
        @return: the events whose text matches C{pattern} (at C{level}).
        """
        return [
            event
            for event in self.events
            if re.search(pattern, formatEvent(event))
            and (level is None or event["log_level"].name == level)
        ]

    def assertClean(self, testCase: SynchronousTestCase) -> None:
        """
        Assert that nothing was logged as a failure or an error.
        """
        bad = [
            formatEvent(event)
            for event in self.events
            if event.get("log_failure") is not None
            or event["log_level"].name in ("error", "critical")
        ]
        testCase.assertEqual(bad, [])
        testCase.assertNotIn("Traceback", self.text())


def ed25519Key() -> Key:
    """
    @return: a new ed25519 private key.
    """
    return Key(Ed25519PrivateKey.generate())


def authorizedLine(key: Key, comment: str = "ops@example") -> bytes:
    """
    @return: C{key}'s line in an authorized_keys file.
    """
    return key.public().toString("openssh", comment=comment) + b"\n"


def signedCredentials(key: Key, username: bytes = b"admin", signer: Optional[Key] = None) -> Any:
    """
    SSH public key credentials for C{key}, signed by C{signer} (C{key}
    itself by default), as conch's userauth makes them.
    """
    data = os.urandom(32)
    return SSHPrivateKey(
        username,
        b"ssh-ed25519",
        key.public().blob(),
        data,
        (signer or key).sign(data),
    )


class ConsoleTestCase(TURNTestCase):
    """
    A relay on a fake reactor, its admin console, and TURN clients.
    """

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.relay = self.makeRelay(SETTINGS)
        self.console = AdminConsole(self.relay, self.reactor)
        self.logs = LogCapture(self)
        self.addCleanup(setLogLevel, "info")

    def makeRelay(self, settings: Dict[str, Any]) -> RelayService:
        relay = makeRelayService(buildConfig(settings), self.reactor)
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay

    def client(self, username: str = "alice", password: Optional[str] = None) -> TURNClient:
        self.port = getattr(self, "port", 40000) + 1
        link = FakeClientLink(TransportAddress(CLIENT_HOST, self.port))
        return TURNClient(
            self.relay.server, link, username, password or f"{username}-password", False
        )

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
        newConfig = buildConfig({**SETTINGS, "realm": "example.com"})
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

    def test_clientLearnsAtNextRequest(self) -> None:
        """
        The killed allocation's client gets 437 at its next request.
        """
        alice = self.allocated("alice")
        self.console.kill("alice")
        self.assertError(alice.request(Method.REFRESH, [(A.LIFETIME, 600)]), 437)

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
        self.assertRegex(text, r"(?m)^refused authentications\s+bad-integrity 1")
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
        self.assertError(self.client("bob").allocate(), 403)

    def test_drainIdle(self) -> None:
        """
        Draining an idle relay is complete at once; alternates are named.
        """
        self.relay.stopService()
        self.relay = self.makeRelay({**SETTINGS, "alternate-server": ["192.0.2.7:3478"]})
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
            {
                **SETTINGS,
                "listen": ["udp:3478:interface=192.0.2.1", "tls:5349:interface=192.0.2.1"],
                "tls-cert": cert,
                "tls-key": key,
            }
        )
        self.console = AdminConsole(self.relay, self.reactor)
        makeSelfSignedCertificate(cert, key)
        text = self.console.reloadTLS()
        self.assertRegex(text, r"^TLS certificate reloaded: CN=.*, SHA-256 [0-9A-F:]{95}$")
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
        self.assertTrue(self.logs.matching("minted a TURN REST credential for carol"))
        self.assertNotIn(password.group(1), self.logs.text())

    def test_mintWithoutSecret(self) -> None:
        """
        Without a shared secret, mint() says what to configure.
        """
        self.relay.stopService()
        settings = {k: v for k, v in SETTINGS.items() if k != "static-auth-secret"}
        self.console = AdminConsole(self.makeRelay(settings), self.reactor)
        self.assertIn("no static-auth-secret is configured", self.console.mint("carol"))

    def test_loglevel(self) -> None:
        """
        loglevel() shows the level, sets a known one, and refuses others.
        """
        self.assertTrue(self.console.loglevel().startswith("log level: info"))
        self.assertEqual(self.console.loglevel("debug"), "log level: debug (was info)")
        self.assertEqual(logLevel(), "debug")
        self.assertIn("not one of", self.console.loglevel("loud"))
        self.assertEqual(logLevel(), "debug")

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


class PortalTests(SynchronousTestCase):
    """
    Logging in through the console's portal: keys from an authorized_keys
    file read at each login, passwords from a password file.
    """

    def setUp(self) -> None:
        self.logs = LogCapture(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.keysFile = os.path.join(self.directory, "authorized_keys")
        self.passwordsFile = os.path.join(self.directory, "passwords")
        self.key = ed25519Key()
        self.writeKeys(b"# the operators\n" + authorizedLine(self.key))
        with open(self.passwordsFile, "wb") as f:
            f.write(b"# user:password\nadmin:s3cret:with-colon\n\nops:other-pass\n")
        os.chmod(self.passwordsFile, 0o600)
        config = buildConfig(
            {
                **SETTINGS,
                "manhole": "tcp:2222:interface=127.0.0.1",
                "manhole-authorized-keys": self.keysFile,
                "manhole-passwords": self.passwordsFile,
                "state-dir": os.path.join(self.directory, "state"),
            }
        )
        reactor = FakeUDPReactor()
        self.relay = makeRelayService(config, reactor)
        self.portal = makePortal(self.relay, config, reactor)

    def writeKeys(self, content: bytes) -> None:
        with open(self.keysFile, "wb") as f:
            f.write(content)

    def login(self, credentials: Any) -> Deferred[Any]:
        return self.portal.login(credentials, None, IConchUser)

    def test_key(self) -> None:
        """
        A key in the file logs in, whatever the username, as an SSH user.
        """
        interface, avatar, logout = self.successResultOf(
            self.login(signedCredentials(self.key, b"anyone"))
        )
        self.assertIs(interface, IConchUser)
        self.assertTrue(IConchUser.providedBy(avatar))
        logout()
        self.assertTrue(self.logs.matching("admin console: anyone logged out", "info"))

    def test_unknownKey(self) -> None:
        """
        A key not in the file is refused.
        """
        self.failureResultOf(self.login(signedCredentials(ed25519Key())), UnauthorizedLogin)

    def test_badSignature(self) -> None:
        """
        An authorized key signed for by another key is refused.
        """
        credentials = signedCredentials(self.key, signer=ed25519Key())
        self.failureResultOf(self.login(credentials), UnauthorizedLogin)

    def test_fileReadAtEachLogin(self) -> None:
        """
        A key added to the file logs in at once, and a key removed from it
        no longer does: no restart.
        """
        newKey = ed25519Key()
        self.failureResultOf(self.login(signedCredentials(newKey)), UnauthorizedLogin)
        self.writeKeys(authorizedLine(newKey))
        self.successResultOf(self.login(signedCredentials(newKey)))
        self.failureResultOf(self.login(signedCredentials(self.key)), UnauthorizedLogin)

    def test_optionsAndJunkIgnored(self) -> None:
        """
        Lines with options, which the console cannot honour, and lines that
        are not keys are ignored with a warning naming the line, never its
        content; the other lines still count.
        """
        other = ed25519Key()
        self.writeKeys(
            b'from="10.0.0.0/8",no-pty '
            + authorizedLine(other)
            + b"ssh-ed25519 not-base64\n"
            + authorizedLine(self.key)
        )
        self.failureResultOf(self.login(signedCredentials(other)), UnauthorizedLogin)
        self.successResultOf(self.login(signedCredentials(self.key)))
        self.assertTrue(self.logs.matching(r"line 1 ignored: it has options", "warn"))
        self.assertTrue(self.logs.matching(r"line 2 ignored: it is not a public key", "warn"))
        blob = other.public().toString("openssh").split()[1].decode()
        self.assertNotIn(blob, self.logs.text())
        self.assertNotIn("10.0.0.0/8", self.logs.text())

    def test_missingKeysFile(self) -> None:
        """
        Without the file no key logs in, and the log says why.
        """
        os.remove(self.keysFile)
        self.failureResultOf(self.login(signedCredentials(self.key)), UnauthorizedLogin)
        self.assertTrue(self.logs.matching("cannot read authorized keys", "warn"))

    def test_password(self) -> None:
        """
        A user and password from the file log in; the password may hold a
        colon.
        """
        result = self.successResultOf(self.login(UsernamePassword(b"admin", b"s3cret:with-colon")))
        self.assertIs(result[0], IConchUser)

    def test_wrongPassword(self) -> None:
        """
        A wrong password, another user's password or an unknown user is
        refused; nothing of them is logged.
        """
        for username, password in (
            (b"admin", b"s3cret"),
            (b"admin", b"other-pass"),
            (b"nobody", b"s3cret:with-colon"),
            (b"admin", b""),
        ):
            self.failureResultOf(
                self.login(UsernamePassword(username, password)), UnauthorizedLogin
            )
        self.assertNotIn("s3cret", self.logs.text())

    def test_passwordFileReadAtEachLogin(self) -> None:
        """
        A password changed in the file applies at the next login.
        """
        with open(self.passwordsFile, "wb") as f:
            f.write(b"admin:new-password\nbroken line\n")
        self.failureResultOf(
            self.login(UsernamePassword(b"admin", b"s3cret:with-colon")), UnauthorizedLogin
        )
        self.successResultOf(self.login(UsernamePassword(b"admin", b"new-password")))
        self.assertTrue(self.logs.matching("line 2 ignored: it is not user:password", "warn"))

    def test_onlyConfiguredCheckers(self) -> None:
        """
        Without a password file, the portal takes keys only.
        """
        config = buildConfig(
            {
                **SETTINGS,
                "manhole": "tcp:2222",
                "manhole-authorized-keys": self.keysFile,
            }
        )
        portal = makePortal(self.relay, config, FakeUDPReactor())
        interfaces = portal.listCredentialsInterfaces()
        self.assertEqual([i.__name__ for i in interfaces], ["ISSHPrivateKey"])

    def test_noForwarding(self) -> None:
        """
        A console user may open sessions and no other channel: no port
        forwarding through the relay's host.
        """
        avatar = self.successResultOf(self.login(signedCredentials(self.key)))[1]
        self.assertRaises(ConchError, avatar.lookupChannel, b"direct-tcpip", 65536, 32768, b"")
        self.assertIs(avatar.channelLookup[b"session"], SSHSession)


class FakeSSHConnection:
    """
    The SSH connection a session channel talks through, recording what is
    sent.

    @ivar output: the channel data sent, joined.
    @ivar requests: C{(type, data)} of the channel requests sent.
    @ivar closed: whether the channel was closed.
    """

    def __init__(self) -> None:
        self.output = b""
        self.requests: List[Tuple[bytes, bytes]] = []
        self.closed = False
        self.transport = self

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 50000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 2222)

    def sendData(self, channel: Any, data: bytes) -> None:
        self.output += data

    def sendExtendedData(self, channel: Any, dataType: int, data: bytes) -> None:
        self.output += data

    def sendRequest(
        self, channel: Any, requestType: bytes, data: bytes, wantReply: bool = False
    ) -> Optional[Deferred[Any]]:
        if not channel.localClosed:
            self.requests.append((requestType, data))
        return None

    def sendEOF(self, channel: Any) -> None:
        pass

    def sendClose(self, channel: Any) -> None:
        channel.localClosed = True
        self.closed = True


class SessionTests(SynchronousTestCase):
    """
    Console sessions on an SSH channel over a fake connection: the shell,
    terminal resizes, end of input, Ctrl-D, commands and the conch gap.
    """

    def setUp(self) -> None:
        self.logs = LogCapture(self)
        self.reactor = FakeUDPReactor()
        self.relay = makeRelayService(buildConfig(SETTINGS), self.reactor)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        keysFile = os.path.join(directory, "authorized_keys")
        self.key = ed25519Key()
        with open(keysFile, "wb") as f:
            f.write(authorizedLine(self.key))
        config = buildConfig(
            {**SETTINGS, "manhole": "tcp:2222", "manhole-authorized-keys": keysFile}
        )
        self.portal = makePortal(self.relay, config, self.reactor)

    def channel(self, portal: Optional[Portal] = None, window: int = 2**20) -> SSHSession:
        """
        A session channel of a user logged in through C{portal}.

        @param window: how many bytes the client's window takes.
        """
        credentials = signedCredentials(self.key)
        login: Any = self.successResultOf(
            (portal or self.portal).login(credentials, None, IConchUser)
        )
        avatar = login[1]
        connection = FakeSSHConnection()
        avatar.conn = connection
        return SSHSession(
            remoteWindow=window, remoteMaxPacket=32768, conn=cast(Any, connection), avatar=avatar
        )

    def shell(self, pty: bool = True, **kwargs: Any) -> Tuple[SSHSession, FakeSSHConnection]:
        """
        A channel with the console running in it, as C{ssh -t} opens it.
        """
        channel = self.channel(**kwargs)
        if pty:
            request = packRequest_pty_req(b"xterm", (24, 80, 0, 0), b"")
            self.assertEqual(channel.request_pty_req(request), 1)
        self.assertEqual(channel.request_shell(b""), 1)
        return channel, channel.conn  # type: ignore[return-value]

    def exitStatuses(self, connection: FakeSSHConnection) -> List[int]:
        return [
            struct.unpack(">L", data)[0]
            for kind, data in connection.requests
            if kind == b"exit-status"
        ]

    def test_stockTerminalSessionGap(self) -> None:
        """
        The gap ConsoleSession closes: conch's own TerminalSession logs a
        traceback on a terminal resize and raises on end of input.
        """
        realm: Any = TerminalRealm()

        def terminal() -> insults.ServerProtocol:
            return insults.ServerProtocol(ColoredManhole, {})

        realm.chainedProtocolFactory = terminal
        portal = Portal(realm, self.portal.checkers.values())
        channel = self.channel(portal)
        channel.request_pty_req(packRequest_pty_req(b"xterm", (24, 80, 0, 0), b""))
        channel.request_shell(b"")
        resized = channel.request_window_change(packRequest_window_change((40, 120, 0, 0)))
        logged = self.flushLoggedErrors(NotImplementedError)
        try:
            channel.eofReceived()
        except NotImplementedError:
            eofRaised = True
        else:
            eofRaised = False
        if resized and not logged and not eofRaised:
            raise SkipTest("conch's TerminalSession handles resize and EOF now")
        self.assertEqual((resized, len(logged), eofRaised), (0, 1, True))

    def test_shell(self) -> None:
        """
        The shell greets, prompts, and shows helpers' answers unquoted.
        """
        channel, connection = self.shell()
        self.assertIn(b"turnrelay admin console: help() lists", connection.output)
        self.assertTrue(connection.output.endswith(b">>> \x1b[4h"))
        channel.dataReceived(b"stats()\n")
        self.assertIn(b"\r\nuptime ", connection.output)
        self.assertNotIn(b"'uptime", connection.output)
        channel.dataReceived(b"print(registry is relay.server.registry)\n")
        self.assertIn(b"\r\nTrue\r\n", connection.output)
        self.logs.assertClean(self)

    def test_noScreenClearing(self) -> None:
        """
        The console neither resets nor clears the operator's terminal, at
        login or after.
        """
        channel, connection = self.shell()
        channel.dataReceived(b"1\n\x04")
        self.assertNotIn(b"\x1bc", connection.output)
        self.assertNotIn(b"\x1b[2J", connection.output)

    def test_resize(self) -> None:
        """
        A terminal resize is followed, with the input line drawn again, and
        logs nothing.
        """
        channel, connection = self.shell()
        channel.dataReceived(b"1 + ")
        session = channel.session
        assert isinstance(session, ConsoleSession)
        before = len(connection.output)
        self.assertEqual(
            channel.request_window_change(packRequest_window_change((40, 120, 0, 0))), 1
        )
        self.assertEqual((session.width, session.height), (120, 40))
        self.assertEqual(connection.output[before:], b"\x1b[2K\r>>> 1 + ")
        channel.dataReceived(b"1\n")
        self.assertIn(b"\r\n2\r\n", connection.output)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.logs.assertClean(self)

    def test_unchangedSizeNotRedrawn(self) -> None:
        """
        A window change to the same size draws nothing.
        """
        channel, connection = self.shell()
        before = len(connection.output)
        channel.request_window_change(packRequest_window_change((24, 80, 0, 0)))
        self.assertEqual(connection.output[before:], b"")

    def test_endOfInput(self) -> None:
        """
        At end of input the session runs a last line without a newline,
        closes an open block, then ends with exit status 0; nothing is
        logged as an error.
        """
        channel, connection = self.shell()
        channel.dataReceived(b"for i in range(2):\n    print('line', i)\n")
        self.assertNotIn(b"line 0", connection.output)
        channel.eofReceived()
        self.assertIn(b"line 0\r\nline 1", connection.output)
        self.assertEqual(self.exitStatuses(connection), [0])
        self.assertTrue(connection.closed)
        channel2, connection2 = self.shell()
        channel2.dataReceived(b"x = 20\nprint(x + 1)")
        channel2.eofReceived()
        self.assertIn(b"\r\n21\r\n", connection2.output)
        self.assertTrue(connection2.output.endswith(b"\x1b[4l\r\n"))
        self.assertEqual(self.exitStatuses(connection2), [0])
        self.logs.assertClean(self)

    def test_endWaitsForOutput(self) -> None:
        """
        The channel closes only once the output the client's window held
        back has been sent.
        """
        channel, connection = self.shell(window=4096)
        channel.dataReceived(b"print('x' * 10000)\n")
        channel.eofReceived()
        self.assertFalse(connection.closed)
        self.assertEqual(self.exitStatuses(connection), [0])
        channel.addWindowBytes(2**20)
        self.assertTrue(connection.closed)
        self.assertIn(b"x" * 10000, connection.output)

    def test_ctrlD(self) -> None:
        """
        Ctrl-D on an empty line ends the session with exit status 0; the
        channel closing then tells the terminal, once.
        """
        channel, connection = self.shell()
        channel.dataReceived(b"\x04")
        self.assertEqual(self.exitStatuses(connection), [0])
        self.assertTrue(connection.closed)
        channel.closeReceived()
        channel.closed()
        channel.eofReceived()
        self.assertEqual(self.exitStatuses(connection), [0])
        self.logs.assertClean(self)

    def test_exit(self) -> None:
        """
        exit(), quit() and SystemExit end the session with exit status 0,
        never the relay; exit alone says how to leave.
        """
        for line in (b"exit()\n", b"quit()\n", b"raise SystemExit(3)\n"):
            channel, connection = self.shell()
            channel.dataReceived(b"exit\n")
            self.assertIn(b"\r\nUse exit() or Ctrl-D to end the session.\r\n", connection.output)
            self.assertFalse(connection.closed)
            channel.dataReceived(line)
            self.assertEqual(self.exitStatuses(connection), [0], line)
            self.assertTrue(connection.closed, line)
        self.logs.assertClean(self)

    def test_relayInputUntouched(self) -> None:
        """
        input() and breakpoint(), which would read the relay process's own
        input and stop the relay, are refused with an explanation.
        """
        channel, connection = self.shell()
        for name in (b"input", b"breakpoint"):
            channel.dataReceived(name + b"()\n")
            self.assertIn(
                b"RuntimeError: " + name + b"() would read the relay's own input",
                connection.output,
            )
        self.assertFalse(connection.closed)

    def test_clientGone(self) -> None:
        """
        A channel closed by the client ends the session; late output goes
        nowhere.
        """
        channel, connection = self.shell()
        terminal = channel.session._terminal  # type: ignore[union-attr]
        manhole = terminal.terminalProtocol
        assert isinstance(manhole, ConsoleManhole)
        channel.closed()
        self.assertIsNone(terminal.terminalProtocol)
        before = len(connection.output)
        manhole.addOutput(b"late", isAsync=True)
        self.assertEqual(len(connection.output), before)
        self.logs.assertClean(self)

    def test_withoutPTY(self) -> None:
        """
        A shell without a pseudo-terminal (ssh -T) works, at 80x24.
        """
        channel, connection = self.shell(pty=False)
        session = channel.session
        assert isinstance(session, ConsoleSession)
        self.assertEqual((session.width, session.height), (80, 24))
        channel.dataReceived(b"print(6 * 7)\n")
        self.assertIn(b"\r\n42\r\n", connection.output)

    def test_zeroSizePTY(self) -> None:
        """
        The 0x0 terminal that C{ssh -tt} reports without a terminal of its
        own means the default size.
        """
        channel = self.channel()
        channel.request_pty_req(packRequest_pty_req(b"xterm", (0, 0, 0, 0), b""))
        channel.request_shell(b"")
        session = channel.session
        assert isinstance(session, ConsoleSession)
        self.assertEqual((session.width, session.height), (80, 24))

    def test_inputBeforeShell(self) -> None:
        """
        Input that arrives before the shell request reaches the console.
        """
        channel = self.channel()
        channel.dataReceived(b"print(6 * 7)\n")
        self.assertEqual(channel.request_shell(b""), 1)
        output = channel.conn.output  # type: ignore[union-attr]
        self.assertTrue(output.startswith(b"turnrelay admin console: "), output)
        self.assertIn(b"\r\n42\r\n", output)

    def test_command(self) -> None:
        """
        A command (ssh host 'stats()') is answered with how to pipe it in,
        and exit status 1 once the request has been answered.
        """
        channel = self.channel()
        self.assertEqual(channel.request_exec(NS(b"stats()")), 1)
        connection = channel.conn
        assert isinstance(connection, FakeSSHConnection)
        self.assertIn(b"runs no commands; pipe them in", connection.output)
        self.assertFalse(connection.closed)
        channel.eofReceived()
        self.reactor.advance(0)
        self.assertEqual(self.exitStatuses(connection), [1])
        self.assertTrue(connection.closed)
        self.logs.assertClean(self)


class ManholeServiceTests(SynchronousTestCase):
    """
    The console's service, its host key, and the configuration that turns
    it on.
    """

    def setUp(self) -> None:
        self.logs = LogCapture(self)
        self.reactor = FakeUDPReactor()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.keysFile = os.path.join(self.directory, "authorized_keys")
        with open(self.keysFile, "wb") as f:
            f.write(authorizedLine(ed25519Key()))
        self.stateDir = os.path.join(self.directory, "state")

    def config(self, **settings: Any) -> RelayConfig:
        values = {
            **SETTINGS,
            "manhole": "tcp:2222:interface=127.0.0.1",
            "manhole-authorized-keys": self.keysFile,
            "state-dir": self.stateDir,
        }
        values.update({name.replace("_", "-"): value for name, value in settings.items()})
        return buildConfig(values)

    def startManhole(self, config: Optional[RelayConfig] = None) -> ManholeService:
        self.relay = makeRelayService(config or self.config(), self.reactor)
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        service = self.relay.getServiceNamed("manhole")
        assert isinstance(service, ManholeService)
        return service

    def test_offByDefault(self) -> None:
        """
        Without the manhole setting there is no console.
        """
        relay = makeRelayService(buildConfig(SETTINGS), self.reactor)
        self.assertRaises(KeyError, relay.getServiceNamed, "manhole")

    def test_listens(self) -> None:
        """
        The console listens where configured, with its own host key
        dictionaries, says so in the log, and stops listening when stopped.
        """
        service = self.startManhole()
        self.assertEqual(service.address, TransportAddress("127.0.0.1", 2222))
        port, factory, _, interface = cast(Tuple[int, Any, int, str], self.reactor.tcpServers[-1])
        self.assertEqual((port, interface), (2222, "127.0.0.1"))
        self.assertIs(factory, service.factory)
        self.assertEqual(list(factory.publicKeys), [b"ssh-ed25519"])
        self.assertEqual(ConchFactory.publicKeys, {})
        self.assertEqual(ConchFactory.privateKeys, {})
        assert service.hostKey is not None
        self.assertTrue(
            self.logs.matching(
                "admin console listening on 127.0.0.1:2222 .*"
                + re.escape(keyFingerprint(service.hostKey)),
                "info",
            )
        )
        tcpPort = self.reactor.tcpPorts[-1]
        self.successResultOf(service.stopService())
        self.assertFalse(tcpPort.listening)
        self.assertIsNone(service.address)

    def test_hostKeyKept(self) -> None:
        """
        The ed25519 host key is made once, mode 0600, and the same key is
        used after a restart.
        """
        first = self.startManhole()
        keyPath = os.path.join(self.stateDir, "manhole", HOST_KEY_NAME)
        self.assertEqual(stat.S_IMODE(os.stat(keyPath).st_mode), 0o600)
        self.assertTrue(os.path.exists(keyPath + ".pub"))
        assert first.hostKey is not None
        self.assertEqual(first.hostKey.type(), "Ed25519")
        self.successResultOf(self.relay.stopService())
        second = self.startManhole()
        self.assertEqual(second.hostKey, first.hostKey)
        self.assertEqual(len(self.logs.matching("made the SSH host key")), 1)

    def test_badHostKey(self) -> None:
        """
        A host key file that holds no key stops the start with its path.
        """
        os.makedirs(os.path.join(self.stateDir, "manhole"))
        with open(os.path.join(self.stateDir, "manhole", HOST_KEY_NAME), "w") as f:
            f.write("junk")
        relay = makeRelayService(self.config(), self.reactor)
        error = self.assertRaises(ValueError, relay.startService)
        self.assertIn(HOST_KEY_NAME, str(error))
        self.assertIn("remove it", str(error))

    def test_remoteRefused(self) -> None:
        """
        A console beyond loopback is refused unless manhole-allow-remote
        says so.
        """
        error = self.assertRaises(ConfigError, self.config, manhole="tcp:2222:interface=0.0.0.0")
        self.assertIn("manhole-allow-remote", str(error))
        self.assertRaises(ConfigError, self.config, manhole="tcp:2222:interface=::")
        config = self.config(manhole="tcp:2222:interface=0.0.0.0", manhole_allow_remote=True)
        self.assertEqual(config.manhole.interface, "0.0.0.0")  # type: ignore[union-attr]

    def test_credentialsRequired(self) -> None:
        """
        A console nobody could log in to is refused.
        """
        values = {**SETTINGS, "manhole": "tcp:2222"}
        self.assertRaises(ConfigError, buildConfig, values)

    def test_missingFilesWarned(self) -> None:
        """
        Credential files that do not exist yet, or a password file others
        can read, are warned about when the console is built.
        """
        passwords = os.path.join(self.directory, "passwords")
        with open(passwords, "w") as f:
            f.write("admin:password\n")
        os.chmod(passwords, 0o644)
        missing = os.path.join(self.directory, "nothing-here")
        makeRelayService(
            self.config(manhole_authorized_keys=missing, manhole_passwords=passwords),
            self.reactor,
        )
        self.assertTrue(self.logs.matching("nothing-here does not exist", "warn"))
        self.assertTrue(self.logs.matching("password file .* is readable by others", "warn"))


class ChildTerminal(ProcessProtocol):
    """
    A child process given some input, whose output is collected.

    @ivar output: its output so far (standard error too, for a PTY).
    @ivar exitCode: its exit status once it has ended.
    """

    def __init__(self, script: Optional[bytes] = None) -> None:
        self._script = script
        self.output = b""
        self.exitCode: Optional[int] = None
        self._ended: Deferred[None] = Deferred()
        self._waiting: List[Tuple[re.Pattern[bytes], int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        if self._script is not None:
            self.transport.write(self._script)  # type: ignore[union-attr]
            self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        waiting = []
        for pattern, start, waiter in self._waiting:
            if pattern.search(self.output, start):
                waiter.callback(None)
            else:
                waiting.append((pattern, start, waiter))
        self._waiting = waiting

    def processEnded(self, reason: Failure) -> None:
        self.exitCode = getattr(reason.value, "exitCode", None)
        waiting, self._waiting = self._waiting, []
        for pattern, _, waiter in waiting:
            waiter.errback(AssertionError(f"ended before {pattern.pattern!r}: {self.output!r}"))
        self._ended.callback(None)

    def waitFor(self, pattern: bytes, start: int = 0) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires when the output after C{start}
            matches C{pattern}.
        """
        compiled = re.compile(pattern)
        if compiled.search(self.output, start):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append((compiled, start, waiter))
        return waiter

    def whenEnded(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires when the process has ended.
        """
        if self._ended.called:
            return succeed(None)
        ended: Deferred[None] = Deferred()
        self._ended.addCallback(lambda _: ended.callback(None))
        return ended

    def stop(self) -> Deferred[None]:
        """
        Kill the process unless it has ended, and wait for its end.
        """
        self._waiting = []
        if not self._ended.called:
            try:
                self.transport.signalProcess("KILL")  # type: ignore[union-attr]
            except Exception:
                pass
        return self.whenEnded()


class OpenSSHTests(TestCase):
    """
    The real OpenSSH client against a relay's console on 127.0.0.1.
    """

    timeout = 60

    def setUp(self) -> None:
        self.ssh = requireTool(self, "ssh")
        self.keygen = requireTool(self, "ssh-keygen")
        self.logs = LogCapture(self)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.keysFile = os.path.join(self.directory, "authorized_keys")

    async def startConsole(self) -> None:
        """
        Make a key, authorize it, and start a relay with its console on
        127.0.0.1, on a port of the system's choosing.
        """
        self.identity = await self.makeIdentity("id")
        with open(self.keysFile, "w") as f:
            f.write("# the relay's operators\n")
            with open(self.identity + ".pub") as pub:
                f.write(pub.read())
        relay = startRelay(
            self,
            manhole="tcp:0:interface=127.0.0.1",
            manhole_authorized_keys=self.keysFile,
            state_dir=os.path.join(self.directory, "state"),
        )
        service = relay.service.getServiceNamed("manhole")
        assert isinstance(service, ManholeService) and service.address is not None
        self.port = service.address.port

    async def makeIdentity(self, name: str) -> str:
        """
        @return: the path of a new passphrase-less ed25519 key, made by
            ssh-keygen.
        """
        path = os.path.join(self.directory, name)
        child = ChildTerminal(b"")
        reactor.spawnProcess(
            child, self.keygen, [self.keygen, "-q", "-t", "ed25519", "-N", "", "-f", path]
        )
        self.addCleanup(child.stop)
        await within(child.whenEnded(), PROMPTLY, "ssh-keygen")
        self.assertEqual(child.exitCode, 0, child.output)
        return path

    def sshArguments(self, *extra: str, identity: Optional[str] = None) -> List[str]:
        return [
            self.ssh,
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            identity or self.identity,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            *extra,
            "admin@127.0.0.1",
        ]

    def spawnSSH(
        self, arguments: List[str], script: Optional[bytes] = None, usePTY: bool = False
    ) -> ChildTerminal:
        environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        child = ChildTerminal(script)
        reactor.spawnProcess(child, arguments[0], arguments, env=environment, usePTY=usePTY)
        self.addCleanup(child.stop)
        return child

    def assertLoggedIn(self) -> None:
        logins = self.logs.matching(
            r"admin console: admin logged in from 127\.0\.0\.1:\d+ by publickey, key SHA256:",
            "info",
        )
        self.assertEqual(len(logins), 1)

    async def test_pipedScript(self) -> None:
        """
        A script piped into ssh -tt runs, its answers come back unquoted,
        and the end of its input ends the session with exit status 0 and
        no traceback logged.
        """
        await self.startConsole()
        script = b"print(stats())\nallocations()\nhelp()\nloglevel()\nmint('carol', 600)"
        child = self.spawnSSH(self.sshArguments("-tt"), script)
        await within(child.whenEnded(), PROMPTLY, "ssh with a piped script")
        output = child.output
        self.assertEqual(child.exitCode, 0, output)
        self.assertRegex(output, rb"\r\nuptime +\d+s\r\n")
        self.assertRegex(output, rb"\r\nallocations +0\r\n")
        self.assertIn(b"\r\nno allocations\r\n", output)
        self.assertIn(b"\r\n  kill(target)  ", output)
        self.assertIn(b"\r\nlog level: info ", output)
        self.assertRegex(output, rb"\r\nusername: \d+:carol\r\npassword: \S+\r\n")
        self.assertNotIn(b"'uptime", output)
        self.assertNotIn(b"Traceback", output)
        self.assertLoggedIn()
        self.logs.assertClean(self)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_resizeOverPTY(self) -> None:
        """
        ssh in a pseudo-terminal that is resized sends a window change,
        which the console follows (drawing its input line again) without
        logging a traceback; Ctrl-D then ends the session with exit status 0.
        """
        await self.startConsole()
        child = self.spawnSSH(self.sshArguments("-tt"), usePTY=True)
        await within(child.waitFor(rb">>> "), PROMPTLY, "the console's prompt")
        start = len(child.output)
        transport: Any = child.transport
        fcntl.ioctl(transport.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        await within(child.waitFor(rb"\x1b\[2K\r>>> ", start), PROMPTLY, "the redrawn line")
        start = len(child.output)
        transport.write(b"print(6 * 7)\n")
        await within(child.waitFor(rb"\r\n42\r\n", start), PROMPTLY, "the answer")
        transport.write(b"\x04")
        await within(child.whenEnded(), PROMPTLY, "the end of the session")
        self.assertEqual(child.exitCode, 0, child.output)
        self.assertLoggedIn()
        self.logs.assertClean(self)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_unauthorizedKey(self) -> None:
        """
        A key not in authorized_keys is refused; the failed login is logged
        at warn, with the user and client address and without the key.
        """
        await self.startConsole()
        stranger = await self.makeIdentity("stranger")
        child = self.spawnSSH(self.sshArguments("-tt", identity=stranger), b"stats()\n")
        await within(child.whenEnded(), PROMPTLY, "ssh with a stranger's key")
        self.assertEqual(child.exitCode, 255, child.output)
        self.assertNotIn(b"uptime", child.output)
        refused = self.logs.matching(
            r"admin console: login refused to admin from 127\.0\.0\.1:\d+: "
            r"\d+ failed attempts, the last by publickey",
            "warn",
        )
        self.assertEqual(len(refused), 1)
        with open(stranger + ".pub") as f:
            blob = f.read().split()[1]
        self.assertNotIn(blob, self.logs.text())
        self.assertEqual(self.logs.matching("logged in"), [])
        self.logs.assertClean(self)

    async def test_keyAddedWhileRunning(self) -> None:
        """
        A key added to authorized_keys while the console runs logs in at
        once.
        """
        await self.startConsole()
        other = await self.makeIdentity("other")
        with open(self.keysFile, "a") as f, open(other + ".pub") as pub:
            f.write(pub.read())
        child = self.spawnSSH(self.sshArguments("-tt", identity=other), b"print(6 * 7)\n")
        await within(child.whenEnded(), PROMPTLY, "ssh with the new key")
        self.assertEqual(child.exitCode, 0, child.output)
        self.assertIn(b"\r\n42\r\n", child.output)

    async def test_command(self) -> None:
        """
        ssh host 'stats()' is told to pipe the script in, and exits 1.
        """
        await self.startConsole()
        child = self.spawnSSH(self.sshArguments() + ["stats()"], b"")
        await within(child.whenEnded(), PROMPTLY, "ssh with a command")
        self.assertEqual(child.exitCode, 1, child.output)
        self.assertIn(b"runs no commands; pipe them in instead", child.output)
        self.logs.assertClean(self)
