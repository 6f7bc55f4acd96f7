"""
Tests for L{turnrelay.config}.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from io import StringIO

import attr
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.config import (
    DEFAULT_LISTENERS,
    SETTINGS,
    ConfigError,
    ListenerConfig,
    RelayConfig,
    buildConfig,
    exampleConfig,
    loadConfigFile,
    main,
    parseListen,
)
from turnrelay.logs import LEVELS
from turnrelay.turn.policy import PeerPolicy

EXAMPLE_CONFIG = os.path.join(os.path.dirname(__file__), "..", "conf", "turnrelay.conf")


class ParseListenTests(SynchronousTestCase):
    """
    Tests for L{parseListen}, the endpoint-string parser Twisted lacks for UDP.
    """

    def test_transportAndPort(self) -> None:
        """
        A bare transport and port listens on loopback, the safe default.
        """
        self.assertEqual(parseListen("udp:3478"), ListenerConfig("udp", 3478, "127.0.0.1"))
        self.assertEqual(parseListen("tcp:443"), ListenerConfig("tcp", 443, "127.0.0.1"))

    def test_interfaceIPv4(self) -> None:
        """
        C{interface=} names the address to bind.
        """
        self.assertEqual(
            parseListen("udp:3478:interface=0.0.0.0"), ListenerConfig("udp", 3478, "0.0.0.0")
        )

    def test_interfaceIPv6Spellings(self) -> None:
        """
        An IPv6 interface may be written plainly, in brackets or with escaped colons.
        """
        for text in (
            "tcp:3478:interface=::1",
            "tcp:3478:interface=[::1]",
            r"tcp:3478:interface=\:\:1",
        ):
            self.assertEqual(parseListen(text), ListenerConfig("tcp", 3478, "::1"), text)

    def test_interfaceCanonical(self) -> None:
        """
        The interface is stored in its canonical text form.
        """
        self.assertEqual(parseListen("udp:1:interface=0:0:0:0:0:0:0:1").interface, "::1")

    def test_portZero(self) -> None:
        """
        Port 0 asks the OS for a free port.
        """
        self.assertEqual(parseListen("udp:0").port, 0)

    def test_roundTrip(self) -> None:
        """
        A listener's string form parses back to the same listener.
        """
        for listener in (ListenerConfig("udp", 3478, "::"), ListenerConfig("tcp", 1, "10.0.0.1")):
            self.assertEqual(parseListen(str(listener)), listener)

    def assertRejected(self, text: str, *fragments: str) -> None:
        error = self.assertRaises(ConfigError, parseListen, text)
        message = str(error)
        self.assertIn(repr(text), message)
        self.assertIn("expected TRANSPORT:PORT", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_unknownTransport(self) -> None:
        """
        An unknown transport is refused, naming it and the allowed ones.
        """
        self.assertRejected("sctp:3478", "'sctp'", "udp, tcp")

    def test_badPort(self) -> None:
        """
        A port that is not a number from 0 to 65535 is refused.
        """
        for text in ("udp:", "udp:x", "udp:65536", "udp:-1", "udp"):
            self.assertRejected(text, "port")

    def test_badInterface(self) -> None:
        """
        An interface that is not an IP literal is refused (no name lookups).
        """
        self.assertRejected("udp:3478:interface=localhost", "'localhost'", "not an IP address")

    def test_unknownOption(self) -> None:
        """
        An unknown option is refused, naming it.
        """
        self.assertRejected("udp:3478:backlog=5", "'backlog'")

    def test_proxy(self) -> None:
        """
        C{proxy=yes} marks a tcp or tls listener as behind a PROXY protocol
        load balancer, in any order with interface; it is off by default.
        """
        self.assertFalse(parseListen("tcp:443").proxy)
        self.assertEqual(
            parseListen("tls:443:interface=0.0.0.0:proxy=yes"),
            ListenerConfig("tls", 443, "0.0.0.0", proxy=True),
        )
        self.assertEqual(
            parseListen("tcp:443:proxy=yes:interface=::"), ListenerConfig("tcp", 443, "::", True)
        )
        self.assertFalse(parseListen("tcp:443:proxy=no").proxy)

    def test_proxyRoundTrip(self) -> None:
        """
        A proxied listener's string form parses back to the same listener.
        """
        listener = ListenerConfig("tls", 443, "::1", proxy=True)
        self.assertEqual(str(listener), "tls:443:interface=\\:\\:1:proxy=yes")
        self.assertEqual(parseListen(str(listener)), listener)

    def test_proxyBadValue(self) -> None:
        """
        A proxy value other than yes or no is refused, naming it.
        """
        self.assertRejected("tcp:443:proxy=v2", "'v2'", "yes or no")

    def test_proxyUDP(self) -> None:
        """
        A udp listener with proxy=yes is refused in one line saying to
        remove it.
        """
        error = self.assertRaises(ConfigError, parseListen, "udp:3478:proxy=yes")
        self.assertIn("'udp:3478:proxy=yes'", str(error))
        self.assertIn("tcp and tls listeners only", str(error))
        self.assertIn("remove proxy=yes", str(error))
        self.assertNotIn("\n", str(error))

    def test_proxyAdminListener(self) -> None:
        """
        The admin listeners take no PROXY protocol.
        """
        keys = {"manhole-authorized-keys": "authorized_keys"}
        error = self.assertRaises(
            ConfigError,
            buildConfig,
            {**keys, "manhole": "tcp:2222:interface=127.0.0.1:proxy=yes"},
        )
        self.assertIn("must be tcp:PORT[:interface=ADDRESS]", str(error))

    def test_proxyFrom(self) -> None:
        """
        proxy-from takes networks and addresses of load balancers, none by
        default; a network with host bits set is refused, naming the key.
        """
        self.assertEqual(buildConfig({}).proxyFrom, ())
        config = buildConfig({"proxy-from": ["10.0.0.0/24", "2001:db8::7"]})
        self.assertEqual(config.proxyFrom, ("10.0.0.0/24", "2001:db8::7/128"))
        error = self.assertRaises(ConfigError, buildConfig, {"proxy-from": ["10.0.0.1/24"]})
        self.assertIn("proxy-from: '10.0.0.1/24' has host bits set", str(error))


class BuildConfigTests(SynchronousTestCase):
    """
    Tests for L{buildConfig} and L{loadConfigFile}.
    """

    def test_defaults(self) -> None:
        """
        The default configuration listens on loopback only and sends no SOFTWARE.
        """
        config = buildConfig({})
        self.assertEqual(config, RelayConfig())
        self.assertEqual(config.listeners, DEFAULT_LISTENERS)
        self.assertTrue(all(listener.interface == "127.0.0.1" for listener in config.listeners))
        self.assertIsNone(config.software)

    def test_values(self) -> None:
        """
        Raw values are parsed into the configuration's typed fields.
        """
        config = buildConfig({"listen": ["udp:1", "tcp:2"], "software": "relay 1"})
        self.assertEqual(
            config.listeners,
            (ListenerConfig("udp", 1, "127.0.0.1"), ListenerConfig("tcp", 2, "127.0.0.1")),
        )
        self.assertEqual(config.software, "relay 1")

    def test_emptySoftwareIsOff(self) -> None:
        """
        An empty SOFTWARE value turns the attribute off.
        """
        self.assertIsNone(buildConfig({"software": ""}).software)

    def test_softwareTooLong(self) -> None:
        """
        SOFTWARE longer than RFC 8489 allows (127 characters) is refused.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"software": "x" * 128})
        self.assertIn("software", str(error))
        self.assertIn("127", str(error))

    def test_unknownSetting(self) -> None:
        """
        An unknown setting is refused, listing the known ones.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"lisen": []})
        self.assertIn("'lisen'", str(error))
        self.assertIn("listen", str(error))

    def test_repeatableNeedsList(self) -> None:
        """
        A repeatable setting given a single string is refused.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"listen": "udp:1"})
        self.assertIn("list", str(error))

    def test_base(self) -> None:
        """
        Settings not given keep the base configuration's values.
        """
        base = RelayConfig(software="base")
        self.assertEqual(buildConfig({"listen": ["udp:1"]}, base).software, "base")

    def test_everySettingHasAField(self) -> None:
        """
        Every declared setting sets a field of L{RelayConfig}.
        """
        fields = attr.fields_dict(RelayConfig)
        for setting in SETTINGS:
            self.assertIn(setting.field, fields)

    def test_exampleFile(self) -> None:
        """
        The example file in conf/ loads and describes the default configuration.
        """
        self.assertEqual(buildConfig(loadConfigFile(EXAMPLE_CONFIG)), RelayConfig())

    def test_exampleFileDocumentsEverySetting(self) -> None:
        """
        The example file mentions every setting.
        """
        with open(EXAMPLE_CONFIG) as f:
            text = f.read()
        for setting in SETTINGS:
            self.assertIn(setting.name, text)

    def test_exampleFileGenerated(self) -> None:
        """
        The example file is what the declarations generate, so that it can
        never disagree with them.
        """
        with open(EXAMPLE_CONFIG) as f:
            text = f.read()
        self.assertEqual(
            text,
            exampleConfig(),
            "conf/turnrelay.conf is out of date: "
            "python -m turnrelay.config --example > conf/turnrelay.conf",
        )

    def test_exampleKeysParse(self) -> None:
        """
        Every key the example file shows, uncommented, is valid TOML and a
        valid value of its setting; and a key shown without a "Default:"
        line is shown with the default itself.
        """
        shown = re.compile(r"^# ([a-z0-9-]+ = .*)$")
        lines = [shown.sub(r"\1", line) for line in exampleConfig().splitlines()]
        values = tomllib.loads("\n".join(lines))
        self.assertEqual(sorted(values), sorted(setting.name for setting in SETTINGS))
        for setting in SETTINGS:
            raw = values[setting.name]
            if setting.repeatable:
                parsed = tuple(setting.parse(item) for item in raw)
            else:
                parsed = setting.parse(raw)
            if setting.example is None:
                self.assertEqual(parsed, setting.default, setting.name)

    def test_settingsAreTheFields(self) -> None:
        """
        The settings are the fields of L{RelayConfig}, in order, with their
        defaults; names are unique and a tuple default makes a setting
        repeatable.
        """
        fields = attr.fields(RelayConfig)
        self.assertEqual([s.field for s in SETTINGS], [f.name for f in fields])
        self.assertEqual([s.default for s in SETTINGS], [f.default for f in fields])
        self.assertEqual(len({s.name for s in SETTINGS}), len(SETTINGS))
        self.assertEqual(
            {s.name for s in SETTINGS if s.repeatable},
            {
                "listen",
                "user",
                "static-auth-secret",
                "allow-peer",
                "deny-peer",
                "alternate-server",
                "credentials-cors-origins",
                "proxy-from",
                "offload-interfaces",
            },
        )

    def test_secretsOutOfRepr(self) -> None:
        """
        Passwords and shared secrets stay out of the configuration's repr.
        """
        config = buildConfig({"user": ["alice:hunter22"], "static-auth-secret": ["s3cr3t-value"]})
        self.assertNotIn("hunter22", repr(config))
        self.assertNotIn("s3cr3t-value", repr(config))

    def test_optionHelpShowsRealDefaults(self) -> None:
        """
        The --help text of a setting names its value and shows its default as
        computed from the field, so it cannot drift: every default listener,
        TLS on 5349 included.
        """
        texts = {setting.name: setting.optionHelp() for setting in SETTINGS}
        self.assertTrue(
            texts["listen"].endswith(
                "[repeatable; default: udp:3478:interface=127.0.0.1, "
                "tcp:3478:interface=127.0.0.1, tls:5349:interface=127.0.0.1]"
            )
        )
        self.assertEqual(
            texts["max-lifetime"],
            "SECONDS: The longest allocation lifetime granted, in seconds. [default: 3600]",
        )
        self.assertIn("[default: the first listener's specific IPv4 address", texts["relay-ip"])
        self.assertNotIn("default", texts["allow-loopback-peers"])
        for setting in SETTINGS:
            if not setting.flag:
                self.assertTrue(texts[setting.name].startswith(setting.metavar + ": "))

    def test_logLevelHelpNamesEveryLevel(self) -> None:
        """
        The log-level help names every level turnrelay.logs knows.
        """
        (setting,) = [s for s in SETTINGS if s.name == "log-level"]
        for level in LEVELS:
            self.assertIn(level, setting.help)

    def test_importsNoTwisted(self) -> None:
        """
        Importing the configuration imports no Twisted, so that an embedder
        can build and check one first.
        """
        code = (
            "import sys, turnrelay.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        self.assertEqual(output.strip(), "[]")

    def test_main(self) -> None:
        """
        C{python -m turnrelay.config --example} writes the example file; any
        other arguments are a usage error.
        """
        out, err = StringIO(), StringIO()
        self.assertEqual(main(["--example"], out, err), 0)
        self.assertEqual(out.getvalue(), exampleConfig())
        self.assertEqual(main([], out, err), 2)
        self.assertIn("--example", err.getvalue())

    def writeFile(self, content: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(content)
        return path

    def test_emptyPath(self) -> None:
        """
        An empty path is refused, naming the setting.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"tls-chain": ""})
        self.assertEqual(str(error), "tls-chain: a path must not be empty")

    def test_fileUnknownSetting(self) -> None:
        """
        A file naming an unknown setting is refused, naming the file and the key.
        """
        path = self.writeFile('colour = "blue"\n')
        error = self.assertRaises(ConfigError, loadConfigFile, path)
        self.assertIn(path, str(error))
        self.assertIn("'colour'", str(error))

    def test_fileNotTOML(self) -> None:
        """
        A file that is not TOML is refused with the parser's reason.
        """
        path = self.writeFile("listen = [\n")
        error = self.assertRaises(ConfigError, loadConfigFile, path)
        self.assertIn("not valid TOML", str(error))

    def test_fileMissing(self) -> None:
        """
        A missing file is refused with the OS's reason.
        """
        error = self.assertRaises(ConfigError, loadConfigFile, "/nonexistent/turnrelay.conf")
        self.assertIn("No such file", str(error))


# The wildcards, in every spelling that binds or advertises one.
WILDCARDS_IPV6 = [
    "::",
    "0:0:0:0:0:0:0:0",
    "[::]",
    "::ffff:0.0.0.0",
    "::ffff:0:0",
    "::ffff:0:0.0.0.0",
]


class AddressSpellingTests(SynchronousTestCase):
    """
    Configuration checks judge an address by its canonical form (what it
    reaches), never by its text: wildcards are refused as relay addresses,
    and admin listeners in IPv4-mapped spelling are judged as the IPv4
    address they bind.
    """

    def assertRefused(self, values: dict, *expected: str) -> None:
        error = self.assertRaises(ConfigError, buildConfig, values)
        message = str(error)
        self.assertNotIn("\n", message)
        for text in expected:
            self.assertIn(text, message)

    def test_relayIPWildcard(self) -> None:
        """
        relay-ip and external-ip refuse 0.0.0.0: it would be advertised as
        the relayed address.
        """
        for name in ("relay-ip", "external-ip"):
            self.assertRefused({name: "0.0.0.0"}, name, "wildcard", "specific IPv4")
            for spelling in ("::ffff:0.0.0.0", "::"):
                self.assertRefused({name: spelling}, name)

    def test_relayIP6Wildcard(self) -> None:
        """
        relay-ip6 refuses :: and the mapped and translated wildcards.
        """
        for spelling in WILDCARDS_IPV6:
            self.assertRefused({"relay-ip6": spelling}, "relay-ip6", "wildcard", "specific IPv6")

    def test_relayIP6IPv4Spelling(self) -> None:
        """
        relay-ip6 refuses an IPv6 spelling of an IPv4 address, naming the
        IPv4 address and where it belongs.
        """
        for spelling in ("::ffff:192.0.2.1", "::ffff:0:192.0.2.1", "64:ff9b::192.0.2.1"):
            self.assertRefused({"relay-ip6": spelling}, "relay-ip6", "192.0.2.1", "relay-ip")

    def test_relayIPsSpecific(self) -> None:
        """
        Specific relay addresses are kept, in canonical text.
        """
        config = buildConfig(
            {"relay-ip": "192.0.2.1", "relay-ip6": "2001:DB8:0:0::1", "external-ip": "192.0.2.9"}
        )
        self.assertEqual(
            (config.relayIP, config.relayIP6, config.externalIP),
            ("192.0.2.1", "2001:db8::1", "192.0.2.9"),
        )

    def test_effectiveRelayIPsNeverWildcards(self) -> None:
        """
        Relay addresses taken from listeners are never a wildcard in any
        spelling, and a mapped listener address relays from its IPv4
        address, not as IPv6.
        """
        for interface in ("0.0.0.0", *(w for w in WILDCARDS_IPV6 if w != "[::]")):
            config = buildConfig({"listen": [f"udp:3478:interface={interface}"]})
            self.assertIsNone(config.effectiveRelayIP(), interface)
            self.assertIsNone(config.effectiveRelayIP6(), interface)
        config = buildConfig({"listen": ["udp:3478:interface=::ffff:192.0.2.1"]})
        self.assertEqual(
            (config.effectiveRelayIP(), config.effectiveRelayIP6()), ("192.0.2.1", None)
        )
        config = buildConfig({"listen": ["udp:3478:interface=::ffff:127.0.0.1"]})
        self.assertEqual(config.effectiveRelayIP(), "127.0.0.1")

    def test_adminHTTPWildcard(self) -> None:
        """
        metrics and credentials-endpoint refuse ::ffff:0.0.0.0, which
        listens on every IPv4 address, as they refuse 0.0.0.0.
        """
        for name in ("metrics", "credentials-endpoint"):
            for interface in ("0.0.0.0", "::", "::ffff:0.0.0.0", "::ffff:0:0.0.0.0"):
                self.assertRefused(
                    {name: f"tcp:9641:interface={interface}"}, name, "plain HTTP to the world"
                )

    def test_adminHTTPPublicMapped(self) -> None:
        """
        A public IPv4 address in mapped spelling is public, although
        ipaddress calls its IPv6 spelling private.
        """
        self.assertRefused({"metrics": "tcp:9641:interface=::ffff:8.8.8.8"}, "metrics", "8.8.8.8")

    def test_adminHTTPLoopbackMapped(self) -> None:
        """
        Loopback and private addresses are accepted in mapped spelling too.
        """
        for interface in ("::ffff:127.0.0.1", "::ffff:10.0.0.5", "127.0.0.1", "::1"):
            config = buildConfig({"metrics": f"tcp:9641:interface={interface}"})
            self.assertIsNotNone(config.metrics, interface)

    def test_manholeMapped(self) -> None:
        """
        The console on ::ffff:127.0.0.1 is on loopback; on ::ffff:0.0.0.0 it
        is on every IPv4 address and needs manhole-allow-remote.
        """
        keys = {"manhole-authorized-keys": "authorized_keys"}
        config = buildConfig({**keys, "manhole": "tcp:2222:interface=::ffff:127.0.0.1"})
        self.assertIsNotNone(config.manhole)
        for interface in ("::ffff:0.0.0.0", "::ffff:0:0.0.0.0", "::ffff:8.8.8.8"):
            self.assertRefused(
                {**keys, "manhole": f"tcp:2222:interface={interface}"},
                "manhole",
                "manhole-allow-remote",
            )


class PeerNetworkTests(SynchronousTestCase):
    """
    allow-peer and deny-peer follow the peer policy's one rule for networks.
    """

    def test_hostBitsRefused(self) -> None:
        """
        A network with host bits set is refused in one line that names the
        setting, the value and the network that was probably meant.
        """
        for name in ("allow-peer", "deny-peer"):
            error = self.assertRaises(ConfigError, buildConfig, {name: ["10.1.2.3/8"]})
            message = str(error)
            self.assertNotIn("\n", message)
            for text in (name, "'10.1.2.3/8'", "host bits", "10.0.0.0/8"):
                self.assertIn(text, message)

    def test_scopeRefused(self) -> None:
        """
        An address with a scope is refused: peers are judged by address.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"allow-peer": ["fe80::1%eth0"]})
        self.assertIn("scope", str(error))

    def test_notANetwork(self) -> None:
        """
        A value that is no address or network is refused with an example.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"deny-peer": ["10.0.0.0/33"]})
        self.assertIn("deny-peer: '10.0.0.0/33' is not an address or CIDR", str(error))

    def test_policyAcceptsWhatConfigAccepts(self) -> None:
        """
        What the configuration accepts the peer policy accepts, and what it
        refuses the policy refuses too.
        """
        for text in ("10.0.0.0/8", "10.1.2.3", "::ffff:10.0.0.0/104", "2001:db8::/32"):
            config = buildConfig({"allow-peer": [text], "deny-peer": [text]})
            PeerPolicy(allow=config.allowPeers, deny=config.denyPeers)
        for text in ("10.1.2.3/8", "fe80::1%eth0", "2001:db8::1/32"):
            self.assertRaises(ConfigError, buildConfig, {"allow-peer": [text]})
            self.assertRaises(ValueError, PeerPolicy, allow=[text])
