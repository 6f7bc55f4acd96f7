"""
The seams between turnrelay's layers.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IReplyChannel(Interface):
    """
    The way back to one client over the transport its message came in on.

    Transport protocols provide it and hand it, with each STUN message or
    ChannelData frame, to the controller (L{turnrelay.turn.server.TURNServer}),
    which answers through it without knowing which transport it is.
    """

    transportProtocol = Attribute('C{"udp"}, C{"tcp"} or C{"tls"}.')
    clientAddress = Attribute(
        "The client's L{TransportAddress}, IPv4-mapped IPv6 addresses already turned into IPv4."
    )
    serverAddress = Attribute("The L{TransportAddress} of our socket the client reached.")

    def send(data: bytes) -> None:
        """
        Send bytes to the client: one datagram, or a write on the stream.
        """
