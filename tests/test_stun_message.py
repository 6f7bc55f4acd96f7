"""
Tests for L{turnrelay.stun.message}: the header, message types, the
attribute list, the placement of the integrity attributes and FINGERPRINT,
encoding, responses and equality.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from typing import Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import (
    DATA,
    ERROR_CODE,
    FINGERPRINT,
    LIFETIME,
    MAGIC_COOKIE,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    REALM,
    SOFTWARE,
    XOR_PEER_ADDRESS,
    ErrorCode,
)
from turnrelay.stun.message import (
    REASON_PHRASES,
    MessageClass,
    Method,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
    isAllowedClass,
    messageType,
    splitMessageType,
)

TID = bytes(range(1, 13))
KEY = b"a shared secret"
UNKNOWN_REQUIRED = 0x7FF0
UNKNOWN_OPTIONAL = 0xFFF0

REQUEST = MessageClass.REQUEST
INDICATION = MessageClass.INDICATION
SUCCESS = MessageClass.SUCCESS_RESPONSE
ERROR = MessageClass.ERROR_RESPONSE

# The message-type table of the checklist (RFC 8489 section 5, RFC 8656
# section 17, RFC 6062): every class each method may use, with its type.
MESSAGE_TYPES: Dict[Method, Dict[MessageClass, int]] = {
    Method.BINDING: {REQUEST: 0x0001, INDICATION: 0x0011, SUCCESS: 0x0101, ERROR: 0x0111},
    Method.ALLOCATE: {REQUEST: 0x0003, SUCCESS: 0x0103, ERROR: 0x0113},
    Method.REFRESH: {REQUEST: 0x0004, SUCCESS: 0x0104, ERROR: 0x0114},
    Method.SEND: {INDICATION: 0x0016},
    Method.DATA: {INDICATION: 0x0017},
    Method.CREATE_PERMISSION: {REQUEST: 0x0008, SUCCESS: 0x0108, ERROR: 0x0118},
    Method.CHANNEL_BIND: {REQUEST: 0x0009, SUCCESS: 0x0109, ERROR: 0x0119},
    Method.CONNECT: {REQUEST: 0x000A, SUCCESS: 0x010A, ERROR: 0x011A},
    Method.CONNECTION_BIND: {REQUEST: 0x000B, SUCCESS: 0x010B, ERROR: 0x011B},
    Method.CONNECTION_ATTEMPT: {INDICATION: 0x001C},
}


def _attribute(kind: int, value: bytes, padding: int = 0) -> bytes:
    """
    Serialise one attribute by hand.

    @param padding: the byte value to pad with.
    """
    return struct.pack("!HH", kind, len(value)) + value + bytes([padding]) * (-len(value) % 4)


def _message(body: bytes, kind: int = 0x0001, length: int | None = None) -> bytes:
    """
    Serialise a message by hand.

    @param length: the length field, the body's length by default.
    """
    if length is None:
        length = len(body)
    return struct.pack("!HHI", kind, length, MAGIC_COOKIE) + TID + body


def _withLength(data: bytes, length: int) -> bytes:
    """
    @return: C{data} with its header length field replaced.
    """
    return data[:2] + struct.pack("!H", length) + data[4:]


def _appendIntegrity(data: bytes, key: bytes, sha256: bool = False) -> bytes:
    """
    Append MESSAGE-INTEGRITY (or -SHA256) to an encoded message, computed as
    RFC 8489 sections 14.5 and 14.6 say, independently of the codec.
    """
    kind, size, digest = (
        (MESSAGE_INTEGRITY_SHA256, 32, hashlib.sha256)
        if sha256
        else (MESSAGE_INTEGRITY, 20, hashlib.sha1)
    )
    adjusted = _withLength(data, len(data) - 20 + 4 + size)
    mac = hmac.new(key, adjusted, digest).digest()
    return adjusted + struct.pack("!HH", kind, size) + mac


def _appendFingerprint(data: bytes) -> bytes:
    """
    Append FINGERPRINT to an encoded message (RFC 8489 section 14.7).
    """
    adjusted = _withLength(data, len(data) - 20 + 8)
    crc = zlib.crc32(adjusted) ^ 0x5354554E
    return adjusted + struct.pack("!HHI", FINGERPRINT, 4, crc)


def _appendAttribute(data: bytes, kind: int, value: bytes) -> bytes:
    """
    Append an attribute to an encoded message, fixing the header length.
    """
    extended = data + _attribute(kind, value)
    return _withLength(extended, len(extended) - 20)


class HeaderTests(SynchronousTestCase):
    """
    The 20-byte header rules (RFC 8489 section 5; checklist items 5 and 6).
    """

    def assertHeaderRejected(self, data: bytes) -> None:
        """
        Assert that C{data} is rejected, with no header information in the
        error because the header itself is unsound.
        """
        error = self.assertRaises(STUNDecodeError, decodeMessage, data)
        self.assertIsNone(error.method)
        self.assertIsNone(error.messageClass)
        self.assertIsNone(error.transactionID)

    def test_headerOnly(self) -> None:
        """
        A 20-byte message with length 0 decodes, with no attributes
        (RFC 8489 section 5).
        """
        message = decodeMessage(_message(b""))
        self.assertEqual(message.method, Method.BINDING)
        self.assertEqual(message.messageClass, REQUEST)
        self.assertEqual(message.transactionID, TID)
        self.assertEqual(message.attributes, [])
        self.assertIsNone(message.messageIntegrity)
        self.assertIsNone(message.messageIntegritySHA256)
        self.assertIsNone(message.fingerprint)

    def test_shorterThanHeader(self) -> None:
        """
        Fewer than 20 bytes are not a STUN message (checklist item 6).
        """
        header = _message(b"")
        for size in range(20):
            self.assertHeaderRejected(header[:size])

    def test_topBits(self) -> None:
        """
        A message type with either of its top two bits set is not STUN
        (RFC 8489 section 5; checklist item 5).
        """
        for kind in (0x4001, 0x8001, 0xC001, 0x4000, 0x8111):
            self.assertHeaderRejected(_message(b"", kind=kind))

    def test_magicCookie(self) -> None:
        """
        A message without the magic cookie 0x2112A442 is not STUN
        (RFC 8489 section 5; checklist item 5).
        """
        data = _message(b"")
        for cookie in (b"\x00\x00\x00\x00", b"\x21\x12\xa4\x43", b"\x42\xa4\x12\x21"):
            self.assertHeaderRejected(data[:4] + cookie + data[8:])

    def test_lengthMultipleOfFour(self) -> None:
        """
        A length field that is not a multiple of 4 is rejected even when
        that many bytes follow (RFC 8489 section 5; checklist item 6).
        """
        for length in (1, 2, 3, 5, 6, 7):
            self.assertHeaderRejected(_message(bytes(length)))

    def test_lengthMustMatch(self) -> None:
        """
        The length field must match the bytes that follow exactly: neither
        a truncated message nor trailing bytes are accepted (checklist item 6).
        """
        body = _attribute(LIFETIME, b"\x00\x00\x02\x58")
        for length in (0, 4, 12, 16, 0xFFFC):
            self.assertHeaderRejected(_message(body, length=length))
        self.assertEqual(decodeMessage(_message(body, length=8)).get(LIFETIME), 600)


class MessageTypeTests(SynchronousTestCase):
    """
    The interleaving of method and class bits and the classes each method
    allows (RFC 8489 section 5; checklist items 7 and 8).
    """

    def test_table(self) -> None:
        """
        Every method and class of the checklist's table has the listed
        message type, in both directions.
        """
        for method, types in MESSAGE_TYPES.items():
            for messageClass, value in types.items():
                self.assertEqual(messageType(method, messageClass), value)
                self.assertEqual(splitMessageType(value), (method, messageClass))

    def test_examples(self) -> None:
        """
        Allocate request 0x0003, success 0x0103, error 0x0113, Send
        indication 0x0016 and ConnectionAttempt indication 0x001C.
        """
        self.assertEqual(messageType(Method.ALLOCATE, REQUEST), 0x0003)
        self.assertEqual(messageType(Method.ALLOCATE, SUCCESS), 0x0103)
        self.assertEqual(messageType(Method.ALLOCATE, ERROR), 0x0113)
        self.assertEqual(messageType(Method.SEND, INDICATION), 0x0016)
        self.assertEqual(messageType(Method.CONNECTION_ATTEMPT, INDICATION), 0x001C)

    def test_decodedHeader(self) -> None:
        """
        Each message type of the table decodes to its method and class.
        """
        for method, types in MESSAGE_TYPES.items():
            for messageClass, value in types.items():
                message = decodeMessage(_message(b"", kind=value))
                self.assertEqual((message.method, message.messageClass), (method, messageClass))

    def test_roundTripAll(self) -> None:
        """
        Every 12-bit method and 2-bit class survives L{messageType} then
        L{splitMessageType}, and the top two bits stay zero.
        """
        for method in range(0x1000):
            for messageClass in range(4):
                value = messageType(method, messageClass)
                self.assertEqual(value & 0xC000, 0)
                self.assertEqual(splitMessageType(value), (method, messageClass))

    def test_allowedClasses(self) -> None:
        """
        Each method allows exactly the classes of the table (checklist
        item 8).
        """
        for method, types in MESSAGE_TYPES.items():
            for messageClass in MessageClass:
                self.assertEqual(
                    isAllowedClass(method, messageClass),
                    messageClass in types,
                    (method, messageClass),
                )

    def test_disallowedExamples(self) -> None:
        """
        A Send request and an Allocate indication are not allowed
        (checklist item 8).
        """
        self.assertFalse(isAllowedClass(Method.SEND, REQUEST))
        self.assertFalse(isAllowedClass(Method.ALLOCATE, INDICATION))
        self.assertTrue(isAllowedClass(Method.BINDING, INDICATION))

    def test_unknownMethod(self) -> None:
        """
        An unknown method, including the reserved SharedSecret 0x002, allows
        no class (checklist item 8).
        """
        for method in (0x000, 0x002, 0x005, 0x00D, 0x0FF, 0xFFF):
            for messageClass in MessageClass:
                self.assertFalse(isAllowedClass(method, messageClass))

    def test_unknownMethodDecodes(self) -> None:
        """
        A message with an unknown method still decodes; discarding it is the
        caller's decision.
        """
        message = decodeMessage(_message(b"", kind=messageType(0x0FF, INDICATION)))
        self.assertEqual((message.method, message.messageClass), (0x0FF, INDICATION))


class AttributeListTests(SynchronousTestCase):
    """
    The attribute list: bounds, padding, duplicates and unknown types
    (RFC 8489 sections 14 and 15; checklist items 10 to 13).
    """

    def assertMalformed(self, data: bytes) -> STUNDecodeError:
        """
        Assert that C{data} is rejected with the header's method, class and
        transaction ID in the error, so that a request can get a 400.
        """
        error = self.assertRaises(STUNDecodeError, decodeMessage, data)
        method, messageClass = splitMessageType(int.from_bytes(data[:2], "big"))
        self.assertEqual(error.method, method)
        self.assertEqual(error.messageClass, messageClass)
        self.assertEqual(error.transactionID, TID)
        return error

    def test_runsPastEnd(self) -> None:
        """
        An attribute whose length runs past the end of the message is an
        error that carries the header (checklist item 10).
        """
        value = _attribute(SOFTWARE, b"abcdefgh")
        body = value[:2] + b"\x00\x0c" + value[4:]
        self.assertMalformed(_message(body, kind=0x0003))
        body = value[:2] + b"\xff\xff" + value[4:]
        self.assertMalformed(_message(body, kind=0x0016))
        first = _attribute(LIFETIME, b"\x00\x00\x02\x58")
        self.assertMalformed(_message(first + body, kind=0x0113))

    def test_paddingRunsPastEnd(self) -> None:
        """
        The header length counts padding, so an attribute whose value fits
        but whose padding would not cannot occur: the length is a multiple
        of 4 (RFC 8489 section 14).
        """
        body = struct.pack("!HH", SOFTWARE, 5) + b"abcde"
        self.assertRaises(STUNDecodeError, decodeMessage, _message(body))
        self.assertEqual(decodeMessage(_message(body + bytes(3))).get(SOFTWARE), "abcde")

    def test_malformedValue(self) -> None:
        """
        A known attribute with a malformed value is an error that carries the
        header (checklist item 10).
        """
        error = self.assertMalformed(_message(_attribute(LIFETIME, b"\x00\x02\x58"), kind=0x0004))
        self.assertIn("LIFETIME", error.reason)

    def test_paddingContentIgnored(self) -> None:
        """
        Padding bytes are ignored whatever their value (RFC 8489 section 14;
        checklist item 10).
        """
        for padding in (0x00, 0x20, 0xFF):
            body = _attribute(SOFTWARE, b"abcde", padding) + _attribute(LIFETIME, bytes(4))
            message = decodeMessage(_message(body))
            self.assertEqual(message.attributes, [(SOFTWARE, "abcde"), (LIFETIME, 0)])

    def test_duplicates(self) -> None:
        """
        Duplicates are kept: C{get} returns the first, C{getAll} all of them
        in order (RFC 8489 section 14; RFC 8656 section 10.2; checklist item 13).
        """
        first = TransportAddress("192.0.2.1", 1000)
        second = TransportAddress("2001:db8::1", 2000)
        message = STUNMessage(Method.CREATE_PERMISSION, REQUEST, TID)
        message.add(XOR_PEER_ADDRESS, first).add(LIFETIME, 5).add(XOR_PEER_ADDRESS, second)
        decoded = decodeMessage(message.encode())
        self.assertEqual(decoded.get(XOR_PEER_ADDRESS), first)
        self.assertEqual(decoded.getAll(XOR_PEER_ADDRESS), [first, second])
        self.assertEqual(decoded.getAll(REALM), [])
        self.assertIsNone(decoded.get(REALM))
        self.assertEqual(decoded.get(REALM, "default"), "default")
        self.assertIn(XOR_PEER_ADDRESS, decoded)
        self.assertNotIn(REALM, decoded)

    def test_unknownKeptRaw(self) -> None:
        """
        Unknown attributes are kept as raw bytes, and re-encoded with zero
        padding.
        """
        body = (
            _attribute(UNKNOWN_REQUIRED, b"abc")
            + _attribute(UNKNOWN_OPTIONAL, b"")
            + _attribute(0x0002, b"\x01\x02\x03\x04\x05")
        )
        data = _message(body)
        message = decodeMessage(data)
        self.assertEqual(
            message.attributes,
            [
                (UNKNOWN_REQUIRED, b"abc"),
                (UNKNOWN_OPTIONAL, b""),
                (0x0002, b"\x01\x02\x03\x04\x05"),
            ],
        )
        self.assertEqual(message.encode(), data)

    def test_unknownComprehensionRequired(self) -> None:
        """
        C{unknownComprehensionRequired} lists each comprehension-required type
        (below 0x8000) not understood, once, in order of appearance
        (RFC 8489 sections 6.3.1 and 14; checklist items 11 and 12).
        """
        message = STUNMessage(Method.ALLOCATE, REQUEST, TID)
        message.add(UNKNOWN_REQUIRED, b"x").add(UNKNOWN_OPTIONAL, b"").add(LIFETIME, 600)
        message.add(0x0024, 1).add(UNKNOWN_REQUIRED, b"y").add(0x8000, 2).add(0x7FFF, b"")
        self.assertEqual(
            message.unknownComprehensionRequired({LIFETIME}), [UNKNOWN_REQUIRED, 0x0024, 0x7FFF]
        )
        self.assertEqual(
            message.unknownComprehensionRequired({LIFETIME, 0x0024, 0x7FFF, UNKNOWN_REQUIRED}), []
        )
        self.assertEqual(
            STUNMessage(Method.BINDING, REQUEST, TID).unknownComprehensionRequired(()), []
        )


class IntegrityPlacementTests(SynchronousTestCase):
    """
    Where MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT may
    appear and what follows them (RFC 8489 sections 14.5 to 14.7; checklist
    items 14 and 18).
    """

    def setUp(self) -> None:
        self.message = STUNMessage(Method.ALLOCATE, REQUEST, TID, [(LIFETIME, 600)])
        self.plain = self.message.encode()

    def test_afterMessageIntegrityIgnored(self) -> None:
        """
        Attributes after MESSAGE-INTEGRITY are ignored, and the integrity
        still verifies (RFC 8489 section 14.5; checklist item 14).
        """
        data = _appendIntegrity(self.plain, KEY)
        data = _appendAttribute(data, SOFTWARE, b"ignored")
        data = _appendAttribute(data, LIFETIME, b"bad")
        data = _appendAttribute(data, MESSAGE_INTEGRITY, bytes(20))
        message = decodeMessage(data)
        self.assertEqual(message.attributes, [(LIFETIME, 600)])
        self.assertTrue(message.verifyMessageIntegrity(KEY))
        self.assertIsNone(message.messageIntegritySHA256)

    def test_sha256AfterMessageIntegrity(self) -> None:
        """
        MESSAGE-INTEGRITY-SHA256 and FINGERPRINT after MESSAGE-INTEGRITY still
        count, and both integrity values verify (RFC 8489 section 14.5).
        """
        data = _appendIntegrity(self.plain, KEY)
        data = _appendIntegrity(data, KEY, sha256=True)
        data = _appendFingerprint(data)
        message = decodeMessage(data)
        self.assertEqual(message.attributes, [(LIFETIME, 600)])
        self.assertTrue(message.verifyMessageIntegrity(KEY))
        self.assertTrue(message.verifyMessageIntegritySHA256(KEY))
        self.assertIsNotNone(message.fingerprint)

    def test_afterSHA256OnlyFingerprint(self) -> None:
        """
        After MESSAGE-INTEGRITY-SHA256 everything but FINGERPRINT is ignored,
        a later MESSAGE-INTEGRITY included (RFC 8489 section 14.6; checklist
        item 14).
        """
        data = _appendIntegrity(self.plain, KEY, sha256=True)
        data = _appendIntegrity(data, KEY)
        data = _appendIntegrity(data, b"another key", sha256=True)
        data = _appendAttribute(data, SOFTWARE, b"ignored")
        data = _appendFingerprint(data)
        message = decodeMessage(data)
        self.assertEqual(message.attributes, [(LIFETIME, 600)])
        self.assertIsNone(message.messageIntegrity)
        self.assertFalse(message.verifyMessageIntegrity(KEY))
        self.assertTrue(message.verifyMessageIntegritySHA256(KEY))
        self.assertIsNotNone(message.fingerprint)

    def test_codecMatchesIndependentIntegrity(self) -> None:
        """
        C{encode} computes the same MESSAGE-INTEGRITY, -SHA256 and
        FINGERPRINT as an independent implementation of RFC 8489 sections
        14.5 to 14.7.
        """
        self.assertEqual(
            self.message.encode(KEY, fingerprint=True),
            _appendFingerprint(_appendIntegrity(self.plain, KEY)),
        )
        self.assertEqual(
            self.message.encode(KEY, sha256=True),
            _appendIntegrity(self.plain, KEY, sha256=True),
        )

    def test_fingerprintNotLast(self) -> None:
        """
        A FINGERPRINT followed by anything is an error carrying the header
        (RFC 8489 section 14.7; checklist item 18).
        """
        data = _appendAttribute(_appendFingerprint(self.plain), SOFTWARE, b"x")
        error = self.assertRaises(STUNDecodeError, decodeMessage, data)
        self.assertEqual(error.transactionID, TID)
        data = _appendAttribute(_appendFingerprint(self.plain), UNKNOWN_OPTIONAL, b"")
        self.assertRaises(STUNDecodeError, decodeMessage, data)

    def test_badFingerprint(self) -> None:
        """
        A wrong FINGERPRINT is an error without header information, since
        the bytes are then not STUN at all (RFC 8489 sections 7 and 6.3).
        """
        data = bytearray(_appendFingerprint(self.plain))
        data[-1] ^= 0x01
        error = self.assertRaises(STUNDecodeError, decodeMessage, bytes(data))
        self.assertIsNone(error.method)
        self.assertIsNone(error.messageClass)
        self.assertIsNone(error.transactionID)

    def test_fingerprintWrongLength(self) -> None:
        """
        A FINGERPRINT that is not 4 bytes long is an error.
        """
        data = _appendAttribute(self.plain, FINGERPRINT, bytes(8))
        self.assertRaises(STUNDecodeError, decodeMessage, data)
        data = _appendAttribute(self.plain, FINGERPRINT, b"")
        self.assertRaises(STUNDecodeError, decodeMessage, data)

    def test_fingerprintValue(self) -> None:
        """
        The decoded message holds the FINGERPRINT value received (RFC 8489
        section 14.7).
        """
        data = _appendFingerprint(self.plain)
        self.assertEqual(decodeMessage(data).fingerprint, int.from_bytes(data[-4:], "big"))

    def test_integrityWrongLength(self) -> None:
        """
        MESSAGE-INTEGRITY of other than 20 bytes, or MESSAGE-INTEGRITY-SHA256
        of other than 16, 20, 24, 28 or 32 bytes, is an error (RFC 8489
        sections 14.5 and 14.6).
        """
        for size in (0, 16, 19, 21, 32):
            data = _appendAttribute(self.plain, MESSAGE_INTEGRITY, bytes(size))
            self.assertRaises(STUNDecodeError, decodeMessage, data)
        for size in (0, 12, 15, 17, 36):
            data = _appendAttribute(self.plain, MESSAGE_INTEGRITY_SHA256, bytes(size))
            self.assertRaises(STUNDecodeError, decodeMessage, data)

    def test_truncatedSHA256NeverVerifies(self) -> None:
        """
        A truncated MESSAGE-INTEGRITY-SHA256 decodes but never verifies, since
        TURN defines no truncation (checklist item 34).
        """
        full = _appendIntegrity(self.plain, KEY, sha256=True)
        truncated = self.plain + struct.pack("!HH", MESSAGE_INTEGRITY_SHA256, 16) + full[-32:-16]
        truncated = _withLength(truncated, len(truncated) - 20)
        message = decodeMessage(truncated)
        self.assertEqual(len(message.messageIntegritySHA256 or b""), 16)
        self.assertFalse(message.verifyMessageIntegritySHA256(KEY))

    def test_wrongKey(self) -> None:
        """
        Integrity computed with one key does not verify with another.
        """
        message = decodeMessage(self.message.encode(KEY))
        self.assertFalse(message.verifyMessageIntegrity(KEY + b"!"))
        message = decodeMessage(self.message.encode(KEY, sha256=True))
        self.assertFalse(message.verifyMessageIntegritySHA256(b""))

    def test_builtMessageDoesNotVerify(self) -> None:
        """
        A message that was built rather than decoded has no received
        integrity, so verification fails.
        """
        self.assertFalse(self.message.verifyMessageIntegrity(KEY))
        self.assertFalse(self.message.verifyMessageIntegritySHA256(KEY))
        self.assertFalse(decodeMessage(self.plain).verifyMessageIntegrity(KEY))


class EncodeTests(SynchronousTestCase):
    """
    L{STUNMessage.encode} writes canonical bytes.
    """

    def test_exactBytes(self) -> None:
        """
        A message encodes to its header followed by each attribute, padded
        with zeros (RFC 8489 sections 5 and 14).
        """
        message = STUNMessage(Method.ALLOCATE, SUCCESS, TID)
        message.add(SOFTWARE, "abcde").add(LIFETIME, 600).add(UNKNOWN_OPTIONAL, b"\xff")
        expected = (
            b"\x01\x03\x00\x1c\x21\x12\xa4\x42"
            + TID
            + b"\x80\x22\x00\x05abcde\x00\x00\x00"
            + b"\x00\x0d\x00\x04\x00\x00\x02\x58"
            + b"\xff\xf0\x00\x01\xff\x00\x00\x00"
        )
        self.assertEqual(message.encode(), expected)

    def test_integrityAndFingerprintLast(self) -> None:
        """
        With a key and FINGERPRINT, the integrity attribute comes after the
        listed attributes and FINGERPRINT last (RFC 8489 section 14.7).
        """
        message = STUNMessage(Method.REFRESH, REQUEST, TID, [(LIFETIME, 0)])
        data = message.encode(KEY, fingerprint=True)
        self.assertEqual(len(data), 20 + 8 + 24 + 8)
        self.assertEqual(data[28:32], b"\x00\x08\x00\x14")
        self.assertEqual(data[52:56], b"\x80\x28\x00\x04")
        data = message.encode(KEY, sha256=True, fingerprint=True)
        self.assertEqual(len(data), 20 + 8 + 36 + 8)
        self.assertEqual(data[28:32], b"\x00\x1c\x00\x20")
        data = message.encode(fingerprint=True)
        self.assertEqual(len(data), 20 + 8 + 8)
        self.assertTrue(decodeMessage(data).fingerprint is not None)

    def test_sha256FlagWithoutKey(self) -> None:
        """
        C{sha256} without a key adds nothing.
        """
        message = STUNMessage(Method.BINDING, REQUEST, TID)
        self.assertEqual(message.encode(sha256=True), message.encode())

    def test_refusesComputedAttributes(self) -> None:
        """
        MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT cannot be
        listed: C{encode} computes them.
        """
        for kind, value in (
            (MESSAGE_INTEGRITY, bytes(20)),
            (MESSAGE_INTEGRITY_SHA256, bytes(32)),
            (FINGERPRINT, 0),
        ):
            message = STUNMessage(Method.BINDING, REQUEST, TID, [(kind, value)])
            self.assertRaises(ValueError, message.encode)

    def test_largestMessage(self) -> None:
        """
        A message whose body is 65532 bytes, the largest multiple of 4 the
        length field holds, encodes and decodes (RFC 8489 section 5).
        """
        message = STUNMessage(Method.SEND, INDICATION, TID, [(DATA, bytes(65528))])
        data = message.encode()
        self.assertEqual(len(data), 20 + 65532)
        self.assertEqual(decodeMessage(data), message)
        message = STUNMessage(Method.SEND, INDICATION, TID, [(DATA, bytes(65492))])
        self.assertEqual(len(message.encode(KEY, sha256=True)), 20 + 65532)

    def test_refusesTooLong(self) -> None:
        """
        A message too long for the 16-bit length field is refused with
        ValueError, whether the excess comes from attributes, the integrity
        attribute or FINGERPRINT.
        """
        message = STUNMessage(Method.SEND, INDICATION, TID, [(DATA, bytes(65529))])
        self.assertRaises(ValueError, message.encode)
        message = STUNMessage(Method.SEND, INDICATION, TID, [(DATA, bytes(65533))])
        self.assertRaises(ValueError, message.encode)
        message = STUNMessage(Method.SEND, INDICATION, TID, [(DATA, bytes(65504))])
        self.assertEqual(len(message.encode(KEY)), 20 + 65532)
        self.assertRaises(ValueError, message.encode, KEY, True)
        message = STUNMessage(Method.SEND, INDICATION, TID, [(DATA, bytes(65520))])
        self.assertEqual(len(message.encode(fingerprint=True)), 20 + 65532)
        self.assertRaises(ValueError, message.encode, KEY)
        message = STUNMessage(Method.SEND, INDICATION, TID, [(DATA, bytes(65524))])
        self.assertRaises(ValueError, message.encode, None, False, True)
        message = STUNMessage(
            Method.SEND, INDICATION, TID, [(DATA, bytes(30000)), (DATA, bytes(30000))]
        )
        self.assertEqual(len(message.encode()), 20 + 60008)
        message.add(DATA, bytes(5600))
        self.assertRaises(ValueError, message.encode)

    def test_refusesBadValue(self) -> None:
        """
        A value its attribute cannot carry makes C{encode} raise ValueError.
        """
        message = STUNMessage(Method.ALLOCATE, REQUEST, TID, [(LIFETIME, 2**32)])
        self.assertRaises(ValueError, message.encode)
        message = STUNMessage(Method.ALLOCATE, REQUEST, TID, [(REALM, "r" * 128)])
        self.assertRaises(ValueError, message.encode)

    def test_transactionIDLength(self) -> None:
        """
        A transaction ID must be 12 bytes (RFC 8489 section 5).
        """
        self.assertRaises(ValueError, STUNMessage, Method.BINDING, REQUEST, bytes(11))
        self.assertRaises(ValueError, STUNMessage, Method.BINDING, REQUEST, bytes(16))

    def test_addChains(self) -> None:
        """
        C{add} appends and returns the message.
        """
        message = STUNMessage(Method.BINDING, REQUEST, TID)
        self.assertIs(message.add(LIFETIME, 1), message)
        self.assertEqual(message.attributes, [(LIFETIME, 1)])


class ResponseTests(SynchronousTestCase):
    """
    L{STUNMessage.successResponse} and L{STUNMessage.errorResponse}.
    """

    def setUp(self) -> None:
        self.request = STUNMessage(Method.CHANNEL_BIND, REQUEST, TID, [(LIFETIME, 1)])

    def test_successResponse(self) -> None:
        """
        A success response has the request's method and transaction ID
        (RFC 8489 section 6.3.1; checklist item 9).
        """
        response = self.request.successResponse()
        self.assertEqual(response.method, Method.CHANNEL_BIND)
        self.assertEqual(response.messageClass, SUCCESS)
        self.assertEqual(response.transactionID, TID)
        self.assertEqual(response.attributes, [])
        attributes: List[Tuple[int, object]] = [(LIFETIME, 600)]
        self.assertEqual(self.request.successResponse(attributes).attributes, [(LIFETIME, 600)])

    def test_errorResponse(self) -> None:
        """
        An error response carries ERROR-CODE with the RFC's reason phrase by
        default (RFC 8489 section 14.8; checklist error-code table).
        """
        response = self.request.errorResponse(437)
        self.assertEqual(response.method, Method.CHANNEL_BIND)
        self.assertEqual(response.messageClass, ERROR)
        self.assertEqual(response.transactionID, TID)
        self.assertEqual(response.attributes, [(ERROR_CODE, ErrorCode(437, "Allocation Mismatch"))])
        self.assertEqual(response.get(ERROR_CODE).reason, "Allocation Mismatch")

    def test_reasonPhrases(self) -> None:
        """
        The default reason phrases are those of the checklist's error-code
        table, and each error response survives encoding.
        """
        expected = {
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
        self.assertEqual(REASON_PHRASES, expected)
        for code, reason in expected.items():
            response = self.request.errorResponse(code)
            self.assertEqual(response.get(ERROR_CODE), ErrorCode(code, reason))
            self.assertEqual(decodeMessage(response.encode(KEY)), response)

    def test_customAndUnknownReason(self) -> None:
        """
        An explicit reason replaces the default; a code with no known phrase
        gets an empty one.
        """
        response = self.request.errorResponse(400, "Missing CHANNEL-NUMBER")
        self.assertEqual(response.get(ERROR_CODE), ErrorCode(400, "Missing CHANNEL-NUMBER"))
        self.assertEqual(self.request.errorResponse(499).get(ERROR_CODE), ErrorCode(499, ""))


class EqualityTests(SynchronousTestCase):
    """
    Messages compare by method, class, transaction ID and attributes.
    """

    def setUp(self) -> None:
        self.message = STUNMessage(Method.REFRESH, REQUEST, TID, [(LIFETIME, 600)])

    def test_equal(self) -> None:
        """
        Messages with the same method, class, transaction ID and attributes
        are equal.
        """
        other = STUNMessage(Method.REFRESH, REQUEST, TID, [(LIFETIME, 600)])
        self.assertEqual(self.message, other)
        self.assertFalse(self.message != other)

    def test_integrityIgnored(self) -> None:
        """
        Received integrity values and FINGERPRINT do not take part in
        equality.
        """
        self.assertEqual(decodeMessage(self.message.encode(KEY, fingerprint=True)), self.message)
        self.assertEqual(decodeMessage(self.message.encode(KEY, sha256=True)), self.message)

    def test_different(self) -> None:
        """
        A different method, class, transaction ID, attribute value or
        attribute order makes messages unequal.
        """
        cases = [
            STUNMessage(Method.ALLOCATE, REQUEST, TID, [(LIFETIME, 600)]),
            STUNMessage(Method.REFRESH, SUCCESS, TID, [(LIFETIME, 600)]),
            STUNMessage(Method.REFRESH, REQUEST, bytes(12), [(LIFETIME, 600)]),
            STUNMessage(Method.REFRESH, REQUEST, TID, [(LIFETIME, 0)]),
            STUNMessage(Method.REFRESH, REQUEST, TID, []),
        ]
        for other in cases:
            self.assertNotEqual(self.message, other)
        first = STUNMessage(Method.REFRESH, REQUEST, TID, [(LIFETIME, 1), (SOFTWARE, "x")])
        second = STUNMessage(Method.REFRESH, REQUEST, TID, [(SOFTWARE, "x"), (LIFETIME, 1)])
        self.assertNotEqual(first, second)

    def test_otherTypes(self) -> None:
        """
        A message is not equal to a non-message.
        """
        self.assertNotEqual(self.message, self.message.encode())
        self.assertFalse(self.message == 1)
        self.assertTrue(self.message != "message")

    def test_unhashable(self) -> None:
        """
        Messages are mutable and therefore unhashable.
        """
        self.assertRaises(TypeError, hash, self.message)

    def test_repr(self) -> None:
        """
        The repr names the method and class, and copes with unknown methods.
        """
        self.assertIn("REFRESH REQUEST", repr(self.message))
        self.assertIn("0x0FF INDICATION", repr(STUNMessage(0x0FF, INDICATION, TID)))


class EncodeDataIndicationTests(SynchronousTestCase):
    """
    Tests for L{encodeDataIndication}, the data path's encoder.
    """

    def test_sameBytesAsGeneralEncoder(self) -> None:
        """
        It writes exactly what STUNMessage.encode writes, for IPv4 and IPv6
        peers and every padding length, also when its IPv4 cache is warm.
        """
        from turnrelay.stun import attributes as A
        from turnrelay.stun.message import encodeDataIndication

        peers = [TransportAddress("198.51.100.7", 4000), TransportAddress("2001:db8::9", 5)]
        for peer in peers:
            for size in range(9):
                for tid in (b"a" * 12, b"b" * 12):
                    payload = bytes(range(size))
                    general = STUNMessage(
                        Method.DATA,
                        MessageClass.INDICATION,
                        tid,
                        [(A.XOR_PEER_ADDRESS, peer), (A.DATA, payload)],
                    ).encode()
                    self.assertEqual(encodeDataIndication(tid, peer, payload), general)
