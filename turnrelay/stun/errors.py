"""
The codec's one error type.
"""

from __future__ import annotations


class STUNDecodeError(ValueError):
    """
    Bytes that are not a well-formed STUN message, ChannelData frame or
    attribute value.

    When the 20-byte header was sound, the error carries what it said, so a
    server can answer a malformed I{request} with 400 (RFC 8489 section 6.3)
    and silently drop anything else.

    @ivar reason: what was wrong, for a debug log line.
    @ivar method: the header's method, or L{None} if the header was bad.
    @ivar messageClass: the header's class, or L{None}.
    @ivar transactionID: the header's transaction ID, or L{None}.
    """

    def __init__(
        self,
        reason: str,
        method: int | None = None,
        messageClass: int | None = None,
        transactionID: bytes | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.method = method
        self.messageClass = messageClass
        self.transactionID = transactionID
