"""
Tests for L{turnrelay.turn.policy}: the default-deny peer list, every
IPv4-in-IPv6 spelling, own addresses, the operator's allow and deny lists,
the loopback switch and the reasons given for denials.

Section numbers refer to C{shared/spec/security-notes.md}.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any, Dict, List, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun.address import TransportAddress
from turnrelay.turn.policy import (
    CACHE_SIZE,
    DEFAULT_DENY,
    OWN_SERVICE,
    PeerPolicy,
    canonicalIP,
)

DEFAULT = PeerPolicy()

PUBLIC_V4 = ["8.8.8.8", "1.1.1.1", "9.9.9.9", "104.16.0.1"]
PUBLIC_V6 = ["2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001::200e"]

# A public Teredo server (the example in Python's documentation) and a
# public client NAT address, to build Teredo addresses around.
TEREDO_SERVER = "65.54.227.120"
TEREDO_CLIENT = "8.8.4.4"


def v4int(address: str) -> int:
    return int(IPv4Address(address))


def v6text(value: int) -> str:
    return str(IPv6Address(value))


def mapped(address: str) -> str:
    """
    The canonical IPv4-mapped spelling (C{::ffff:a.b.c.d}).
    """
    return "::ffff:" + address


def translated(address: str) -> str:
    """
    The IPv4-translated (SIIT) spelling, C{::ffff:0:a.b.c.d} (RFC 7915).
    """
    return "::ffff:0:" + address


def nat64(address: str) -> str:
    """
    The spelling under the NAT64 well-known prefix 64:ff9b::/96.
    """
    return v6text((0x0064FF9B << 96) | v4int(address))


def nat64Local(address: str) -> str:
    """
    The spelling under the NAT64 local-use prefix 64:ff9b:1::/48.
    """
    return v6text((0x0064FF9B0001 << 80) | v4int(address))


def sixToFour(address: str, tail: int = 1) -> str:
    """
    A 6to4 address whose bits 16-47 are C{address}.
    """
    return v6text((0x2002 << 112) | (v4int(address) << 80) | tail)


def teredo(server: str, client: str) -> str:
    """
    A Teredo address with C{server} in bits 32-63 and C{client} stored
    inverted in the last 32 bits.
    """
    return v6text(
        (0x20010000 << 96)
        | (v4int(server) << 64)
        | (0x8000 << 48)
        | (0x63BF << 32)
        | (v4int(client) ^ 0xFFFFFFFF)
    )


def embeddedSpellings(address: str) -> Dict[str, str]:
    """
    Every IPv6 spelling of an IPv4 address that the policy must see through,
    canonical and not, keyed by a name for assertion messages.
    """
    value = v4int(address)
    high, low = value >> 16, value & 0xFFFF
    return {
        "mapped": mapped(address),
        "mapped, upper case": "::FFFF:" + address,
        "mapped, hex tail": f"::ffff:{high:x}:{low:x}",
        "mapped, upper-case hex tail": f"::FFFF:{high:X}:{low:X}",
        "mapped, zeros written out": f"0:0:0:0:0:ffff:{high:x}:{low:x}",
        "mapped, fully expanded": f"0000:0000:0000:0000:0000:FFFF:{high:04X}:{low:04X}",
        "mapped, expanded with dotted tail": "0:0:0:0:0:ffff:" + address,
        "translated": translated(address),
        "translated, hex tail": f"::ffff:0:{high:x}:{low:x}",
        "translated, fully expanded": f"0000:0000:0000:0000:FFFF:0000:{high:04X}:{low:04X}",
        "compatible": "::" + address,
        "compatible, expanded": f"0:0:0:0:0:0:{high:x}:{low:x}",
        "NAT64 well-known": nat64(address),
        "NAT64 well-known, dotted": "64:ff9b::" + address,
        "NAT64 well-known, upper case expanded": (
            f"0064:FF9B:0000:0000:0000:0000:{high:04X}:{low:04X}"
        ),
        "NAT64 local-use": nat64Local(address),
        "NAT64 local-use, dotted": "64:ff9b:1::" + address,
        "6to4": sixToFour(address),
        "6to4, subnet and interface id": sixToFour(address, (0xABCD << 64) | 0x2),
        "6to4, upper case": sixToFour(address).upper(),
        "Teredo server": teredo(address, TEREDO_CLIENT),
        "Teredo client": teredo(TEREDO_SERVER, address),
    }


class PolicyAssertions(SynchronousTestCase):
    """
    Assertions shared by the policy tests.
    """

    def assertDenied(self, host: str, reason: str, policy: PeerPolicy = DEFAULT) -> None:
        self.assertFalse(policy.isAllowed(host), f"{host} allowed")
        self.assertEqual(policy.denialReason(host), reason, host)

    def assertAllowed(self, host: str, policy: PeerPolicy = DEFAULT) -> None:
        self.assertEqual(policy.denialReason(host), None, host)
        self.assertTrue(policy.isAllowed(host), host)

    def assertRange(self, first: str, last: str, reason: str, outside: Sequence[str]) -> None:
        """
        Both edges of a range and a point between them are denied for
        C{reason}; the addresses just outside it are allowed.
        """
        version = 4 if "." in first else 6
        cls: Any = IPv4Address if version == 4 else IPv6Address
        low, high = int(cls(first)), int(cls(last))
        middle = str(cls((low + high) // 2))
        for host in (first, middle, last):
            self.assertDenied(host, reason)
        for host in outside:
            self.assertAllowed(host)


class IPv4DefaultDenyTests(PolicyAssertions):
    """
    The built-in IPv4 deny list of security notes 1.1, range by range.
    """

    def test_thisNetwork(self) -> None:
        """
        0.0.0.0/8 is denied: sending to 0.0.0.0 reaches the local host
        (CVE-2020-26262).
        """
        self.assertRange("0.0.0.0", "0.255.255.255", "this network", ["1.0.0.0"])

    def test_loopback(self) -> None:
        """
        127.0.0.0/8 is denied: loopback reaches admin, database and metrics
        endpoints.
        """
        self.assertRange(
            "127.0.0.0", "127.255.255.255", "loopback", ["126.255.255.255", "128.0.0.0"]
        )

    def test_linkLocal(self) -> None:
        """
        169.254.0.0/16 is denied as link-local.
        """
        self.assertRange(
            "169.254.0.0", "169.254.255.255", "link-local", ["169.253.255.255", "169.255.0.0"]
        )

    def test_metadata(self) -> None:
        """
        169.254.169.254, the cloud metadata service, is denied and named as
        such; its neighbours are plain link-local.
        """
        self.assertDenied("169.254.169.254", "metadata")
        self.assertDenied("169.254.169.253", "link-local")
        self.assertDenied("169.254.169.255", "link-local")

    def test_private10(self) -> None:
        """
        10.0.0.0/8 is denied as RFC 1918 private space.
        """
        self.assertRange(
            "10.0.0.0", "10.255.255.255", "private (RFC 1918)", ["9.255.255.255", "11.0.0.0"]
        )

    def test_private172(self) -> None:
        """
        172.16.0.0/12 is denied as RFC 1918 private space.
        """
        self.assertRange(
            "172.16.0.0",
            "172.31.255.255",
            "private (RFC 1918)",
            ["172.15.255.255", "172.32.0.0"],
        )

    def test_private192(self) -> None:
        """
        192.168.0.0/16 is denied as RFC 1918 private space.
        """
        self.assertRange(
            "192.168.0.0",
            "192.168.255.255",
            "private (RFC 1918)",
            ["192.167.255.255", "192.169.0.0"],
        )

    def test_sharedAddressSpace(self) -> None:
        """
        100.64.0.0/10 (CGNAT), which Python calls neither private nor
        global, is denied.
        """
        self.assertRange(
            "100.64.0.0",
            "100.127.255.255",
            "shared address space (RFC 6598)",
            ["100.63.255.255", "100.128.0.0"],
        )

    def test_protocolAssignments(self) -> None:
        """
        192.0.0.0/24 is denied as IETF protocol assignments.
        """
        self.assertRange(
            "192.0.0.0",
            "192.0.0.255",
            "IETF protocol assignments",
            ["191.255.255.255", "192.0.1.0"],
        )

    def test_documentation(self) -> None:
        """
        The three IPv4 documentation ranges are denied.
        """
        self.assertRange("192.0.2.0", "192.0.2.255", "documentation", ["192.0.1.255", "192.0.3.0"])
        self.assertRange(
            "198.51.100.0", "198.51.100.255", "documentation", ["198.51.99.255", "198.51.101.0"]
        )
        self.assertRange(
            "203.0.113.0", "203.0.113.255", "documentation", ["203.0.112.255", "203.0.114.0"]
        )

    def test_benchmarking(self) -> None:
        """
        198.18.0.0/15 is denied as benchmarking space.
        """
        self.assertRange(
            "198.18.0.0", "198.19.255.255", "benchmarking", ["198.17.255.255", "198.20.0.0"]
        )

    def test_sixToFourRelayAnycast(self) -> None:
        """
        192.88.99.0/24, the former 6to4 relay anycast range, is denied.
        """
        self.assertRange(
            "192.88.99.0",
            "192.88.99.255",
            "6to4 relay anycast",
            ["192.88.98.255", "192.88.100.0"],
        )

    def test_multicast(self) -> None:
        """
        224.0.0.0/4 is denied as multicast.
        """
        self.assertRange("224.0.0.0", "239.255.255.255", "multicast", ["223.255.255.255"])

    def test_reserved(self) -> None:
        """
        240.0.0.0/4 is denied as reserved, up to 255.255.255.254.
        """
        self.assertRange("240.0.0.0", "255.255.255.254", "reserved", [])
        self.assertDenied("239.255.255.255", "multicast")

    def test_broadcast(self) -> None:
        """
        255.255.255.255 is denied as the limited broadcast address.
        """
        self.assertDenied("255.255.255.255", "broadcast")

    def test_everyEntryCovered(self) -> None:
        """
        Every entry of the built-in list denies its first and last address,
        with the reason of the most specific entry there, so no entry is
        shadowed by a mistake.
        """
        networks = [(ip_network(cidr), reason) for cidr, reason in DEFAULT_DENY]
        for net, _ in networks:
            if str(net) in ("::/96", "2001::/32", "2002::/16"):
                # The edges of these embed IPv4 addresses (0.0.0.0 and
                # 255.255.255.255) whose reasons come first; their own
                # tests cover them.
                continue
            for host in (net.network_address, net.broadcast_address):
                holders = [(n.prefixlen, r) for n, r in networks if host in n]
                self.assertDenied(str(host), max(holders)[1])


class IPv6DefaultDenyTests(PolicyAssertions):
    """
    The built-in IPv6 deny list of security notes 1.2, range by range.
    """

    def test_unspecified(self) -> None:
        """
        :: is denied: it reaches the local host (CVE-2020-26262).
        """
        self.assertDenied("::", "unspecified")
        self.assertDenied("0:0:0:0:0:0:0:0", "unspecified")
        self.assertDenied("0000:0000:0000:0000:0000:0000:0000:0000", "unspecified")

    def test_loopback(self) -> None:
        """
        ::1 is denied as loopback (CVE-2020-26262 via [::1]).
        """
        self.assertDenied("::1", "loopback")
        self.assertDenied("0:0:0:0:0:0:0:1", "loopback")
        self.assertDenied("0000:0000:0000:0000:0000:0000:0000:0001", "loopback")

    def test_compatible(self) -> None:
        """
        The deprecated IPv4-compatible ::/96 is denied outright, and its
        embedded IPv4 is judged too (security notes 1.2 and 1.4).
        """
        self.assertDenied("::8.8.8.8", "IPv4-compatible")
        self.assertDenied("::808:808", "IPv4-compatible")
        self.assertDenied("::2", "this network")
        self.assertDenied("::ffff:ffff", "broadcast")
        self.assertDenied("::1.0.0.0", "IPv4-compatible")
        self.assertDenied("::223.255.255.255", "IPv4-compatible")
        self.assertAllowed("::1:0:0")

    def test_linkLocal(self) -> None:
        """
        fe80::/10 is denied as link-local.
        """
        self.assertRange(
            "fe80::",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "link-local",
            ["fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
        )
        self.assertDenied("FE80::1", "link-local")

    def test_uniqueLocal(self) -> None:
        """
        fc00::/7 is denied as unique-local, as coturn does since PR #1947.
        """
        self.assertRange(
            "fc00::",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "unique-local",
            ["fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::"],
        )

    def test_metadata(self) -> None:
        """
        fd00:ec2::254, the IPv6 instance-metadata endpoint, is denied and
        named as such.
        """
        self.assertDenied("fd00:ec2::254", "metadata")
        self.assertDenied("fd00:ec2::253", "unique-local")

    def test_siteLocal(self) -> None:
        """
        fec0::/10 is denied as the deprecated site-local range.
        """
        self.assertRange("fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "site-local", [])
        self.assertDenied("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "link-local")

    def test_multicast(self) -> None:
        """
        ff00::/8 is denied as multicast.
        """
        self.assertRange("ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast", [])
        self.assertDenied("ff02::1", "multicast")

    def test_discardOnly(self) -> None:
        """
        100::/64 is denied as discard-only.
        """
        self.assertRange(
            "100::",
            "100::ffff:ffff:ffff:ffff",
            "discard-only",
            ["ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "100:0:0:1::"],
        )

    def test_documentation(self) -> None:
        """
        2001:db8::/32 is denied as documentation.
        """
        self.assertRange(
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "documentation",
            ["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"],
        )

    def test_teredo(self) -> None:
        """
        2001::/32 (Teredo) is denied outright, even with public embedded
        addresses (RFC 8656 section 21.4, tunnel amplification).
        """
        self.assertDenied(teredo(TEREDO_SERVER, TEREDO_CLIENT), "teredo")
        self.assertDenied("2001::", "this network")
        self.assertAllowed("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        self.assertAllowed("2001:1::1")

    def test_sixToFour(self) -> None:
        """
        2002::/16 (6to4) is denied outright, even with a public embedded
        address (RFC 8656 section 21.4).
        """
        self.assertDenied(sixToFour("8.8.8.8"), "6to4")
        self.assertDenied("2002:808:808::", "6to4")
        self.assertDenied("2002:808:808:ffff:ffff:ffff:ffff:ffff", "6to4")
        self.assertAllowed("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        self.assertAllowed("2003::1")


class EmbeddedIPv4Tests(PolicyAssertions):
    """
    Every IPv4-in-IPv6 spelling is judged by the IPv4 it embeds (security
    notes 1.4; CVE-2026-27624 was C{::ffff:127.0.0.1} slipping through).
    """

    def assertEverySpellingDenied(self, address: str, reason: str) -> None:
        for name, host in embeddedSpellings(address).items():
            self.assertFalse(DEFAULT.isAllowed(host), f"{name} {host} allowed")
            expected = reason
            if name.startswith("compatible") and address == "0.0.0.0":
                # ::0.0.0.0 is ::, IPv6's own unspecified address.
                expected = "unspecified"
            self.assertEqual(DEFAULT.denialReason(host), expected, f"{name} {host}")

    def test_loopback(self) -> None:
        """
        Every spelling of 127.0.0.1 and 127.255.255.254 is denied as
        loopback (CVE-2026-27624).
        """
        self.assertEverySpellingDenied("127.0.0.1", "loopback")
        self.assertEverySpellingDenied("127.255.255.254", "loopback")

    def test_private(self) -> None:
        """
        Every spelling of an RFC 1918 address is denied as private.
        """
        for address in ("10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1"):
            self.assertEverySpellingDenied(address, "private (RFC 1918)")

    def test_linkLocal(self) -> None:
        """
        Every spelling of a link-local address is denied as link-local.
        """
        self.assertEverySpellingDenied("169.254.1.1", "link-local")

    def test_metadata(self) -> None:
        """
        Every spelling of 169.254.169.254 is denied as metadata.
        """
        self.assertEverySpellingDenied("169.254.169.254", "metadata")

    def test_thisNetwork(self) -> None:
        """
        Every spelling of 0.0.0.0 and 0.1.2.3 is denied (CVE-2020-26262).
        """
        self.assertEverySpellingDenied("0.0.0.0", "this network")
        self.assertEverySpellingDenied("0.1.2.3", "this network")

    def test_otherRanges(self) -> None:
        """
        Mapped and NAT64 spellings of the other IPv4 ranges carry their
        IPv4 reasons.
        """
        for address, reason in [
            ("100.64.0.1", "shared address space (RFC 6598)"),
            ("192.0.2.1", "documentation"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ]:
            for host in (mapped(address), nat64(address), nat64Local(address)):
                self.assertDenied(host, reason)

    def test_publicMappedAndNAT64Allowed(self) -> None:
        """
        Mapped, translated and NAT64 spellings of a public IPv4 address are
        other spellings of it, and allowed like it.
        """
        for address in PUBLIC_V4:
            self.assertAllowed(address)
            spellings = embeddedSpellings(address)
            for name, host in spellings.items():
                if name.startswith(("mapped", "translated", "NAT64")):
                    self.assertAllowed(host)

    def test_publicTunnelAndCompatibleDenied(self) -> None:
        """
        6to4, Teredo and compatible spellings of a public IPv4 address are
        denied for their form (RFC 8656 section 21.4).
        """
        for address in PUBLIC_V4:
            spellings = embeddedSpellings(address)
            for name, host in spellings.items():
                if name.startswith("6to4"):
                    self.assertDenied(host, "6to4")
                elif name.startswith("Teredo"):
                    self.assertDenied(host, "teredo")
                elif name.startswith("compatible"):
                    self.assertDenied(host, "IPv4-compatible")

    def test_publicIPv6Allowed(self) -> None:
        """
        Ordinary global IPv6 addresses are allowed, in any spelling.
        """
        for host in PUBLIC_V6:
            self.assertAllowed(host)
            self.assertAllowed(host.upper())
            self.assertAllowed(IPv6Address(host).exploded)

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.ip_addresses(v=4))
    def test_mappedAndNAT64MatchIPv4(self, address: IPv4Address) -> None:
        """
        For any IPv4 address, its mapped, translated and NAT64 spellings get
        the same verdict and reason as the address itself, with and without
        operator settings (security notes 1.4).
        """
        a = str(address)
        for policy in POLICIES:
            reason = policy.denialReason(a)
            allowed = policy.isAllowed(a)
            spellings = (mapped(a), "::FFFF:" + a, translated(a), nat64(a), "64:ff9b::" + a)
            for host in spellings + (nat64Local(a),):
                self.assertEqual(policy.isAllowed(host), allowed, f"{host} {policy!r}")
                self.assertEqual(policy.denialReason(host), reason, f"{host} {policy!r}")

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.ip_addresses(v=4))
    def test_deniedIPv4DeniedInEverySpelling(self, address: IPv4Address) -> None:
        """
        For any IPv4 address that is denied, every IPv6 spelling of it is
        denied too; 6to4 and Teredo spellings always are.
        """
        a = str(address)
        denied = not DEFAULT.isAllowed(a)
        for name, host in embeddedSpellings(a).items():
            if denied or name.startswith(("6to4", "Teredo", "compatible")):
                self.assertFalse(DEFAULT.isAllowed(host), f"{name} {host}")

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.ip_addresses())
    def test_verdictMatchesReason(self, address: Any) -> None:
        """
        For any address, isAllowed is true exactly when denialReason is
        None, and the canonical and exploded spellings agree.
        """
        for policy in POLICIES:
            for host in (str(address), address.exploded, address.exploded.upper()):
                reason = policy.denialReason(host)
                self.assertEqual(policy.isAllowed(host), reason is None, host)
                self.assertEqual(reason, policy.denialReason(str(address)), host)


class OwnAddressTests(PolicyAssertions):
    """
    turnrelay's own addresses are denied on every port (security notes 1.3,
    RFC 8656 section 21.1.7).
    """

    def test_constructor(self) -> None:
        """
        Own addresses given to the constructor are denied as own address.
        """
        policy = PeerPolicy(ownAddresses=["8.8.8.8", "2606:4700:4700::1111"])
        self.assertDenied("8.8.8.8", "own address", policy)
        self.assertDenied("2606:4700:4700::1111", "own address", policy)
        self.assertDenied("2606:4700:4700:0:0:0:0:1111", "own address", policy)
        self.assertAllowed("8.8.4.4", policy)
        self.assertEqual(policy.ownAddresses, ("8.8.8.8", "2606:4700:4700::1111"))

    def test_embeddedSpellings(self) -> None:
        """
        An own IPv4 address is denied in its mapped and NAT64 spellings too.
        """
        policy = PeerPolicy(ownAddresses=["8.8.8.8"])
        for host in (mapped("8.8.8.8"), nat64("8.8.8.8"), nat64Local("8.8.8.8")):
            self.assertDenied(host, "own address", policy)

    def test_mappedOwnAddress(self) -> None:
        """
        An own address reported in mapped form by a dual-stack socket denies
        the plain IPv4 address as well.
        """
        policy = PeerPolicy(ownAddresses=["::ffff:8.8.8.8"])
        self.assertDenied("8.8.8.8", "own address", policy)
        self.assertDenied("::ffff:808:808", "own address", policy)

    def test_ownPrivateAddressNamed(self) -> None:
        """
        An own address inside a built-in range is reported as own address.
        """
        policy = PeerPolicy(ownAddresses=["10.0.0.5"])
        self.assertDenied("10.0.0.5", "own address", policy)
        self.assertDenied("10.0.0.6", "private (RFC 1918)", policy)

    def test_allowLifts(self) -> None:
        """
        An operator allow entry lifts an own address, the workaround of
        coturn issue #584 for clients relaying to each other.
        """
        policy = PeerPolicy(allow=["8.8.8.8/32"], ownAddresses=["8.8.8.8"])
        self.assertAllowed("8.8.8.8", policy)
        self.assertAllowed(mapped("8.8.8.8"), policy)

    def test_allowLoopbackDoesNotLift(self) -> None:
        """
        allowLoopback does not lift an own loopback address; only an allow
        entry does.
        """
        policy = PeerPolicy(allowLoopback=True, ownAddresses=["127.0.0.1"])
        self.assertDenied("127.0.0.1", "own address", policy)
        self.assertAllowed("127.0.0.2", policy)

    def test_invalid(self) -> None:
        """
        An own address that is not an IP address raises ValueError naming it.
        """
        for bad in ("localhost", "10.0.0.0/8", "fe80::1%eth0", ""):
            e = self.assertRaises(ValueError, PeerPolicy, ownAddresses=[bad])
            self.assertIn(repr(bad), str(e))


class AllowLoopbackTests(PolicyAssertions):
    """
    allowLoopback lifts the loopback ranges and nothing else (coturn's
    allow-loopback-peers; CVE-2020-26262).
    """

    policy = PeerPolicy(allowLoopback=True)

    def test_liftsLoopback(self) -> None:
        """
        127.0.0.0/8, ::1 and the mapped and NAT64 spellings of 127.0.0.1 are
        allowed.
        """
        for host in (
            "127.0.0.1",
            "127.255.255.254",
            "::1",
            "0:0:0:0:0:0:0:1",
            "::ffff:127.0.0.1",
            "::FFFF:7F00:1",
            nat64("127.0.0.1"),
            nat64Local("127.0.0.1"),
        ):
            self.assertAllowed(host, self.policy)

    def test_notThisNetworkOrUnspecified(self) -> None:
        """
        0.0.0.0 and :: stay denied, since they reach the local host too
        (CVE-2020-26262).
        """
        self.assertDenied("0.0.0.0", "this network", self.policy)
        self.assertDenied("::ffff:0.0.0.0", "this network", self.policy)
        self.assertDenied("::", "unspecified", self.policy)

    def test_notOtherRanges(self) -> None:
        """
        Metadata, private and link-local addresses stay denied.
        """
        self.assertDenied("169.254.169.254", "metadata", self.policy)
        self.assertDenied("::ffff:169.254.169.254", "metadata", self.policy)
        self.assertDenied("10.0.0.1", "private (RFC 1918)", self.policy)
        self.assertDenied("fe80::1", "link-local", self.policy)

    def test_notTunnelSpellings(self) -> None:
        """
        The 6to4, Teredo and compatible spellings of loopback stay denied
        for their form (RFC 8656 section 21.4).
        """
        self.assertDenied(sixToFour("127.0.0.1"), "6to4", self.policy)
        self.assertDenied(teredo(TEREDO_SERVER, "127.0.0.1"), "teredo", self.policy)
        self.assertDenied("::127.0.0.1", "IPv4-compatible", self.policy)

    def test_operatorDenyWins(self) -> None:
        """
        An operator deny entry beats allowLoopback.
        """
        policy = PeerPolicy(allowLoopback=True, deny=["127.0.0.1"])
        self.assertDenied("127.0.0.1", "operator deny 127.0.0.1/32", policy)
        self.assertDenied("::ffff:127.0.0.1", "operator deny 127.0.0.1/32", policy)
        self.assertAllowed("127.0.0.2", policy)


class OperatorAllowTests(PolicyAssertions):
    """
    Operator allow entries override the built-in list (security notes 4.1).
    """

    def test_allowPrivate(self) -> None:
        """
        allow 10.0.0.0/8 lifts 10.1.2.3 in its plain, mapped and NAT64
        spellings.
        """
        policy = PeerPolicy(allow=["10.0.0.0/8"])
        for host in ("10.1.2.3", "::ffff:10.1.2.3", "::FFFF:A01:203", nat64("10.1.2.3")):
            self.assertAllowed(host, policy)
        self.assertDenied("172.16.0.1", "private (RFC 1918)", policy)
        self.assertDenied("127.0.0.1", "loopback", policy)

    def test_allowDoesNotLiftTunnel(self) -> None:
        """
        allow 10.0.0.0/8 does not lift the 6to4, Teredo or compatible
        spellings of 10.1.2.3, whose IPv6 spelling is denied on its own.
        """
        policy = PeerPolicy(allow=["10.0.0.0/8"])
        self.assertDenied(sixToFour("10.1.2.3"), "6to4", policy)
        self.assertDenied(teredo(TEREDO_SERVER, "10.1.2.3"), "teredo", policy)
        self.assertDenied("::10.1.2.3", "IPv4-compatible", policy)

    def test_allowMappedSpelling(self) -> None:
        """
        An allow entry in mapped spelling longer than /96 allows the IPv4
        network it spells, in every spelling.
        """
        policy = PeerPolicy(allow=["::ffff:10.0.0.0/104"])
        self.assertEqual(policy.allow, ("::ffff:10.0.0.0/104",))
        for host in ("10.1.2.3", "::ffff:10.1.2.3", nat64("10.1.2.3")):
            self.assertAllowed(host, policy)
        self.assertDenied("172.16.0.1", "private (RFC 1918)", policy)

    def test_allowNAT64Spelling(self) -> None:
        """
        An allow entry in NAT64 spelling longer than /96 allows the IPv4
        network it spells.
        """
        policy = PeerPolicy(allow=["64:ff9b::c0a8:0/112"])
        self.assertAllowed("192.168.1.1", policy)
        self.assertAllowed("::ffff:192.168.1.1", policy)
        self.assertDenied("10.0.0.1", "private (RFC 1918)", policy)

    def test_allowWholeSpellingBlock(self) -> None:
        """
        allow 64:ff9b::/96 or ::ffff:0:0/96 does not let an embedded
        loopback or private address through (the CVE-2026-27624 bypass).
        """
        for entry in ("64:ff9b::/96", "::ffff:0:0/96", "::/0"):
            policy = PeerPolicy(allow=[entry])
            self.assertDenied(nat64("127.0.0.1"), "loopback", policy)
            self.assertDenied(mapped("10.0.0.1"), "private (RFC 1918)", policy)

    def test_allowIPv6(self) -> None:
        """
        An IPv6 allow entry lifts a built-in IPv6 range.
        """
        policy = PeerPolicy(allow=["fd12:3456::/32"])
        self.assertAllowed("fd12:3456::1", policy)
        self.assertDenied("fd12:3457::1", "unique-local", policy)

    def test_allowSixToFour(self) -> None:
        """
        An allow entry for a 6to4 range lifts its tunnel rule, but not the
        rules of the IPv4 it embeds.
        """
        policy = PeerPolicy(allow=["2002::/16"])
        self.assertAllowed(sixToFour("8.8.8.8"), policy)
        self.assertDenied(sixToFour("127.0.0.1"), "loopback", policy)

    def test_explicitThisNetwork(self) -> None:
        """
        An explicit allow entry is the operator's word even for 0.0.0.0/8,
        unlike allowLoopback.
        """
        policy = PeerPolicy(allow=["0.0.0.0/8"])
        self.assertAllowed("0.0.0.0", policy)
        self.assertDenied("::", "unspecified", policy)


class OperatorDenyTests(PolicyAssertions):
    """
    Operator deny entries always win (security notes section 4).
    """

    def test_denyPublic(self) -> None:
        """
        deny 8.8.8.0/24 denies 8.8.8.8 in every spelling.
        """
        policy = PeerPolicy(deny=["8.8.8.0/24"])
        for host in ("8.8.8.8", "::ffff:8.8.8.8", nat64("8.8.8.8"), nat64Local("8.8.8.8")):
            self.assertDenied(host, "operator deny 8.8.8.0/24", policy)
        self.assertDenied(sixToFour("8.8.8.8"), "operator deny 8.8.8.0/24", policy)
        self.assertAllowed("8.8.4.4", policy)

    def test_denyBeatsAllow(self) -> None:
        """
        A deny entry beats an allow entry that also matches.
        """
        policy = PeerPolicy(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
        self.assertDenied("10.1.2.3", "operator deny 10.1.0.0/16", policy)
        self.assertDenied("::ffff:10.1.2.3", "operator deny 10.1.0.0/16", policy)
        self.assertAllowed("10.2.3.4", policy)
        policy = PeerPolicy(allow=["8.8.8.8"], deny=["8.8.8.8"])
        self.assertDenied("8.8.8.8", "operator deny 8.8.8.8/32", policy)

    def test_denyNamesMostSpecific(self) -> None:
        """
        Nested deny entries report the most specific one.
        """
        policy = PeerPolicy(deny=["8.0.0.0/8", "8.8.8.0/24"])
        self.assertDenied("8.8.8.8", "operator deny 8.8.8.0/24", policy)
        self.assertDenied("8.8.4.4", "operator deny 8.0.0.0/8", policy)

    def test_denyMappedSpelling(self) -> None:
        """
        A deny entry in mapped spelling longer than /96 denies the IPv4
        network in every spelling.
        """
        policy = PeerPolicy(deny=["::ffff:8.8.8.0/120"])
        self.assertDenied("8.8.8.8", "operator deny ::ffff:8.8.8.0/120", policy)
        self.assertDenied(nat64("8.8.8.8"), "operator deny ::ffff:8.8.8.0/120", policy)

    def test_denyWholeMappedBlock(self) -> None:
        """
        deny ::ffff:0:0/96 refuses the mapped spelling, not all of IPv4.
        """
        policy = PeerPolicy(deny=["::ffff:0:0/96"])
        self.assertDenied("::ffff:8.8.8.8", "operator deny ::ffff:0.0.0.0/96", policy)
        self.assertAllowed("8.8.8.8", policy)

    def test_denyIPv6(self) -> None:
        """
        An IPv6 deny entry denies addresses inside it.
        """
        policy = PeerPolicy(deny=["2606:4700::/32"])
        self.assertDenied("2606:4700:4700::1111", "operator deny 2606:4700::/32", policy)
        self.assertAllowed("2001:4860:4860::8888", policy)


class PortTests(PolicyAssertions):
    """
    Peer port 0 is never a valid destination (security notes 1.3).
    """

    def test_portZero(self) -> None:
        """
        isAllowedPeer denies port 0 for an otherwise allowed host.
        """
        self.assertFalse(DEFAULT.isAllowedPeer(TransportAddress("8.8.8.8", 0)))
        self.assertFalse(DEFAULT.isAllowedPeer(TransportAddress("2606:4700:4700::1111", 0)))
        self.assertEqual(DEFAULT.peerDenialReason(TransportAddress("8.8.8.8", 0)), "port 0")

    def test_otherPorts(self) -> None:
        """
        isAllowedPeer allows an allowed host on ports 1 to 65535 and nothing
        beyond.
        """
        for port in (1, 3478, 65535):
            self.assertTrue(DEFAULT.isAllowedPeer(TransportAddress("8.8.8.8", port)))
        self.assertFalse(DEFAULT.isAllowedPeer(TransportAddress("8.8.8.8", 65536)))
        self.assertEqual(DEFAULT.peerDenialReason(TransportAddress("8.8.8.8", 3478)), None)

    def test_deniedHost(self) -> None:
        """
        isAllowedPeer denies a denied host on any port, with the host's
        reason.
        """
        peer = TransportAddress("::ffff:127.0.0.1", 3478)
        self.assertFalse(DEFAULT.isAllowedPeer(peer))
        self.assertEqual(DEFAULT.peerDenialReason(peer), "loopback")


class UnparsableTests(PolicyAssertions):
    """
    Anything that is not a plain IP address is denied as unparsable, since
    the socket layer might resolve it to anything.
    """

    def test_garbage(self) -> None:
        """
        Garbage, empty strings, scopes, host names and lax IPv4 spellings
        that inet_aton would accept are unparsable.
        """
        for host in (
            "",
            "garbage",
            "1.2.3.4%eth0",
            "fe80::1%eth0",
            "::1%lo",
            "localhost",
            "example.com",
            "[::1]",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "010.0.0.1",
            "::ffff:010.0.0.1",
            " 8.8.8.8",
            "8.8.8.8 ",
            "8.8.8.8/32",
            "1.2.3.4.5",
            "::ffff:1.2.3.4.5",
            "1:2:3:4:5:6:7:8:9",
            "8.8.8.8" + " " * 100,
            "\u0668.8.8.8",
        ):
            self.assertDenied(host, "unparsable")

    def test_notAString(self) -> None:
        """
        Values that are not strings are denied, without raising.
        """
        for value in (None, b"8.8.8.8", 134744072, IPv4Address("8.8.8.8")):
            self.assertFalse(DEFAULT.isAllowed(value))  # type: ignore[arg-type]
            self.assertEqual(DEFAULT.denialReason(value), "unparsable")  # type: ignore[arg-type]

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.text(max_size=60))
    def test_neverRaises(self, host: str) -> None:
        """
        Any text gets a verdict without raising.
        """
        self.assertEqual(DEFAULT.isAllowed(host), DEFAULT.denialReason(host) is None)


class ConfigurationTests(PolicyAssertions):
    """
    Construction validates operator entries; replace builds new policies.
    """

    def test_badCIDR(self) -> None:
        """
        A bad allow or deny entry raises ValueError naming the entry, for
        the config loader to report.
        """
        for bad in ("10.0.0.0/33", "10.0.0.1/8", "nonsense", "", "fe80::%eth0/64", "::/129"):
            for kind in ("allow", "deny"):
                e = self.assertRaises(ValueError, PeerPolicy, **{kind: ["8.8.8.8", bad]})
                self.assertIn(repr(bad), str(e))
                self.assertIn(kind, str(e))

    def test_notAList(self) -> None:
        """
        A single string where a list belongs raises ValueError rather than
        being read character by character.
        """
        e = self.assertRaises(ValueError, PeerPolicy, allow="10.0.0.0/8")
        self.assertIn("'10.0.0.0/8'", str(e))
        self.assertRaises(ValueError, PeerPolicy, deny=[10])

    def test_canonicalEntries(self) -> None:
        """
        Entries are kept in canonical form, bare addresses as /32 or /128,
        surrounding blanks ignored.
        """
        policy = PeerPolicy(allow=[" 10.0.0.0/8 ", "8.8.8.8"], deny=["2001:DB8::/32", "::1"])
        self.assertEqual(policy.allow, ("10.0.0.0/8", "8.8.8.8/32"))
        self.assertEqual(policy.deny, ("2001:db8::/32", "::1/128"))

    def test_replace(self) -> None:
        """
        replace returns a new policy with the changes and the rest kept,
        leaving the original as it was.
        """
        original = PeerPolicy(allow=["10.0.0.0/8"], ownAddresses=["8.8.8.8"])
        changed = original.replace(allowLoopback=True, deny=["10.1.0.0/16"])
        self.assertIsNot(changed, original)
        self.assertEqual(changed.allow, ("10.0.0.0/8",))
        self.assertEqual(changed.deny, ("10.1.0.0/16",))
        self.assertEqual(changed.ownAddresses, ("8.8.8.8",))
        self.assertTrue(changed.allowLoopback)
        self.assertAllowed("127.0.0.1", changed)
        self.assertDenied("127.0.0.1", "loopback", original)
        self.assertDenied("10.1.2.3", "operator deny 10.1.0.0/16", changed)
        self.assertAllowed("10.1.2.3", original)
        self.assertRaises(ValueError, original.replace, allow=["bad"])

    def test_describe(self) -> None:
        """
        describe names every setting and every built-in range.
        """
        policy = PeerPolicy(
            allow=["10.0.0.0/8"], deny=["8.8.8.0/24"], allowLoopback=True, ownAddresses=["9.9.9.9"]
        )
        text = policy.describe()
        for expected in ("10.0.0.0/8", "8.8.8.0/24", "9.9.9.9", "allowLoopback", "port 0"):
            self.assertIn(expected, text)
        for cidr, reason in DEFAULT_DENY:
            self.assertIn(cidr, text)
            self.assertIn(reason, text)
        self.assertIn("(none)", DEFAULT.describe())
        self.assertNotIn("lifted", DEFAULT.describe())

    def test_cacheBounded(self) -> None:
        """
        The verdict cache holds at most CACHE_SIZE hosts, and cached
        verdicts equal fresh ones.
        """
        policy = PeerPolicy()
        hosts: List[str] = [str(IPv4Address(0x08000000 + i)) for i in range(CACHE_SIZE + 10)]
        for host in hosts:
            policy.isAllowed(host)
        self.assertLessEqual(policy._judge.cache_info().currsize, CACHE_SIZE)
        for host in ("127.0.0.1", "8.8.8.8", "127.0.0.1", "8.8.8.8"):
            self.assertEqual(policy.denialReason(host), PeerPolicy().denialReason(host))


POLICIES = [
    DEFAULT,
    PeerPolicy(allowLoopback=True),
    PeerPolicy(allow=["10.0.0.0/8", "::ffff:192.168.0.0/112"], deny=["10.1.0.0/16", "8.8.8.0/24"]),
    PeerPolicy(ownAddresses=["9.9.9.9", "::ffff:1.1.1.1"]),
]


# Every spelling of an IPv4 address that reaches it, and the address it is
# canonically; then IPv6 addresses that stay themselves.
CANONICAL_FORMS = [
    ("127.0.0.1", "127.0.0.1"),
    (" 127.0.0.1 ", "127.0.0.1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("::FFFF:7F00:1", "127.0.0.1"),
    ("0:0:0:0:0:ffff:7f00:0001", "127.0.0.1"),
    ("0000:0000:0000:0000:0000:FFFF:7F00:0001", "127.0.0.1"),
    ("::ffff:0:127.0.0.1", "127.0.0.1"),
    ("::ffff:0:7f00:1", "127.0.0.1"),
    ("0:0:0:0:ffff:0:7f00:1", "127.0.0.1"),
    ("64:ff9b::127.0.0.1", "127.0.0.1"),
    ("64:FF9B::7F00:1", "127.0.0.1"),
    ("64:ff9b:1::7f00:1", "127.0.0.1"),
    ("::127.0.0.1", "127.0.0.1"),
    ("::ffff:169.254.169.254", "169.254.169.254"),
    ("::ffff:0:10.1.2.3", "10.1.2.3"),
    ("::ffff:0.0.0.0", "0.0.0.0"),
    ("::ffff:0:0.0.0.0", "0.0.0.0"),
    ("64:ff9b::", "0.0.0.0"),
    ("::", "::"),
    ("0:0:0:0:0:0:0:0", "::"),
    ("::1", "::1"),
    ("0000:0000:0000:0000:0000:0000:0000:0001", "::1"),
    # Tunnel addresses are hosts of their own (the rules judge the IPv4
    # they embed as well).
    ("2002:7f00:1::1", "2002:7f00:1::1"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
    ("2606:4700:4700:0000:0000:0000:0000:1111", "2606:4700:4700::1111"),
    ("FE80::1", "fe80::1"),
]


class CanonicalIPTests(SynchronousTestCase):
    """
    L{canonicalIP} gives every spelling of an address one form: the address
    it reaches.
    """

    def test_table(self) -> None:
        """
        Mapped, translated (SIIT), NAT64, compatible and padded or upper-case
        spellings of an IPv4 address are that IPv4 address; IPv6 addresses,
        tunnel ones included, stay IPv6 in canonical text.
        """
        for spelling, canonical in CANONICAL_FORMS:
            self.assertEqual(str(canonicalIP(spelling)), canonical, spelling)

    def test_agreesWithPolicy(self) -> None:
        """
        A spelling and its canonical form get the same verdict, except that
        the deprecated compatible form is denied for its form as well.
        """
        for policy in POLICIES:
            for spelling, canonical in CANONICAL_FORMS:
                if ":" in canonical:
                    continue
                reason = policy.denialReason(spelling.strip())
                if spelling.startswith("::") and not spelling.lower().startswith("::ffff"):
                    self.assertIsNotNone(reason, spelling)
                else:
                    self.assertEqual(reason, policy.denialReason(canonical), spelling)

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.ip_addresses(v=4))
    def test_everyEmbeddingIsIPv4(self, address: IPv4Address) -> None:
        """
        For any IPv4 address, each spelling that reaches it is it.
        """
        a = str(address)
        for name, host in embeddedSpellings(a).items():
            if name.startswith(("6to4", "Teredo")):
                continue
            if name.startswith("compatible") and int(address) <= 1:
                continue
            self.assertEqual(canonicalIP(host), address, f"{name} {host}")

    def test_invalid(self) -> None:
        """
        What is not an IP address raises ValueError naming it.
        """
        for bad in ("localhost", "10.0.0.0/8", "fe80::1%eth0", "", "1.2.3.4.5", "[::1]"):
            e = self.assertRaises(ValueError, canonicalIP, bad)
            self.assertIn(repr(bad), str(e))


RELAY_RANGE = range(50000, 50100)

# Every spelling of the relay address 198.51.100.1 that reaches it.
RELAY_SPELLINGS = [
    "198.51.100.1",
    "::ffff:198.51.100.1",
    "::FFFF:C633:6401",
    "0:0:0:0:0:ffff:c633:6401",
    "::ffff:0:198.51.100.1",
    "::ffff:0:c633:6401",
    "64:ff9b::198.51.100.1",
    "64:ff9b::c633:6401",
    "64:ff9b:1::c633:6401",
]


class TranslatedEntryTests(PolicyAssertions):
    """
    Operator entries in the translated (SIIT) spelling name IPv4 networks,
    as mapped and NAT64 ones do.
    """

    def test_deny(self) -> None:
        """
        C{deny ::ffff:0:8.8.8.0/120} denies 8.8.8.8 in every spelling.
        """
        policy = PeerPolicy(deny=["::ffff:0:808:800/120"])
        for host in ("8.8.8.8", mapped("8.8.8.8"), translated("8.8.8.8"), nat64("8.8.8.8")):
            self.assertDenied(host, "operator deny ::ffff:0:808:800/120", policy)
        self.assertAllowed("8.8.4.4", policy)

    def test_allow(self) -> None:
        """
        C{allow ::ffff:0:10.0.0.0/104} lets 10.1.2.3 through as 10.0.0.0/8
        would.
        """
        policy = PeerPolicy(allow=["::ffff:0:a00:0/104"])
        for host in ("10.1.2.3", mapped("10.1.2.3"), translated("10.1.2.3")):
            self.assertAllowed(host, policy)
        self.assertDenied("127.0.0.1", "loopback", policy)


class RelayAddressTests(PolicyAssertions):
    """
    On a relay address only the relay port range is reachable, in every
    spelling (security notes 1.3): the comparison is of canonical forms,
    never of text.
    """

    def relayPolicy(self, **settings: Any) -> PeerPolicy:
        settings.setdefault("allow", ["198.51.100.0/24", "64:ff9b::/96", "64:ff9b:1::/48"])
        policy = PeerPolicy(**settings)
        policy.addRelayAddress("198.51.100.1", RELAY_RANGE)
        return policy

    def test_everySpellingKeptToRange(self) -> None:
        """
        Every spelling of the relay address is refused outside the relay
        port range and allowed inside it.
        """
        policy = self.relayPolicy()
        for host in RELAY_SPELLINGS:
            for port in (22, 3478, 49999, 50100, 65535):
                self.assertEqual(
                    policy.peerDenialReason(TransportAddress(host, port)),
                    "own address outside the relay port range",
                    f"{host} port {port}",
                )
            for port in (50000, 50050, 50099):
                self.assertIsNone(policy.peerDenialReason(TransportAddress(host, port)), host)
            # A permission is for the host, whatever the port.
            self.assertAllowed(host, policy)

    def test_mappedRelayAddress(self) -> None:
        """
        A relay address given in mapped form is its IPv4 address.
        """
        policy = PeerPolicy(allow=["198.51.100.0/24"])
        policy.addRelayAddress("::ffff:198.51.100.1", RELAY_RANGE)
        self.assertEqual(policy.relayAddresses, (("198.51.100.1", RELAY_RANGE),))
        reason = policy.peerDenialReason(TransportAddress("198.51.100.1", 22))
        self.assertEqual(reason, "own address outside the relay port range")

    def test_otherHostsUntouched(self) -> None:
        """
        Other addresses, in the same network too, are not kept to the range.
        """
        policy = self.relayPolicy()
        for host in ("198.51.100.2", "::ffff:198.51.100.2", "8.8.8.8"):
            self.assertIsNone(policy.peerDenialReason(TransportAddress(host, 22)), host)

    def test_noPorts(self) -> None:
        """
        An external address without relay sockets behind it refuses every
        port.
        """
        policy = PeerPolicy(allow=["198.51.100.0/24"])
        policy.addRelayAddress("198.51.100.9", range(0))
        for port in (1, 50000, 65535):
            self.assertIsNotNone(policy.peerDenialReason(TransportAddress("198.51.100.9", port)))

    def test_exactAllowLifts(self) -> None:
        """
        An allow entry naming exactly the relay address, in any spelling,
        lifts the port range.
        """
        for entry in ("198.51.100.1/32", "198.51.100.1", "::ffff:198.51.100.1/128"):
            policy = self.relayPolicy(allow=[entry, "64:ff9b::/96"])
            for host in ("198.51.100.1", "::ffff:198.51.100.1", "::ffff:0:198.51.100.1"):
                self.assertIsNone(policy.peerDenialReason(TransportAddress(host, 22)), entry)

    def test_widerAllowDoesNotLift(self) -> None:
        """
        A wider allow range that merely contains the relay address does not.
        """
        policy = self.relayPolicy(allow=["198.51.100.0/24"])
        reason = policy.peerDenialReason(TransportAddress("198.51.100.1", 22))
        self.assertEqual(reason, "own address outside the relay port range")

    def test_allowLoopbackLiftsLoopbackRelay(self) -> None:
        """
        allowLoopback lifts the range of a loopback relay address (the demo
        relays to loopback peers on any port), in every spelling.
        """
        policy = PeerPolicy(allowLoopback=True)
        policy.addRelayAddress("127.0.0.1", RELAY_RANGE)
        for host in ("127.0.0.1", "::ffff:127.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b::7f00:1"):
            self.assertIsNone(policy.peerDenialReason(TransportAddress(host, 22)), host)

    def test_notOwnAddress(self) -> None:
        """
        A relay address that is also a listening address is judged as a
        relay address: clients relay to each other through it.
        """
        policy = PeerPolicy(ownAddresses=["8.8.8.8", "9.9.9.9"])
        self.assertDenied("8.8.8.8", "own address", policy)
        policy.addRelayAddress("::ffff:8.8.8.8", RELAY_RANGE)
        self.assertAllowed("8.8.8.8", policy)
        self.assertAllowed(translated("8.8.8.8"), policy)
        self.assertDenied("9.9.9.9", "own address", policy)
        self.assertDenied(nat64("9.9.9.9"), "own address", policy)

    def test_wildcardRefused(self) -> None:
        """
        A wildcard, mapped or not, is no relay address.
        """
        for wildcard in ("0.0.0.0", "::", "::ffff:0.0.0.0", "::ffff:0:0.0.0.0"):
            e = self.assertRaises(ValueError, PeerPolicy().addRelayAddress, wildcard, RELAY_RANGE)
            self.assertIn("wildcard", str(e))
        self.assertRaises(ValueError, PeerPolicy().addRelayAddress, "localhost", RELAY_RANGE)


# A policy that lets loopback and the operator's LAN through, so that only
# the own service rule stands between a peer and the services.
SERVICES = [
    TransportAddress("127.0.0.1", 3478),
    TransportAddress("::ffff:127.0.0.1", 9641),
    TransportAddress("::1", 2222),
    TransportAddress("10.0.0.5", 8080),
]


class OwnServiceTests(PolicyAssertions):
    """
    turnrelay's own listening sockets are never peers, whatever allows the
    host: loopback peers, allow entries, relay addresses.
    """

    def servicePolicy(self, **settings: Any) -> PeerPolicy:
        settings.setdefault("allowLoopback", True)
        settings.setdefault("allow", ["10.0.0.0/8", "64:ff9b::/96", "64:ff9b:1::/48"])
        return PeerPolicy(ownServices=SERVICES, **settings)

    def test_everySpelling(self) -> None:
        """
        Every spelling of a service's address, on its port, is refused as
        own service port; 6to4, Teredo and compatible ones by the host rule.
        """
        policy = self.servicePolicy()
        for service in SERVICES:
            if ":" in str(canonicalIP(service.host)):
                spellings = {"plain": service.host, "expanded": IPv6Address(service.host).exploded}
            else:
                spellings = {"plain": str(canonicalIP(service.host))}
                spellings.update(embeddedSpellings(str(canonicalIP(service.host))))
            for name, host in spellings.items():
                reason = policy.peerDenialReason(TransportAddress(host, service.port))
                self.assertIsNotNone(reason, f"{name} {host} port {service.port}")
                if policy.isAllowed(host):
                    self.assertEqual(reason, OWN_SERVICE, f"{name} {host}")

    def test_otherPortsAllowed(self) -> None:
        """
        Other ports on the same addresses are peers like any other.
        """
        policy = self.servicePolicy()
        for service in SERVICES:
            peer = TransportAddress(service.host, service.port + 1)
            self.assertIsNone(policy.peerDenialReason(peer), str(peer))

    def test_allowEntriesDoNotLift(self) -> None:
        """
        An allow entry naming a service's address exactly does not make its
        port a peer; nor does the address being a relay address.
        """
        policy = self.servicePolicy(allow=["127.0.0.1/32", "10.0.0.5/32"])
        policy.addRelayAddress("10.0.0.5", RELAY_RANGE)
        for host, port in (("127.0.0.1", 3478), ("::ffff:10.0.0.5", 8080), ("127.0.0.1", 9641)):
            reason = policy.peerDenialReason(TransportAddress(host, port))
            self.assertEqual(reason, OWN_SERVICE, host)

    def test_wildcardIPv4(self) -> None:
        """
        A socket on 0.0.0.0 (or ::ffff:0.0.0.0) is refused on every address
        of this host: loopback, own and relay addresses; not elsewhere.
        """
        for wildcard in ("0.0.0.0", "::ffff:0.0.0.0"):
            policy = PeerPolicy(
                allowLoopback=True,
                allow=["8.8.8.0/24"],
                ownAddresses=["8.8.8.7"],
                ownServices=[TransportAddress(wildcard, 3478)],
            )
            policy.addRelayAddress("8.8.8.8", RELAY_RANGE)
            for host in ("127.0.0.1", "127.0.0.9", "::ffff:127.0.0.9", "::ffff:0:8.8.8.8"):
                reason = policy.peerDenialReason(TransportAddress(host, 3478))
                self.assertEqual(reason, OWN_SERVICE, f"{wildcard} {host}")
            for host in ("8.8.8.7", "8.8.8.8"):
                self.assertIsNotNone(policy.peerDenialReason(TransportAddress(host, 3478)), host)
            self.assertIsNone(policy.peerDenialReason(TransportAddress("8.8.8.9", 3478)))
            self.assertIsNone(policy.peerDenialReason(TransportAddress("::1", 3478)))
            self.assertEqual(policy.ownServices, (TransportAddress("0.0.0.0", 3478),))

    def test_wildcardIPv6(self) -> None:
        """
        A socket on :: takes IPv4 too (dual stack): it is refused on IPv4
        and IPv6 loopback alike.
        """
        policy = PeerPolicy(allowLoopback=True, ownServices=[TransportAddress("::", 3478)])
        for host in ("::1", "127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"):
            self.assertEqual(
                policy.peerDenialReason(TransportAddress(host, 3478)), OWN_SERVICE, host
            )

    def test_unspecifiedAllowed(self) -> None:
        """
        Even where an operator allows 0.0.0.0, which reaches this host, it
        does not reach a service port.
        """
        policy = PeerPolicy(allow=["0.0.0.0/32"], ownServices=[TransportAddress("10.0.0.5", 80)])
        self.assertEqual(policy.peerDenialReason(TransportAddress("0.0.0.0", 80)), OWN_SERVICE)
        self.assertIsNone(policy.peerDenialReason(TransportAddress("0.0.0.0", 81)))

    def test_addOwnService(self) -> None:
        """
        addOwnService refuses a socket bound after start-up, once.
        """
        policy = PeerPolicy(allowLoopback=True)
        peer = TransportAddress("127.0.0.1", 40000)
        self.assertIsNone(policy.peerDenialReason(peer))
        policy.addOwnService(TransportAddress("::ffff:127.0.0.1", 40000))
        policy.addOwnService(peer)
        self.assertEqual(policy.peerDenialReason(peer), OWN_SERVICE)
        self.assertEqual(policy.ownServices, (peer,))
        self.assertFalse(policy.isAllowedPeer(peer))

    def test_invalid(self) -> None:
        """
        A service that is no address, or has no port, raises ValueError.
        """
        for bad in (TransportAddress("localhost", 80), TransportAddress("127.0.0.1", 0)):
            self.assertRaises(ValueError, PeerPolicy().addOwnService, bad)

    def test_replaceKeeps(self) -> None:
        """
        replace keeps relay addresses and own services, and describe names
        them.
        """
        policy = self.servicePolicy()
        policy.addRelayAddress("10.0.0.1", RELAY_RANGE)
        changed = policy.replace(allowLoopback=False)
        self.assertEqual(changed.ownServices, policy.ownServices)
        self.assertEqual(changed.relayAddresses, (("10.0.0.1", RELAY_RANGE),))
        self.assertEqual(changed.peerDenialReason(TransportAddress("10.0.0.5", 8080)), OWN_SERVICE)
        text = changed.describe()
        for expected in ("10.0.0.1 (ports 50000-50099)", "127.0.0.1:3478", "[::1]:2222"):
            self.assertIn(expected, text)
