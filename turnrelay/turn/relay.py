# -*- test-case-name: tests.test_turn_allocate -*-
"""
Relay sockets: the UDP ports allocations are relayed from.
"""

from __future__ import annotations

import random
import socket
import sys
from typing import Any, Callable, Optional, Set, Tuple

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.tcp import makeBinding

from turnrelay.logs import Logger, LogLevels
from turnrelay.stun.address import TransportAddress
from turnrelay.turn.descriptors import OUT_OF_DESCRIPTORS, DescriptorBudget, watchAccepts

# Large enough for any UDP payload a peer can send.
MAX_DATAGRAM = 65535

# TCP relayed addresses listen with SO_REUSEPORT (they must connect out from
# the port they listen on), which would let a second pool of this process
# listen on the same address too: every pool of the process reserves its
# TCP relay ports here first.  (Another process of the same user could
# still share one: give each process its own relay port range.)
_TCP_RELAY_PORTS: Set[Tuple[str, int]] = set()

# Setting DF on a UDP socket: Python before 3.12 does not name the options,
# but on Linux they are fixed kernel ABI (linux/in.h).
_LINUX = sys.platform.startswith("linux")
IP_MTU_DISCOVER: Optional[int] = getattr(socket, "IP_MTU_DISCOVER", 10 if _LINUX else None)
IP_PMTUDISC_DO: Optional[int] = getattr(socket, "IP_PMTUDISC_DO", 2 if _LINUX else None)


class RelayProtocol(DatagramProtocol):
    """
    The peer side of one allocation's relay socket: hands every datagram to
    the data path.

    @ivar deliver: called with each datagram and the peer's address, once
        the allocation exists (L{turnrelay.turn.datapath.DataPath}).
    """

    noisy = False
    log = Logger()

    def __init__(self, logLevels: Optional[LogLevels] = None) -> None:
        self.logLevels = logLevels
        self.deliver: Optional[Callable[[bytes, Any], None]] = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        deliver = self.deliver
        if deliver is not None:
            try:
                deliver(datagram, addr)
            except Exception:
                self.log.failure("while relaying a datagram from {peer}", peer=addr)


class NoRelayPort(Exception):
    """
    No relay port could be bound (508 Insufficient Capacity).
    """


class RelayPortPool:
    """
    Opens relay sockets on random ports of a range (RFC 8656 section 7.2:
    49152-65535 by default; random ports make the loop attack of section
    21.1.7 harder).

    @ivar relayIP: the address relay sockets bind to.
    @ivar minPort: the lowest port, inclusive.
    @ivar maxPort: the highest port, inclusive.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorUDP,
        relayIP: str,
        minPort: int = 49152,
        maxPort: int = 65535,
        attempts: int = 64,
        rng: Optional[random.Random] = None,
        descriptors: Optional[DescriptorBudget] = None,
        logLevels: Optional[LogLevels] = None,
    ) -> None:
        """
        @param descriptors: told when the system runs out of descriptors.
        @param logLevels: the relay's log levels.
        """
        self._reactor = reactor
        self.logLevels = logLevels
        self.descriptors = descriptors
        self.relayIP = relayIP
        self.minPort = minPort
        self.maxPort = maxPort
        # The relay's whole range when this pool is one worker's slice of
        # it: its siblings' relayed addresses are the relay's too.
        self.groupPorts = range(minPort, maxPort + 1)
        self._attempts = attempts
        self._random = rng or random.SystemRandom()
        self._inUse: Set[int] = set()
        self._inUseTCP: Set[int] = set()
        self._closing: Set[Deferred[Any]] = set()

    @property
    def inUse(self) -> int:
        """
        How many relay ports are open.
        """
        return len(self._inUse)

    def _candidates(self, inUse: Set[int]) -> Any:
        span = self.maxPort - self.minPort + 1
        if span - len(inUse) <= self._attempts:
            # A nearly full range: try every free port once, in random order.
            ports = [p for p in range(self.minPort, self.maxPort + 1) if p not in inUse]
            self._random.shuffle(ports)
            yield from ports
            return
        for _ in range(self._attempts):
            yield self._random.randint(self.minPort, self.maxPort)

    def _listen(self, port: int, protocol: DatagramProtocol) -> Any:
        listening = self._reactor.listenUDP(
            port, protocol, interface=self.relayIP, maxPacketSize=MAX_DATAGRAM
        )
        self._inUse.add(port)
        return listening

    def open(self, even: bool = False, reserveNext: bool = False) -> Tuple[Any, Optional[Any]]:
        """
        Bind a relay socket.

        @param even: the port must be even (EVEN-PORT, RFC 8656 section 7.2).
        @param reserveNext: also bind the next port (EVEN-PORT with R), for a
            later allocation that presents the reservation token.
        @return: the listening port, and the reserved next one or L{None}.
        @raise NoRelayPort: no port could be had.
        """
        for port in self._candidates(self._inUse):
            if port in self._inUse or (even and port % 2):
                continue
            if reserveNext and (port + 1 > self.maxPort or port + 1 in self._inUse):
                continue
            protocol = RelayProtocol(self.logLevels)
            try:
                listening = self._listen(port, protocol)
            except CannotListenError as e:
                self._unlessOutOfDescriptors(e)
                continue
            if not reserveNext:
                return listening, None
            try:
                reserved = self._listen(port + 1, RelayProtocol(self.logLevels))
            except CannotListenError as e:
                self.close(listening)
                self._unlessOutOfDescriptors(e)
                continue
            return listening, reserved
        raise NoRelayPort(f"no free relay port in {self.minPort}-{self.maxPort}")

    def _unlessOutOfDescriptors(self, error: CannotListenError) -> None:
        # A port in use is worth another try; running out of descriptors
        # fails the same way on every port.
        if getattr(error.socketError, "errno", None) in OUT_OF_DESCRIPTORS:
            if self.descriptors is not None:
                self.descriptors.ranOut("a relay socket")
            raise NoRelayPort("out of file descriptors") from None

    def close(self, listening: Any) -> None:
        """
        Close a relay socket and return its port to the pool.
        """
        self._inUse.discard(listening.getHost().port)
        self._whenClosed(listening)

    def _whenClosed(self, listening: Any) -> None:
        # Closing a socket completes on a later reactor turn: keep track, so
        # that a stopping service can wait for it (see closed()).
        d = maybeDeferred(listening.stopListening)
        self._closing.add(d)
        d.addBoth(lambda result: self._closing.discard(d))

    def closed(self) -> Deferred[Any]:
        """
        @return: a L{Deferred} that fires when every socket being closed is.
        """
        return DeferredList(list(self._closing))

    def _binding(self, port: int) -> Any:
        # The relayed address listens for peers and connects to them from
        # the same port (RFC 6062): both sockets must share it.
        return makeBinding(self.relayIP, port, reuseAddress=True, reusePort=True)

    def openTCP(self, factory: Any) -> Any:
        """
        Listen for peers on a TCP relayed address (RFC 6062 section 5.1).

        @raise NoRelayPort: no port could be had.
        """
        for port in self._candidates(self._inUseTCP):
            if port in self._inUseTCP or (self.relayIP, port) in _TCP_RELAY_PORTS:
                continue
            try:
                listening = self._reactor.listenTCP(  # type: ignore[attr-defined]
                    self._binding(port), factory, interface=self.relayIP
                )
            except CannotListenError as e:
                self._unlessOutOfDescriptors(e)
                continue
            self._inUseTCP.add(port)
            _TCP_RELAY_PORTS.add((self.relayIP, port))
            if self.descriptors is not None and hasattr(listening, "socket"):
                watchAccepts(listening, self.descriptors, "a peer's connection")
            return listening
        raise NoRelayPort(f"no free TCP relay port in {self.minPort}-{self.maxPort}")

    def closeTCP(self, listening: Any) -> None:
        """
        Stop listening on a TCP relayed address and return its port.
        """
        port = listening.getHost().port
        if self.descriptors is not None:
            self.descriptors.removeListener(listening)
        self._inUseTCP.discard(port)
        _TCP_RELAY_PORTS.discard((self.relayIP, port))
        self._whenClosed(listening)

    def connectTCP(
        self, relayPort: int, peer: TransportAddress, factory: Any, timeout: float
    ) -> Any:
        """
        Connect to a peer from a TCP relayed address (RFC 6062 section 5.2).
        """
        return self._reactor.connectTCP(  # type: ignore[attr-defined]
            peer.host, peer.port, factory, timeout=timeout, bindAddress=self._binding(relayPort)
        )

    def address(self, listening: Any) -> TransportAddress:
        """
        @return: the address a relay socket is bound to.
        """
        host = listening.getHost()
        return TransportAddress(host.host, host.port)

    def _dontFragmentOption(self) -> Optional[Tuple[int, int, int]]:
        if ":" in self.relayIP:
            option = getattr(socket, "IPV6_DONTFRAG", None)
            return None if option is None else (socket.IPPROTO_IPV6, option, 1)
        if IP_MTU_DISCOVER is None or IP_PMTUDISC_DO is None:
            return None
        return (socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)

    @property
    def dontFragmentSupported(self) -> bool:
        """
        Whether this OS lets relay sockets set DF (Linux does, for IPv4 and
        IPv6).
        """
        return self._dontFragmentOption() is not None

    def setDontFragment(self, listening: Any) -> bool:
        """
        Make the OS set DF on every datagram the relay socket sends
        (DONT-FRAGMENT, RFC 8656 section 7.2).

        @return: whether the OS allows it; if not, the caller answers 420.
        """
        sock = getattr(listening, "socket", None)
        option = self._dontFragmentOption()
        if sock is None or option is None:
            return False
        try:
            sock.setsockopt(*option)
        except OSError as e:
            self.log.warn("cannot set DF on relay sockets: {error}", error=e)
            return False
        return True
