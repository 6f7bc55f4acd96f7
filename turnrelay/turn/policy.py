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

@see: C{shared/spec/security-notes.md}, section 1 (what is denied and why)
    and section 4 (the defaults turnrelay ships).
@see: RFC 8656 sections 21.1.4, 21.2.2 and 21.4.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Iterable, List, Optional, Tuple, Union

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
    # IPv4-mapped (::ffff:0:0/96) and NAT64 (64:ff9b::/96, 64:ff9b:1::/48)
    # addresses have no entry: they are other spellings of an IPv4 address,
    # and the packet ends up at that IPv4 address (through the dual-stack
    # socket or the NAT64 gateway), so they are judged by the IPv4 they embed
    # and by nothing else.  A public IPv4 address is allowed in those
    # spellings as it is in its own; a private or loopback one is denied in
    # every spelling (security notes 1.4, CVE-2026-27624).
)
"""
The built-in deny list: C{(CIDR, reason)} pairs, from security notes 1.1 and
1.2.  Where ranges nest, the most specific one names the reason.
"""

# Mapped and NAT64 well-known entries longer than /96 name IPv4 networks in
# another spelling; see PeerPolicy's docstring.
_MAPPED = IPv6Network("::ffff:0:0/96")
_SPELLING_PREFIXES = (_MAPPED, IPv6Network("64:ff9b::/96"))

# (first key, last key, prefix length, label); a label of None marks a block
# explicitly not denied, which beats a less specific block that is.
_Block = Tuple[int, int, int, Optional[str]]


def _embeddedIPv4(x: int) -> Tuple[int, ...]:
    """
    Find the IPv4 addresses an IPv6 address embeds.

    @param x: an IPv6 address as a 128-bit integer.
    @return: the embedded IPv4 addresses as 32-bit integers: one for the
        mapped, compatible, NAT64 and 6to4 forms, the server's and the
        client's for Teredo, none otherwise.
    """
    high = x >> 32
    if high == _MAPPED_HIGH or high == _NAT64_HIGH:
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


def _parseNetwork(text: str) -> Union[IPv4Network, IPv6Network]:
    """
    Parse one CIDR string strictly.

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
            net = _parseNetwork(entry.strip())
        except ValueError as e:
            raise ValueError(f"invalid peer {kind} entry {entry!r}: {e}") from None
        label = _networkText(net)
        parsed.append((label, _networkBlocks(net, label)))
    return tuple(parsed)


def _ownKeys(host: str) -> Tuple[str, Tuple[int, ...]]:
    """
    Parse one of turnrelay's own addresses.

    @param host: an IP address, without a prefix length or scope.
    @return: its canonical text, and its keys: its own, plus the IPv4 key for
        an IPv4-mapped spelling, which is how a dual-stack socket reports an
        IPv4 address.
    @raise ValueError: if C{host} is not an IP address.
    """
    if not isinstance(host, str):
        raise ValueError(f"invalid own address {host!r}: not a string")
    keys = _spellings(host.strip())
    if keys is None:
        raise ValueError(f"invalid own address {host!r}: not an IP address")
    key = keys[-1]
    if key < _V6:
        return str(IPv4Address(key)), (key,)
    x = key ^ _V6
    if x >> 32 == _MAPPED_HIGH:
        return str(IPv6Address(x)), (key, x & _LOW32)
    return str(IPv6Address(x)), (key,)


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
        blocks.extend(_networkBlocks(_parseNetwork(cidr), label))
    return _RangeTable.build(blocks)


_BUILTIN = {False: _builtinTable(False), True: _builtinTable(True)}


class PeerPolicy:
    """
    Decide which peer addresses an allocation may relay to and from.

    Deny by default: L{DEFAULT_DENY}, turnrelay's own addresses on every port,
    and peer port 0 are refused.

    B{Spellings.}  A peer has one or more spellings: its own address and, for
    an IPv6 address that embeds IPv4 (mapped C{::ffff:0:0/96}, compatible
    C{::/96} except C{::} and C{::1}, NAT64 C{64:ff9b::/96} and
    C{64:ff9b:1::/48}, 6to4 C{2002::/16}, Teredo C{2001::/32}), each embedded
    IPv4 address.  Text is parsed first, so any spelling of the same address
    (upper case, zeros written out, dotted or hex tail) gets the same verdict.

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

    B{Entries in embedded spellings.}  An IPv6 entry lies in the IPv6 key
    space and matches IPv6 spellings.  An entry strictly inside
    C{::ffff:0:0/96} or C{64:ff9b::/96} (prefix longer than /96) names IPv4
    networks in another spelling and matches those IPv4 addresses as well:
    C{::ffff:10.0.0.0/104} works as C{10.0.0.0/8} does.  An entry covering a
    whole such block (C{::ffff:0:0/96}, as copied from hardening guides)
    means the spelling, not all of IPv4, and matches IPv6 spellings only.

    Verdicts are cached per host string (at most L{CACHE_SIZE}); own
    addresses are the only mutable part, and adding one empties the cache.
    Use L{replace} for any other change.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        allowLoopback: bool = False,
        ownAddresses: Iterable[str] = (),
    ) -> None:
        """
        @param allow: CIDR networks that override the built-in deny list
            and the own addresses, e.g. C{10.0.0.0/8} for LAN peers.
        @param deny: CIDR networks that are always denied, even if allowed.
        @param allowLoopback: lift the loopback entries (C{127.0.0.0/8},
            C{::1} and the mapped and NAT64 spellings of C{127.0.0.0/8}),
            and nothing else: C{0.0.0.0/8} and C{::} stay denied, because
            they reach the local host too (CVE-2020-26262).
        @param ownAddresses: turnrelay's listening, relay and external IP
            addresses.
        @raise ValueError: naming the first entry or address that does not
            parse.
        """
        self._allowEntries = _parseEntries(allow, "allow")
        self._denyEntries = _parseEntries(deny, "deny")
        self._allowLoopback = bool(allowLoopback)
        self._allowTable = _RangeTable.build(b for _, bs in self._allowEntries for b in bs)
        self._denyTable = _RangeTable.build(b for _, bs in self._denyEntries for b in bs)
        self._builtinTable = _BUILTIN[self._allowLoopback]
        self._own: dict[str, Tuple[int, ...]] = {}
        for host in ownAddresses:
            text, keys = _ownKeys(host)
            self._own[text] = keys
        self._ownSet = frozenset(k for keys in self._own.values() for k in keys)
        # Per instance, so that each policy's cache dies with it and a new
        # policy starts empty.
        self._judge = functools.lru_cache(maxsize=CACHE_SIZE)(self._judgeUncached)

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
        """
        return PeerPolicy(
            allow=self.allow if allow is None else allow,
            deny=self.deny if deny is None else deny,
            allowLoopback=self._allowLoopback if allowLoopback is None else allowLoopback,
            ownAddresses=self.ownAddresses if ownAddresses is None else ownAddresses,
        )

    def addOwnAddress(self, host: str) -> None:
        """
        Deny one more of turnrelay's own addresses, on every port.

        Listening and relay sockets bind at start-up, after the policy is
        built; each reports its address here.  A wildcard address (C{0.0.0.0}
        or C{::}) is accepted but says nothing new: it is denied already, and
        the interface addresses behind it must be added one by one.

        @param host: an IP address.
        @raise ValueError: if C{host} is not an IP address.
        """
        text, keys = _ownKeys(host)
        if text in self._own:
            return
        self._own[text] = keys
        self._ownSet = self._ownSet.union(keys)
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
        @return: C{True} if the host is allowed and the port is not 0.
        """
        return 0 < peer.port <= 0xFFFF and self.isAllowed(peer.host)

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
        Say why C{peer} is denied; L{denialReason} plus the port rule.

        @param peer: the peer's address and port.
        @return: L{None} if allowed, C{"port 0"} for port 0 (or one out of
            range), else the host's reason.
        """
        if not 0 < peer.port <= 0xFFFF:
            return f"port {peer.port}"
        return self.denialReason(peer.host)

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
        lines.append("  4. built-in deny list:")
        width = max(len(cidr) for cidr, _ in DEFAULT_DENY)
        for cidr, reason in DEFAULT_DENY:
            if self._allowLoopback and reason == LOOPBACK:
                reason += " (lifted: allowLoopback)"
            lines.append(f"       {cidr:<{width}}  {reason}")
        lines.append(
            "  IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4, Teredo) is judged"
            " by the IPv4 rules too."
        )
        lines.append("  Peer port 0 is denied.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"PeerPolicy(allow={list(self.allow)!r}, deny={list(self.deny)!r},"
            f" allowLoopback={self._allowLoopback!r},"
            f" ownAddresses={list(self.ownAddresses)!r})"
        )


def _list(items: Tuple[str, ...]) -> str:
    """
    @return: C{items} comma-separated, or C{"(none)"}.
    """
    return ", ".join(items) if items else "(none)"
