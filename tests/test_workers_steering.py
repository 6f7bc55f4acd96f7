"""
Tests for L{turnrelay.workers.steering}: the kernel sends each client to
the socket that L{steeringIndex} predicts, over real loopback sockets.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections import Counter
from typing import Dict, List, Optional, Set, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests._sockets import noIPv6Loopback
from tests._timing import PROMPTLY
from turnrelay.workers.steering import (
    SteeringError,
    attachSteering,
    reuseportSockets,
    steeringIndex,
    steeringProgram,
)

# Clients per UDP test, and connections per TCP test: enough that a kernel
# falling back to its own hash would miss about half of them.
CLIENTS = 200
CONNECTIONS = 100

# Four bytes of IPv4 options (NOP, NOP, NOP, EOL): a header longer than 20.
IP_OPTIONS = b"\x01\x01\x01\x00"

# Why the IPv6 tests cannot run here, or None.
NO_IPV6 = noIPv6Loopback()

# Where each datagram arrived: the client's address, as the socket reports
# it, and the index of the socket in its group.
Arrivals = Dict[Tuple[str, int], int]


class SocketsTestCase(SynchronousTestCase):
    """
    Opens real sockets and closes every one when the test ends.
    """

    def group(self, transport: str, host: str, count: int) -> List[socket.socket]:
        """
        @return: a steered reuseport group of C{count} sockets on C{host},
            port 0.
        """
        sockets = reuseportSockets(transport, host, 0, count)
        for sock in sockets:
            self.addCleanup(sock.close)
        return sockets

    def clients(
        self, host: str, count: int, options: Optional[bytes] = None
    ) -> List[socket.socket]:
        """
        @return: C{count} UDP sockets, each bound to its own port on C{host}.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        clients = []
        for _ in range(count):
            client = socket.socket(family, socket.SOCK_DGRAM)
            self.addCleanup(client.close)
            if options is not None:
                client.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, options)
            client.bind((host, 0))
            clients.append(client)
        return clients

    def send(self, clients: List[socket.socket], group: List[socket.socket]) -> Arrivals:
        """
        Send one datagram from each client to the group's address.

        @return: where each one arrived.
        @raise AssertionError: not all of them within L{PROMPTLY} seconds.
        """
        address = group[0].getsockname()
        for client in clients:
            client.sendto(b"steer me", address)
        return self.receive(group, len(clients))

    def receive(self, group: List[socket.socket], expected: int) -> Arrivals:
        """
        Read the sockets of C{group} until C{expected} datagrams have come.

        @return: where each one arrived.
        """
        arrivals: Arrivals = {}
        deadline = time.monotonic() + PROMPTLY
        while len(arrivals) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(f"{len(arrivals)} of {expected} datagrams after {PROMPTLY} s")
            readable, _, _ = select.select(group, [], [], left)
            for sock in readable:
                while True:
                    try:
                        _, address = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    self.assertNotIn(address[:2], arrivals, "one datagram per client")
                    arrivals[address[:2]] = group.index(sock)
        return arrivals

    def assertSteered(
        self, arrivals: Arrivals, count: int, share: float, byPort: bool = True
    ) -> None:
        """
        Each arrival is on the predicted socket, and each socket of the
        group has at least C{share} of them.
        """
        wrong = {
            client: index
            for client, index in arrivals.items()
            if index != steeringIndex(client[0], client[1], count, byPort)
        }
        self.assertEqual(wrong, {}, f"{len(wrong)} of {len(arrivals)} on another socket")
        perSocket = Counter(arrivals.values())
        for index in range(count):
            self.assertGreaterEqual(
                perSocket[index], share * len(arrivals), f"socket {index}: {perSocket}"
            )


class SteeringIndexTests(SynchronousTestCase):
    """
    L{steeringIndex} on its own.
    """

    def test_range(self) -> None:
        """
        The index is always one of the group's.
        """
        for count in (1, 2, 3, 7, 64):
            for port in range(0, 65536, 997):
                self.assertIn(steeringIndex("192.0.2.1", port, count), range(count))
                self.assertIn(steeringIndex("2001:db8::1", port, count), range(count))

    def test_mapped(self) -> None:
        """
        An IPv4-mapped IPv6 address is steered as its IPv4 form.
        """
        for port in (1, 3478, 50000, 65535):
            self.assertEqual(
                steeringIndex("::ffff:198.51.100.7", port, 5),
                steeringIndex("198.51.100.7", port, 5),
            )

    def test_sequentialPorts(self) -> None:
        """
        Consecutive ports from one address spread evenly over the group.
        """
        for host in ("198.51.100.7", "2001:db8::7"):
            for count in (2, 3, 4, 8):
                perSocket = Counter(
                    steeringIndex(host, port, count) for port in range(40000, 42000)
                )
                for index in range(count):
                    self.assertGreaterEqual(perSocket[index], 0.8 * 2000 / count, perSocket)

    def test_badCount(self) -> None:
        """
        A group has at least one socket.
        """
        self.assertRaises(ValueError, steeringIndex, "192.0.2.1", 1, 0)
        self.assertRaises(ValueError, steeringProgram, 0)


class SteeringProgramTests(SocketsTestCase):
    """
    L{steeringProgram}, L{attachSteering} and L{reuseportSockets} when
    something is wrong.
    """

    def test_length(self) -> None:
        """
        The program is a whole number of 8-byte instructions, 28 of them,
        whatever the group's size.
        """
        for count in (1, 2, 1000):
            self.assertEqual(len(steeringProgram(count)), 28 * 8)

    def test_closedSocket(self) -> None:
        """
        Attaching to a closed socket raises L{SteeringError}, an L{OSError}
        with the kernel's errno and a one-line message.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.close()
        error = self.assertRaises(SteeringError, attachSteering, sock, 2)
        self.assertIsInstance(error, OSError)
        self.assertEqual(error.errno, errno.EBADF)
        self.assertIn("steering program", str(error))
        self.assertNotIn("\n", str(error))

    def test_withoutReuseport(self) -> None:
        """
        A socket without C{SO_REUSEPORT} has no group to steer.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        error = self.assertRaises(SteeringError, attachSteering, sock, 2)
        self.assertEqual(error.errno, errno.EINVAL)

    def test_portInUse(self) -> None:
        """
        A port held outside the group fails with the bind's errno.
        """
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        error = self.assertRaises(OSError, reuseportSockets, "udp", "127.0.0.1", port, 2)
        self.assertEqual(error.errno, errno.EADDRINUSE)

    def test_badTransport(self) -> None:
        """
        Only udp and tcp have groups here.
        """
        self.assertRaises(ValueError, reuseportSockets, "sctp", "127.0.0.1", 0, 2)

    def test_sockets(self) -> None:
        """
        The sockets share one port and do not block.
        """
        for transport in ("udp", "tcp"):
            group = self.group(transport, "127.0.0.1", 3)
            self.assertEqual(len({sock.getsockname() for sock in group}), 1)
            self.assertEqual([sock.getblocking() for sock in group], [False] * 3)


class UDPSteeringTests(SocketsTestCase):
    """
    The kernel steers UDP datagrams as L{steeringIndex} predicts.
    """

    def test_twoSockets(self) -> None:
        """
        Each client's datagram arrives on the predicted one of two sockets,
        and each socket gets at least 30% of them.
        """
        group = self.group("udp", "127.0.0.1", 2)
        arrivals = self.send(self.clients("127.0.0.1", CLIENTS), group)
        self.assertSteered(arrivals, 2, 0.3)

    def test_threeSockets(self) -> None:
        """
        Each client's datagram arrives on the predicted one of three
        sockets, and each socket gets at least 20% of them.
        """
        group = self.group("udp", "127.0.0.1", 3)
        arrivals = self.send(self.clients("127.0.0.1", CLIENTS), group)
        self.assertSteered(arrivals, 3, 0.2)

    def test_ipOptions(self) -> None:
        """
        IPv4 options do not move the port the program reads.
        """
        group = self.group("udp", "127.0.0.1", 2)
        clients = self.clients("127.0.0.1", CLIENTS // 2, IP_OPTIONS)
        arrivals = self.send(clients, group)
        self.assertSteered(arrivals, 2, 0.3)
        # The options were on the wire, or this test proves nothing.
        group[0].setsockopt(socket.IPPROTO_IP, socket.IP_RECVOPTS, 1)
        client = next(c for c in clients if steeringIndex("127.0.0.1", c.getsockname()[1], 2) == 0)
        client.sendto(b"options?", group[0].getsockname())
        self.assertEqual(select.select([group[0]], [], [], PROMPTLY)[0], [group[0]])
        _, ancillary, _, _ = group[0].recvmsg(2048, 64)
        self.assertEqual(ancillary, [(socket.IPPROTO_IP, socket.IP_RECVOPTS, IP_OPTIONS)])

    def test_mappedIPv4(self) -> None:
        """
        A dual-stack IPv6 group receiving IPv4 traffic steers it as IPv4.
        """
        group: List[socket.socket] = []
        port = 0
        for _ in range(2):
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("::ffff:127.0.0.1", port))
            port = sock.getsockname()[1]
            group.append(sock)
        attachSteering(group[0], 2)
        address = ("127.0.0.1", port)
        clients = self.clients("127.0.0.1", CLIENTS)
        for client in clients:
            client.sendto(b"steer me", address)
        arrivals = self.receive(group, CLIENTS)
        self.assertEqual({host for host, _ in arrivals}, {"::ffff:127.0.0.1"})
        self.assertSteered(arrivals, 2, 0.3)

    def test_stable(self) -> None:
        """
        A client's later datagrams land where its first did, also after a
        duplicate of one socket's descriptor is closed (a worker dying while
        the control process keeps its copy).
        """
        group = self.group("udp", "127.0.0.1", 2)
        clients = self.clients("127.0.0.1", CLIENTS)
        first = self.send(clients, group)
        self.assertEqual(self.send(clients, group), first)
        os.close(os.dup(group[0].fileno()))
        self.assertEqual(self.send(clients, group), first)
        self.assertSteered(first, 2, 0.3)


class IPv6SteeringTests(SocketsTestCase):
    """
    The kernel steers IPv6 datagrams as L{steeringIndex} predicts.
    """

    skip = NO_IPV6

    def test_twoSockets(self) -> None:
        """
        Each IPv6 client's datagram arrives on the predicted one of two
        sockets, and each socket gets at least 30% of them.
        """
        group = self.group("udp", "::1", 2)
        arrivals = self.send(self.clients("::1", CLIENTS), group)
        self.assertSteered(arrivals, 2, 0.3)

    def test_sockets(self) -> None:
        """
        An IPv6 group is IPv6-only, so that IPv4 on the same port is
        another group.
        """
        for sock in self.group("udp", "::1", 2):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), 1)


class TCPSteeringTests(SocketsTestCase):
    """
    The kernel steers TCP connections as L{steeringIndex} predicts.
    """

    def test_connections(self) -> None:
        """
        Each connection is accepted on the socket predicted by its source
        address alone: every connection of a client host reaches the same
        socket (RFC 6062's data connections come from new ports).
        """
        group = self.group("tcp", "127.0.0.1", 2)
        address = group[0].getsockname()
        for number in range(CONNECTIONS):
            connecting = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(connecting.close)
            connecting.settimeout(PROMPTLY)
            connecting.bind((f"127.0.0.{2 + number % 40}", 0))
            connecting.connect(address)
        arrivals: Arrivals = {}
        deadline = time.monotonic() + PROMPTLY
        while len(arrivals) < CONNECTIONS:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(f"{len(arrivals)} of {CONNECTIONS} connections after {PROMPTLY} s")
            readable, _, _ = select.select(group, [], [], left)
            for listener in readable:
                while True:
                    try:
                        connection, client = listener.accept()
                    except BlockingIOError:
                        break
                    self.addCleanup(connection.close)
                    arrivals[client] = group.index(listener)
        self.assertSteered(arrivals, 2, 0.3, byPort=False)
        byHost: Dict[str, Set[int]] = {}
        for source, index in arrivals.items():
            byHost.setdefault(source[0], set()).add(index)
        self.assertEqual({len(indexes) for indexes in byHost.values()}, {1})
