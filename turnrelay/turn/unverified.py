# -*- test-case-name: tests.test_turn_refusals -*-
"""
What a source that has not authenticated is sent.

Over UDP a source address proves nothing: a request may carry a victim's
address, and its answer then floods the victim.  So over UDP what answers
an unauthenticated request (a Binding success, a 401 challenge, a 400) is
held to a per-source rate (L{turnrelay.turn.sources}) and to
L{AMPLIFICATION_LIMIT} times the request's size, shrinking the answer to
the RFC's minimum where that is enough.  TCP and TLS sources are real:
their answers go out as they are.

@see: RFC 8489 section 16.1.2, RFC 8656 section 21.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from turnrelay.interfaces import IClientLink
from turnrelay.stun import attributes as A
from turnrelay.stun.message import STUNMessage
from turnrelay.turn.sources import AMPLIFICATION_LIMIT

if TYPE_CHECKING:
    from turnrelay.turn.server import TURNServer


class UnverifiedAnswers:
    """
    Sends, or withholds, the controller's answers to unauthenticated
    requests.
    """

    def __init__(self, server: TURNServer) -> None:
        self._server = server

    def answer(
        self,
        request: STUNMessage,
        response: STUNMessage,
        link: IClientLink,
        size: int,
        compact: Optional[Callable[[], STUNMessage]] = None,
    ) -> None:
        """
        Answer a request that is not authenticated.

        Over TCP and TLS the client's address is real: the response goes as
        L{TURNServer.respond} would send it.  Over UDP it may be a victim's, so the
        response goes only within the source's limit (L{TURNServer.sourceLimit}), and
        only if it is at most L{AMPLIFICATION_LIMIT} times the request's
        C{size}: without SOFTWARE if need be, then as C{compact()} makes it.
        Otherwise it is dropped and counted in L{TURNServer.refusals}, as
        C{"rate-limited"} or C{"amplification"}.

        @param size: the request's size in bytes.
        @param compact: makes the smallest response the RFCs allow, if
            that is smaller than C{response}.
        @see: RFC 8489 section 16.1.2.
        """
        server = self._server
        if link.transportProtocol != "udp":
            server.respond(request, response, link)
            return
        if not self.withinSourceLimit(link):
            return
        limit = size * AMPLIFICATION_LIMIT
        fingerprint = request.fingerprint is not None
        data = b""
        if server.software is not None:
            withSoftware = STUNMessage(
                response.method,
                response.messageClass,
                response.transactionID,
                response.attributes + [(A.SOFTWARE, server.software)],
            )
            data = withSoftware.encode(fingerprint=fingerprint)
        if not data or len(data) > limit:
            data = response.encode(fingerprint=fingerprint)
        if len(data) > limit and compact is not None:
            response = compact()
            data = response.encode(fingerprint=fingerprint)
        if len(data) > limit:
            server.refusalLog.refused("amplification")
            return
        server.count(request, response)
        link.send(data)

    def withinSourceLimit(self, link: IClientLink) -> bool:
        """
        Take a token from the source's bucket for an unauthenticated answer
        over UDP; TCP and TLS are not limited.

        @return: whether the answer may go; if not, it is counted in
            L{TURNServer.refusals} as C{"rate-limited"}.
        """
        server = self._server
        if server.sourceLimit is None or link.transportProtocol != "udp":
            return True
        if server.sourceLimit.allow(link.clientAddress.host):
            return True
        server.refusalLog.refused("rate-limited")
        return False
