# -*- test-case-name: tests.test_workers_steering -*-
"""
Steering each client to one socket of a C{SO_REUSEPORT} group.

The control process opens every listening socket of the relay, one per
worker per listener, in one reuseport group, and attaches the classic-BPF
program of L{steeringProgram}: the kernel then picks the socket by a hash of
the client's source address and source port, so a client's 5-tuple always
reaches the same worker.  TCP listeners hash the address alone: RFC 6062's
data connection, which the client opens from a new port, must reach the
worker that holds its allocation and its peer connection.  The control
process keeps its own copy of each socket, so the group (and with it the
index of every socket) never changes, even while a worker restarts.

L{steeringIndex} computes in Python the index the program picks, for tests
and for a control process that wants to know which worker holds a client.

Linux only; no Twisted here, so that the control process can build its
sockets before it runs a reactor.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from typing import List, Tuple

__all__ = [
    "SteeringError",
    "attachSteering",
    "reuseportSockets",
    "steeringIndex",
    "steeringProgram",
]

# The socket option (include/uapi/asm-generic/socket.h); Python's socket
# module does not name it.
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)

# Classic BPF (include/uapi/linux/filter.h and bpf_common.h).
_LD, _LDX, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MSH = 0x20, 0x40, 0xA0
_MUL, _RSH, _MOD, _XOR = 0x20, 0x70, 0x90, 0xA0
_JA, _JEQ = 0x00, 0x10
_K, _X = 0x00, 0x08
_A = 0x10
_TAX = 0x00

# The kernel runs a reuseport program with the packet's data pointing at
# the transport payload; loads at this offset read from the IP header.
SKF_NET_OFF = -0x100000

# Knuth's multiplicative constant (2**32 / golden ratio): one multiply
# spreads consecutive source ports over the whole word.
_GOLDEN = 0x9E3779B1

_MASK = 0xFFFFFFFF

# struct sock_filter: __u16 code; __u8 jt; __u8 jf; __u32 k (native order).
_FILTER = struct.Struct("=HBBI")

# One instruction: code, jump-if-true, jump-if-false, constant.
_Instruction = Tuple[int, int, int, int]


class SteeringError(OSError):
    """
    The kernel refused the steering program: the message says which socket
    and why, and C{errno} is the kernel's.
    """


def steeringIndex(host: str, port: int, count: int, byPort: bool = True) -> int:
    """
    The socket of a group of C{count} that the program of
    L{steeringProgram} picks for a client, computed as the kernel does.

    @param host: the client's address as a socket reports it; an
        IPv4-mapped IPv6 address (C{::ffff:1.2.3.4}) counts as its IPv4
        form, since the kernel sees an IPv4 packet.
    @param port: the client's port.
    @param count: the number of sockets in the group.
    @param byPort: whether the program hashes the port too (see
        L{steeringProgram}).
    @return: an index in C{range(count)}.
    """
    _checkCount(count)
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        mixed = int(address)
    else:
        mixed = 0
        for word in struct.unpack("!4I", address.packed):
            mixed ^= word
    if byPort:
        mixed ^= port
    mixed = (mixed * _GOLDEN) & _MASK
    mixed ^= mixed >> 16
    return mixed % count


def steeringProgram(count: int, byPort: bool = True) -> bytes:
    """
    The classic-BPF reuseport program that picks one of C{count} sockets by
    the client's source address and port.

    The hash is that of L{steeringIndex}: C{h = (address words xor port) *
    0x9E3779B1; h ^= h >> 16; return h % count}, in 32-bit arithmetic.

    @param count: the number of sockets in the group.
    @param byPort: hash the source port too; without it every connection
        of a client host reaches the same socket.
    @return: the packed C{struct sock_filter} array.
    """
    _checkCount(count)
    net = SKF_NET_OFF & _MASK
    # IPv4: the header length comes from the packet, so IP options do not
    # move the port under us.
    ipv4: List[_Instruction] = [
        (_LDX | _B | _MSH, 0, 0, net),  # X = 4 * (IHL)
        (_LD | _H | _IND, 0, 0, net),  # A = source port, at net + X
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _W | _ABS, 0, 0, net + 12),  # A = source address
        (_ALU | _XOR | _X, 0, 0, 0),
    ]
    if not byPort:
        ipv4 = [(_LD | _W | _ABS, 0, 0, net + 12)]
    # IPv6: the port is read right after the fixed header, so a packet
    # with extension headers is hashed on other bytes (a fragment, say);
    # UDP and TCP from clients carry none in practice.
    ipv6: List[_Instruction] = [
        (_LD | _W | _ABS, 0, 0, net + 8),
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _W | _ABS, 0, 0, net + 12),
        (_ALU | _XOR | _X, 0, 0, 0),
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _W | _ABS, 0, 0, net + 16),
        (_ALU | _XOR | _X, 0, 0, 0),
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _W | _ABS, 0, 0, net + 20),
        (_ALU | _XOR | _X, 0, 0, 0),
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _H | _ABS, 0, 0, net + 40),
        (_ALU | _XOR | _X, 0, 0, 0),
    ]
    if not byPort:
        ipv6 = ipv6[:-3]
    ipv4.append((_JMP | _JA, 0, 0, len(ipv6)))
    program: List[_Instruction] = [
        # Branch on the version nibble rather than on the socket's family:
        # a dual-stack IPv6 socket receives IPv4 packets too.
        (_LD | _B | _ABS, 0, 0, net),
        (_ALU | _RSH | _K, 0, 0, 4),
        (_JMP | _JEQ | _K, 0, len(ipv4), 4),
        *ipv4,
        *ipv6,
        (_ALU | _MUL | _K, 0, 0, _GOLDEN),
        (_MISC | _TAX, 0, 0, 0),
        (_ALU | _RSH | _K, 0, 0, 16),
        (_ALU | _XOR | _X, 0, 0, 0),
        # An index past the group makes the kernel fall back to its own
        # hash, which changes with the group: never return one.
        (_ALU | _MOD | _K, 0, 0, count),
        (_RET | _A, 0, 0, 0),
    ]
    return b"".join(_FILTER.pack(*instruction) for instruction in program)


class _SockFprog(ctypes.Structure):
    """
    C{struct sock_fprog}, the value of C{SO_ATTACH_REUSEPORT_CBPF}.
    """

    _fields_ = [
        ("len", ctypes.c_ushort),
        ("filter", ctypes.c_void_p),
    ]


def attachSteering(sock: socket.socket, count: int, byPort: bool = True) -> None:
    """
    Attach L{steeringProgram} to the reuseport group of C{sock}.

    The program belongs to the group, not to the socket: attach it once
    every socket has joined (after C{bind} for UDP, after C{listen} for
    TCP), since a socket that joins by binding keeps the group's program.

    @param sock: a socket with C{SO_REUSEPORT} set.
    @param count: the number of sockets in the group.
    @param byPort: see L{steeringProgram}.
    @raise SteeringError: the kernel refused.
    """
    program = steeringProgram(count, byPort)
    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _FILTER.size, ctypes.addressof(instructions))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except OSError as e:
        raise SteeringError(
            e.errno,
            f"cannot attach the reuseport steering program to socket {_describe(sock)}: "
            f"{e.strerror}",
        ) from e


def reuseportSockets(
    transport: str, host: str, port: int, count: int, backlog: int = 128
) -> List[socket.socket]:
    """
    Open one reuseport group of C{count} sockets on C{(host, port)}, with
    the steering program attached.

    @param transport: C{"udp"} or C{"tcp"}.
    @param host: the address to bind; IPv6 if it has a colon (IPv6-only,
        so that an IPv4 listener on the same port is a separate group).
    @param port: the port; with 0 the first socket picks it and the others
        bind the same.
    @param count: the number of sockets.
    @param backlog: the C{listen} backlog of each TCP socket.
    @return: the sockets, non-blocking, in group order: the socket at
        index I{i} is the one the program picks with index I{i}.  UDP
        clients are steered by address and port, TCP clients by address.
    @raise OSError: from C{bind} (with its errno, so that a caller can say
        the port is in use), or L{SteeringError}; no socket is left open.
    """
    if transport not in ("udp", "tcp"):
        raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
    _checkCount(count)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    sockets: List[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind)
            sockets.append(sock)
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if transport == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            # A TCP socket joins the group when it listens, a UDP socket
            # when it binds: either way in the order of this list.
            if transport == "tcp":
                sock.listen(backlog)
        attachSteering(sockets[0], count, byPort=transport == "udp")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _checkCount(count: int) -> None:
    """
    @raise ValueError: C{count} cannot be a group's size (the program
        divides by it, and the kernel refuses a division by zero).
    """
    if count < 1:
        raise ValueError(f"a reuseport group needs at least one socket, not {count}")


def _describe(sock: socket.socket) -> str:
    """
    @return: the socket's address if it has one, else its descriptor, for
        an error message.
    """
    try:
        name = sock.getsockname()
    except OSError:
        return f"(descriptor {sock.fileno()})"
    return f"{name[0]}:{name[1]}"
