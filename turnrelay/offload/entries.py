# -*- test-case-name: tests.test_offload_entries -*-
"""
The entries of the kernel program's maps, byte for byte as
C{channeldata.bpf.c} declares them (C{struct client_key}, C{struct to_peer},
C{struct peer_key}, C{struct to_client}): one home for their layout on
this side.

Addresses take 16 bytes (an IPv4 address in the first 4, the rest zero);
ports and channel numbers are in network byte order, as they are on the
wire; counters are in host byte order (the program adds to them).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Tuple

# client_key: family, pad, channel, client port, server port, client and
# server addresses.
_CLIENT_KEY = struct.Struct("=Bx2s2s2s16s16s")
# to_peer: relay and peer addresses, relay and peer ports, pad, packets, bytes.
_TO_PEER = struct.Struct("=16s16s2s2s4xQQ")
# peer_key: family, pad, relay port, peer port, relay and peer addresses.
_PEER_KEY = struct.Struct("=B3x2s2s16s16s")
# to_client: client and server addresses, client port, server port,
# channel, pad, packets, bytes.
_TO_CLIENT = struct.Struct("=16s16s2s2s2s2xQQ")

assert (_CLIENT_KEY.size, _TO_PEER.size, _PEER_KEY.size, _TO_CLIENT.size) == (40, 56, 40, 56)

Address = Tuple[str, int]


def _address(host: str) -> Tuple[int, bytes]:
    ip = ipaddress.ip_address(host)
    return ip.version, ip.packed.ljust(16, b"\0")


def _port(number: int) -> bytes:
    return number.to_bytes(2, "big")


class Counters(NamedTuple):
    """
    What the program relayed for one entry.
    """

    packets: int
    octets: int


def clientKey(client: Address, server: Address, channel: int) -> bytes:
    """
    The key of C{to_peer}: ChannelData from C{client} to our C{server}
    address on C{channel}.
    """
    family, clientIP = _address(client[0])
    serverFamily, serverIP = _address(server[0])
    assert family == serverFamily, "a client and the address it reached share a family"
    return _CLIENT_KEY.pack(
        family, _port(channel), _port(client[1]), _port(server[1]), clientIP, serverIP
    )


def toPeer(relay: Address, peer: Address) -> bytes:
    """
    The value of C{to_peer}: send the data from C{relay} to C{peer}, with
    the counters at zero.
    """
    return _TO_PEER.pack(
        _address(relay[0])[1], _address(peer[0])[1], _port(relay[1]), _port(peer[1]), 0, 0
    )


def peerKey(relay: Address, peer: Address) -> bytes:
    """
    The key of C{to_client}: a datagram from C{peer} to our C{relay}
    address.
    """
    family, relayIP = _address(relay[0])
    return _PEER_KEY.pack(family, _port(relay[1]), _port(peer[1]), relayIP, _address(peer[0])[1])


def toClient(client: Address, server: Address, channel: int) -> bytes:
    """
    The value of C{to_client}: send the datagram as ChannelData on
    C{channel} from our C{server} address to C{client}, with the counters
    at zero.
    """
    return _TO_CLIENT.pack(
        _address(client[0])[1],
        _address(server[0])[1],
        _port(client[1]),
        _port(server[1]),
        _port(channel),
        0,
        0,
    )


def counters(value: bytes) -> Counters:
    """
    The counters of a C{to_peer} or C{to_client} value read back.
    """
    return Counters(*struct.unpack_from("=QQ", value, len(value) - 16))
