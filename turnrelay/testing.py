# -*- test-case-name: tests.test_turn_server -*-
"""
Fakes for testing turnrelay, and code that embeds it, without sockets.

Twisted's L{MemoryReactorClock} has no UDP; L{FakeUDPReactor} adds it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorUDP, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from turnrelay.interfaces import IClientLink
from turnrelay.stun.address import TransportAddress
from turnrelay.turn.allocation import FiveTuple


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


class FakeSocket:
    """
    The socket of a L{FakeUDPPort}: records options, and datagrams sent
    straight to it as the relay's data path does.

    @ivar options: C{(level, option) -> value}.
    """

    def __init__(self, port: FakeUDPPort) -> None:
        self.options: dict[tuple[int, int], Any] = {}
        self._port = port

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.options[level, option] = value

    def sendto(self, data: bytes, address: Tuple[str, int]) -> int:
        self._port.written.append((data, address))
        return len(data)


@implementer(IUDPTransport, IListeningPort)
class FakeUDPPort:
    """
    A UDP port that records what is written to it.

    @ivar written: C{(datagram, address)} for each write, oldest first.
    @ivar listening: whether L{stopListening} has not been called yet.
    """

    def __init__(self, protocol: DatagramProtocol, host: str, port: int) -> None:
        self.protocol = protocol
        self.host = host
        self.portNumber = port
        self.written: List[Tuple[bytes, Tuple[str, int]]] = []
        self.listening = True
        self.socket = FakeSocket(self)

    def write(self, packet: bytes, addr: Any = None) -> None:
        self.written.append((packet, addr))

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("FakeUDPPort is never connected")

    def getHost(self) -> IPv4Address | IPv6Address:
        return _address(self.host, self.portNumber)

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            self.protocol.doStop()

    def startListening(self) -> None:
        pass

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False

    loseConnection = stopListening


@implementer(IListeningPort)
class FakeTCPPort:
    """
    A listening TCP port of L{FakeUDPReactor}.

    @ivar factory: the factory connections would be built with.
    @ivar listening: whether L{stopListening} has not been called yet.
    """

    def __init__(self, factory: Any, host: str, port: int) -> None:
        self.factory = factory
        self.host = host
        self.portNumber = port
        self.listening = True

    def getHost(self) -> IPv4Address | IPv6Address:
        if ":" in self.host:
            return IPv6Address("TCP", self.host, self.portNumber)
        return IPv4Address("TCP", self.host, self.portNumber)

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.listening = False


@implementer(IReactorUDP)
class FakeUDPReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that can also listen on UDP, and whose TCP ports
    know their address (relay ports among them).

    @ivar udpPorts: every L{FakeUDPPort} opened, oldest first.
    @ivar tcpPorts: every L{FakeTCPPort} opened, oldest first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: List[FakeUDPPort] = []
        self.tcpPorts: List[FakeTCPPort] = []
        self._nextPort = 40000
        self.busyUDPPorts: set[int] = set()

    def udpPort(self, port: int) -> FakeUDPPort:
        """
        @return: the listening port with that number.
        @raise KeyError: there is none.
        """
        for udpPort in self.udpPorts:
            if udpPort.portNumber == port and udpPort.listening:
                return udpPort
        raise KeyError(port)

    def listenTCP(
        self, port: Any, factory: Any, backlog: int = 50, interface: str = ""
    ) -> FakeTCPPort:
        # A Binding (twisted.internet.tcp.makeBinding) carries its port.
        number = getattr(port, "_port", port)
        if number == 0:
            number, self._nextPort = self._nextPort, self._nextPort + 1
        self.tcpServers.append((number, factory, backlog, interface))
        tcpPort = FakeTCPPort(factory, interface or "0.0.0.0", number)
        self.tcpPorts.append(tcpPort)
        return tcpPort

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> FakeUDPPort:
        if port == 0:
            port, self._nextPort = self._nextPort, self._nextPort + 1
        elif port in self.busyUDPPorts or any(
            p.portNumber == port and p.listening and p.host == (interface or "0.0.0.0")
            for p in self.udpPorts
        ):
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        udpPort = FakeUDPPort(protocol, interface or "0.0.0.0", port)
        self.udpPorts.append(udpPort)
        protocol.makeConnection(udpPort)
        return udpPort


@implementer(IClientLink)
class FakeClientLink:
    """
    A client link that records what is sent, for controller tests.

    @ivar sent: the bytes sent, oldest first.
    """

    def __init__(
        self,
        clientAddress: TransportAddress = TransportAddress("192.0.2.1", 32853),
        serverAddress: TransportAddress = TransportAddress("198.51.100.1", 3478),
        transportProtocol: str = "udp",
    ) -> None:
        self.clientAddress = clientAddress
        self.serverAddress = serverAddress
        self.transportProtocol = transportProtocol
        self.fiveTuple = FiveTuple(transportProtocol, clientAddress, serverAddress)
        self.allocation: Any = None
        self.relayingTo: Any = None
        self.sent: List[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def relay(self, data: bytes) -> bool:
        self.sent.append(data)
        return True

    def startRelayingTo(self, peerConnection: Any) -> None:
        self.relayingTo = peerConnection

    def attach(self, allocation: Any) -> None:
        self.allocation = allocation

    def detach(self, allocation: Any) -> None:
        if self.allocation is allocation:
            self.allocation = None

    def popSent(self) -> Optional[bytes]:
        """
        @return: the oldest unread bytes sent, or L{None}.
        """
        return self.sent.pop(0) if self.sent else None
