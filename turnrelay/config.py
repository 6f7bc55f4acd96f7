# -*- test-case-name: tests.test_config -*-
"""
turnrelay's configuration: one validated value built from the command line,
a configuration file, or an embedder's own code.

Every setting is declared once, as a field of L{RelayConfig} made by
L{Section.setting}: its name, parser, default, help and documentation.
Everything else is derived from those declarations: L{SETTINGS}, the twistd
options in L{turnrelay.tap} and their C{--help} (with the real defaults),
the configuration file's keys and their validation in L{buildConfig}, and
the example file C{conf/turnrelay.conf} (L{exampleConfig}; regenerate it
with C{python -m turnrelay.config --example > conf/turnrelay.conf}).

This module imports no Twisted: an embedder can build and check a
configuration before it loads anything else.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
import textwrap
import tomllib
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO, Tuple

import attr

from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import TEXT_MAX_CHARACTERS
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.policy import canonicalIP, parseNetwork


class ConfigError(ValueError):
    """
    A setting has a value turnrelay cannot use.

    The message names the setting, the value and what is allowed.
    """


TRANSPORTS = ("udp", "tcp", "tls")
# The most worker processes: far beyond the cores of any one host.
MAX_WORKERS = 256
LISTEN_SYNTAX = "TRANSPORT:PORT[:interface=ADDRESS][:proxy=yes] with TRANSPORT one of " + ", ".join(
    TRANSPORTS
)


@attr.frozen
class ListenerConfig:
    """
    One socket to accept TURN clients on.

    @ivar transport: C{"udp"}, C{"tcp"} or C{"tls"} (TLS over TCP).
    @ivar port: the port; 0 picks a free one.
    @ivar interface: the IP address to bind, C{"::"} for every IPv4 and
        IPv6 address.
    @ivar proxy: whether each connection starts with a PROXY protocol
        header (v1 or v2) from a load balancer, giving the client's real
        address (C{tcp} and C{tls} only).
    """

    transport: str
    port: int
    interface: str
    proxy: bool = False

    def __str__(self) -> str:
        interface = self.interface.replace(":", "\\:")
        proxy = ":proxy=yes" if self.proxy else ""
        return f"{self.transport}:{self.port}:interface={interface}{proxy}"


@attr.frozen
class RedisURL:
    """
    Where the fleet's Redis server is: C{redis://[:PASSWORD@]HOST[:PORT][/DB]},
    or C{rediss://} for TLS.

    @ivar password: the password (Redis's C{AUTH}), or L{None}; never shown.
    """

    host: str
    port: int = 6379
    db: int = 0
    password: Optional[str] = attr.field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def fromText(cls, text: str) -> RedisURL:
        """
        @raise ValueError: C{text} is not such a URL, saying why.
        """
        parsed = urllib.parse.urlsplit(text.strip())
        if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
            raise ValueError(
                f"{text!r} is not a Redis URL: redis://[:PASSWORD@]HOST[:PORT][/DB] "
                "(rediss:// for TLS)"
            )
        try:
            port = parsed.port or 6379
            path = parsed.path.strip("/")
            db = int(path) if path else 0
        except ValueError:
            raise ValueError(f"{text!r}: the port and database must be numbers") from None
        password = urllib.parse.unquote(parsed.password) if parsed.password else None
        return cls(parsed.hostname, port, db, password, parsed.scheme == "rediss")

    def __str__(self) -> str:
        # Never the password: this is what logs and --help show.
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


# The relay's own defaults for lifetimes and quotas: one home for them.
_LIMITS = RelayLimits()

DEFAULT_LISTENERS = (
    ListenerConfig("udp", 3478, "127.0.0.1"),
    ListenerConfig("tcp", 3478, "127.0.0.1"),
    ListenerConfig("tls", 5349, "127.0.0.1"),
)


# Parsers: each takes the setting's name and one value from the command line
# (a string) or from the configuration file (a string, number or boolean),
# and returns a typed value, raising ConfigError with a message that names
# the setting and says what is allowed.

Parser = Callable[[str, Any], Any]
"""
Reads one raw value, given the setting's name (for error messages).
"""

_OPTION = re.compile(r":(?=[A-Za-z][A-Za-z0-9_]*=)")

# How proxy= may be written.
_PROXY_VALUES = {"yes": True, "true": True, "no": False, "false": False}


def parseListen(text: str) -> ListenerConfig:
    """
    Parse a listener description such as C{udp:3478:interface=127.0.0.1}.

    The syntax follows Twisted's endpoint strings: the transport, the port,
    then C{key=value} options.  An IPv6 interface may be written plainly
    (C{interface=::1}), in brackets (C{interface=[::1]}) or with Twisted's
    escaped colons (C{interface=\\:\\:1}).  C{proxy=yes} (C{tcp} and C{tls}
    only) expects a PROXY protocol header before anything else on each
    connection.  Twisted has no endpoint strings for UDP, which is why this
    function exists.

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
    proxy = False
    for option in options:
        key, _, value = option.partition("=")
        if key == "proxy":
            if value.lower() not in _PROXY_VALUES:
                raise fail(f"proxy {value!r} is not yes or no")
            proxy = _PROXY_VALUES[value.lower()]
            continue
        if key != "interface":
            raise fail(f"unknown option {key!r} (the options are interface and proxy)")
        interface = value.strip("[]")
        try:
            interface = str(ipaddress.ip_address(interface))
        except ValueError:
            raise fail(f"interface {value!r} is not an IP address") from None
    if proxy and transport == "udp":
        raise ConfigError(
            f"listen {text!r}: proxy=yes is for tcp and tls listeners only (a PROXY "
            "header starts a connection; UDP has none); remove proxy=yes"
        )
    return ListenerConfig(transport, int(port), interface, proxy)


def parseUser(value: Any) -> Tuple[str, str]:
    """
    Parse a static user, C{NAME:PASSWORD} or C{NAME:0xHEXKEY}.

    The name ends at the first colon; the password may contain colons.

    @raise ConfigError: naming the user but never echoing the password.
    """
    name, colon, secret = str(value).partition(":")
    if not name or not colon or not secret:
        raise ConfigError(
            "user: expected NAME:PASSWORD or NAME:0xHEXKEY (the value is not shown: "
            "it holds a password)"
        )
    if secret.startswith("0x"):
        try:
            key = bytes.fromhex(secret[2:])
        except ValueError:
            key = b""
        if len(key) not in (16, 32):
            raise ConfigError(
                f"user {name!r}: a key must be 0x and 32 hex digits (MD5) or 64 (SHA-256)"
            )
    return name, secret


def _parseListen(name: str, value: Any) -> ListenerConfig:
    return parseListen(str(value))


def _parseUser(name: str, value: Any) -> Tuple[str, str]:
    return parseUser(value)


def _parseText(name: str, value: Any) -> str:
    text = str(value)
    if not text or len(text) > TEXT_MAX_CHARACTERS:
        raise ConfigError(f"{name}: {text!r} must be 1 to {TEXT_MAX_CHARACTERS} characters")
    return text


def _parseSoftware(name: str, value: Any) -> Optional[str]:
    text = str(value)
    if len(text) > TEXT_MAX_CHARACTERS:
        raise ConfigError(
            f"{name}: {len(text)} characters is too long; at most {TEXT_MAX_CHARACTERS}"
        )
    return text or None


def _parseSecret(name: str, value: Any) -> str:
    text = str(value)
    if len(text) < 8:
        raise ConfigError(f"{name}: a shared secret needs at least 8 characters")
    return text


def _parseOrigin(name: str, value: Any) -> str:
    # A web origin as browsers send it (RFC 6454): scheme://host[:port], or *.
    text = str(value).strip()
    if text == "*":
        return text
    scheme, sep, rest = text.partition("://")
    if (
        not sep
        or scheme not in ("http", "https")
        or not rest
        or any(c in rest for c in "/?#@ ")
        or text != text.lower()
    ):
        raise ConfigError(
            f"{name}: {value!r} is not an origin; expected scheme://host[:port] in lower case "
            "(http or https, no path), or *"
        )
    return text


def _parseNumber(low: float, high: float, kind: Callable[[Any], Any] = int) -> Parser:
    def parse(name: str, value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not low <= number <= high:
            raise ConfigError(f"{name}: {value!r} is not a number from {low:g} to {high:g}")
        return number

    return parse


def _parseWorkers(name: str, value: Any) -> int:
    # "auto": one worker per CPU the process may run on.
    if str(value).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    count: int = _parseNumber(1, MAX_WORKERS)(name, value)
    return count


def _parseRedis(name: str, value: Any) -> RedisURL:
    try:
        return RedisURL.fromText(str(value))
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def _parseNodeID(name: str, value: Any) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", text):
        raise ConfigError(
            f"{name}: {value!r} is not a node name: letters, digits, '.', '_' and '-', "
            "at most 63, starting with a letter or digit"
        )
    return text


def _parseIPv4(name: str, value: Any) -> str:
    # A relay (or external) address is advertised to clients as the relayed
    # address: it must be one address, never the wildcard.
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ConfigError(
            f"{name}: {value!r} is not an IPv4 address (IPv6 relays take relay-ip6)"
        ) from None
    if address.is_unspecified:
        raise ConfigError(
            f"{name}: {value!r} is a wildcard, which clients cannot reach as a relayed "
            "address; give one specific IPv4 address"
        )
    return str(address)


def _parseIPv6(name: str, value: Any) -> str:
    try:
        address = ipaddress.IPv6Address(str(value).strip("[]"))
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not an IPv6 address") from None
    canonical = canonicalIP(str(address))
    if canonical.is_unspecified:
        raise ConfigError(
            f"{name}: {value!r} is a wildcard, which clients cannot reach as a relayed "
            "address; give one specific IPv6 address"
        )
    if canonical.version == 4:
        raise ConfigError(
            f"{name}: {value!r} is the IPv4 address {canonical} in IPv6 spelling; "
            "give it as relay-ip, and a real IPv6 address here"
        )
    return str(address)


def _parseNetwork(name: str, value: Any) -> str:
    # The peer policy's own rule (parseNetwork), so that what this accepts
    # the policy accepts too.
    text = str(value)
    try:
        return str(parseNetwork(text))
    except ValueError:
        pass
    if "%" in text:
        raise ConfigError(
            f"{name}: {value!r} has a scope; peers are judged by address alone, "
            "so give the address or network without one"
        )
    try:
        # Only to say which network was meant.
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(
            f"{name}: {value!r} is not an address or CIDR such as 10.0.0.0/8"
        ) from None
    raise ConfigError(
        f"{name}: {value!r} has host bits set; give the network {network}, "
        "or one address without a prefix length"
    )


def _parseBool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: {value!r} is not true or false")


def _parseLogLevel(name: str, value: Any) -> str:
    # Imported here: turnrelay.logs brings in twisted.logger, and this module
    # imports no Twisted.
    from turnrelay.logs import LEVELS, levelName

    try:
        return levelName(str(value))
    except ValueError:
        raise ConfigError(f"{name}: {value!r}; expected one of {', '.join(LEVELS)}") from None


def _parseChoice(**choices: str) -> Callable[[str, Any], str]:
    """
    A parser for one of a few words, case-insensitive.

    @param choices: each word allowed, and what it means (for the error).
    """
    allowed = " or ".join(f"{word} ({meaning})" for word, meaning in choices.items())

    def parse(name: str, value: Any) -> str:
        text = str(value).lower()
        if text not in choices:
            raise ConfigError(f"{name}: {value!r}; expected {allowed}")
        return text

    return parse


_parseLogFormat = _parseChoice(text="Twisted's lines", json="one object a line")
_parseChannelNumbers = _parseChoice(rfc5766="0x4000-0x7FFF", rfc8656="0x4000-0x4FFF")
_parseRedisUnavailable = _parseChoice(local="the node's own quotas decide", refuse="508")
_parseOffload = _parseChoice(
    auto="the kernel path where it loads, else user space",
    off="user space only",
    tc="the kernel path at TC, warning when it cannot load",
    xdp="the kernel path at XDP",
)

# Linux interface names: at most IFNAMSIZ - 1 characters, none of them a
# slash, a colon or a blank (dev_valid_name()).
_INTERFACE_NAME = re.compile(r"[^/:\s]{1,15}")


def _parseInterfaceName(name: str, value: Any) -> str:
    text = str(value)
    if not _INTERFACE_NAME.fullmatch(text) or text in (".", ".."):
        raise ConfigError(
            f"{name}: {value!r} is not a network interface name (1 to 15 characters, "
            "no slash, colon or blank)"
        )
    return text


def _parseAdminListen(name: str, value: Any) -> ListenerConfig:
    try:
        listener = parseListen(str(value))
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    if listener.transport != "tcp" or listener.proxy:
        raise ConfigError(f"{name}: {value!r} must be tcp:PORT[:interface=ADDRESS]")
    return listener


def _parseAlternate(name: str, value: Any) -> TransportAddress:
    text = str(value)
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if not colon or address is None or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise ConfigError(
            f"{name}: {text!r} is not ADDRESS:PORT, such as 192.0.2.7:3478 "
            "or [2001:db8::7]:3478 (RFC 8489 needs an address, not a name)"
        )
    return TransportAddress(str(address), int(port))


def _parseServerName(name: str, value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in "/?#@ "):
        raise ConfigError(f"{name}: {text!r} is not a host name or address")
    return text


def _parsePath(name: str, value: Any) -> str:
    text = str(value)
    if not text:
        raise ConfigError(f"{name}: a path must not be empty")
    return text


@attr.frozen
class Syntax:
    """
    What a setting's values look like, and how to read one.

    @ivar metavar: how C{--help} names a value, or L{None} for a flag (an
        option that takes no value: giving it means true).
    @ivar parse: reads one raw value for the setting named by its first
        argument.
    """

    metavar: Optional[str]
    parse: Parser


def _seconds(low: float, high: float) -> Syntax:
    return Syntax("SECONDS", _parseNumber(low, high, float))


def _count(low: int, high: int) -> Syntax:
    return Syntax("N", _parseNumber(low, high))


def _bytes(low: int, high: int) -> Syntax:
    return Syntax("BYTES", _parseNumber(low, high))


_FLAG = Syntax(None, _parseBool)
_FILE = Syntax("FILE", _parsePath)
_PORT = Syntax("PORT", _parseNumber(1024, 65535))
_IPV4 = Syntax("ADDRESS", _parseIPv4)
_CIDR = Syntax("CIDR", _parseNetwork)
_ADMIN_LISTENER = Syntax("tcp:PORT[:interface=ADDRESS]", _parseAdminListen)


@attr.frozen
class Setting:
    """
    One configuration setting, as both the command line and the file know
    it: the declaration of a L{RelayConfig} field (see L{Section.setting}).

    @ivar name: the option and key name (C{--listen}, C{listen = [...]}).
    @ivar field: the L{RelayConfig} attribute it sets.
    @ivar default: that attribute's default.
    @ivar syntax: its values' name and parser.
    @ivar section: where the example file shows it.
    @ivar help: what it does, for C{--help} and the example file.
    @ivar doc: a longer text for the example file, or L{None} to use
        C{help}.
    @ivar defaultText: how to show a default that is not a value (L{None}
        standing for a rule, such as C{relay-ip}'s), or L{None}.
    @ivar example: a raw value the example file shows instead of the
        default, or L{None}.
    @ivar active: whether the example file sets it (to its default) rather
        than showing it commented out.
    """

    name: str
    field: str
    default: Any
    syntax: Syntax
    section: Section
    help: str
    doc: Optional[str] = None
    defaultText: Optional[str] = None
    example: Any = None
    active: bool = False

    @property
    def repeatable(self) -> bool:
        """
        Whether it may be given several times, its values collected into a
        tuple: true of every tuple-valued field.
        """
        return isinstance(self.default, tuple)

    @property
    def flag(self) -> bool:
        """
        Whether it is a command-line flag, an option without a value.
        """
        return self.syntax.metavar is None

    @property
    def metavar(self) -> str:
        """
        How C{--help} names a value.
        """
        return self.syntax.metavar or ""

    def parse(self, value: Any) -> Any:
        """
        Read one raw value.

        @raise ConfigError: naming the setting, the value and what is allowed.
        """
        return self.syntax.parse(self.name, value)

    def optionHelp(self) -> str:
        """
        @return: the text of its C{--help} entry: the value's name, the help
            and the real default.
        """
        notes = ["repeatable"] if self.repeatable else []
        shown = self._shownDefault(_plainValue)
        if shown is not None and not self.flag:
            notes.append(f"default: {shown}")
        text = self.help if self.flag else f"{self.metavar}: {self.help}"
        return f"{text} [{'; '.join(notes)}]" if notes else text

    def exampleLines(self) -> List[str]:
        """
        @return: its lines in the example configuration file: its
            documentation as comments, then the key set to its default, or
            to an example after a comment that gives the default; commented
            out unless C{active}.
        """
        lines = _comment(self.doc or self.help)
        if self.example is None:
            value = _tomlValue(_rawValue(self.default))
        else:
            value = _tomlValue(self.example)
            shown = self._shownDefault(_tomlValue)
            if shown is not None:
                lines += _comment(f"Default: {shown}.")
        assignment = [f"{self.name} = {value}"]
        if len(assignment[0]) > _WIDTH - 2 and value.startswith("["):
            items = [f"    {_tomlValue(item)}," for item in json.loads(value)]
            assignment = [f"{self.name} = [", *items, "]"]
        prefix = "" if self.active else "# "
        return lines + [prefix + line for line in assignment]

    def _shownDefault(self, show: Callable[[Any], str]) -> Optional[str]:
        if self.defaultText is not None:
            return self.defaultText
        if self.default is None or self.default == ():
            return None
        return show(_rawValue(self.default))


_SETTING = "turnrelay.config.setting"


def _prose(text: str) -> str:
    # Declarations write their texts over several source lines.
    return " ".join(text.split())


@attr.frozen
class Section:
    """
    A group of settings, as the example configuration file shows them.

    @ivar title: the heading.
    @ivar doc: what to say about the whole group, if anything.
    """

    title: str
    doc: str = ""

    def setting(
        self,
        help: str,
        name: str,
        syntax: Syntax,
        default: Any = None,
        *,
        doc: Optional[str] = None,
        defaultText: Optional[str] = None,
        example: Any = None,
        active: bool = False,
        secret: bool = False,
    ) -> Any:
        """
        Declare a setting of this section: a L{RelayConfig} field, with all
        that the command line, the configuration file and their
        documentation need to know of it.  A tuple default makes it
        repeatable.

        @param help: what it does, for C{--help} (which adds the default).
        @param name: the option and key name.
        @param syntax: what its values look like and how to read one.
        @param default: the field's default, a typed value.
        @param doc: a longer text for the example file, if C{help} is not
            enough.
        @param defaultText: how to show a default that is not a value.
        @param example: a raw value for the example file to show.
        @param active: whether the example file sets it.
        @param secret: keep the value out of C{repr}.
        @return: the attrs field.
        """
        declaration = Setting(
            name=name,
            field="",
            default=default,
            syntax=syntax,
            section=self,
            help=_prose(help),
            doc=None if doc is None else _prose(doc),
            defaultText=None if defaultText is None else _prose(defaultText),
            example=example,
            active=active,
        )
        return attr.field(default=default, repr=not secret, metadata={_SETTING: declaration})


_LISTENERS = Section("Listeners")
_TLS = Section("TLS")
_STREAMS = Section("TCP and TLS connections")
_RESOURCES = Section("Resources")
_CREDENTIALS = Section("Credentials (long-term mechanism, RFC 8489 section 9.2)")
_RELAY_ADDRESSES = Section("Relay addresses")
_LIFETIMES = Section("Lifetimes and quotas")
_PEERS = Section(
    "Peer policy",
    "By default turnrelay refuses to relay to loopback, private (RFC 1918), CGNAT, "
    "link-local and metadata, multicast, documentation, ULA and other special-purpose "
    "ranges, to tunnelled IPv6 (6to4, Teredo), to its own listening addresses, and to its "
    "relay addresses outside the relay port range, whatever IPv4-in-IPv6 spelling a client "
    "uses (mapped ::ffff:a.b.c.d, translated ::ffff:0:a.b.c.d, NAT64 64:ff9b::a.b.c.d, "
    "...). The ports of its own sockets (listeners, manhole, metrics, credentials "
    "endpoint) are never peers, whatever allow-peer or allow-loopback-peers say.",
)
_OPERATIONS = Section("Operations")
_FLEET = Section("Fleet: state shared with other nodes on Redis")
_ADMIN = Section("Admin console, metrics, credentials endpoint")
_LOGGING = Section("Logging")


@attr.frozen
class RelayConfig:
    """
    Everything L{turnrelay.service.makeRelayService} needs to build a relay.

    Build it with L{buildConfig} from strings, or directly in Python; its
    defaults are safe: loopback listeners only, no credentials (so every
    TURN request is refused), no relaying to private or loopback peers.

    Each field is a setting, documented by the help of its declaration below
    (shown by C{--help} and in C{conf/turnrelay.conf}).
    """

    listeners: Tuple[ListenerConfig, ...] = _LISTENERS.setting(
        """Accept clients on this socket, for example udp:3478:interface=0.0.0.0 or
        tcp:3478:interface=::; proxy=yes (tcp, tls) expects a PROXY protocol header from a
        load balancer first.""",
        "listen",
        Syntax("TRANSPORT:PORT[:interface=ADDRESS][:proxy=yes]", _parseListen),
        DEFAULT_LISTENERS,
        active=True,
        doc="""Sockets to accept clients on: "TRANSPORT:PORT[:interface=ADDRESS][:proxy=yes]",
        TRANSPORT udp, tcp or tls (TURN over TLS: turns: URLs; browsers behind firewalls that
        only let HTTPS out reach "tls:443"). "::" accepts IPv4 and IPv6 clients on one socket.
        proxy=yes (tcp and tls only): every connection starts with a PROXY protocol header (v1
        or v2, before the TLS handshake) from a load balancer, which gives the client's real
        address; connections without one are closed. Such a listener must be reachable only
        from the load balancer.""",
    )
    software: Optional[str] = _LISTENERS.setting(
        """The SOFTWARE attribute to send in responses. Without one the version stays private
        and unauthenticated responses small.""",
        "software",
        Syntax("TEXT", _parseSoftware),
        defaultText="none",
        example="turnrelay",
    )
    proxyFrom: Tuple[str, ...] = _LISTENERS.setting(
        """Take PROXY headers on proxy=yes listeners only from this address or network: the load
        balancers. Connections from elsewhere are closed unread. Without it, from anywhere: then
        only the load balancers may reach those listeners.""",
        "proxy-from",
        _CIDR,
        (),
        example=["10.0.0.0/24"],
    )

    tlsCert: Optional[str] = _TLS.setting(
        """PEM certificate for tls listeners (without it, a loopback-only server makes itself a
        self-signed one in state-dir).""",
        "tls-cert",
        _FILE,
        example="/etc/letsencrypt/live/turn.example.org/cert.pem",
        doc="""Certificate (PEM) of the tls listeners. Without it and tls-key, a loopback-only
        server makes a self-signed certificate in state-dir once and prints its fingerprint;
        anywhere else a tls listener needs them.""",
    )
    tlsKey: Optional[str] = _TLS.setting(
        """PEM private key of tls-cert; tls-cert and tls-key go together: give both or
        neither.""",
        "tls-key",
        _FILE,
        example="/etc/letsencrypt/live/turn.example.org/privkey.pem",
    )
    tlsChain: Optional[str] = _TLS.setting(
        """PEM intermediate certificates to send along with tls-cert (such as Let's Encrypt's
        chain.pem).""",
        "tls-chain",
        _FILE,
        example="/etc/letsencrypt/live/turn.example.org/chain.pem",
    )
    tlsCheckInterval: float = _TLS.setting(
        """Seconds between looks at the certificate files; changed files are reloaded without
        dropping connections. 0: only on SIGHUP.""",
        "tls-check-interval",
        _seconds(0, 86400),
        60.0,
        doc="""Seconds between looks at the certificate files: a changed certificate is loaded
        for new handshakes without dropping connections (and so on SIGHUP); a broken one is
        refused and the old one stays. 0: only on SIGHUP.""",
    )
    tlsHandshakeTimeout: float = _TLS.setting(
        """Seconds a TLS handshake may take, and the PROXY header on a proxy=yes listener.""",
        "tls-handshake-timeout",
        _seconds(1, 600),
        10.0,
    )

    streamIdleTimeout: float = _STREAMS.setting(
        """Seconds a TCP or TLS connection without an allocation may stay silent before it is
        closed.""",
        "stream-idle-timeout",
        _seconds(1, 86400),
        60.0,
    )
    maxUnallocatedConnections: int = _STREAMS.setting(
        """TCP and TLS connections that may be open without an allocation at once; beyond, the
        source holding the most such connections loses its oldest.""",
        "max-unallocated-connections",
        _count(1, 10**6),
        1000,
        doc="""TCP and TLS connections that may be open without an allocation at once. When they
        are, a newcomer still gets in: the source holding the most such connections loses its
        oldest.""",
    )
    maxUnallocatedPerSource: int = _STREAMS.setting(
        """TCP and TLS connections one source (an IPv4 address or an IPv6 /64) may hold open
        without an allocation; more are closed as they arrive.""",
        "max-unallocated-per-source",
        _count(1, 10**6),
        64,
        doc="""Connections without an allocation one source (an IPv4 address, an IPv6 /64) may
        hold; more are closed as they arrive. Many users behind one NAT share a source, but each
        holds its connection unallocated for only the moment before its Allocate.""",
    )
    streamAllocateTimeout: float = _STREAMS.setting(
        """Seconds a TCP or TLS connection has to allocate, from its start or from the end of
        its allocation; traffic such as Binding does not extend it.""",
        "stream-allocate-timeout",
        _seconds(1, 86400),
        30.0,
        doc="""Seconds a connection has to allocate, counted from its start (the TLS handshake
        included) or from the end of its allocation. Traffic does not extend it: a connection
        that only sends Binding is closed all the same.""",
    )
    streamMaxUnsent: int = _STREAMS.setting(
        """Bytes a TCP or TLS client may leave unread once its connection's buffer is full
        (reading from it stops meanwhile); beyond, it is closed.""",
        "stream-max-unsent",
        _bytes(65536, 2**30),
        262144,
        doc="""A client that does not read what it is sent: once its connection's buffer is
        full, reading from it stops (so pipelined requests wait in the kernel, not in our
        memory), and past this many unsent bytes it is closed. Relayed data is dropped while it
        catches up.""",
    )

    maxPeerConnections: int = _RESOURCES.setting(
        """RFC 6062 peer TCP connections, pending and established, per allocation; beyond,
        Connect gets 508 and peers' connections are refused.""",
        "max-peer-connections",
        _count(1, 10**5),
        100,
    )
    workers: int = _RESOURCES.setting(
        """Worker processes relaying, each with its own UDP, TCP and TLS listeners and relay
        ports, behind the twistd process, which supervises them and holds the console, metrics
        and quotas; auto is one per CPU. 1 relays in the twistd process itself.""",
        "workers",
        Syntax("N|auto", _parseWorkers),
        1,
        doc="""Worker processes relaying, each with its own UDP, TCP and TLS listeners and
        allocations, behind the twistd process (the control process), which supervises them
        (restarting one that dies), steers every client to the same worker by its address and
        port, splits the relay port range among them, and holds what is global: quotas, the
        admin console, metrics, the control socket, the credentials endpoint. auto is one per
        CPU; 1 relays in the twistd process itself. Embedded relays are single-process.""",
        example="auto",
    )
    offload: str = _RESOURCES.setting(
        """Relay UDP ChannelData in the kernel (an eBPF program) rather than in this process:
        auto where it can be loaded, off, or tc (and say why when it cannot); xdp runs it at
        XDP, in driver mode where the driver has it, else generic.""",
        "offload",
        Syntax("auto|off|tc|xdp", _parseOffload),
        "auto",
        doc="""The kernel fast path: an eBPF program on the host's interfaces relays ChannelData
        between UDP clients and their peers without the packets reaching this process, while
        turnrelay keeps deciding which channels may pass and reads back what they carried (so
        usage logs, quotas and metrics are the same whichever path relayed). Only channels of
        UDP clients on UDP allocations without a bandwidth cap or DONT-FRAGMENT, with a peer of
        the client's family, are offloaded; everything else stays in user space. auto uses it
        where the program loads (Linux, CAP_BPF and CAP_NET_ADMIN) and relays in user space
        otherwise, with one log line saying why; tc asks for it and warns when it cannot be had;
        xdp asks for it at XDP, before the stack (in the driver where it supports XDP, else in
        generic mode; an interface takes one XDP program, so with several workers only the first
        attaches) and falls back the same way; auto never picks xdp; off never loads it.""",
    )
    offloadInterfaces: Tuple[str, ...] = _RESOURCES.setting(
        """Network interfaces the kernel path (offload) is attached to: those clients' and
        peers' packets arrive on (IP forwarding must be on there).""",
        "offload-interfaces",
        Syntax("NAME", _parseInterfaceName),
        (),
        defaultText="the interfaces holding the relay's addresses, but loopback",
        example=["eth0"],
    )
    descriptorReserve: int = _RESOURCES.setting(
        """File descriptors kept free below the process's limit (ulimit -n): within it,
        listeners stop accepting, Allocate and Connect get 508 and peers' connections are
        refused, until descriptors are freed.""",
        "descriptor-reserve",
        _count(16, 10**6),
        64,
        doc="""File descriptors kept free below the process's limit (ulimit -n, or LimitNOFILE=
        in the systemd unit). Within the reserve, listeners stop accepting, Allocate and Connect
        get 508 and peers' connections are refused, until descriptors are freed; so the process
        never runs out (EMFILE) and existing clients keep relaying.""",
    )
    unauthenticatedRate: float = _RESOURCES.setting(
        """Unauthenticated UDP responses per second to one source (an IPv4 address or an IPv6
        /64); requests beyond are dropped and counted.""",
        "unauthenticated-rate",
        Syntax("PER_SECOND", _parseNumber(0.1, 10**6, float)),
        20.0,
        doc="""Unauthenticated responses over UDP (Binding, 401 challenges) to one source (an
        IPv4 address, an IPv6 /64) per second: a token bucket of this rate and
        unauthenticated-burst. Beyond, requests are dropped and counted, so that a forged source
        cannot make the relay flood a victim. (Nor is any such response more than three times
        the size of its request.) TCP, TLS and authenticated requests are not limited.""",
    )
    unauthenticatedBurst: int = _RESOURCES.setting(
        """Unauthenticated UDP responses one source may have at once before unauthenticated-rate
        applies.""",
        "unauthenticated-burst",
        _count(1, 10**6),
        40,
    )
    sourceTableSize: int = _RESOURCES.setting(
        """Sources the per-source limits remember at once; the least recently seen are forgotten
        first, so the tables' memory is bounded.""",
        "source-table-size",
        _count(100, 10**7),
        10000,
    )
    refusalSummaryInterval: float = _RESOURCES.setting(
        """Seconds between the log lines that sum up refused unauthenticated or unverified
        requests by reason; they are never logged one by one.""",
        "refusal-summary-interval",
        _seconds(1, 86400),
        60.0,
        doc="""Refused unauthenticated or unverified requests (bad integrity, unknown user, rate
        limits...) are counted by reason in the metrics and summed up, by reason, in one log
        line every this many seconds, never one line per request.""",
    )
    logMaxBytes: int = _RESOURCES.setting(
        """Under twistd with a log file (--logfile, or daemonized: twistd.log), rotate it at
        this size, so the log's disk use is bounded.""",
        "log-max-bytes",
        _bytes(10000, 2**40),
        10_000_000,
    )
    logMaxFiles: int = _RESOURCES.setting(
        """Under twistd with a log file, keep this many rotated files.""",
        "log-max-files",
        _count(1, 1000),
        10,
    )
    stateDir: str = _RESOURCES.setting(
        """Where turnrelay keeps what it generates, such as the demo certificate (relative to
        the working directory unless absolute).""",
        "state-dir",
        Syntax("DIR", _parsePath),
        "state",
        example="/var/lib/turnrelay",
    )

    realm: str = _CREDENTIALS.setting(
        """The realm of long-term credentials.""",
        "realm",
        Syntax("REALM", _parseText),
        "turnrelay",
        example="example.org",
    )
    users: Tuple[Tuple[str, str], ...] = _CREDENTIALS.setting(
        """A static user, NAME:PASSWORD or NAME:0xKEY with KEY the hex MD5 (or SHA-256) of
        NAME:REALM:PASSWORD. Prefer the configuration file: command lines are visible to other
        local users.""",
        "user",
        Syntax("NAME:PASSWORD", _parseUser),
        (),
        secret=True,
        example=["alice:correct horse battery staple"],
        doc="""Static users: "NAME:PASSWORD", or "NAME:0xKEY" where KEY is the hex
        MD5(NAME:REALM:PASSWORD) (32 digits) or its SHA-256 (64 digits), so that this file need
        not hold the password. The server keeps only keys. With no user and no secret, twistd
        makes up a demo user on loopback listeners (and prints it); anywhere else every TURN
        request gets 401.""",
    )
    authSecrets: Tuple[str, ...] = _CREDENTIALS.setting(
        """A TURN REST API shared secret; credentials minted with any of them are accepted, so
        secrets can be rotated.""",
        "static-auth-secret",
        Syntax("SECRET", _parseSecret),
        (),
        secret=True,
        example=["a long random string"],
        doc="""TURN REST API shared secrets: a web application mints time-limited credentials
        (username "EXPIRY:USERID", password base64(HMAC-SHA1(secret, username))). List several
        while rotating. At least 8 characters.""",
    )
    restMaxTTL: float = _CREDENTIALS.setting(
        """Refuse REST usernames expiring more than this many seconds ahead.""",
        "rest-max-ttl",
        _seconds(1, 31536000),
        86400.0,
    )
    nonceLifetime: float = _CREDENTIALS.setting(
        """Seconds before a nonce goes stale; the client then gets 438 and a fresh nonce.""",
        "nonce-lifetime",
        _seconds(10, 3600),
        600.0,
    )

    relayIP: Optional[str] = _RELAY_ADDRESSES.setting(
        """The IPv4 address relay sockets bind to, never the wildcard 0.0.0.0 (it is advertised
        to clients).""",
        "relay-ip",
        _IPV4,
        example="192.0.2.10",
        defaultText="""the first listener's specific IPv4 address, else 127.0.0.1 if
        every listener is on loopback""",
    )
    relayIP6: Optional[str] = _RELAY_ADDRESSES.setting(
        """The IPv6 address IPv6 relay sockets bind to.""",
        "relay-ip6",
        Syntax("ADDRESS", _parseIPv6),
        example="2001:db8::10",
        defaultText="""the first listener's specific IPv6 address; without one, IPv6
        relays are not offered (440)""",
        doc="""IPv6 address IPv6 relay sockets bind to. A client asks for an IPv6 relay with
        REQUESTED-ADDRESS-FAMILY, or for both with ADDITIONAL-ADDRESS-FAMILY. Not a wildcard
        (::, ::ffff:0.0.0.0) nor an IPv4 address in IPv6 spelling.""",
    )
    externalIP: Optional[str] = _RELAY_ADDRESSES.setting(
        """The public address to advertise in XOR-RELAYED-ADDRESS when relay-ip is a private
        address behind NAT (the ports are the same).""",
        "external-ip",
        _IPV4,
        example="203.0.113.10",
        defaultText="relay-ip",
    )
    minPort: int = _RELAY_ADDRESSES.setting(
        """The lowest relay port; relay ports are picked at random up to max-port.""",
        "min-port",
        _PORT,
        49152,
    )
    maxPort: int = _RELAY_ADDRESSES.setting(
        """The highest relay port.""",
        "max-port",
        _PORT,
        65535,
    )

    maxLifetime: int = _LIFETIMES.setting(
        """The longest allocation lifetime granted, in seconds.""",
        "max-lifetime",
        Syntax("SECONDS", _parseNumber(60, 86400)),
        _LIMITS.maxLifetime,
    )
    userQuota: int = _LIFETIMES.setting(
        """Allocations one username may hold; beyond, Allocate gets 486 (Allocation Quota
        Reached). 0 for no limit.""",
        "user-quota",
        _count(0, 10**6),
        _LIMITS.userQuota,
    )
    totalQuota: int = _LIFETIMES.setting(
        """Allocations in all; beyond, Allocate gets 486 (Allocation Quota Reached). 0 for no
        limit.""",
        "total-quota",
        _count(0, 10**7),
        _LIMITS.totalQuota,
    )
    maxPermissions: int = _LIFETIMES.setting(
        """Permissions per allocation; beyond, CreatePermission and ChannelBind get 508
        (Insufficient Capacity).""",
        "max-permissions",
        _count(1, 10**5),
        _LIMITS.maxPermissions,
    )
    maxChannels: int = _LIFETIMES.setting(
        """Channel bindings per allocation; beyond, ChannelBind gets 508 (Insufficient
        Capacity).""",
        "max-channels",
        _count(1, 4096),
        _LIMITS.maxChannels,
    )
    bandwidth: int = _LIFETIMES.setting(
        """Bytes per second one allocation may relay in each direction; the excess is dropped
        and counted. 0 for no cap.""",
        "bandwidth",
        _bytes(0, 10**10),
        _LIMITS.bandwidth,
    )
    channelNumbers: str = _LIFETIMES.setting(
        """Which channel numbers ChannelBind accepts: rfc5766 (0x4000-0x7FFF, which clients
        written for RFC 5766, coturn's among them, use) or rfc8656 (0x4000-0x4FFF, RFC 8656's
        narrower range).""",
        "channel-numbers",
        Syntax("RFC", _parseChannelNumbers),
        "rfc5766",
    )

    allowPeers: Tuple[str, ...] = _PEERS.setting(
        """Relay to this address or network although it is denied by default, for example a LAN.
        A network has no host bits set: 10.0.0.0/8, not 10.1.2.3/8.""",
        "allow-peer",
        _CIDR,
        (),
        example=["10.0.0.0/8"],
    )
    denyPeers: Tuple[str, ...] = _PEERS.setting(
        """Never relay to this address or network, whatever allow-peer says.""",
        "deny-peer",
        _CIDR,
        (),
        example=["192.0.2.0/24"],
    )
    allowLoopbackPeers: bool = _PEERS.setting(
        """Relay to loopback peers (127.0.0.0/8, ::1): for tests and demos only.""",
        "allow-loopback-peers",
        _FLAG,
        False,
    )

    alternateServers: Tuple[TransportAddress, ...] = _OPERATIONS.setting(
        """While draining, send new clients here (300 Try Alternate with ALTERNATE-SERVER), as
        ADDRESS:PORT; give one of each family. Without one, a draining relay answers 403.""",
        "alternate-server",
        Syntax("ADDRESS:PORT", _parseAlternate),
        (),
        example=["192.0.2.11:3478", "[2001:db8::11]:3478"],
    )
    drainTimeout: float = _OPERATIONS.setting(
        """Seconds a drain waits for the allocations left to end before ending them; 0 waits for
        ever.""",
        "drain-timeout",
        _seconds(0, 7 * 86400),
        3600.0,
    )
    serverName: Optional[str] = _OPERATIONS.setting(
        """The host name or address clients use in turn: URLs (the credentials endpoint hands
        these out); turns: URLs need the name the certificate is for.""",
        "server-name",
        Syntax("NAME", _parseServerName),
        example="turn.example.org",
        defaultText="external-ip, else relay-ip",
    )

    redis: Optional[RedisURL] = _FLEET.setting(
        """Share state with the other nodes of a fleet on this Redis server:
        redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// for TLS.  Unset, the node keeps
        everything to itself.""",
        "redis",
        Syntax("URL", _parseRedis),
        example="redis://127.0.0.1:6379/0",
        secret=True,
        doc="""Share state with the other nodes of a fleet on this Redis server,
        redis://[:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS): per-user and total quotas
        count every node's allocations, revocations reach every node within a second, users
        may be kept in Redis (coturn's key layout), each node publishes its addresses, load and
        state, and usage is added up per user.  Unset, the node keeps everything to itself.""",
    )
    nodeID: Optional[str] = _FLEET.setting(
        """This node's name in the fleet, unique among the nodes sharing the Redis server.""",
        "node-id",
        Syntax("NAME", _parseNodeID),
        defaultText="the host name",
        example="turn-1",
    )
    redisTimeout: float = _FLEET.setting(
        """Seconds a Redis command may take before it counts as failed (the node then acts as
        redis-unavailable says).""",
        "redis-timeout",
        _seconds(0.01, 60),
        0.5,
    )
    redisLeaseTTL: float = _FLEET.setting(
        """Seconds a node's share of the quotas outlives its last renewal: a node that dies
        gives its allocations back to the fleet within this time.""",
        "redis-lease-ttl",
        _seconds(1, 3600),
        10.0,
    )
    redisUnavailable: str = _FLEET.setting(
        """What an Allocate gets while Redis cannot be reached: local (the node's own quotas
        decide) or refuse (508).  Relaying never depends on Redis.""",
        "redis-unavailable",
        Syntax("local|refuse", _parseRedisUnavailable),
        "local",
    )
    redisUsers: bool = _FLEET.setting(
        """Read long-term users and REST secrets from Redis too, in coturn's key layout
        (turn/realm/REALM/user/NAME/key, turn/realm/REALM/secret), refreshed every
        redis-users-refresh seconds.""",
        "redis-users",
        _FLAG,
        False,
    )
    redisTLSCA: Optional[str] = _FLEET.setting(
        """The CA certificates (PEM) that vouch for the Redis server's certificate, with
        rediss://; the Redis URL's host must be one the certificate names.""",
        "redis-tls-ca",
        _FILE,
        defaultText="the system's trusted CAs",
        example="/etc/turnrelay/redis-ca.pem",
    )
    redisUsersRefresh: float = _FLEET.setting(
        """Seconds between two readings of the users and secrets kept in Redis.""",
        "redis-users-refresh",
        _seconds(0.1, 3600),
        2.0,
    )

    manhole: Optional[ListenerConfig] = _ADMIN.setting(
        """Serve the SSH admin console here, for example tcp:2222:interface=127.0.0.1; loopback
        only unless manhole-allow-remote.""",
        "manhole",
        _ADMIN_LISTENER,
        example="tcp:2222:interface=127.0.0.1",
        defaultText="off",
        doc="""Serve the SSH admin console (a Python shell in the running relay, with helpers:
        allocations(), kill(), stats(), drain(), reloadTLS(), mint(), loglevel(), help()) here;
        loopback only unless manhole-allow-remote.""",
    )
    manholeAuthorizedKeys: Optional[str] = _ADMIN.setting(
        """OpenSSH authorized_keys file of the keys that may log in to the console, read again
        at each login (lines with options such as from= are ignored).""",
        "manhole-authorized-keys",
        _FILE,
        example="/etc/turnrelay/authorized_keys",
    )
    manholePasswords: Optional[str] = _ADMIN.setting(
        """Optional file of user:password lines that may log in to the console too, read again
        at each login.""",
        "manhole-passwords",
        _FILE,
        example="/etc/turnrelay/manhole-passwords",
    )
    manholeAllowRemote: bool = _ADMIN.setting(
        """Let the console listen on an address other than loopback.""",
        "manhole-allow-remote",
        _FLAG,
        False,
    )
    controlSocket: Optional[str] = _ADMIN.setting(
        """Serve the control socket that turnrelayctl talks to here (a Unix socket, mode
        0600).""",
        "control-socket",
        Syntax("PATH", _parsePath),
        example="/var/lib/turnrelay/control.sock",
        defaultText="off",
        doc="""Serve the control socket that turnrelayctl (status, allocations, kill, drain,
        reload, reload-tls, mint, loglevel) talks to here: a Unix socket created with mode 0600,
        so only the relay's user and root may use it; removed when the relay stops, and a stale
        one left by a crash is replaced. Its directory must exist.""",
    )
    metrics: Optional[ListenerConfig] = _ADMIN.setting(
        """Serve Prometheus metrics over HTTP here, for example tcp:9641:interface=127.0.0.1.""",
        "metrics",
        _ADMIN_LISTENER,
        example="tcp:9641:interface=127.0.0.1",
        defaultText="off",
        doc="""Serve Prometheus metrics at http://ADDRESS:PORT/metrics (no authentication:
        loopback or a private monitoring network only; addresses are judged by what they reach,
        so ::ffff:0.0.0.0 is refused as 0.0.0.0 is).""",
    )
    credentialsEndpoint: Optional[ListenerConfig] = _ADMIN.setting(
        """Serve TURN credentials (RTCIceServer JSON) over HTTP here, for web applications;
        needs credentials-token-file and a static-auth-secret.""",
        "credentials-endpoint",
        _ADMIN_LISTENER,
        example="tcp:8089:interface=127.0.0.1",
        defaultText="off",
        doc="""Serve TURN credentials for web applications here: GET /credentials?user=ID with
        "Authorization: Bearer TOKEN" (TOKEN is the content of credentials-token-file) answers
        the RTCIceServer JSON, minted with the first static-auth-secret. Plain HTTP: loopback or
        private network only.""",
    )
    credentialsTokenFile: Optional[str] = _ADMIN.setting(
        """File holding the bearer token that callers of credentials-endpoint present
        (Authorization: Bearer TOKEN).""",
        "credentials-token-file",
        _FILE,
        example="/etc/turnrelay/credentials-token",
    )
    credentialsTTL: float = _ADMIN.setting(
        """Seconds the credentials the endpoint mints stay valid.""",
        "credentials-ttl",
        _seconds(60, 7 * 86400),
        86400.0,
    )
    credentialsCORSOrigins: Tuple[str, ...] = _ADMIN.setting(
        """A web origin whose pages may call credentials-endpoint from the browser (CORS), or *
        for any.""",
        "credentials-cors-origins",
        Syntax("ORIGIN", _parseOrigin),
        (),
        example=["https://app.example.org"],
        doc="""Web origins (scheme://host[:port]) whose pages may call credentials-endpoint
        from the browser: the endpoint then answers their CORS preflight (OPTIONS) and adds
        Access-Control-Allow-Origin. * allows any origin. None by default: only servers call
        it.""",
    )

    demoPage: Optional[ListenerConfig] = _ADMIN.setting(
        """Serve the browser demo page over HTTP here, loopback only, for example
        tcp:8478:interface=127.0.0.1 (make run does).""",
        "demo-page",
        _ADMIN_LISTENER,
        example="tcp:8478:interface=127.0.0.1",
        defaultText="off",
        doc="""Serve a demo page at http://ADDRESS:PORT/ (loopback only) that makes a relay-only
        WebRTC call through this relay between two peer connections in the page, over udp, tcp
        or turns, and shows the relay candidates, the selected pair, a video loop and data-channel
        messages. It hands any page that reaches it a short-lived credential minted with the first
        static-auth-secret (the loopback demo makes one up). It also lets clients relay to each
        other through relayed addresses on loopback, on the relay ports only (nothing else of
        loopback): the page's two peer connections meet there.""",
    )

    logLevel: str = _LOGGING.setting(
        """The lowest level of turnrelay's own log events: debug, info, warn, error or critical.
        debug logs every dropped datagram and refused request.""",
        "log-level",
        Syntax("LEVEL", _parseLogLevel),
        "info",
    )
    logFormat: str = _LOGGING.setting(
        """How twistd writes the log: text (Twisted's lines) or json (one JSON object a line:
        time, level, message and the event's fields), on standard output or in the log file.""",
        "log-format",
        Syntax("FORMAT", _parseLogFormat),
        "text",
        doc="""How twistd writes the log, on standard output or in the log file: text
        (Twisted's lines) or json, one JSON object a line with "time" (ISO 8601, UTC),
        "level", "message" (rendered) and the event's structured fields, for log pipelines.
        The demo's start-up notice follows it.  A --logger given to twistd wins.""",
    )

    def effectiveRelayIP(self) -> Optional[str]:
        """
        The relay IP: the configured one, else the first listener's specific
        IPv4 address (in any spelling: C{::ffff:192.0.2.1} is
        C{192.0.2.1}), else 127.0.0.1 if every listener is on loopback.

        @return: the address, or L{None} when it cannot be guessed (wildcard
            listeners, C{::ffff:0.0.0.0} among them): the relay then serves
            STUN only.
        """
        if self.relayIP is not None:
            return self.relayIP
        addresses = [canonicalIP(listener.interface) for listener in self.listeners]
        for address in addresses:
            if address.version == 4 and not address.is_unspecified:
                return str(address)
        if all(address.is_loopback for address in addresses):
            return "127.0.0.1"
        return None

    def effectiveRelayIP6(self) -> Optional[str]:
        """
        The IPv6 relay address: the configured one, else the first
        listener's specific IPv6 address (not a wildcard, nor an IPv6
        spelling of an IPv4 address such as C{::ffff:192.0.2.1}).

        @return: the address, or L{None}: no IPv6 relays.
        """
        if self.relayIP6 is not None:
            return self.relayIP6
        for listener in self.listeners:
            address = canonicalIP(listener.interface)
            if address.version == 6 and not address.is_unspecified:
                return str(address)
        return None


SETTINGS: Tuple[Setting, ...] = tuple(
    attr.evolve(field.metadata[_SETTING], field=field.name) for field in attr.fields(RelayConfig)
)
"""
Every setting, in the order of L{RelayConfig}'s fields: derived from their
declarations.
"""

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
    config = attr.evolve(base, **changes)
    if config.minPort > config.maxPort:
        raise ConfigError(
            f"min-port {config.minPort} is above max-port {config.maxPort}; "
            "min-port must not exceed max-port"
        )
    if config.redisTLSCA is not None and (config.redis is None or not config.redis.tls):
        raise ConfigError(
            "redis-tls-ca: it verifies a TLS connection to Redis: give a rediss:// URL in "
            "redis, or remove redis-tls-ca"
        )
    if config.redis is not None and config.workers > 1:
        raise ConfigError(
            "redis: a fleet node relays in one process for now: set workers = 1, and run "
            "one node per core (each with its node-id) if the host has more"
        )
    ports = config.maxPort - config.minPort + 1
    if config.workers > ports:
        raise ConfigError(
            f"workers: {config.workers} workers cannot share the {ports} relay ports from "
            "min-port to max-port; widen the range or run fewer workers"
        )
    if (config.tlsCert is None) != (config.tlsKey is None):
        raise ConfigError("tls-cert and tls-key go together: give both or neither")
    manhole = config.manhole
    if manhole is not None:
        if not config.manholeAllowRemote and not canonicalIP(manhole.interface).is_loopback:
            raise ConfigError(
                f"manhole: {manhole} listens beyond loopback; anyone who reaches it can "
                "run code in the relay.  Use interface=127.0.0.1, or set "
                "manhole-allow-remote if you mean it"
            )
        if config.manholeAuthorizedKeys is None and config.manholePasswords is None:
            raise ConfigError(
                "manhole: nobody could log in; set manhole-authorized-keys (or manhole-passwords)"
            )
    if config.demoPage is not None and not canonicalIP(config.demoPage.interface).is_loopback:
        raise ConfigError(
            f"demo-page: {config.demoPage} is not on loopback; the page hands a TURN credential "
            "to whoever reaches it, so it listens on loopback only (interface=127.0.0.1 or ::1)"
        )
    for name, listener in (
        ("metrics", config.metrics),
        ("credentials-endpoint", config.credentialsEndpoint),
    ):
        if listener is None:
            continue
        # Judged by what the address reaches: ::ffff:0.0.0.0 is the IPv4
        # wildcard and ::ffff:8.8.8.8 a public address, whatever ipaddress
        # says of their IPv6 spelling.
        address = canonicalIP(listener.interface)
        if not (address.is_loopback or address.is_private) or address.is_unspecified:
            raise ConfigError(
                f"{name}: {listener} (address {address}) would serve plain HTTP to the world; "
                "listen on loopback or a private address (and put a TLS proxy in front if needed)"
            )
    if config.credentialsEndpoint is not None and (
        config.credentialsTokenFile is None or not config.authSecrets
    ):
        raise ConfigError(
            "credentials-endpoint: needs credentials-token-file (the bearer token callers "
            "present) and a static-auth-secret to mint with"
        )
    return config


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


# The example file: comments wrapped to this width.
_WIDTH = 78

_EXAMPLE_HEADER = """\
# turnrelay configuration (TOML).
#   twistd -n turnrelay --config conf/turnrelay.conf
# Every key is also a command-line option of the same name (flags take no
# value on the command line); the command line wins over this file.
# A bad value stops the server with a message naming the key.
# A key commented out shows its default value, unless a "Default:" line
# above it says otherwise.
#
# Generated from the declarations in turnrelay/config.py by
#   python -m turnrelay.config --example > conf/turnrelay.conf"""


def _rawValue(value: Any) -> Any:
    """
    @return: a typed value as the configuration file writes it.
    """
    if isinstance(value, tuple) and not isinstance(value, TransportAddress):
        return [_rawValue(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _tomlValue(raw: Any) -> str:
    """
    @return: a raw value in TOML.
    """
    if isinstance(raw, list):
        return "[" + ", ".join(_tomlValue(item) for item in raw) + "]"
    # TOML's basic strings and booleans are spelled as JSON's, and so are the
    # numbers that settings take.
    return json.dumps(raw)


def _plainValue(raw: Any) -> str:
    """
    @return: a raw value as a command line gives it.
    """
    if isinstance(raw, list):
        return ", ".join(_plainValue(item) for item in raw)
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


def _comment(text: str) -> List[str]:
    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent="# ",
        subsequent_indent="# ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def exampleConfig() -> str:
    """
    Write the example configuration file, C{conf/turnrelay.conf}: every
    setting, by section, with its documentation and default.  Loaded, it
    gives the default configuration.

    @return: the file's text.
    """
    lines = [_EXAMPLE_HEADER]
    section = None
    for setting in SETTINGS:
        if setting.section != section:
            section = setting.section
            lines += ["", f"# --- {section.title} ".ljust(_WIDTH, "-")]
            if section.doc:
                lines += ["", *_comment(section.doc)]
        lines += ["", *setting.exampleLines()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """
    C{python -m turnrelay.config --example}: write the example
    configuration file to standard output.

    @param argv: the arguments after the program's name.
    @return: the exit status.
    """
    if list(argv) != ["--example"]:
        print("usage: python -m turnrelay.config --example > turnrelay.conf", file=err)
        return 2
    out.write(exampleConfig())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], sys.stdout, sys.stderr))
