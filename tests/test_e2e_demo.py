"""
The demo page (C{demo-page}, which C{make run} serves): what it answers,
what it lets the relay do, and a real headless Chromium making the page's
relay-only call through C{twistd turnrelay} started as C{make run} starts
it.

The browser tests run twistd and Chromium in a network namespace of their
own, with loopback and one veth interface with a private address: the relay
listens on 127.0.0.1 as C{make run}'s does, and Chromium, which gathers no
candidates on a machine with loopback alone, has an interface to gather
on (its packets to 127.0.0.1 still go over loopback).  The driver,
C{tests/e2e/demo_driver.py}, picks a transport in the page, clicks "Start
the call", and reports the page's state and a screenshot.  For C{turns:}
the browser's NSS database trusts the certificate the relay made itself,
as C{tests/test_e2e_browser.py} does.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import sys
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._processes import pythonEnvironment, spawn, turnrelayCommand
from tests._relays import FakeRelay, httpRequest
from tests._timing import reactor
from tests.test_e2e_browser import (
    BrowserDriver,
    Namespace,
    requireTestbed,
    sweepAbandonedNamespaces,
    vethPair,
)
from turnrelay import tap
from turnrelay.admin.demo import DEMO_USER, DemoRoot, demoURLs, isLoopbackHost
from turnrelay.admin.web import QuietSite
from turnrelay.config import ConfigError, RelayConfig, buildConfig
from turnrelay.stun.address import TransportAddress
from turnrelay.testing import FakeUDPReactor
from turnrelay.turn.policy import PeerPolicy

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_DRIVER = os.path.join(HERE, "e2e", "demo_driver.py")
DEMO_PORT = 8478
# What the page must show before the test looks: messages and video frames
# received through the relay.
MESSAGES = 3
FRAMES = 10
# How long the page gets for a call; the test's timeout is the net above.
CALL_TIMEOUT = 40

SECRET: Dict[str, Any] = {"static-auth-secret": ["demo-secret"]}
NO_SECRET: Dict[str, Any] = {"static-auth-secret": []}

CREATED = re.compile(
    rb"allocation (?P<relayed>\S+) created for (?P<username>\S+) on "
    rb"(?P<transport>udp|tcp|tls):(?P<client>\S+)->(?P<server>\S+), lifetime"
)


class DemoSettingTests(SynchronousTestCase):
    """
    C{demo-page} listens on loopback only.
    """

    def test_loopbackOnly(self) -> None:
        """
        A demo page anywhere but loopback is refused, naming the setting.
        """
        for interface in ("0.0.0.0", "10.0.0.1", "::", "::ffff:10.0.0.1", "192.0.2.1"):
            e = self.assertRaises(
                ConfigError, buildConfig, {"demo-page": f"tcp:8478:interface={interface}"}
            )
            self.assertIn("demo-page", str(e))
            self.assertIn("loopback", str(e))
        for interface in ("127.0.0.1", "::1"):
            config = buildConfig({"demo-page": f"tcp:8478:interface={interface}"})
            assert config.demoPage is not None
            self.assertEqual(config.demoPage.interface, interface)

    def test_offByDefault(self) -> None:
        """
        No demo page unless configured.
        """
        self.assertIsNone(buildConfig({}).demoPage)


class MakeRunTests(SynchronousTestCase):
    """
    What C{make run} prints and configures for the demo page.
    """

    def makeService(self, *arguments: str) -> Tuple[RelayConfig, str]:
        options = tap.Options()
        options.parseOptions(["--state-dir", self.mktemp(), *arguments])
        out = io.StringIO()
        relay = tap.makeService(options, reactor=FakeUDPReactor(), out=out)
        # The banner is printed once the listeners are bound.
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay.config, out.getvalue()

    def test_banner(self) -> None:
        """
        The banner says where the page is; with no credentials configured
        the page gets a made-up secret to mint with, which is not printed.
        """
        config, out = self.makeService("--demo-page", "tcp:8478:interface=127.0.0.1")
        self.assertIn("open http://127.0.0.1:8478/ in a browser on this machine", out)
        self.assertEqual([name for name, _ in config.users], ["demo"])
        [secret] = config.authSecrets
        self.assertNotIn(secret, out)

    def test_configuredUsers(self) -> None:
        """
        With users but no secret configured, none is made up, and the
        banner says the page needs one.
        """
        config, out = self.makeService(
            "--demo-page", "tcp:8478:interface=::1", "--user", "alice:alice-pw"
        )
        self.assertIn("open http://[::1]:8478/", out)
        self.assertIn("needs a static-auth-secret", out)
        self.assertEqual(config.authSecrets, ())

    def test_noDemoPage(self) -> None:
        """
        Without C{demo-page}, no page, no banner line and no secret.
        """
        config, out = self.makeService()
        self.assertNotIn("in a browser", out)
        self.assertEqual(config.authSecrets, ())


class LoopbackRelayPolicyTests(SynchronousTestCase):
    """
    With C{allowLoopbackRelays} (C{demo-page} sets it), a loopback relay
    address is a peer on its relay ports, and nothing else of loopback is.
    """

    def policy(self, **settings: Any) -> PeerPolicy:
        policy = PeerPolicy(ownAddresses=["127.0.0.1"], allowLoopbackRelays=True, **settings)
        policy.addRelayAddress("127.0.0.1", range(49152, 65536))
        policy.addOwnService(TransportAddress("127.0.0.1", 50001))
        return policy

    def test_relayPorts(self) -> None:
        """
        The relay address is a peer on its relay ports, and may be given a
        permission.
        """
        policy = self.policy()
        for port in (49152, 50000, 65535):
            self.assertIsNone(policy.peerDenialReason(TransportAddress("127.0.0.1", port)))
        self.assertTrue(policy.isAllowed("127.0.0.1"))

    def test_nothingElse(self) -> None:
        """
        Other ports of the relay address, other loopback addresses, other
        spellings and the relay's own services stay refused.
        """
        policy = self.policy()
        for host, port in [
            ("127.0.0.1", 22),
            ("127.0.0.1", 49151),
            ("127.0.0.1", 50001),
            ("127.0.0.2", 50000),
            ("::1", 50000),
            ("::ffff:127.0.0.1", 50000),
            ("64:ff9b::7f00:1", 50000),
        ]:
            self.assertIsNotNone(
                policy.peerDenialReason(TransportAddress(host, port)), f"{host}:{port}"
            )

    def test_offByDefault(self) -> None:
        """
        Without it the loopback relay address is refused as loopback, and
        an operator deny wins over it.
        """
        policy = PeerPolicy(ownAddresses=["127.0.0.1"])
        policy.addRelayAddress("127.0.0.1", range(49152, 65536))
        self.assertEqual(policy.peerDenialReason(TransportAddress("127.0.0.1", 50000)), "loopback")
        denied = self.policy(deny=["127.0.0.1/32"]).replace()
        self.assertIsNotNone(denied.peerDenialReason(TransportAddress("127.0.0.1", 50000)))

    def test_wiredFromDemoPage(self) -> None:
        """
        A relay with C{demo-page} has the rule; one without has not.
        """
        loopback: Dict[str, Any] = {
            "listen": ["udp:3478:interface=127.0.0.1"],
            "relay-ip": "127.0.0.1",
        }
        with_ = FakeRelay(**dict(loopback, **{"demo-page": "tcp:8478:interface=127.0.0.1"}))
        without = FakeRelay(**loopback)
        peer = TransportAddress("127.0.0.1", 50000)
        self.assertIsNone(with_.server.peerPolicy.peerDenialReason(peer))
        self.assertEqual(without.server.peerPolicy.peerDenialReason(peer), "loopback")


class DemoSiteTests(SynchronousTestCase):
    """
    The page, and the credential it gets, for loopback hosts only.
    """

    def setUp(self) -> None:
        self.relay = FakeRelay(**SECRET)
        self.site = QuietSite(DemoRoot(self.relay.service, b"<html>demo</html>"))

    def get(self, path: bytes, host: bytes = b"127.0.0.1:8478") -> Any:
        return httpRequest(self.site, b"GET", path, [b"Host: " + host])

    def test_page(self) -> None:
        """
        C{/} is the page, as HTML, not to be framed.
        """
        code, headers, body = self.get(b"/")
        self.assertEqual((code, body), (200, b"<html>demo</html>"))
        self.assertEqual(headers[b"content-type"], b"text/html; charset=utf-8")
        self.assertEqual(headers[b"x-frame-options"], b"DENY")

    def test_credentials(self) -> None:
        """
        C{/credentials} mints a short-lived REST credential for the demo
        user, with a URL per listener transport.
        """
        code, headers, body = self.get(b"/credentials")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"cache-control"], b"no-store")
        answer = json.loads(body)
        self.assertTrue(answer["username"].endswith(":" + DEMO_USER))
        self.assertEqual(answer["ttl"], 600)
        self.assertEqual(
            answer["urls"], demoURLs(self.relay.config, self.relay.service.listeningAddresses())
        )

    def test_noSecret(self) -> None:
        """
        Without a static-auth-secret the page is told why it gets nothing.
        """
        relay = FakeRelay(**NO_SECRET)
        site = QuietSite(DemoRoot(relay.service, b""))
        code, _, body = httpRequest(site, b"GET", b"/credentials", [b"Host: localhost:8478"])
        self.assertEqual(code, 503)
        self.assertIn("static-auth-secret", json.loads(body)["error"])

    def test_otherHostsRefused(self) -> None:
        """
        A request naming a host other than loopback (DNS rebinding) gets
        nothing.
        """
        for host in (b"evil.example:8478", b"10.0.0.1:8478", b"127.0.0.1.evil.example"):
            code, _, body = self.get(b"/credentials", host)
            self.assertEqual(code, 421, host)
            self.assertNotIn(b"credential", body)

    def test_elsewhere(self) -> None:
        """
        Every other path is 404.
        """
        for path in (b"/x", b"/credentials/x", b"/demo.html"):
            self.assertEqual(self.get(path)[0], 404, path)

    def test_loopbackHosts(self) -> None:
        """
        C{localhost}, 127/8 and C{[::1]} are loopback hosts, with or without
        a port.
        """
        for host in (b"localhost", b"LOCALHOST:80", b"127.0.0.1", b"127.1.2.3:8478", b"[::1]:8478"):
            self.assertTrue(isLoopbackHost(host), host)
        for host in (b"", b"localhost.evil", b"[::2]:1", b"10.0.0.1", b"::1:8478x", b"evil:8478"):
            self.assertFalse(isLoopbackHost(host), host)

    def test_demoURLs(self) -> None:
        """
        One URL per transport the relay listens on: C{udp}, C{tcp} and
        C{turns}.
        """
        config = self.relay.config
        listeners = [
            ("udp", TransportAddress("127.0.0.1", 3478)),
            ("tcp", TransportAddress("127.0.0.1", 3478)),
            ("tls", TransportAddress("127.0.0.1", 5349)),
            ("udp", TransportAddress("127.0.0.1", 3479)),
        ]
        self.assertEqual(
            demoURLs(config, listeners),
            {
                "udp": "turn:127.0.0.1:3478?transport=udp",
                "tcp": "turn:127.0.0.1:3478?transport=tcp",
                "turns": "turns:127.0.0.1:5349?transport=tcp",
            },
        )


class DemoPageBrowserTests(TestCase):
    """
    C{twistd turnrelay --demo-page ...} with the loopback defaults, as
    C{make run} starts it, and headless Chromium on its page: the page's
    call connects through relayed addresses over each transport.
    """

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        requireTestbed()
        await sweepAbandonedNamespaces()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.namespace = Namespace.create(self)
        vethPair(self.namespace, "trd0", self.namespace, "trd1")
        self.namespace.addAddress("trd0", f"10.253.{random.randrange(1, 255)}.1/24")
        args = turnrelayCommand(
            "--demo-page", f"tcp:{DEMO_PORT}:interface=127.0.0.1", twistdOptions=["--logfile=-"]
        )
        self.relay = spawn(
            self, self.namespace.command(args), env=pythonEnvironment(), path=self.workdir
        )
        banner = await self.relay.waitForOutput(rb"open (http://\S+) in a browser")
        self.url = banner.group(1).decode()
        await self.relay.waitForOutput(rb"demo-page listening on 127\.0\.0\.1:%d" % (DEMO_PORT,))
        await self.relay.waitForOutput(rb"listening for tls on 127\.0\.0\.1:5349")
        self.certificate = os.path.join(self.workdir, "state", "tls", "demo-cert.pem")
        browserDir = os.path.join(self.workdir, "browser")
        os.makedirs(browserDir)
        args = [sys.executable, DEMO_DRIVER, f"--ca-certificate={self.certificate}"]
        args += [self.url, browserDir]
        self.browser = BrowserDriver()
        reactor.spawnProcess(
            self.browser, "ip", self.namespace.command(args), env=pythonEnvironment()
        )
        self.addCleanup(self.browser.stop)
        await self.browser.reply("starting Chromium on the demo page")

    async def call(self, transport: str) -> Dict[str, Any]:
        """
        Make the page's call over C{transport} and save its screenshot.

        @return: the page's state, the colours counted in the received
            video and the screenshot's path.
        """
        screenshot = os.path.join(self.workdir, f"demo-{transport}.png")
        command = {
            "transport": transport,
            "screenshot": screenshot,
            "timeout": CALL_TIMEOUT,
            "messages": MESSAGES,
            "frames": FRAMES,
        }
        self.browser.transport.write(json.dumps(command).encode() + b"\n")  # type: ignore[union-attr]
        result: Dict[str, Any] = await self.browser.reply(f"the call over {transport}")
        return result

    def created(self) -> List[Dict[str, str]]:
        """
        @return: the allocations the relay logged as created.
        """
        return [
            {key: value.decode() for key, value in match.groupdict().items()}
            for match in CREATED.finditer(self.relay.output)
        ]

    async def assertRelayedCall(self, transport: str, protocol: str, port: int) -> None:
        """
        The page's call over C{transport} connects through a relay-relay
        pair on 127.0.0.1 over C{protocol}, shows messages and a moving
        video, and the screenshot was taken.
        """
        result = await self.call(transport)
        demo = result["demo"]
        details = json.dumps({k: v for k, v in demo.items() if k != "received"})
        self.assertEqual(demo["state"], "connected", details)
        self.assertEqual(demo["errors"], [], details)
        pair = demo["pair"]
        for side in ("local", "remote"):
            self.assertEqual(pair[side]["candidateType"], "relay", details)
            self.assertEqual(pair[side]["address"], "127.0.0.1", details)
        self.assertEqual(pair["local"]["relayProtocol"], protocol, details)
        self.assertTrue(demo["candidates"], details)
        for candidate in demo["candidates"]:
            self.assertIn(" relay 127.0.0.1:", candidate, details)
        self.assertGreaterEqual(len(demo["received"]), MESSAGES, details)
        self.assertIn("relayed by turnrelay", demo["received"][0])
        self.assertGreaterEqual(demo["framesDecoded"], FRAMES, details)
        self.assertGreater(result["videoColours"], 1, details)
        with open(result["screenshot"], "rb") as f:
            png = f.read()
        self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))
        self.assertGreater(len(png), 10000)

        created = self.created()
        self.assertTrue(created, self.relay.output)
        for allocation in created:
            self.assertEqual(allocation["transport"], protocol)
            self.assertEqual(allocation["server"], f"127.0.0.1:{port}")
            self.assertTrue(allocation["username"].endswith(":" + DEMO_USER))
        self.assertNotIn(b"refused with 403", self.relay.output)
        for sign in (b"Traceback", b"Unhandled", b"#critical]", b"#error]"):
            self.assertNotIn(sign, self.relay.output + self.relay.errors)
        self.browser.transport.closeStdin()  # type: ignore[union-attr]
        await self.browser.whenEnded()
        self.assertEqual(self.browser.exitCode, 0, self.browser.errors[-3000:])

    async def test_udp(self) -> None:
        """
        Over C{turn:?transport=udp} the page's two peer connections meet
        through UDP allocations on 127.0.0.1.
        """
        await self.assertRelayedCall("udp", "udp", 3478)

    async def test_tcp(self) -> None:
        """
        Over C{turn:?transport=tcp} they meet through allocations made on TCP
        connections.
        """
        await self.assertRelayedCall("tcp", "tcp", 3478)

    async def test_turns(self) -> None:
        """
        Over C{turns:} they meet through allocations made on TLS
        connections, the browser trusting the certificate C{make run}
        made.
        """
        await self.assertRelayedCall("turns", "tls", 5349)
