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

from turnrelay.logs import LEVELS
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import TEXT_MAX_CHARACTERS
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.policy import canonicalIP


class ConfigError(ValueError):
    """
    A setting has a value turnrelay cannot use.

    The message names the setting, the value and what is allowed.
    """


TRANSPORTS = ("udp", "tcp", "tls")
LISTEN_SYNTAX = "TRANSPORT:PORT[:interface=ADDRESS] with TRANSPORT one of " + ", ".join(TRANSPORTS)


@attr.frozen
class ListenerConfig:
    """
    One socket to accept TURN clients on.

    @ivar transport: C{"udp"}, C{"tcp"} or C{"tls"} (TLS over TCP).
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


# The relay's own defaults for lifetimes and quotas: one home for them.
_LIMITS = RelayLimits()

DEFAULT_LISTENERS = (
    ListenerConfig("udp", 3478, "127.0.0.1"),
    ListenerConfig("tcp", 3478, "127.0.0.1"),
    ListenerConfig("tls", 5349, "127.0.0.1"),
)


@attr.frozen
class RelayConfig:
    """
    Everything L{turnrelay.service.makeRelayService} needs to build a relay.

    Build it with L{buildConfig} from strings, or directly in Python; its
    defaults are safe: loopback listeners only, no credentials (so every
    TURN request is refused), no relaying to private or loopback peers.

    @ivar listeners: the sockets clients reach the relay on.
    @ivar software: the SOFTWARE attribute to add to responses, or L{None}
        to send none (the default: it tells attackers the version, and makes
        unauthenticated responses larger).
    @ivar realm: the long-term credential realm.
    @ivar users: static users, C{(name, secret)}; the secret is a password
        or C{0x} and a hex key.  Kept out of C{repr}.
    @ivar authSecrets: TURN REST API shared secrets; several at once allow
        rotation.  Kept out of C{repr}.
    @ivar restMaxTTL: REST usernames expiring further ahead are refused.
    @ivar nonceLifetime: seconds before a nonce goes stale (438).
    @ivar relayIP: the IPv4 address relay sockets bind to; by default the
        first listener's specific IPv4 address.
    @ivar relayIP6: the IPv6 address IPv6 relay sockets bind to; by default
        the first listener's specific IPv6 address, else none (IPv6 relays
        are then not offered: 440).
    @ivar externalIP: the address advertised in XOR-RELAYED-ADDRESS when the
        relay IP is behind NAT.
    @ivar minPort: the lowest relay port.
    @ivar maxPort: the highest relay port.
    @ivar maxLifetime: the longest allocation lifetime granted.
    @ivar userQuota: allocations per username (0: unlimited).
    @ivar totalQuota: allocations in all (0: unlimited).
    @ivar maxPermissions: permissions per allocation.
    @ivar maxChannels: channel bindings per allocation.
    @ivar bandwidth: bytes per second per allocation and direction (0: no cap).
    @ivar allowPeers: CIDRs relayed to even though denied by default.
    @ivar denyPeers: CIDRs never relayed to, whatever else says.
    @ivar allowLoopbackPeers: relay to loopback peers (for tests and demos).
    @ivar logLevel: the lowest level of turnrelay's own events to log.
    @ivar channelNumbers: C{"rfc5766"} to bind channels 0x4000-0x7FFF, as
        clients written for RFC 5766 expect, or C{"rfc8656"} for 0x4000-0x4FFF.
    @ivar tlsCert: the PEM certificate of C{tls} listeners.
    @ivar tlsKey: its PEM private key.
    @ivar tlsChain: PEM intermediate certificates to send along, or L{None}.
    @ivar tlsCheckInterval: seconds between looks at the certificate files
        for changes (0: only on SIGHUP and admin request).
    @ivar stateDir: where turnrelay keeps what it generates (the demo's
        self-signed certificate).
    @ivar alternateServers: where a draining relay sends new clients (300
        Try Alternate with ALTERNATE-SERVER).
    @ivar drainTimeout: seconds a drain waits for allocations to end before
        ending them.
    @ivar serverName: the name or address clients use in C{turn:} URLs, for
        the credentials endpoint and the admin console; by default the
        external IP, else the relay IP.
    @ivar manhole: where the SSH admin console listens (TCP), or L{None}
        (the default: off).
    @ivar manholeAuthorizedKeys: the OpenSSH authorized_keys file whose keys
        may log in to the console; read again at each login.
    @ivar manholePasswords: an optional file of C{user:password} lines that
        may log in too.
    @ivar manholeAllowRemote: let the console listen on a non-loopback
        address (refused otherwise).
    @ivar metrics: where the Prometheus endpoint listens (TCP), or L{None}.
    @ivar credentialsEndpoint: where the HTTP credentials endpoint listens
        (TCP), or L{None}.
    @ivar credentialsTokenFile: the file holding the bearer token that
        callers of the credentials endpoint must present.
    @ivar credentialsTTL: seconds the credentials it mints stay valid.
    @ivar streamIdleTimeout: seconds a TCP or TLS connection without an
        allocation may stay silent.
    @ivar tlsHandshakeTimeout: seconds a TLS handshake may take.
    @ivar maxUnallocatedConnections: TCP and TLS connections that may be
        open without an allocation at once; when they are, the source holding
        the most loses its oldest to make room.
    @ivar maxUnallocatedPerSource: TCP and TLS connections one source (an
        IPv4 address, an IPv6 /64) may hold open without an allocation.
    @ivar streamAllocateTimeout: seconds a TCP or TLS connection has, from
        its start or from the end of its allocation, to allocate; traffic
        does not extend it.
    @ivar streamMaxUnsent: bytes a TCP or TLS connection may leave unsent
        after it has asked us to pause (reading from it stops meanwhile);
        beyond, it is closed.
    @ivar maxPeerConnections: RFC 6062 peer connections, pending and
        established, per allocation.
    @ivar descriptorReserve: file descriptors kept free below the process's
        limit: within it, listeners stop accepting, Allocate and Connect get
        508, and peers' connections are refused.
    @ivar unauthenticatedRate: unauthenticated UDP responses per second to
        one source (an IPv4 address, an IPv6 /64); beyond, requests are
        dropped and counted.
    @ivar unauthenticatedBurst: how many such responses a source may have
        at once before the rate applies.
    @ivar sourceTableSize: how many sources the per-source tables (the rate
        limit above, unallocated connections) remember.
    @ivar refusalSummaryInterval: seconds between the log lines that sum up
        refused unauthenticated or unverified requests, by reason.
    @ivar logMaxBytes: the size at which twistd's log file is rotated.
    @ivar logMaxFiles: how many rotated log files are kept.
    """

    listeners: Tuple[ListenerConfig, ...] = DEFAULT_LISTENERS
    software: Optional[str] = None
    realm: str = "turnrelay"
    users: Tuple[Tuple[str, str], ...] = attr.field(default=(), repr=False)
    authSecrets: Tuple[str, ...] = attr.field(default=(), repr=False)
    restMaxTTL: float = 86400.0
    nonceLifetime: float = 600.0
    relayIP: Optional[str] = None
    relayIP6: Optional[str] = None
    externalIP: Optional[str] = None
    minPort: int = 49152
    maxPort: int = 65535
    maxLifetime: int = _LIMITS.maxLifetime
    userQuota: int = _LIMITS.userQuota
    totalQuota: int = _LIMITS.totalQuota
    maxPermissions: int = _LIMITS.maxPermissions
    maxChannels: int = _LIMITS.maxChannels
    bandwidth: int = _LIMITS.bandwidth
    allowPeers: Tuple[str, ...] = ()
    denyPeers: Tuple[str, ...] = ()
    allowLoopbackPeers: bool = False
    logLevel: str = "info"
    channelNumbers: str = "rfc5766"
    tlsCert: Optional[str] = None
    tlsKey: Optional[str] = None
    tlsChain: Optional[str] = None
    tlsCheckInterval: float = 60.0
    stateDir: str = "state"
    alternateServers: Tuple[TransportAddress, ...] = ()
    drainTimeout: float = 3600.0
    serverName: Optional[str] = None
    manhole: Optional[ListenerConfig] = None
    manholeAuthorizedKeys: Optional[str] = None
    manholePasswords: Optional[str] = None
    manholeAllowRemote: bool = False
    metrics: Optional[ListenerConfig] = None
    credentialsEndpoint: Optional[ListenerConfig] = None
    credentialsTokenFile: Optional[str] = None
    credentialsTTL: float = 86400.0
    streamIdleTimeout: float = 60.0
    tlsHandshakeTimeout: float = 10.0
    maxUnallocatedConnections: int = 1000
    maxUnallocatedPerSource: int = 64
    streamAllocateTimeout: float = 30.0
    streamMaxUnsent: int = 262144
    maxPeerConnections: int = 100
    descriptorReserve: int = 64
    unauthenticatedRate: float = 20.0
    unauthenticatedBurst: int = 40
    sourceTableSize: int = 10000
    refusalSummaryInterval: float = 60.0
    logMaxBytes: int = 10_000_000
    logMaxFiles: int = 10

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


def _parseText(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value)
        if not text or len(text) > TEXT_MAX_CHARACTERS:
            raise ConfigError(f"{name}: {text!r} must be 1 to {TEXT_MAX_CHARACTERS} characters")
        return text

    return parse


def _parseNumber(
    name: str, low: float, high: float, kind: Callable[[Any], Any] = int
) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not low <= number <= high:
            raise ConfigError(f"{name}: {value!r} is not a number from {low:g} to {high:g}")
        return number

    return parse


def _parseAddress(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        try:
            return str(ipaddress.ip_address(str(value).strip("[]")))
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not an IP address") from None

    return parse


def _parseIPv4(name: str) -> Callable[[Any], str]:
    # A relay (or external) address is advertised to clients as the relayed
    # address: it must be one address, never the wildcard.
    def parse(value: Any) -> str:
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

    return parse


def _parseIPv6(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
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

    return parse


def _parseNetwork(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        try:
            return str(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ConfigError(
                f"{name}: {value!r} is not an address or CIDR such as 10.0.0.0/8"
            ) from None

    return parse


def _parseBool(name: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {value!r} is not true or false")

    return parse


def _parseLogLevel(value: Any) -> str:
    text = str(value).lower()
    if text not in LEVELS:
        raise ConfigError(f"log-level: {value!r}; expected one of {', '.join(LEVELS)}")
    return text


def _parseAdminListen(name: str) -> Callable[[Any], ListenerConfig]:
    def parse(value: Any) -> ListenerConfig:
        try:
            listener = parseListen(str(value))
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None
        if listener.transport != "tcp":
            raise ConfigError(f"{name}: {value!r} must be tcp:PORT[:interface=ADDRESS]")
        return listener

    return parse


def _parseAlternate(value: Any) -> TransportAddress:
    text = str(value)
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if not colon or address is None or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise ConfigError(
            f"alternate-server: {text!r} is not ADDRESS:PORT, such as 192.0.2.7:3478 "
            "or [2001:db8::7]:3478 (RFC 8489 needs an address, not a name)"
        )
    return TransportAddress(str(address), int(port))


def _parseServerName(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in "/?#@ "):
        raise ConfigError(f"server-name: {text!r} is not a host name or address")
    return text


def _parsePath(value: Any) -> str:
    text = str(value)
    if not text:
        raise ConfigError("a path must not be empty")
    return text


def _parseChannelNumbers(value: Any) -> str:
    text = str(value).lower()
    if text not in ("rfc5766", "rfc8656"):
        raise ConfigError(
            f"channel-numbers: {value!r}; expected rfc5766 (0x4000-0x7FFF) or rfc8656 "
            "(0x4000-0x4FFF)"
        )
    return text


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


def _parseSecret(value: Any) -> str:
    text = str(value)
    if len(text) < 8:
        raise ConfigError("static-auth-secret: a shared secret needs at least 8 characters")
    return text


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
    flag: bool = False


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
    Setting(
        "realm",
        "The realm of long-term credentials (default: turnrelay).",
        _parseText("realm"),
        "realm",
        metavar="REALM",
    ),
    Setting(
        "user",
        "A static user, NAME:PASSWORD or NAME:0xKEY with KEY the hex MD5 (or SHA-256) "
        "of NAME:REALM:PASSWORD (repeatable).  Prefer the configuration file: "
        "command lines are visible to other local users.",
        parseUser,
        "users",
        repeatable=True,
        metavar="NAME:PASSWORD",
    ),
    Setting(
        "static-auth-secret",
        "A TURN REST API shared secret; credentials minted with any of them are "
        "accepted, so secrets can be rotated (repeatable).",
        _parseSecret,
        "authSecrets",
        repeatable=True,
        metavar="SECRET",
    ),
    Setting(
        "rest-max-ttl",
        "Refuse REST usernames expiring more than this many seconds ahead (default: 86400).",
        _parseNumber("rest-max-ttl", 1, 31536000, float),
        "restMaxTTL",
        metavar="SECONDS",
    ),
    Setting(
        "nonce-lifetime",
        "Seconds before a nonce goes stale and the client gets 438 "
        "with a fresh one (default: 600).",
        _parseNumber("nonce-lifetime", 10, 3600, float),
        "nonceLifetime",
        metavar="SECONDS",
    ),
    Setting(
        "relay-ip",
        "The IPv4 address relay sockets bind to (default: the first listener's IPv4 address).",
        _parseIPv4("relay-ip"),
        "relayIP",
        metavar="ADDRESS",
    ),
    Setting(
        "relay-ip6",
        "The IPv6 address IPv6 relay sockets bind to (default: the first listener's "
        "specific IPv6 address, else none: IPv6 relays are not offered).",
        _parseIPv6("relay-ip6"),
        "relayIP6",
        metavar="ADDRESS",
    ),
    Setting(
        "external-ip",
        "The public address to advertise in XOR-RELAYED-ADDRESS when "
        "relay-ip is behind NAT (default: relay-ip).",
        _parseIPv4("external-ip"),
        "externalIP",
        metavar="ADDRESS",
    ),
    Setting(
        "min-port",
        "The lowest relay port (default: 49152).",
        _parseNumber("min-port", 1024, 65535),
        "minPort",
        metavar="PORT",
    ),
    Setting(
        "max-port",
        "The highest relay port (default: 65535).",
        _parseNumber("max-port", 1024, 65535),
        "maxPort",
        metavar="PORT",
    ),
    Setting(
        "max-lifetime",
        "The longest allocation lifetime granted, in seconds (default: 3600).",
        _parseNumber("max-lifetime", 60, 86400),
        "maxLifetime",
        metavar="SECONDS",
    ),
    Setting(
        "user-quota",
        "Allocations one username may hold; 0 for no limit (default: 10).",
        _parseNumber("user-quota", 0, 10**6),
        "userQuota",
        metavar="N",
    ),
    Setting(
        "total-quota",
        "Allocations in all; 0 for no limit (default: 10000).",
        _parseNumber("total-quota", 0, 10**7),
        "totalQuota",
        metavar="N",
    ),
    Setting(
        "max-permissions",
        "Permissions per allocation (default: 64).",
        _parseNumber("max-permissions", 1, 10**5),
        "maxPermissions",
        metavar="N",
    ),
    Setting(
        "max-channels",
        "Channel bindings per allocation (default: 64).",
        _parseNumber("max-channels", 1, 4096),
        "maxChannels",
        metavar="N",
    ),
    Setting(
        "bandwidth",
        "Bytes per second one allocation may relay each way; excess is "
        "dropped.  0 for no cap (default: 0).",
        _parseNumber("bandwidth", 0, 10**10),
        "bandwidth",
        metavar="BYTES",
    ),
    Setting(
        "allow-peer",
        "Relay to this address or CIDR although it is denied by default, "
        "for example a LAN (repeatable).",
        _parseNetwork("allow-peer"),
        "allowPeers",
        repeatable=True,
        metavar="CIDR",
    ),
    Setting(
        "deny-peer",
        "Never relay to this address or CIDR (repeatable; beats allow-peer).",
        _parseNetwork("deny-peer"),
        "denyPeers",
        repeatable=True,
        metavar="CIDR",
    ),
    Setting(
        "allow-loopback-peers",
        "Relay to loopback peers (127.0.0.0/8, ::1): for tests and demos only.",
        _parseBool("allow-loopback-peers"),
        "allowLoopbackPeers",
        flag=True,
    ),
    Setting(
        "log-level",
        "The lowest level of turnrelay's own log events: "
        + ", ".join(LEVELS)
        + " (default: info; debug logs every dropped datagram and refused request).",
        _parseLogLevel,
        "logLevel",
        metavar="LEVEL",
    ),
    Setting(
        "channel-numbers",
        "Which channel numbers ChannelBind accepts: rfc5766 (0x4000-0x7FFF, the "
        "default, which clients written for RFC 5766 need) or rfc8656 (0x4000-0x4FFF).",
        _parseChannelNumbers,
        "channelNumbers",
        metavar="RFC",
    ),
    Setting(
        "tls-cert",
        "PEM certificate for tls listeners (without it, a loopback-only server makes "
        "itself a self-signed one in state-dir).",
        _parsePath,
        "tlsCert",
        metavar="FILE",
    ),
    Setting("tls-key", "PEM private key of tls-cert.", _parsePath, "tlsKey", metavar="FILE"),
    Setting(
        "tls-chain",
        "PEM intermediate certificates sent with tls-cert.",
        _parsePath,
        "tlsChain",
        metavar="FILE",
    ),
    Setting(
        "tls-check-interval",
        "Seconds between looks at the certificate files; changed files are reloaded "
        "without dropping connections.  0: only on SIGHUP (default: 60).",
        _parseNumber("tls-check-interval", 0, 86400, float),
        "tlsCheckInterval",
        metavar="SECONDS",
    ),
    Setting(
        "alternate-server",
        "While draining, send new clients here (300 Try Alternate), as ADDRESS:PORT; "
        "give one of each family (repeatable; without one, a draining relay answers 403).",
        _parseAlternate,
        "alternateServers",
        repeatable=True,
        metavar="ADDRESS:PORT",
    ),
    Setting(
        "drain-timeout",
        "Seconds a drain waits for the allocations left to end before ending them; "
        "0 waits for ever (default: 3600).",
        _parseNumber("drain-timeout", 0, 7 * 86400, float),
        "drainTimeout",
        metavar="SECONDS",
    ),
    Setting(
        "server-name",
        "The host name or address clients use in turn: URLs (default: external-ip, else "
        "relay-ip); turns: URLs need the name the certificate is for.",
        _parseServerName,
        "serverName",
        metavar="NAME",
    ),
    Setting(
        "manhole",
        "Serve the SSH admin console here, for example tcp:2222:interface=127.0.0.1 "
        "(default: off; loopback only unless manhole-allow-remote).",
        _parseAdminListen("manhole"),
        "manhole",
        metavar="tcp:PORT[:interface=ADDRESS]",
    ),
    Setting(
        "manhole-authorized-keys",
        "OpenSSH authorized_keys file of the keys that may log in to the console "
        "(read again at each login).",
        _parsePath,
        "manholeAuthorizedKeys",
        metavar="FILE",
    ),
    Setting(
        "manhole-passwords",
        "Optional file of user:password lines that may log in to the console too.",
        _parsePath,
        "manholePasswords",
        metavar="FILE",
    ),
    Setting(
        "manhole-allow-remote",
        "Let the console listen on an address other than loopback.",
        _parseBool("manhole-allow-remote"),
        "manholeAllowRemote",
        flag=True,
    ),
    Setting(
        "metrics",
        "Serve Prometheus metrics over HTTP here, for example tcp:9641:interface=127.0.0.1 "
        "(default: off).",
        _parseAdminListen("metrics"),
        "metrics",
        metavar="tcp:PORT[:interface=ADDRESS]",
    ),
    Setting(
        "credentials-endpoint",
        "Serve TURN credentials (RTCIceServer JSON) over HTTP here, for web applications "
        "(default: off; needs credentials-token-file and a static-auth-secret).",
        _parseAdminListen("credentials-endpoint"),
        "credentialsEndpoint",
        metavar="tcp:PORT[:interface=ADDRESS]",
    ),
    Setting(
        "credentials-token-file",
        "File holding the bearer token callers of the credentials endpoint present.",
        _parsePath,
        "credentialsTokenFile",
        metavar="FILE",
    ),
    Setting(
        "credentials-ttl",
        "Seconds the credentials the endpoint mints stay valid (default: 86400).",
        _parseNumber("credentials-ttl", 60, 7 * 86400, float),
        "credentialsTTL",
        metavar="SECONDS",
    ),
    Setting(
        "stream-idle-timeout",
        "Seconds a TCP or TLS connection without an allocation may stay silent before "
        "it is closed (default: 60).",
        _parseNumber("stream-idle-timeout", 1, 86400, float),
        "streamIdleTimeout",
        metavar="SECONDS",
    ),
    Setting(
        "tls-handshake-timeout",
        "Seconds a TLS handshake may take (default: 10).",
        _parseNumber("tls-handshake-timeout", 1, 600, float),
        "tlsHandshakeTimeout",
        metavar="SECONDS",
    ),
    Setting(
        "max-unallocated-connections",
        "TCP and TLS connections that may be open without an allocation at once; "
        "more are closed as they arrive (default: 1000).",
        _parseNumber("max-unallocated-connections", 1, 10**6),
        "maxUnallocatedConnections",
        metavar="N",
    ),
    Setting(
        "max-unallocated-per-source",
        "TCP and TLS connections one source (an IPv4 address or an IPv6 /64) may hold "
        "open without an allocation; more are closed as they arrive (default: 64).",
        _parseNumber("max-unallocated-per-source", 1, 10**6),
        "maxUnallocatedPerSource",
        metavar="N",
    ),
    Setting(
        "stream-allocate-timeout",
        "Seconds a TCP or TLS connection has to allocate, from its start or from the end "
        "of its allocation; traffic such as Binding does not extend it (default: 30).",
        _parseNumber("stream-allocate-timeout", 1, 86400, float),
        "streamAllocateTimeout",
        metavar="SECONDS",
    ),
    Setting(
        "stream-max-unsent",
        "Bytes a TCP or TLS client may leave unread once its connection's buffer is full "
        "(reading from it stops meanwhile); beyond, it is closed (default: 262144).",
        _parseNumber("stream-max-unsent", 65536, 2**30),
        "streamMaxUnsent",
        metavar="BYTES",
    ),
    Setting(
        "max-peer-connections",
        "RFC 6062 peer TCP connections, pending and established, per allocation; "
        "Connect gets 508 beyond and peers' connections are refused (default: 100).",
        _parseNumber("max-peer-connections", 1, 10**5),
        "maxPeerConnections",
        metavar="N",
    ),
    Setting(
        "descriptor-reserve",
        "File descriptors kept free below the process's limit (ulimit -n): within it, "
        "listeners stop accepting, Allocate and Connect get 508 and peers' connections "
        "are refused, until descriptors are freed (default: 64).",
        _parseNumber("descriptor-reserve", 16, 10**6),
        "descriptorReserve",
        metavar="N",
    ),
    Setting(
        "unauthenticated-rate",
        "Unauthenticated UDP responses per second to one source (an IPv4 address or an "
        "IPv6 /64); requests beyond are dropped and counted (default: 20).",
        _parseNumber("unauthenticated-rate", 0.1, 10**6, float),
        "unauthenticatedRate",
        metavar="PER_SECOND",
    ),
    Setting(
        "unauthenticated-burst",
        "Unauthenticated UDP responses one source may have at once before "
        "unauthenticated-rate applies (default: 40).",
        _parseNumber("unauthenticated-burst", 1, 10**6),
        "unauthenticatedBurst",
        metavar="N",
    ),
    Setting(
        "source-table-size",
        "Sources the per-source limits remember at once; the least recently seen are "
        "forgotten first (default: 10000).",
        _parseNumber("source-table-size", 100, 10**7),
        "sourceTableSize",
        metavar="N",
    ),
    Setting(
        "refusal-summary-interval",
        "Seconds between the log lines that sum up refused unauthenticated or unverified "
        "requests by reason; they are never logged one by one (default: 60).",
        _parseNumber("refusal-summary-interval", 1, 86400, float),
        "refusalSummaryInterval",
        metavar="SECONDS",
    ),
    Setting(
        "log-max-bytes",
        "Under twistd with a log file, rotate it at this size (default: 10000000).",
        _parseNumber("log-max-bytes", 10000, 2**40),
        "logMaxBytes",
        metavar="BYTES",
    ),
    Setting(
        "log-max-files",
        "Under twistd with a log file, keep this many rotated files (default: 10).",
        _parseNumber("log-max-files", 1, 1000),
        "logMaxFiles",
        metavar="N",
    ),
    Setting(
        "state-dir",
        "Where turnrelay keeps what it generates, such as the demo certificate (default: ./state).",
        _parsePath,
        "stateDir",
        metavar="DIR",
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
    config = attr.evolve(base, **changes)
    if config.minPort > config.maxPort:
        raise ConfigError(
            f"min-port {config.minPort} is above max-port {config.maxPort}; "
            "min-port must not exceed max-port"
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
