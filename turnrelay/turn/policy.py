# -*- test-case-name: tests.test_turn_policy -*-
"""
Which peer addresses a TURN allocation may relay to and from.

A TURN server relays, for authenticated clients, to whatever peer address
they name.  That makes it a request-forgery proxy into the server host and
the networks behind it (RFC 8656 section 21), so turnrelay denies by default
every address that is not plainly a remote host on the Internet.
L{PeerPolicy} is the one place that decision is made; the controller asks it
for every XOR-PEER-ADDRESS (CreatePermission, ChannelBind, Send, Connect)
before it installs, binds, forwards or connects anything.

The module is long because the concept is: every spelling of an address
(mapped, SIIT, NAT64, 6to4, Teredo) is reduced to one canonical form here,
and the tables of denied ranges, own addresses and relay ports live with it.

@see: C{shared/spec/security-notes.md}, section 1 (what is denied and why)
    and section 4 (the defaults turnrelay ships).
@see: RFC 8656 sections 21.1.4, 21.2.2 and 21.4.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple, Union

import attrs

from turnrelay.stun.address import TransportAddress

# Both families share one integer key space, so one sorted table answers for
# either: an IPv4 address is its 32-bit value and an IPv6 address is its
# 128-bit value plus 2**128.  Without the offset, ::/96 (IPv4-compatible)
# and all of IPv4 would be the same numbers.
_V6 = 1 << 128
_LOW32 = 0xFFFFFFFF

# x >> 32 of an address in ::ffff:0:0/96 (IPv4-mapped).
_MAPPED_HIGH = 0xFFFF
# x >> 32 of an address in ::ffff:0:0:0/96 (IPv4-translated, the SIIT form
# of RFC 6145 and RFC 7915: ::ffff:0:a.b.c.d).
_TRANSLATED_HIGH = 0xFFFF0000
# x >> 32 of an address in 64:ff9b::/96 (NAT64 well-known prefix, RFC 6052).
_NAT64_HIGH = 0x0064FF9B << 64
# x >> 80 of an address in 64:ff9b:1::/48 (NAT64 local-use prefix, RFC 8215).
_NAT64_LOCAL_HIGH = 0x0064FF9B0001
# x >> 112 of an address in 2002::/16 (6to4, RFC 3056).
_SIXTOFOUR_HIGH = 0x2002
# x >> 96 of an address in 2001::/32 (Teredo, RFC 4380).
_TEREDO_HIGH = 0x20010000

# The longest textual address ipaddress could accept without a scope:
# eight four-digit groups with the last two written as a dotted quad.
_MAX_TEXT = len("0000:0000:0000:0000:0000:ffff:255.255.255.255")

CACHE_SIZE = 4096
"""
How many distinct host strings each L{PeerPolicy} remembers verdicts for.
Bounded so that a client naming endless distinct peers costs memory once.
"""

LOOPBACK = "loopback"

OWN_SERVICE = "own service port"

DEFAULT_DENY: Tuple[Tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("127.0.0.0/8", LOOPBACK),
    ("169.254.0.0/16", "link-local"),
    ("169.254.169.254/32", "metadata"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmarking"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", LOOPBACK),
    # The deprecated IPv4-compatible form (RFC 4291 section 2.5.5.1) is
    # denied outright, on top of judging the IPv4 it embeds: nothing
    # legitimate uses it any more, and where Linux's sit driver is loaded it
    # is an automatic IPv4 tunnel, which RFC 8656 section 21.4 says not to
    # forward to.
    ("::/96", "IPv4-compatible"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "unique-local"),
    # The IPv6 instance-metadata endpoint of EC2; unique-local anyway, but a
    # log line that says "metadata" is worth the extra entry.
    ("fd00:ec2::254/128", "metadata"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    # Tunnel addresses are denied outright (RFC 8656 section 21.4, tunnel
    # amplification), whatever IPv4 they embed; the embedded IPv4 is judged
    # as well, so that the reason names the worse problem.
    ("2001::/32", "teredo"),
    ("2002::/16", "6to4"),
    # IPv4-mapped (::ffff:0:0/96), IPv4-translated (SIIT, ::ffff:0:0:0/96)
    # and NAT64 (64:ff9b::/96, 64:ff9b:1::/48) addresses have no entry: they
    # are other spellings of an IPv4 address, and the packet ends up at that
    # IPv4 address (through the dual-stack socket, the SIIT translator or the
    # NAT64 gateway), so they are judged by the IPv4 they embed and by
    # nothing else.  A public IPv4 address is allowed in those
    # spellings as it is in its own; a private or loopback one is denied in
    # every spelling (security notes 1.4, CVE-2026-27624).
)
"""
The built-in deny list: C{(CIDR, reason)} pairs, from security notes 1.1 and
1.2.  Where ranges nest, the most specific one names the reason.
"""

# Mapped, translated and NAT64 well-known entries longer than /96 name IPv4
# networks in another spelling; see PeerPolicy's docstring.
_MAPPED = IPv6Network("::ffff:0:0/96")
_SPELLING_PREFIXES = (_MAPPED, IPv6Network("::ffff:0:0:0/96"), IPv6Network("64:ff9b::/96"))

# (first key, last key, prefix length, label); a label of None marks a block
# explicitly not denied, which beats a less specific block that is.
_Block = Tuple[int, int, int, Optional[str]]


def _embeddedIPv4(x: int) -> Tuple[int, ...]:
    """
    Find the IPv4 addresses an IPv6 address embeds.

    @param x: an IPv6 address as a 128-bit integer.
    @return: the embedded IPv4 addresses as 32-bit integers: one for the
        mapped, translated, compatible, NAT64 and 6to4 forms, the server's
        and the client's for Teredo, none otherwise.
    """
    high = x >> 32
    if high == _MAPPED_HIGH or high == _TRANSLATED_HIGH or high == _NAT64_HIGH:
        return (x & _LOW32,)
    if high == 0:
        # :: and ::1 are IPv6's own unspecified and loopback addresses, not
        # spellings of 0.0.0.0 and 0.0.0.1.
        return (x & _LOW32,) if x > 1 else ()
    if x >> 80 == _NAT64_LOCAL_HIGH:
        return (x & _LOW32,)
    if x >> 112 == _SIXTOFOUR_HIGH:
        return ((x >> 80) & _LOW32,)
    if x >> 96 == _TEREDO_HIGH:
        # A host running a Teredo client sends to the server address and to
        # the client's NAT address, which is stored inverted.
        return ((x >> 64) & _LOW32, (x & _LOW32) ^ _LOW32)
    return ()


def _spellings(host: str) -> Optional[Tuple[int, ...]]:
    """
    Parse a peer address into every key the rules must judge it by.

    @param host: an IPv4 or IPv6 address in any spelling C{ipaddress}
        accepts, without a scope.
    @return: the keys of the IPv4 addresses it embeds, then its own key; or
        L{None} if C{host} is not an IP address.
    """
    # A scope names an interface of this host, which no peer address does;
    # ipaddress would accept one on IPv6.  The length check keeps garbage
    # from reaching the parser at all.
    if len(host) > _MAX_TEXT or "%" in host:
        return None
    try:
        if ":" not in host:
            return (int(IPv4Address(host)),)
        x = int(IPv6Address(host))
    except ValueError:
        return None
    return _embeddedIPv4(x) + (x | _V6,)


def _canonicalKey(key: int) -> int:
    """
    Map a key to the key of the address it reaches.

    @param key: an address key, as L{_spellings} returns it last.
    @return: the IPv4 key for an IPv6 spelling of an IPv4 address (mapped,
        translated, NAT64, compatible); C{key} itself otherwise.  6to4 and
        Teredo addresses are IPv6 hosts of their own, behind a tunnel: they
        keep their key (and the rules judge the IPv4 they embed as well).
    """
    if key < _V6:
        return key
    x = key ^ _V6
    high = x >> 32
    if (
        high == _MAPPED_HIGH
        or high == _TRANSLATED_HIGH
        or high == _NAT64_HIGH
        or x >> 80 == _NAT64_LOCAL_HIGH
        or (high == 0 and x > 1)
    ):
        return x & _LOW32
    return key


def _keyAddress(key: int) -> Union[IPv4Address, IPv6Address]:
    """
    @return: the address of C{key}.
    """
    return IPv4Address(key) if key < _V6 else IPv6Address(key ^ _V6)


def canonicalIP(host: str) -> Union[IPv4Address, IPv6Address]:
    """
    Give an address its one canonical form: the address it reaches.

    Every comparison of addresses in the peer policy and the configuration
    checks goes through this, never through text: C{::ffff:127.0.0.1},
    C{::ffff:0:127.0.0.1} (SIIT), C{64:ff9b::7f00:1}, C{64:ff9b:1::7f00:1},
    C{::127.0.0.1} and C{0:0:0:0:0:FFFF:7F00:0001} are all C{127.0.0.1};
    C{::ffff:0.0.0.0} is the wildcard C{0.0.0.0}.  C{::} and C{::1} stay
    IPv6's own unspecified and loopback addresses.

    @param host: an IPv4 or IPv6 address in any spelling C{ipaddress}
        accepts, without a scope; surrounding blanks are ignored.
    @return: an IPv4 address for every spelling of one, else the IPv6
        address.
    @raise ValueError: if C{host} is not an IP address.
    """
    keys = _spellings(host.strip()) if isinstance(host, str) else None
    if keys is None:
        raise ValueError(f"{host!r} is not an IP address")
    return _keyAddress(_canonicalKey(keys[-1]))


def _isLoopbackKey(key: int) -> bool:
    """
    @return: whether C{key} is a canonical key in 127.0.0.0/8 or C{::1}.
    """
    return key >> 24 == 127 or key == _V6 | 1


def _isUnspecifiedKey(key: int) -> bool:
    """
    @return: whether C{key} is a canonical key of C{0.0.0.0} or C{::}.
    """
    return key == 0 or key == _V6


@attrs.frozen
class _RangeTable:
    """
    Disjoint, sorted key ranges with a label each, searched by bisection.

    @ivar starts: the first key of each range, ascending.
    @ivar ends: the last key of each range.
    @ivar labels: what each range is called.
    """

    starts: Tuple[int, ...]
    ends: Tuple[int, ...]
    labels: Tuple[str, ...]

    def lookup(self, key: int) -> Optional[str]:
        """
        @return: the label of the range holding C{key}, or L{None}.
        """
        i = bisect_right(self.starts, key) - 1
        if i >= 0 and key <= self.ends[i]:
            return self.labels[i]
        return None

    @classmethod
    def build(cls, blocks: Iterable[_Block]) -> _RangeTable:
        """
        Flatten CIDR blocks into disjoint ranges, the most specific block
        labelling each part.

        CIDR blocks are either nested or disjoint, so one sweep with a stack
        of enclosing blocks does it, in O(n log n) for long operator lists.

        @param blocks: the blocks, in any order.
        """
        starts: List[int] = []
        ends: List[int] = []
        labels: List[str] = []

        def emit(first: int, last: int, label: Optional[str]) -> None:
            if first > last or label is None:
                return
            if labels and labels[-1] == label and ends[-1] + 1 == first:
                ends[-1] = last
            else:
                starts.append(first)
                ends.append(last)
                labels.append(label)

        stack: List[_Block] = []
        cursor = 0
        # Sorting by (start, prefix length) puts every block after the blocks
        # that contain it.
        for block in sorted(blocks, key=lambda b: (b[0], b[2])):
            while stack and stack[-1][1] < block[0]:
                done = stack.pop()
                emit(cursor, done[1], done[3])
                cursor = done[1] + 1
            if stack:
                emit(cursor, block[0] - 1, stack[-1][3])
            cursor = block[0]
            stack.append(block)
        while stack:
            done = stack.pop()
            emit(cursor, done[1], done[3])
            cursor = done[1] + 1
        return cls(tuple(starts), tuple(ends), tuple(labels))


def parseNetwork(text: str) -> Union[IPv4Network, IPv6Network]:
    """
    Parse one CIDR string strictly: the one rule for peer networks, which
    L{turnrelay.config} applies to C{allow-peer} and C{deny-peer} too.

    @param text: a network such as C{10.0.0.0/8}; a bare address means a
        single-address network.
    @raise ValueError: if C{text} is not a network, has host bits set (a
        typo for another network, more likely than not) or carries a scope.
    """
    if "%" in text:
        raise ValueError("a scope is not allowed")
    return ip_network(text, strict=True)


def _networkBlocks(net: Union[IPv4Network, IPv6Network], label: Optional[str]) -> List[_Block]:
    """
    Turn one network into the key blocks it covers.

    @param net: the network.
    @param label: what to call the blocks.
    """
    first = int(net.network_address)
    last = int(net.broadcast_address)
    if isinstance(net, IPv4Network):
        return [(first, last, net.prefixlen, label)]
    blocks: List[_Block] = [(first | _V6, last | _V6, net.prefixlen, label)]
    if net.prefixlen > 96 and any(net.subnet_of(p) for p in _SPELLING_PREFIXES):
        blocks.append((first & _LOW32, last & _LOW32, net.prefixlen - 96, label))
    return blocks


def _networkText(net: Union[IPv4Network, IPv6Network]) -> str:
    """
    Write a network canonically, an IPv4-mapped one with a dotted tail as
    operators write it (C{::ffff:10.0.0.0/104}, not C{::ffff:a00:0/104}).
    """
    if isinstance(net, IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        tail = IPv4Address(int(net.network_address) & _LOW32)
        return f"::ffff:{tail}/{net.prefixlen}"
    return str(net)


def _parseEntries(entries: Iterable[str], kind: str) -> Tuple[Tuple[str, List[_Block]], ...]:
    """
    Parse an operator's allow or deny list.

    @param entries: CIDR strings.
    @param kind: C{"allow"} or C{"deny"}, for error messages.
    @return: each entry's canonical text and key blocks, in the given order.
    @raise ValueError: naming the first entry that is not a network.
    """
    if isinstance(entries, (str, bytes)):
        raise ValueError(f"peer {kind} list must be a list of CIDR strings, not {entries!r}")
    parsed = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"invalid peer {kind} entry {entry!r}: not a string")
        try:
            net = parseNetwork(entry.strip())
        except ValueError as e:
            raise ValueError(f"invalid peer {kind} entry {entry!r}: {e}") from None
        label = _networkText(net)
        parsed.append((label, _networkBlocks(net, label)))
    return tuple(parsed)


def _ownKey(host: str) -> Tuple[str, int]:
    """
    Parse one of turnrelay's own addresses.

    @param host: an IP address, without a prefix length or scope.
    @return: its canonical text (L{canonicalIP}: an IPv4-mapped address, as
        a dual-stack socket reports an IPv4 one, is that IPv4 address) and
        its canonical key.
    @raise ValueError: if C{host} is not an IP address.
    """
    if not isinstance(host, str):
        raise ValueError(f"invalid own address {host!r}: not a string")
    keys = _spellings(host.strip())
    if keys is None:
        raise ValueError(f"invalid own address {host!r}: not an IP address")
    key = _canonicalKey(keys[-1])
    return str(_keyAddress(key)), key


def _builtinTable(allowLoopback: bool) -> _RangeTable:
    """
    Build the table of the built-in deny list.

    @param allowLoopback: whether the loopback entries are lifted.  Lifted
        entries stay in the table, marked not denied, so that C{::1} does not
        fall through to the enclosing C{::/96}.
    """
    blocks: List[_Block] = []
    for cidr, reason in DEFAULT_DENY:
        label: Optional[str] = reason
        if allowLoopback and reason == LOOPBACK:
            label = None
        blocks.extend(_networkBlocks(parseNetwork(cidr), label))
    return _RangeTable.build(blocks)


_BUILTIN = {False: _builtinTable(False), True: _builtinTable(True)}


class PeerPolicy:
    """
    Decide which peer addresses an allocation may relay to and from.

    Deny by default: L{DEFAULT_DENY}, turnrelay's own addresses on every port,
    its relay addresses outside the relay port range, its own service ports
    (listeners and admin services) and peer port 0 are refused.  The
    controller asks L{peerDenialReason} for every peer that comes with a
    port (ChannelBind, Send, Connect) and L{denialReason} for a permission,
    which is for an IP address whatever the port.

    B{Spellings.}  A peer has one or more spellings: its own address and, for
    an IPv6 address that embeds IPv4 (mapped C{::ffff:0:0/96}, translated
    C{::ffff:0:0:0/96}, compatible C{::/96} except C{::} and C{::1}, NAT64
    C{64:ff9b::/96} and C{64:ff9b:1::/48}, 6to4 C{2002::/16}, Teredo
    C{2001::/32}), each embedded IPv4 address.  Text is parsed first, so any
    spelling of the same address (upper case, zeros written out, dotted or
    hex tail) gets the same verdict.

    B{The rule}, applied in this order:

      1. If any spelling lies in an operator C{deny} entry, the peer is
         denied (C{"operator deny <entry>"}).
      2. Otherwise each spelling that lies in no operator C{allow} entry is
         judged on its own: it is denied if it is one of the own addresses,
         or if it lies in the built-in deny list (minus the loopback
         entries when C{allowLoopback} is set).
      3. The peer is allowed only if none of its spellings is denied.

    So an allow entry lifts the built-in rules for the spelling it matches:
    C{allow 10.0.0.0/8} lets C{10.1.2.3}, C{::ffff:10.1.2.3} and
    C{64:ff9b::a01:203} through, but not the 6to4 address
    C{2002:a01:203::1}, whose IPv6 spelling is still a tunnel address; and
    C{allow 64:ff9b::/96} does not let C{64:ff9b::7f00:1} reach loopback.

    B{Own service ports and relay addresses}, judged after the host is
    allowed (L{peerDenialReason}), compare canonical forms (L{canonicalIP})
    and every spelling of the peer, never text:

      - A port of one of turnrelay's own listening sockets (the TURN
        listeners, the admin console, metrics, the credentials endpoint) is
        never a valid peer, whatever allows the host: on the address the
        socket is bound to, and for a wildcard socket on every address of
        this host (loopback, unspecified, own and relay addresses).
      - On a relay address, only the relay port range is reachable: clients
        relay to each other through their relayed addresses, and to no other
        service of this host (security notes 1.3).  An operator who allows a
        relay address in so many words (C{allowLoopback} for a loopback one,
        or an allow entry naming exactly it) lifts that range, but not the
        own service ports.

    B{Entries in embedded spellings.}  An IPv6 entry lies in the IPv6 key
    space and matches IPv6 spellings.  An entry strictly inside
    C{::ffff:0:0/96}, C{::ffff:0:0:0/96} or C{64:ff9b::/96} (prefix longer
    than /96) names IPv4
    networks in another spelling and matches those IPv4 addresses as well:
    C{::ffff:10.0.0.0/104} works as C{10.0.0.0/8} does.  An entry covering a
    whole such block (C{::ffff:0:0/96}, as copied from hardening guides)
    means the spelling, not all of IPv4, and matches IPv6 spellings only.

    Verdicts are cached per host string (at most L{CACHE_SIZE}); own
    addresses, relay addresses and own services are the only mutable parts
    (sockets bind after the policy is built), and adding an address empties
    the cache.  Use L{replace} for any other change.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        allowLoopback: bool = False,
        ownAddresses: Iterable[str] = (),
        relayAddresses: Iterable[Tuple[str, range]] = (),
        ownServices: Iterable[TransportAddress] = (),
        allowLoopbackRelays: bool = False,
    ) -> None:
        """
        @param allow: CIDR networks that override the built-in deny list
            and the own addresses, e.g. C{10.0.0.0/8} for LAN peers.
        @param deny: CIDR networks that are always denied, even if allowed.
        @param allowLoopback: lift the loopback entries (C{127.0.0.0/8},
            C{::1} and the mapped and NAT64 spellings of C{127.0.0.0/8}),
            and nothing else: C{0.0.0.0/8} and C{::} stay denied, because
            they reach the local host too (CVE-2020-26262).
        @param ownAddresses: turnrelay's own IP addresses, denied on every
            port (a relay address among them is judged as a relay address).
        @param relayAddresses: C{(address, ports)} for each relay and
            external address, with the relay ports reachable on it, such as
            C{("198.51.100.1", range(49152, 65536))}; see
            L{addRelayAddress}.
        @param ownServices: the addresses of turnrelay's own listening
            sockets; see L{addOwnService}.
        @param allowLoopbackRelays: let a loopback relay address through,
            kept to its relay ports as any relay address is, and nothing else
            of loopback: clients of a relay that relays on loopback (the demo
            page's two peer connections) reach each other through their
            relayed addresses.  Only the plain spelling (C{127.0.0.1},
            C{::1}) is let through.
        @raise ValueError: naming the first entry or address that does not
            parse.
        """
        self._allowEntries = _parseEntries(allow, "allow")
        self._denyEntries = _parseEntries(deny, "deny")
        self._allowLoopback = bool(allowLoopback)
        self._allowLoopbackRelays = bool(allowLoopbackRelays)
        self._loopbackRelays: FrozenSet[int] = frozenset()
        self._allowTable = _RangeTable.build(b for _, bs in self._allowEntries for b in bs)
        self._denyTable = _RangeTable.build(b for _, bs in self._denyEntries for b in bs)
        self._builtinTable = _BUILTIN[self._allowLoopback]
        # Relay addresses named exactly by an allow entry (a /32 or /128).
        self._exactAllow = frozenset(
            _canonicalKey(bs[0][0]) for _, bs in self._allowEntries if bs[0][0] == bs[0][1]
        )
        self._own: Dict[str, int] = {}
        self._relays: Dict[str, Tuple[int, range]] = {}
        self._services: Dict[TransportAddress, Tuple[int, int]] = {}
        self._ownSet: FrozenSet[int] = frozenset()
        self._localSet: FrozenSet[int] = frozenset()
        self._relayPorts: Dict[int, range] = {}
        self._serviceSet: Set[Tuple[int, int]] = set()
        self._servicePorts: Set[int] = set()
        # Ports of wildcard sockets: IPv4 ones (0.0.0.0) reach the host's
        # IPv4 addresses, IPv6 ones (::, dual-stack) all of them.
        self._wildcardPorts4: Set[int] = set()
        self._wildcardPorts: Set[int] = set()
        # Per instance, so that each policy's cache dies with it and a new
        # policy starts empty.
        self._judge = functools.lru_cache(maxsize=CACHE_SIZE)(self._judgeUncached)
        self._keysOf = functools.lru_cache(maxsize=CACHE_SIZE)(_spellings)
        for host in ownAddresses:
            text, key = _ownKey(host)
            self._own.setdefault(text, key)
        for host, ports in relayAddresses:
            self._addRelay(host, ports)
        for service in ownServices:
            self.addOwnService(service)
        self._update()

    @property
    def allow(self) -> Tuple[str, ...]:
        """
        The operator's allow entries, in canonical form.
        """
        return tuple(label for label, _ in self._allowEntries)

    @property
    def deny(self) -> Tuple[str, ...]:
        """
        The operator's deny entries, in canonical form.
        """
        return tuple(label for label, _ in self._denyEntries)

    @property
    def allowLoopback(self) -> bool:
        """
        Whether the loopback entries of the built-in list are lifted.
        """
        return self._allowLoopback

    @property
    def ownAddresses(self) -> Tuple[str, ...]:
        """
        turnrelay's own addresses, in canonical form, in the order added.
        """
        return tuple(self._own)

    @property
    def relayAddresses(self) -> Tuple[Tuple[str, range], ...]:
        """
        turnrelay's relay and external addresses, in canonical form, each
        with the relay ports reachable on it, in the order added.
        """
        return tuple((text, ports) for text, (_, ports) in self._relays.items())

    @property
    def ownServices(self) -> Tuple[TransportAddress, ...]:
        """
        The addresses of turnrelay's own listening sockets, in canonical
        form, in the order added.
        """
        return tuple(self._services)

    def replace(
        self,
        *,
        allow: Optional[Iterable[str]] = None,
        deny: Optional[Iterable[str]] = None,
        allowLoopback: Optional[bool] = None,
        ownAddresses: Optional[Iterable[str]] = None,
    ) -> PeerPolicy:
        """
        Build a new policy with some settings changed, this one untouched.

        The controller swaps the whole policy object, so a reload never
        shows a request half of an old policy and half of a new one.

        @param allow: new allow entries, or L{None} to keep these.
        @param deny: new deny entries, or L{None} to keep these.
        @param allowLoopback: the new setting, or L{None} to keep this one.
        @param ownAddresses: new own addresses, or L{None} to keep these.
        @raise ValueError: as L{__init__} does.
        @return: the new policy, with this one's relay addresses and own
            services.
        """
        return PeerPolicy(
            allow=self.allow if allow is None else allow,
            deny=self.deny if deny is None else deny,
            allowLoopback=self._allowLoopback if allowLoopback is None else allowLoopback,
            ownAddresses=self.ownAddresses if ownAddresses is None else ownAddresses,
            relayAddresses=self.relayAddresses,
            ownServices=self.ownServices,
            allowLoopbackRelays=self._allowLoopbackRelays,
        )

    def addRelayAddress(self, host: str, ports: range) -> None:
        """
        Add one of turnrelay's relay addresses (or the external address
        advertised for one): peers on it are kept to C{ports}, the relay
        ports, through which clients relay to each other.

        The controller adds the addresses of its relay port pools.  Unless
        the operator allows the address in so many words (see the class
        docstring), every other port on it is refused.

        @param host: an IP address, not a wildcard.
        @param ports: the relay ports on it, C{range(minPort, maxPort + 1)};
            an empty range when no relay sockets are bound there.
        @raise ValueError: if C{host} is not an IP address, or a wildcard.
        """
        if self._addRelay(host, ports):
            self._update()

    def addOwnService(self, address: TransportAddress) -> None:
        """
        Refuse one of turnrelay's own listening sockets as a peer, for ever:
        a TURN listener, the admin console, metrics or the credentials
        endpoint.  A wildcard socket (C{0.0.0.0}, C{::}) is refused on every
        address of this host.

        Sockets bind after the policy is built (on port 0, at a port chosen
        then), so the relay reports each here once it listens.

        @param address: the socket's address and port.
        @raise ValueError: if the host is not an IP address or the port is
            not 1 to 65535.
        """
        text, key = _ownKey(address.host)
        port = address.port
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"invalid own service {address}: port {port}")
        service = TransportAddress(text, port)
        if service in self._services:
            return
        self._services[service] = (key, port)
        self._servicePorts.add(port)
        if key == 0:
            self._wildcardPorts4.add(port)
        elif key == _V6:
            self._wildcardPorts.add(port)
        else:
            self._serviceSet.add((key, port))

    def _addRelay(self, host: str, ports: range) -> bool:
        """
        Record a relay address, without updating the derived sets.

        @return: whether it is new.
        """
        text, key = _ownKey(host)
        if _isUnspecifiedKey(key):
            raise ValueError(f"invalid relay address {host!r}: a wildcard is not an address")
        if text in self._relays:
            return False
        self._relays[text] = (key, ports)
        return True

    def _explicitlyAllowed(self, key: int) -> bool:
        """
        Whether the operator allowed the relay address C{key} as a peer in so
        many words: C{allowLoopback} for a loopback relay address, or an
        allow entry naming exactly it.  A wider allow range is not enough.
        """
        return (self._allowLoopback and _isLoopbackKey(key)) or key in self._exactAllow

    def _update(self) -> None:
        """
        Derive the sets the rules look up from the own and relay addresses,
        and forget cached verdicts.
        """
        relayKeys = {key for key, _ in self._relays.values()}
        own = set(self._own.values())
        # A relay address is not denied on every port, even when a listener
        # shares it; wildcards are denied as such already.
        self._ownSet = frozenset(
            key for key in own if key not in relayKeys and not _isUnspecifiedKey(key)
        )
        self._localSet = frozenset(own | relayKeys)
        self._relayPorts = {
            key: ports for key, ports in self._relays.values() if not self._explicitlyAllowed(key)
        }
        self._loopbackRelays = frozenset(
            key for key in relayKeys if self._allowLoopbackRelays and _isLoopbackKey(key)
        )
        self._judge.cache_clear()

    def isAllowed(self, host: str) -> bool:
        """
        Whether an allocation may relay to and from C{host}, on any port
        other than 0.

        @param host: a textual IPv4 or IPv6 address, in any spelling.
        @return: C{True} if allowed; C{False} if denied or not an address.
        """
        if not isinstance(host, str):
            return False
        return self._judge(host) is None

    def isAllowedPeer(self, peer: TransportAddress) -> bool:
        """
        Whether an allocation may relay to and from C{peer}.

        @param peer: the peer's address and port, as XOR-PEER-ADDRESS gave
            them.
        @return: C{True} if L{peerDenialReason} finds no reason.
        """
        return self.peerDenialReason(peer) is None

    def denialReason(self, host: str) -> Optional[str]:
        """
        Say why C{host} is denied, for a structured log line.

        The reason names the rule: C{"loopback"}, C{"private (RFC 1918)"},
        C{"own address"}, C{"operator deny 203.0.113.0/24"}, C{"teredo"},
        C{"unparsable"} and so on.  For an address with several spellings an
        embedded IPv4 address's reason comes first, since it says where the
        packet would go.

        @param host: a textual IPv4 or IPv6 address, in any spelling.
        @return: L{None} if C{host} is allowed, else the reason.
        """
        if not isinstance(host, str):
            return "unparsable"
        return self._judge(host)

    def peerDenialReason(self, peer: TransportAddress) -> Optional[str]:
        """
        Say why C{peer} is denied: every rule for a peer with a port, the
        one question the controller asks for ChannelBind, Send and Connect.

        @param peer: the peer's address and port.
        @return: L{None} if allowed; C{"port 0"} for port 0 (or one out of
            range); else the host's reason (L{denialReason}); else
            C{"own service port"} or C{"own address outside the relay port
            range"}.
        """
        port = peer.port
        if not 0 < port <= 0xFFFF:
            return f"port {port}"
        reason = self.denialReason(peer.host)
        if reason is not None:
            return reason
        keys = self._keysOf(peer.host)
        assert keys is not None  # denialReason said "unparsable" otherwise
        wildcard4 = port in self._wildcardPorts4
        wildcard = port in self._wildcardPorts
        for key in keys:
            if (key, port) in self._serviceSet:
                return OWN_SERVICE
            if (wildcard or (wildcard4 and key < _V6)) and self._isLocal(key):
                return OWN_SERVICE
            if _isUnspecifiedKey(key) and port in self._servicePorts:
                # Only an operator allow entry gets here: 0.0.0.0 and ::
                # reach this host, on whatever address a service is bound.
                return OWN_SERVICE
        for key in keys:
            ports = self._relayPorts.get(key)
            if ports is not None and port not in ports:
                return "own address outside the relay port range"
        return None

    def _isLocal(self, key: int) -> bool:
        """
        Whether the canonical key C{key} is an address of this host that a
        wildcard socket listens on.
        """
        return key in self._localSet or _isLoopbackKey(key) or _isUnspecifiedKey(key)

    def _judgeUncached(self, host: str) -> Optional[str]:
        """
        Apply the rule of the class docstring to one host string.

        @return: L{None} if allowed, else the reason.
        """
        keys = _spellings(host)
        if keys is None:
            return "unparsable"
        for key in keys:
            label = self._denyTable.lookup(key)
            if label is not None:
                return "operator deny " + label
        for key in keys:
            if self._allowTable.lookup(key) is not None:
                continue
            if key in self._ownSet:
                return "own address"
            reason = self._builtinTable.lookup(key)
            if reason == LOOPBACK and len(keys) == 1 and key in self._loopbackRelays:
                # Kept to its relay ports by peerDenialReason.
                continue
            if reason is not None:
                return reason
        return None

    def describe(self) -> str:
        """
        Summarise the policy for an operator, one rule per line, in the
        order the rules apply.
        """
        lines = ["peer policy: deny by default (RFC 8656 section 21)"]
        lines.append("  1. operator deny, wins over everything: " + _list(self.deny))
        lines.append(
            "  2. operator allow, lifts the rules below for what it matches: " + _list(self.allow)
        )
        lines.append("  3. own addresses, denied on every port: " + _list(self.ownAddresses))
        relays = tuple(
            f"{text} (ports {ports.start}-{ports.stop - 1})" if ports else f"{text} (no ports)"
            for text, ports in self.relayAddresses
        )
        lines.append("     relay addresses, only relay ports reachable: " + _list(relays))
        lines.append(
            "     own service ports, never peers: "
            + _list(tuple(str(service) for service in self.ownServices))
        )
        lines.append("  4. built-in deny list:")
        width = max(len(cidr) for cidr, _ in DEFAULT_DENY)
        for cidr, reason in DEFAULT_DENY:
            if self._allowLoopback and reason == LOOPBACK:
                reason += " (lifted: allowLoopback)"
            elif self._allowLoopbackRelays and reason == LOOPBACK:
                reason += " (but loopback relay addresses on relay ports: allowLoopbackRelays)"
            lines.append(f"       {cidr:<{width}}  {reason}")
        lines.append(
            "  IPv4 embedded in IPv6 (mapped, translated, compatible, NAT64, 6to4, Teredo)"
            " is judged by the IPv4 rules too."
        )
        lines.append("  Peer port 0 is denied.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"PeerPolicy(allow={list(self.allow)!r}, deny={list(self.deny)!r},"
            f" allowLoopback={self._allowLoopback!r},"
            f" ownAddresses={list(self.ownAddresses)!r},"
            f" relayAddresses={list(self.relayAddresses)!r},"
            f" ownServices={[str(s) for s in self.ownServices]!r})"
        )


def _list(items: Tuple[str, ...]) -> str:
    """
    @return: C{items} comma-separated, or C{"(none)"}.
    """
    return ", ".join(items) if items else "(none)"
