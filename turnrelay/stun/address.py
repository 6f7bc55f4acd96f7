# -*- test-case-name: tests.test_stun_attributes -*-
"""
Transport addresses as the codec and the relay see them.
"""

from __future__ import annotations

from typing import NamedTuple

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02


class TransportAddress(NamedTuple):
    """
    An IP address and a port.

    A tuple, so that it compares and hashes like the C{(host, port)} pairs
    Twisted hands to protocols.  C{host} is the canonical text form
    (C{inet_ntop}'s), without brackets or a scope.

    @ivar host: the IP address, as text.
    @ivar port: the port number, 0 to 65535.
    """

    host: str
    port: int

    @property
    def family(self) -> int:
        """
        The STUN address family: L{FAMILY_IPV6} or L{FAMILY_IPV4}.
        """
        return FAMILY_IPV6 if ":" in self.host else FAMILY_IPV4

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def unmapIPv4(host: str) -> str:
    """
    Undo the IPv4-mapped spelling that dual-stack sockets report.

    A socket bound to C{::} reports an IPv4 client as C{::ffff:a.b.c.d}; the
    client really is C{a.b.c.d}, and that is what it must see in
    XOR-MAPPED-ADDRESS and what any policy must judge.

    @param host: an address as a socket reported it.
    @return: C{host}, with an IPv4-mapped IPv6 address turned into IPv4.
    """
    if host[:7].lower() == "::ffff:" and "." in host:
        return host[7:]
    return host
