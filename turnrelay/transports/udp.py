# -*- test-case-name: tests.test_transports_udp -*-
"""
TURN over UDP.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from turnrelay.interfaces import IClientLink
from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress, unmapIPv4
from turnrelay.turn.allocation import Allocation, FiveTuple
from turnrelay.turn.server import TURNServer


@implementer(IClientLink)
class UDPClientLink:
    """
    The way back to one UDP client.

    A client without an allocation gets a fresh link with each message; a
    client with one keeps its link, which its listener finds by address.

    @ivar rawAddress: the address as the socket reported it (possibly
        IPv4-mapped), which is what the socket must be given to write to.
    """

    __slots__ = ("protocol", "rawAddress", "clientAddress", "fiveTuple", "allocation")
    transportProtocol = "udp"

    def __init__(self, protocol: STUNDatagramProtocol, rawAddress: Tuple[str, int]) -> None:
        self.protocol = protocol
        self.rawAddress = rawAddress
        self.clientAddress = TransportAddress(unmapIPv4(rawAddress[0]), rawAddress[1])
        self.fiveTuple = FiveTuple("udp", self.clientAddress, protocol.serverAddress)
        self.allocation: Optional[Allocation] = None

    @property
    def serverAddress(self) -> TransportAddress:
        return self.protocol.serverAddress

    def send(self, data: bytes) -> None:
        try:
            self.protocol.sendto(data, self.rawAddress)
        except OSError as e:
            self.protocol.log.debug(
                "could not send to {client}: {error}", client=self.rawAddress, error=e
            )

    def relay(self, data: bytes) -> bool:
        try:
            self.protocol.sendto(data, self.rawAddress)
        except OSError:
            # EAGAIN: the socket buffer is full; drop, as a router would.
            return False
        return True

    def startRelayingTo(self, peerConnection: Any) -> None:
        raise NotImplementedError("a UDP client cannot become a TCP data connection")

    def attach(self, allocation: Allocation) -> None:
        self.allocation = allocation
        self.protocol.clients[self.rawAddress] = self

    def detach(self, allocation: Allocation) -> None:
        if self.allocation is allocation:
            self.allocation = None
            if self.protocol.clients.get(self.rawAddress) is self:
                del self.protocol.clients[self.rawAddress]


class STUNDatagramProtocol(DatagramProtocol):
    """
    A UDP listener for STUN, TURN and ChannelData.

    Every datagram is one message (RFC 8656 section 12.5).  The first byte
    tells them apart (RFC 7983): 0-3 STUN, 64-127 ChannelData (RFC 8656
    channels start with 64-79, RFC 5766 ones up to 127); anything else is
    dropped.

    @ivar server: the controller the messages go to.
    @ivar serverAddress: our bound address, once listening.
    @ivar clients: the links of clients with allocations, by the
        address the socket reports.
    """

    log = Logger()
    noisy = False

    def __init__(self, server: TURNServer) -> None:
        self.server = server
        self.logLevels = server.logLevels
        self.serverAddress = TransportAddress("0.0.0.0", 0)
        self.clients: Dict[Tuple[str, int], UDPClientLink] = {}
        self.sendto: Callable[[bytes, Tuple[str, int]], object] = self._notListening

    @staticmethod
    def _notListening(data: bytes, address: Tuple[str, int]) -> None:
        raise OSError("not listening")

    def startProtocol(self) -> None:
        host = self.transport.getHost()  # type: ignore[union-attr]
        self.serverAddress = TransportAddress(unmapIPv4(host.host), host.port)
        # Straight to the socket, as relay sockets do: the addresses written
        # to are the ones the socket reported, so Twisted's checks are moot.
        self.sendto = self.transport.socket.sendto  # type: ignore[union-attr]

    def stopProtocol(self) -> None:
        # The listener is going away: so are the allocations made through it.
        for link in list(self.clients.values()):
            self.server.linkClosed(link, "closed with its listener")

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        # Never let one client's datagram take the listener down: Twisted
        # would log and carry on, but we want the client's address in the log.
        try:
            first = datagram[0] if datagram else 0xFF
            if 0x40 <= first <= 0x7F:
                link = self.clients.get(addr)
                if link is not None:
                    self.server.channelDataReceived(datagram, link)
            elif first < 0x04:
                link = self.clients.get(addr) or UDPClientLink(self, addr)
                self.server.stunReceived(datagram, link)
            else:
                self.log.debug(
                    "dropped a {size}-byte datagram from {client}: neither STUN nor ChannelData",
                    size=len(datagram),
                    client=addr,
                )
        except Exception:
            self.log.failure("while handling a datagram from {client}", client=addr)
