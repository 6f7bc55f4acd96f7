# -*- test-case-name: tests.test_turn_server -*-
"""
The controller every transport hands its STUN messages and ChannelData to.
"""

from __future__ import annotations

from typing import FrozenSet, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from turnrelay.interfaces import IReplyChannel
from turnrelay.stun import attributes as A
from turnrelay.stun.message import (
    MessageClass,
    Method,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
    isAllowedClass,
)

# The comprehension-required attributes turnrelay implements.  ICE's
# PRIORITY and USE-CANDIDATE, RFC 5780's CHANGE-REQUEST, PADDING and
# RESPONSE-PORT, and RFC 7635's ACCESS-TOKEN are not among them: a request
# carrying one gets 420 (checklist items 12 and 25).
UNDERSTOOD_ATTRIBUTES: FrozenSet[int] = frozenset(A.ATTRIBUTE_CODECS) - {
    A.PRIORITY,
    A.USE_CANDIDATE,
    A.CHANGE_REQUEST,
    A.PADDING,
    A.RESPONSE_PORT,
    A.ACCESS_TOKEN,
}


class TURNServer:
    """
    Answers STUN and TURN messages from any transport.

    The transports frame bytes and hand each message here with an
    L{IReplyChannel}; every protocol decision is made here, once for all
    transports.

    @ivar software: the SOFTWARE attribute added to responses, or L{None}.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, software: Optional[str] = None) -> None:
        """
        @param clock: the time source for every timer the relay keeps.
        @param software: the SOFTWARE value for responses, or L{None}.
        """
        self._clock = clock
        self.software = software

    def stunReceived(self, data: bytes, channel: IReplyChannel) -> None:
        """
        Handle one STUN message from a client.

        Malformed bytes, responses and unknown methods are dropped with a
        debug log line (RFC 8489 section 6.3); nothing that did not parse is
        ever answered.

        @param data: exactly one STUN message.
        @param channel: the way back to the client.
        """
        try:
            message = decodeMessage(data)
        except STUNDecodeError as e:
            self.log.debug(
                "dropped {size} bytes from {client} over {transport}: {reason}",
                size=len(data),
                client=channel.clientAddress,
                transport=channel.transportProtocol,
                reason=e.reason,
            )
            return
        if not isAllowedClass(message.method, message.messageClass):
            self._drop(message, channel, "unknown method or class not allowed for it")
            return
        if message.method == Method.BINDING:
            if message.messageClass == MessageClass.REQUEST:
                self._binding(message, channel)
            # A Binding indication is a keep-alive and gets no answer.
            return
        self._drop(message, channel, "method not served")

    def channelDataReceived(self, data: bytes, channel: IReplyChannel) -> None:
        """
        Handle one ChannelData message from a client.

        @param data: exactly one ChannelData message, padding included.
        @param channel: the way back to the client.
        """
        # No allocation can exist yet, so no channel either: drop silently
        # (RFC 8656 section 12.6).

    def _drop(self, message: STUNMessage, channel: IReplyChannel, reason: str) -> None:
        self.log.debug(
            "dropped {message!r} from {client} over {transport}: {reason}",
            message=message,
            client=channel.clientAddress,
            transport=channel.transportProtocol,
            reason=reason,
        )

    def _respond(self, request: STUNMessage, response: STUNMessage, channel: IReplyChannel) -> None:
        """
        Send a response, with SOFTWARE if configured and FINGERPRINT when the
        request had one.
        """
        if self.software is not None:
            response.add(A.SOFTWARE, self.software)
        channel.send(response.encode(fingerprint=request.fingerprint is not None))

    def _binding(self, request: STUNMessage, channel: IReplyChannel) -> None:
        """
        Answer a Binding request with the client's reflexive address.

        @see: RFC 8489 sections 6.3.1.1 and 12.
        """
        unknown = request.unknownComprehensionRequired(UNDERSTOOD_ATTRIBUTES)
        if unknown:
            response = request.errorResponse(420).add(A.UNKNOWN_ATTRIBUTES, tuple(unknown))
        else:
            response = request.successResponse([(A.XOR_MAPPED_ADDRESS, channel.clientAddress)])
        self._respond(request, response, channel)
