# -*- test-case-name: tests.test_transports_udp -*-
"""
TURN over UDP.
"""

from __future__ import annotations

from typing import Any, Tuple

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from turnrelay.interfaces import IReplyChannel
from turnrelay.stun.address import TransportAddress, unmapIPv4
from turnrelay.turn.server import TURNServer


@implementer(IReplyChannel)
class UDPReplyChannel:
    """
    The way back to one UDP client.

    @ivar rawAddress: the address as the socket reported it (possibly
        IPv4-mapped), which is what the socket must be given to write to.
    """

    __slots__ = ("protocol", "rawAddress", "clientAddress")
    transportProtocol = "udp"

    def __init__(
        self,
        protocol: STUNDatagramProtocol,
        rawAddress: Tuple[Any, ...],
        clientAddress: TransportAddress,
    ) -> None:
        self.protocol = protocol
        self.rawAddress = rawAddress
        self.clientAddress = clientAddress

    @property
    def serverAddress(self) -> TransportAddress:
        return self.protocol.serverAddress

    def send(self, data: bytes) -> None:
        self.protocol.sendDatagram(data, self.rawAddress)


class STUNDatagramProtocol(DatagramProtocol):
    """
    A UDP listener for STUN, TURN and ChannelData.

    Every datagram is one message (RFC 8656 section 12.5).  The first byte
    tells them apart (RFC 7983): 0-3 STUN, 64-79 ChannelData; anything else
    is dropped.

    @ivar server: the controller the messages go to.
    @ivar serverAddress: our bound address, once listening.
    """

    log = Logger()
    noisy = False

    def __init__(self, server: TURNServer) -> None:
        self.server = server
        self.serverAddress = TransportAddress("0.0.0.0", 0)

    def startProtocol(self) -> None:
        host = self.transport.getHost()  # type: ignore[union-attr]
        self.serverAddress = TransportAddress(unmapIPv4(host.host), host.port)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        # Never let one client's datagram take the listener down: Twisted
        # would log and carry on, but we want the client's address in the log.
        try:
            first = datagram[0] if datagram else 0xFF
            if first < 0x04 or 0x40 <= first <= 0x4F:
                channel = UDPReplyChannel(self, addr, TransportAddress(unmapIPv4(addr[0]), addr[1]))
                if first < 0x04:
                    self.server.stunReceived(datagram, channel)
                else:
                    self.server.channelDataReceived(datagram, channel)
            else:
                self.log.debug(
                    "dropped a {size}-byte datagram from {client}: neither STUN nor ChannelData",
                    size=len(datagram),
                    client=addr,
                )
        except Exception:
            self.log.failure("while handling a datagram from {client}", client=addr)

    def sendDatagram(self, data: bytes, rawAddress: Tuple[Any, ...]) -> None:
        """
        Send one datagram, logging rather than raising when the OS refuses.
        """
        try:
            self.transport.write(data, rawAddress[:2])  # type: ignore[union-attr]
        except OSError as e:
            self.log.warn("could not send to {client}: {error}", client=rawAddress, error=e)
