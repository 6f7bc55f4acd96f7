"""
Tests for L{turnrelay.config}.
"""

from __future__ import annotations

import os

import attr
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.config import (
    DEFAULT_LISTENERS,
    SETTINGS,
    ConfigError,
    ListenerConfig,
    RelayConfig,
    buildConfig,
    loadConfigFile,
    parseListen,
)

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

    def writeFile(self, content: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(content)
        return path

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
