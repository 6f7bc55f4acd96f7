# -*- test-case-name: tests.test_stun_message -*-
"""
STUN messages: the header, the attribute list, integrity and FINGERPRINT.

L{decodeMessage} is total: whatever bytes it is given, it returns a
L{STUNMessage} or raises L{STUNDecodeError}, and its work is linear in the
input's length.  L{STUNMessage.encode} writes canonical bytes (zero padding,
integrity and FINGERPRINT last).  One concept, the message codec, in one
module.

@see: RFC 8489 sections 5, 6.3, 7, 14.5-14.7.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from enum import IntEnum
from typing import Any, Collection, Dict, FrozenSet, List, Optional, Tuple

from turnrelay.stun.attributes import (
    ATTRIBUTE_CODECS,
    DATA,
    ERROR_CODE,
    FINGERPRINT,
    MAGIC_COOKIE,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    XOR_PEER_ADDRESS,
    ErrorCode,
    isComprehensionRequired,
)
from turnrelay.stun.errors import STUNDecodeError

__all__ = [
    "MAGIC_COOKIE",
    "HEADER_SIZE",
    "MessageClass",
    "Method",
    "STUNDecodeError",
    "STUNMessage",
    "decodeMessage",
    "messageType",
    "splitMessageType",
    "isAllowedClass",
    "REASON_PHRASES",
    "encodeDataIndication",
]

HEADER_SIZE = 20
FINGERPRINT_XOR = 0x5354554E
MAX_BODY = 0xFFFC  # the largest multiple of 4 the 16-bit length can hold

_header = struct.Struct("!HHI")
_attributeHeader = struct.Struct("!HH")
_ZEROS = bytes(3)


class MessageClass(IntEnum):
    """
    The two class bits of a STUN message type (RFC 8489 section 5).
    """

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS_RESPONSE = 0b10
    ERROR_RESPONSE = 0b11


class Method(IntEnum):
    """
    STUN methods: Binding (RFC 8489), the TURN methods (RFC 8656) and the
    TCP allocation methods (RFC 6062).
    """

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


_TRANSACTIONS: FrozenSet[int] = frozenset(
    {MessageClass.REQUEST, MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE}
)
_INDICATIONS: FrozenSet[int] = frozenset({MessageClass.INDICATION})

_ALLOWED_CLASSES: Dict[int, FrozenSet[int]] = {
    Method.BINDING: frozenset(MessageClass),
    Method.ALLOCATE: _TRANSACTIONS,
    Method.REFRESH: _TRANSACTIONS,
    Method.SEND: _INDICATIONS,
    Method.DATA: _INDICATIONS,
    Method.CREATE_PERMISSION: _TRANSACTIONS,
    Method.CHANNEL_BIND: _TRANSACTIONS,
    Method.CONNECT: _TRANSACTIONS,
    Method.CONNECTION_BIND: _TRANSACTIONS,
    Method.CONNECTION_ATTEMPT: _INDICATIONS,
}

REASON_PHRASES: Dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}


def messageType(method: int, messageClass: int) -> int:
    """
    Interleave a 12-bit method and a 2-bit class into a message type.
    """
    return (
        (method & 0x000F)
        | (method & 0x0070) << 1
        | (method & 0x0F80) << 2
        | (messageClass & 0b01) << 4
        | (messageClass & 0b10) << 7
    )


def splitMessageType(value: int) -> Tuple[int, int]:
    """
    The inverse of L{messageType}.

    @return: C{(method, messageClass)}.
    """
    method = (value & 0x000F) | (value & 0x00E0) >> 1 | (value & 0x3E00) >> 2
    messageClass = (value & 0x0010) >> 4 | (value & 0x0100) >> 7
    return method, messageClass


def isAllowedClass(method: int, messageClass: int) -> bool:
    """
    @return: whether C{method} is a known method and may be sent with
        C{messageClass} (a Send request, say, may not).
    """
    allowed = _ALLOWED_CLASSES.get(method)
    return allowed is not None and messageClass in allowed


class STUNMessage:
    """
    A STUN message.

    C{attributes} holds every attribute up to the integrity attributes, in
    order, as C{(type, value)} pairs; the value is typed for the types in
    L{ATTRIBUTE_CODECS} and raw L{bytes} otherwise.  MESSAGE-INTEGRITY,
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are not in that list: a decoded
    message keeps them in their own attributes, and L{encode} computes them.

    Two messages are equal when their method, class, transaction ID and
    C{attributes} are.

    @ivar method: the method (see L{Method}).
    @ivar messageClass: the class (see L{MessageClass}).
    @ivar transactionID: 12 bytes.
    @ivar attributes: a list of C{(type, value)}.
    @ivar messageIntegrity: the received MESSAGE-INTEGRITY value, or L{None}.
    @ivar messageIntegritySHA256: the received MESSAGE-INTEGRITY-SHA256
        value, or L{None}.
    @ivar fingerprint: the received (and already checked) FINGERPRINT, or
        L{None}.
    """

    __slots__ = (
        "method",
        "messageClass",
        "transactionID",
        "attributes",
        "messageIntegrity",
        "messageIntegritySHA256",
        "fingerprint",
        "_raw",
        "_integrityOffset",
        "_integritySHA256Offset",
    )

    def __init__(
        self,
        method: int,
        messageClass: int,
        transactionID: bytes,
        attributes: Optional[List[Tuple[int, Any]]] = None,
    ) -> None:
        if len(transactionID) != 12:
            raise ValueError(f"transaction ID of {len(transactionID)} bytes, expected 12")
        self.method = method
        self.messageClass = messageClass
        self.transactionID = transactionID
        self.attributes: List[Tuple[int, Any]] = [] if attributes is None else attributes
        self.messageIntegrity: Optional[bytes] = None
        self.messageIntegritySHA256: Optional[bytes] = None
        self.fingerprint: Optional[int] = None
        self._raw: Optional[bytes] = None
        self._integrityOffset = -1
        self._integritySHA256Offset = -1

    def __repr__(self) -> str:
        try:
            method = Method(self.method).name
        except ValueError:
            method = f"0x{self.method:03X}"
        return (
            f"<STUNMessage {method} {MessageClass(self.messageClass).name}"
            f" {self.transactionID.hex()} {self.attributes!r}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, STUNMessage):
            return NotImplemented
        return (
            self.method == other.method
            and self.messageClass == other.messageClass
            and self.transactionID == other.transactionID
            and self.attributes == other.attributes
        )

    __hash__ = None  # type: ignore[assignment]

    def get(self, attributeType: int, default: Any = None) -> Any:
        """
        @return: the value of the first attribute of C{attributeType} (the
            only one that counts, RFC 8489 section 14), or C{default}.
        """
        for kind, value in self.attributes:
            if kind == attributeType:
                return value
        return default

    def getAll(self, attributeType: int) -> List[Any]:
        """
        @return: the values of every attribute of C{attributeType}, in order
            (several XOR-PEER-ADDRESSes in CreatePermission count).
        """
        return [value for kind, value in self.attributes if kind == attributeType]

    def __contains__(self, attributeType: object) -> bool:
        return any(kind == attributeType for kind, _ in self.attributes)

    def add(self, attributeType: int, value: Any) -> STUNMessage:
        """
        Append an attribute.

        @return: this message, so that calls can be chained.
        """
        self.attributes.append((attributeType, value))
        return self

    def unknownComprehensionRequired(self, understood: Collection[int]) -> List[int]:
        """
        @param understood: the attribute types the receiver implements.
        @return: each comprehension-required attribute type present that is
            not in C{understood}, once, in order of appearance.
        """
        unknown: List[int] = []
        for kind, _ in self.attributes:
            if isComprehensionRequired(kind) and kind not in understood and kind not in unknown:
                unknown.append(kind)
        return unknown

    # Integrity ---------------------------------------------------------------

    def verifyMessageIntegrity(self, key: bytes) -> bool:
        """
        Check the received MESSAGE-INTEGRITY (HMAC-SHA1) with C{key}.

        @return: C{False} when it does not match or the message has none.
        """
        if self._raw is None or self.messageIntegrity is None:
            return False
        expected = _mac(self._raw, self._integrityOffset, 20, key, hashlib.sha1)
        return hmac.compare_digest(expected, self.messageIntegrity)

    def verifyMessageIntegritySHA256(self, key: bytes) -> bool:
        """
        Check the received MESSAGE-INTEGRITY-SHA256 with C{key}.

        TURN defines no truncation, so only a full 32-byte value can pass.

        @return: C{False} when it does not match or the message has none.
        """
        value = self.messageIntegritySHA256
        if self._raw is None or value is None or len(value) != 32:
            return False
        expected = _mac(self._raw, self._integritySHA256Offset, 32, key, hashlib.sha256)
        return hmac.compare_digest(expected, value)

    # Encoding ----------------------------------------------------------------

    def encode(
        self, key: Optional[bytes] = None, sha256: bool = False, fingerprint: bool = False
    ) -> bytes:
        """
        Serialise this message.

        @param key: if given, add MESSAGE-INTEGRITY computed with it, or
            MESSAGE-INTEGRITY-SHA256 if C{sha256} is set.
        @param fingerprint: add FINGERPRINT, last.
        @raise ValueError: an attribute value cannot be encoded, an integrity
            attribute is in C{attributes}, or the message is too long.
        """
        tid = self.transactionID
        parts: List[bytes] = []
        for kind, value in self.attributes:
            if kind in _COMPUTED:
                raise ValueError(f"0x{kind:04X} is computed by encode(), not listed")
            codec = ATTRIBUTE_CODECS.get(kind)
            raw = value if codec is None else codec.encode(value, tid)
            size = len(raw)
            if size > MAX_BODY:
                raise ValueError(f"attribute 0x{kind:04X} of {size} bytes")
            parts.append(_attributeHeader.pack(kind, size))
            parts.append(raw)
            if size & 3:
                parts.append(_ZEROS[: 4 - (size & 3)])
        body = b"".join(parts)
        trailer = (0 if key is None else 36 if sha256 else 24) + (8 if fingerprint else 0)
        if len(body) + trailer > MAX_BODY:
            raise ValueError(f"message body of {len(body) + trailer} bytes")
        kindAndClass = messageType(self.method, self.messageClass)
        if key is not None:
            if sha256:
                kind, size, digest = MESSAGE_INTEGRITY_SHA256, 32, hashlib.sha256
            else:
                kind, size, digest = MESSAGE_INTEGRITY, 20, hashlib.sha1
            header = _header.pack(kindAndClass, len(body) + 4 + size, MAGIC_COOKIE) + tid
            mac = hmac.new(key, header + body, digest).digest()
            body += _attributeHeader.pack(kind, size) + mac
        if fingerprint:
            header = _header.pack(kindAndClass, len(body) + 8, MAGIC_COOKIE) + tid
            crc = zlib.crc32(body, zlib.crc32(header)) ^ FINGERPRINT_XOR
            body += struct.pack("!HHI", FINGERPRINT, 4, crc)
        return _header.pack(kindAndClass, len(body), MAGIC_COOKIE) + tid + body

    # Responses ---------------------------------------------------------------

    def successResponse(self, attributes: Optional[List[Tuple[int, Any]]] = None) -> STUNMessage:
        """
        @return: a success response to this request, same method and
            transaction ID.
        """
        return STUNMessage(
            self.method, MessageClass.SUCCESS_RESPONSE, self.transactionID, attributes
        )

    def errorResponse(self, code: int, reason: Optional[str] = None) -> STUNMessage:
        """
        @param code: the error code, for example 400.
        @param reason: the reason phrase; the RFC's for C{code} by default.
        @return: an error response to this request carrying ERROR-CODE.
        """
        if reason is None:
            reason = REASON_PHRASES.get(code, "")
        return STUNMessage(
            self.method,
            MessageClass.ERROR_RESPONSE,
            self.transactionID,
            [(ERROR_CODE, ErrorCode(code, reason))],
        )


_COMPUTED = frozenset({MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, FINGERPRINT})


def _mac(raw: bytes, offset: int, size: int, key: bytes, digest: Any) -> bytes:
    """
    The HMAC over everything before the integrity attribute at C{offset},
    with the header's length rewritten to end just after that attribute.
    """
    length = offset - HEADER_SIZE + 4 + size
    mac = hmac.new(key, raw[:2], digest)
    mac.update(struct.pack("!H", length))
    mac.update(raw[4:offset])
    return mac.digest()


def decodeMessage(data: bytes) -> STUNMessage:
    """
    Parse one STUN message.

    The message must fill C{data} exactly (RFC 8489 section 6.3: on UDP a
    datagram is one message).  Attributes after MESSAGE-INTEGRITY are
    ignored, except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT; after
    MESSAGE-INTEGRITY-SHA256 only FINGERPRINT counts (RFC 8489 sections 14.5
    and 14.6).  A FINGERPRINT is checked here, and must be last.

    @param data: the bytes.
    @return: the message.
    @raise STUNDecodeError: C{data} is not a well-formed STUN message.  When
        the header was sound and an attribute was not, the error carries the
        header's method, class and transaction ID; a bad FINGERPRINT means
        the bytes are not STUN at all, so that error carries none.
    """
    size = len(data)
    if size < HEADER_SIZE:
        raise STUNDecodeError(f"{size} bytes is shorter than a STUN header")
    kindAndClass, length, cookie = _header.unpack_from(data)
    if kindAndClass & 0xC000:
        raise STUNDecodeError("the top two bits of the message type are not zero")
    if cookie != MAGIC_COOKIE:
        raise STUNDecodeError("no magic cookie")
    if length & 3:
        raise STUNDecodeError(f"message length {length} is not a multiple of 4")
    if length + HEADER_SIZE != size:
        raise STUNDecodeError(f"message length {length} but {size - HEADER_SIZE} bytes follow")
    method, messageClass = splitMessageType(kindAndClass)
    tid = bytes(data[8:20])
    data = bytes(data)
    message = STUNMessage(method, messageClass, tid)
    attributes = message.attributes
    codecs = ATTRIBUTE_CODECS
    offset = HEADER_SIZE
    # What still counts: everything, then only the integrity attributes
    # (after MESSAGE-INTEGRITY), then only FINGERPRINT.
    afterIntegrity = afterSHA256 = False
    header = (method, messageClass, tid)

    while offset < size:
        kind, valueLength = _attributeHeader.unpack_from(data, offset)
        start = offset + 4
        end = start + valueLength
        if end > size:
            raise STUNDecodeError(
                f"attribute 0x{kind:04X} of {valueLength} bytes runs past the end", *header
            )
        value = data[start:end]
        if kind == FINGERPRINT:
            if end + (-valueLength % 4) != size:
                raise STUNDecodeError("FINGERPRINT is not the last attribute", *header)
            if valueLength != 4:
                raise STUNDecodeError(f"FINGERPRINT of {valueLength} bytes", *header)
            received = int.from_bytes(value, "big")
            if zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR != received:
                raise STUNDecodeError("FINGERPRINT mismatch")
            message.fingerprint = received
        elif kind == MESSAGE_INTEGRITY_SHA256 and not afterSHA256:
            if valueLength not in (16, 20, 24, 28, 32):
                raise STUNDecodeError(f"MESSAGE-INTEGRITY-SHA256 of {valueLength} bytes", *header)
            message.messageIntegritySHA256 = value
            message._integritySHA256Offset = offset
            afterIntegrity = afterSHA256 = True
        elif kind == MESSAGE_INTEGRITY and not afterIntegrity:
            if valueLength != 20:
                raise STUNDecodeError(f"MESSAGE-INTEGRITY of {valueLength} bytes", *header)
            message.messageIntegrity = value
            message._integrityOffset = offset
            afterIntegrity = True
        elif not afterIntegrity:
            codec = codecs.get(kind)
            if codec is not None:
                try:
                    value = codec.decode(value, tid)
                except STUNDecodeError as e:
                    raise STUNDecodeError(e.reason, *header) from None
            attributes.append((kind, value))
        offset = end + (-valueLength % 4)
    message._raw = data
    return message


_DATA_INDICATION = messageType(Method.DATA, MessageClass.INDICATION)
_dataHeader = struct.Struct("!HHI12s").pack
_dataAttributeHeader = _attributeHeader.pack
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")
_peerAttributes: Dict[Tuple[str, int], bytes] = {}


def encodeDataIndication(transactionID: bytes, peer: Tuple[str, int], payload: bytes) -> bytes:
    """
    Encode a Data indication (XOR-PEER-ADDRESS and DATA), the message a relay
    sends for every peer datagram without a channel.

    The bytes are those of the equivalent L{STUNMessage}'s C{encode()}; this
    only skips the generic machinery, and reuses the XOR-PEER-ADDRESS of IPv4
    peers, which does not depend on the transaction ID.

    @see: RFC 8656 section 11.4.
    """
    attribute = _peerAttributes.get(peer)
    if attribute is None:
        value = ATTRIBUTE_CODECS[XOR_PEER_ADDRESS].encode(peer, transactionID)
        attribute = _attributeHeader.pack(XOR_PEER_ADDRESS, len(value)) + value
        if len(value) == 8:
            if len(_peerAttributes) >= 4096:
                _peerAttributes.clear()
            _peerAttributes[peer] = attribute
    size = len(payload)
    padding = _PADDING[size & 3]
    length = len(attribute) + 4 + size + len(padding)
    if length > MAX_BODY:
        raise ValueError(f"Data indication body of {length} bytes")
    return b"".join(
        (
            _dataHeader(_DATA_INDICATION, length, MAGIC_COOKIE, transactionID),
            attribute,
            _dataAttributeHeader(DATA, size),
            payload,
            padding,
        )
    )
