# -*- test-case-name: tests.test_config -*-
"""
turnrelay's configuration: one validated value built from the command line,
a configuration file, or an embedder's own code.

Every setting is declared once, in L{SETTINGS}; the twistd options in
L{turnrelay.tap} and the configuration file loader are both generated from
that table, so the two can never disagree.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import attr

from turnrelay.stun.attributes import TEXT_MAX_CHARACTERS


class ConfigError(ValueError):
    """
    A setting has a value turnrelay cannot use.

    The message names the setting, the value and what is allowed.
    """


TRANSPORTS = ("udp", "tcp")
LISTEN_SYNTAX = "TRANSPORT:PORT[:interface=ADDRESS] with TRANSPORT one of " + ", ".join(TRANSPORTS)


@attr.frozen
class ListenerConfig:
    """
    One socket to accept TURN clients on.

    @ivar transport: C{"udp"} or C{"tcp"}.
    @ivar port: the port; 0 picks a free one.
    @ivar interface: the IP address to bind, C{"::"} for every IPv4 and
        IPv6 address.
    """

    transport: str
    port: int
    interface: str

    def __str__(self) -> str:
        interface = self.interface.replace(":", "\\:")
        return f"{self.transport}:{self.port}:interface={interface}"


DEFAULT_LISTENERS = (
    ListenerConfig("udp", 3478, "127.0.0.1"),
    ListenerConfig("tcp", 3478, "127.0.0.1"),
)


@attr.frozen
class RelayConfig:
    """
    Everything L{turnrelay.service.makeRelayService} needs to build a relay.

    Build it with L{buildConfig} from strings, or directly in Python; its
    defaults are safe: loopback listeners only.

    @ivar listeners: the sockets clients reach the relay on.
    @ivar software: the SOFTWARE attribute to add to responses, or L{None}
        to send none (the default: it tells attackers the version, and makes
        unauthenticated responses larger).
    """

    listeners: Tuple[ListenerConfig, ...] = DEFAULT_LISTENERS
    software: Optional[str] = None


# Parsers: each takes a value from the command line (a string) or from the
# configuration file (a string, number or list) and returns a typed value,
# raising ConfigError with a message that says what is allowed.

_OPTION = re.compile(r":(?=[A-Za-z][A-Za-z0-9_]*=)")


def parseListen(text: str) -> ListenerConfig:
    """
    Parse a listener description such as C{udp:3478:interface=127.0.0.1}.

    The syntax follows Twisted's endpoint strings: the transport, the port,
    then C{key=value} options.  An IPv6 interface may be written plainly
    (C{interface=::1}), in brackets (C{interface=[::1]}) or with Twisted's
    escaped colons (C{interface=\\:\\:1}).  Twisted has no endpoint strings
    for UDP, which is why this function exists.

    @raise ConfigError: with what is wrong and the syntax expected.
    """

    def fail(why: str) -> ConfigError:
        return ConfigError(f"listen {text!r}: {why}; expected {LISTEN_SYNTAX}")

    head, *options = _OPTION.split(text.replace("\\:", ":"))
    transport, _, port = head.partition(":")
    if transport not in TRANSPORTS:
        raise fail(f"unknown transport {transport!r}")
    if not port.isdigit() or not 0 <= int(port) <= 0xFFFF:
        raise fail(f"port {port!r} is not a number from 0 to 65535")
    interface = "127.0.0.1"
    for option in options:
        key, _, value = option.partition("=")
        if key != "interface":
            raise fail(f"unknown option {key!r} (the only option is interface)")
        interface = value.strip("[]")
        try:
            interface = str(ipaddress.ip_address(interface))
        except ValueError:
            raise fail(f"interface {value!r} is not an IP address") from None
    return ListenerConfig(transport, int(port), interface)


def _parseSoftware(value: Any) -> Optional[str]:
    text = str(value)
    if len(text) > TEXT_MAX_CHARACTERS:
        raise ConfigError(
            f"software: {len(text)} characters is too long; at most {TEXT_MAX_CHARACTERS}"
        )
    return text or None


@attr.frozen
class Setting:
    """
    One configuration setting, as both the command line and the file know it.

    @ivar name: the option and key name (C{--listen}, C{listen = [...]}).
    @ivar help: one line for C{--help} and the example file.
    @ivar parse: turns one raw value into the typed value.
    @ivar field: the L{RelayConfig} attribute it sets.
    @ivar repeatable: whether it may be given several times; its values are
        then collected into a tuple.
    @ivar metavar: what C{--help} shows for the value.
    """

    name: str
    help: str
    parse: Callable[[Any], Any]
    field: str
    repeatable: bool = False
    metavar: str = "VALUE"


SETTINGS: Tuple[Setting, ...] = (
    Setting(
        "listen",
        "Accept clients on this socket, for example udp:3478:interface=0.0.0.0 or "
        "tcp:3478:interface=:: (repeatable; default: udp and tcp on 127.0.0.1:3478).",
        parseListen,
        "listeners",
        repeatable=True,
        metavar="TRANSPORT:PORT[:interface=ADDRESS]",
    ),
    Setting(
        "software",
        "Send this SOFTWARE attribute in responses (default: none, which keeps "
        "the version private and responses small).",
        _parseSoftware,
        "software",
        metavar="TEXT",
    ),
)

_SETTINGS_BY_NAME: Dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def buildConfig(values: Mapping[str, Any], base: RelayConfig = RelayConfig()) -> RelayConfig:
    """
    Validate raw setting values and build a configuration.

    @param values: setting names mapped to raw values; a repeatable setting
        takes a list.  Settings not given keep C{base}'s value.
    @param base: the configuration to start from.
    @raise ConfigError: an unknown setting or a bad value.
    """
    changes: Dict[str, Any] = {}
    for name, raw in values.items():
        setting = _SETTINGS_BY_NAME.get(name)
        if setting is None:
            known = ", ".join(sorted(_SETTINGS_BY_NAME))
            raise ConfigError(f"unknown setting {name!r}; known settings: {known}")
        if setting.repeatable:
            if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
                raise ConfigError(f"{name}: expected a list of values, got {raw!r}")
            changes[setting.field] = tuple(setting.parse(item) for item in raw)
        else:
            changes[setting.field] = setting.parse(raw)
    return attr.evolve(base, **changes)


def loadConfigFile(path: str) -> Dict[str, Any]:
    """
    Read a TOML configuration file into raw setting values.

    @return: the file's settings, for L{buildConfig}.
    @raise ConfigError: the file cannot be read or parsed, or names a setting
        that does not exist.
    """
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    for name in values:
        if name not in _SETTINGS_BY_NAME:
            known = ", ".join(sorted(_SETTINGS_BY_NAME))
            raise ConfigError(f"config file {path!r}: unknown setting {name!r}; known: {known}")
    return values
