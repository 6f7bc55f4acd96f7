"""
A complete STUN codec (RFC 8489) with the TURN (RFC 8656), RFC 6062, RFC 5780,
RFC 7635 and RFC 8016 attributes.

This package imports nothing from Twisted: it turns bytes into
L{STUNMessage} values and back, computes and checks MESSAGE-INTEGRITY,
MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, derives long-term keys, and frames
ChannelData and STUN on byte streams.  Every decoding failure is a
L{STUNDecodeError}.
"""

from turnrelay.stun.address import TransportAddress, unmapIPv4
from turnrelay.stun.message import (
    MAGIC_COOKIE,
    MessageClass,
    Method,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
)

__all__ = [
    "MAGIC_COOKIE",
    "MessageClass",
    "Method",
    "STUNDecodeError",
    "STUNMessage",
    "TransportAddress",
    "decodeMessage",
    "unmapIPv4",
]
