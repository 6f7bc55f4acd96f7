"""
Tests for L{turnrelay.stun.attributes} and L{turnrelay.stun.address}: every
attribute codec, with the address, error-code, list, ICMP, EVEN-PORT and text
rules in detail.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress, unmapIPv4
from turnrelay.stun.attributes import (
    ATTRIBUTE_CODECS,
    ICMP,
    AddressErrorCode,
    ErrorCode,
    PasswordAlgorithm,
    attributeName,
    isComprehensionRequired,
)
from turnrelay.stun.message import (
    MessageClass,
    Method,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
)

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
OTHER_TID = bytes(range(12))

ADDRESS_TYPES = {
    A.MAPPED_ADDRESS: False,
    A.XOR_PEER_ADDRESS: True,
    A.XOR_RELAYED_ADDRESS: True,
    A.XOR_MAPPED_ADDRESS: True,
    A.ALTERNATE_SERVER: False,
    A.RESPONSE_ORIGIN: False,
    A.OTHER_ADDRESS: False,
}
V4 = TransportAddress("192.0.2.1", 32853)
V6 = TransportAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853)

# For each attribute type: values that must round-trip, and value bytes of a
# wrong length or form that must be rejected.
SAMPLES: Dict[int, Tuple[List[Any], List[bytes]]] = {
    A.MAPPED_ADDRESS: ([V4, V6, TransportAddress("0.0.0.0", 0)], [b"", b"\x00\x01\x00", bytes(7)]),
    A.CHANGE_REQUEST: ([0, 6, 2**32 - 1], [b"", bytes(3), bytes(5)]),
    A.USERNAME: (["", "evtj:h6vY", "\u30de\u30c8\u30ea"], [b"\xff", b"\xc3", bytes(764)]),
    A.MESSAGE_INTEGRITY: ([bytes(range(20))], [b"", bytes(19), bytes(21)]),
    A.ERROR_CODE: (
        [ErrorCode(300), ErrorCode(437, "Allocation Mismatch"), ErrorCode(699, "\u00e9")],
        [b"", bytes(3), b"\x00\x00\x02\x00", b"\x00\x00\x07\x00", b"\x00\x00\x04\x64"],
    ),
    A.UNKNOWN_ATTRIBUTES: ([(), (0x7FF0,), (0x0024, 0x0003, 0xFFFF)], [b"\x00", bytes(3)]),
    A.CHANNEL_NUMBER: ([0x4000, 0x4FFF], [b"", bytes(2), bytes(3), bytes(8)]),
    A.LIFETIME: ([0, 600, 2**32 - 1], [b"", bytes(3), bytes(5), bytes(8)]),
    A.XOR_PEER_ADDRESS: ([V4, V6], [b"", bytes(4), bytes(9)]),
    A.DATA: ([b"", b"\x00", b"payload", bytes(1000)], []),
    A.REALM: (["example.org", "r" * 127], [b"\x80", bytes(764)]),
    A.NONCE: (["obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"], [b"\xed\xa0\x80", bytes(764)]),
    A.XOR_RELAYED_ADDRESS: ([V4, V6], [b"\x00\x02" + bytes(6)]),
    A.REQUESTED_ADDRESS_FAMILY: ([FAMILY_IPV4, FAMILY_IPV6], [b"", b"\x01", bytes(8)]),
    A.EVEN_PORT: ([True, False], [b"", bytes(2), bytes(4)]),
    A.REQUESTED_TRANSPORT: ([A.TRANSPORT_UDP, A.TRANSPORT_TCP], [b"", b"\x11", bytes(8)]),
    A.DONT_FRAGMENT: ([True], [b"\x00", bytes(4)]),
    A.ACCESS_TOKEN: ([b"", b"token"], []),
    A.MESSAGE_INTEGRITY_SHA256: ([bytes(16), bytes(32)], [b"", bytes(12), bytes(18), bytes(33)]),
    A.PASSWORD_ALGORITHM: (
        [PasswordAlgorithm(A.PASSWORD_ALGORITHM_SHA256), PasswordAlgorithm(7, b"xyz")],
        [b"", bytes(3), b"\x00\x01\x00\x04\x00", b"\x00\x01\x00\x00\x00\x00\x00\x00"],
    ),
    A.USERHASH: ([bytes(range(32))], [b"", bytes(31), bytes(33)]),
    A.XOR_MAPPED_ADDRESS: ([V4, V6], [b"\x00\x01\x00\x00" + bytes(16)]),
    A.RESERVATION_TOKEN: ([bytes(8)], [b"", bytes(7), bytes(9)]),
    A.PRIORITY: ([0x6E0001FF], [bytes(3), bytes(8)]),
    A.USE_CANDIDATE: ([True], [b"\x01"]),
    A.PADDING: ([b"", bytes(100)], []),
    A.RESPONSE_PORT: ([3479], [bytes(2), bytes(3)]),
    A.CONNECTION_ID: ([0xDEADBEEF], [bytes(2), bytes(8)]),
    A.ADDITIONAL_ADDRESS_FAMILY: ([FAMILY_IPV6], [b"\x02"]),
    A.ADDRESS_ERROR_CODE: (
        [AddressErrorCode(FAMILY_IPV6, 440, "Address Family not Supported")],
        [b"", bytes(3), b"\x02\x00\x01\x00", b"\x02\x00\x04\xff"],
    ),
    A.PASSWORD_ALGORITHMS: (
        [
            (),
            (PasswordAlgorithm(A.PASSWORD_ALGORITHM_SHA256), PasswordAlgorithm(1)),
            (PasswordAlgorithm(9, b"p"), PasswordAlgorithm(2)),
        ],
        [b"\x00", b"\x00\x02\x00", b"\x00\x02\x00\x08\x00", b"\x00\x02\x00\x01\x00"],
    ),
    A.ALTERNATE_DOMAIN: (["turn.example.org", "a" * 255], [b"\xc3\xa9", b"a" * 256]),
    A.ICMP_ATTRIBUTE: ([ICMP(3, 4, 1400), ICMP(127, 511, 2**32 - 1)], [b"", bytes(7), bytes(9)]),
    A.SOFTWARE: (["turnrelay 0.1.0"], [b"\xff\xfe"]),
    A.ALTERNATE_SERVER: ([V4, V6], [b"\x00\x03\x00\x00" + bytes(4)]),
    A.FINGERPRINT: ([0, 0xE57A3BCF], [bytes(3), bytes(5)]),
    A.ICE_CONTROLLED: ([0x932FF9B151263B36], [bytes(4), bytes(9)]),
    A.ICE_CONTROLLING: ([0, 2**64 - 1], [bytes(7)]),
    A.RESPONSE_ORIGIN: ([V4], [bytes(8)]),
    A.OTHER_ADDRESS: ([V6], [bytes(20)]),
    A.THIRD_PARTY_AUTHORIZATION: (["auth.example.org"], [b"\xc0\xaf"]),
    A.MOBILITY_TICKET: ([b"", b"ticket"], []),
}

COMPUTED = {A.MESSAGE_INTEGRITY, A.MESSAGE_INTEGRITY_SHA256, A.FINGERPRINT}


def _encode(attributeType: int, value: Any, tid: bytes = TID) -> bytes:
    """
    Encode C{value} with the codec of C{attributeType}.
    """
    return ATTRIBUTE_CODECS[attributeType].encode(value, tid)


def _decode(attributeType: int, value: bytes, tid: bytes = TID) -> Any:
    """
    Decode C{value} with the codec of C{attributeType}.
    """
    return ATTRIBUTE_CODECS[attributeType].decode(value, tid)


class CodecTableTests(SynchronousTestCase):
    """
    Every codec of L{ATTRIBUTE_CODECS} round-trips valid values and rejects
    malformed ones.
    """

    def test_everyCodecSampled(self) -> None:
        """
        The samples above cover exactly the attribute types the codec knows.
        """
        self.assertEqual(set(SAMPLES), set(ATTRIBUTE_CODECS))

    def test_roundTrip(self) -> None:
        """
        Each sample value encodes and decodes back to itself.
        """
        for attributeType, (values, _) in SAMPLES.items():
            for value in values:
                encoded = _encode(attributeType, value)
                self.assertIsInstance(encoded, bytes)
                self.assertEqual(_decode(attributeType, encoded), value, hex(attributeType))

    def test_roundTripInMessage(self) -> None:
        """
        Each sample value survives a whole message's encoding and decoding
        (the computed integrity attributes excepted).
        """
        for attributeType, (values, _) in SAMPLES.items():
            if attributeType in COMPUTED:
                continue
            for value in values:
                message = STUNMessage(Method.BINDING, MessageClass.REQUEST, TID)
                message.add(attributeType, value)
                self.assertEqual(decodeMessage(message.encode()), message, hex(attributeType))

    def test_malformed(self) -> None:
        """
        Each malformed sample raises L{STUNDecodeError}.
        """
        for attributeType, (_, malformed) in SAMPLES.items():
            for value in malformed:
                self.assertRaises(STUNDecodeError, _decode, attributeType, value)

    def test_malformedInMessage(self) -> None:
        """
        A malformed value inside a message makes the message malformed, with
        the header in the error (checklist item 10).
        """
        for attributeType, (_, malformed) in SAMPLES.items():
            if attributeType in COMPUTED:
                continue
            for value in malformed:
                data = STUNMessage(
                    Method.ALLOCATE, MessageClass.REQUEST, TID, [(0x7FF0, value)]
                ).encode()
                data = data[:20] + struct.pack("!H", attributeType) + data[22:]
                error = self.assertRaises(STUNDecodeError, decodeMessage, data)
                self.assertEqual(error.method, Method.ALLOCATE)
                self.assertEqual(error.messageClass, MessageClass.REQUEST)
                self.assertEqual(error.transactionID, TID)

    def test_names(self) -> None:
        """
        L{attributeName} gives the RFC name of known types and the hex value
        of others.
        """
        self.assertEqual(attributeName(A.XOR_PEER_ADDRESS), "XOR-PEER-ADDRESS")
        self.assertEqual(attributeName(A.MESSAGE_INTEGRITY_SHA256), "MESSAGE-INTEGRITY-SHA256")
        self.assertEqual(attributeName(0x7FF0), "0x7FF0")

    def test_comprehensionRequired(self) -> None:
        """
        Types below 0x8000 are comprehension-required (RFC 8489 section 14;
        checklist item 11).
        """
        self.assertTrue(isComprehensionRequired(0x0000))
        self.assertTrue(isComprehensionRequired(0x7FFF))
        self.assertFalse(isComprehensionRequired(0x8000))
        self.assertFalse(isComprehensionRequired(0xFFFF))


class AddressTests(SynchronousTestCase):
    """
    The address attributes (RFC 8489 sections 14.1 and 14.2; checklist
    item 17).
    """

    def assertRejectedByAll(self, value: bytes) -> None:
        """
        Assert that every address codec rejects C{value}.
        """
        for attributeType in ADDRESS_TYPES:
            self.assertRaises(STUNDecodeError, _decode, attributeType, value)

    def test_ipv6FamilyWithIPv4Length(self) -> None:
        """
        Length 8 with family 2 (IPv6) is malformed (checklist item 17).
        """
        self.assertRejectedByAll(b"\x00\x02\x12\x34" + bytes(4))

    def test_ipv4FamilyWithIPv6Length(self) -> None:
        """
        Length 20 with family 1 (IPv4) is malformed (checklist item 17).
        """
        self.assertRejectedByAll(b"\x00\x01\x12\x34" + bytes(16))

    def test_unknownFamily(self) -> None:
        """
        A family other than 1 or 2 is malformed, at either length (checklist
        item 17).
        """
        for family in (0, 3, 4, 6, 0x10, 0xFF):
            self.assertRejectedByAll(bytes((0, family, 0, 1)) + bytes(4))
            self.assertRejectedByAll(bytes((0, family, 0, 1)) + bytes(16))

    def test_tooShort(self) -> None:
        """
        A length of 0 to 3 is malformed rather than a crash: the length is
        checked before the family byte is read (pion/stun CVE-2026-54909).
        """
        for size in range(4):
            self.assertRejectedByAll(b"\x00\x01\x00\x00"[:size])

    def test_emptyAddressInMessage(self) -> None:
        """
        An XOR-PEER-ADDRESS of length 0 in a message is a decoding error
        carrying the header, not a crash (pion/stun CVE-2026-54909).
        """
        data = STUNMessage(
            Method.CREATE_PERMISSION, MessageClass.REQUEST, TID, [(0x7FF0, b"")]
        ).encode()
        data = data[:20] + struct.pack("!H", A.XOR_PEER_ADDRESS) + data[22:]
        error = self.assertRaises(STUNDecodeError, decodeMessage, data)
        self.assertEqual(error.transactionID, TID)

    def test_xorIPv4(self) -> None:
        """
        An IPv4 XOR address masks the port with 0x2112 and the address with
        the magic cookie, whatever the transaction ID (RFC 8489 section 14.2;
        RFC 5769 section 2.2).
        """
        encoded = bytes.fromhex("0001a147e112a643")
        self.assertEqual(_encode(A.XOR_MAPPED_ADDRESS, V4), encoded)
        self.assertEqual(_encode(A.XOR_MAPPED_ADDRESS, V4, OTHER_TID), encoded)
        self.assertEqual(_decode(A.XOR_PEER_ADDRESS, encoded, OTHER_TID), V4)

    def test_xorIPv6(self) -> None:
        """
        An IPv6 XOR address masks the address with the cookie followed by the
        transaction ID (RFC 8489 section 14.2; RFC 5769 section 2.3).
        """
        encoded = bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")
        self.assertEqual(_encode(A.XOR_RELAYED_ADDRESS, V6), encoded)
        self.assertEqual(_decode(A.XOR_RELAYED_ADDRESS, encoded), V6)
        self.assertNotEqual(_encode(A.XOR_RELAYED_ADDRESS, V6, OTHER_TID), encoded)
        self.assertNotEqual(_decode(A.XOR_RELAYED_ADDRESS, encoded, OTHER_TID), V6)
        self.assertEqual(
            _decode(
                A.XOR_RELAYED_ADDRESS, _encode(A.XOR_RELAYED_ADDRESS, V6, OTHER_TID), OTHER_TID
            ),
            V6,
        )

    def test_plain(self) -> None:
        """
        A plain address is a zero byte, the family, the port and the address
        (RFC 8489 section 14.1).
        """
        self.assertEqual(_encode(A.MAPPED_ADDRESS, V4), bytes.fromhex("00018055c0000201"))
        self.assertEqual(
            _encode(A.ALTERNATE_SERVER, V6),
            bytes.fromhex("00028055") + bytes.fromhex("20010db8123456780011223344556677"),
        )

    def test_decodedType(self) -> None:
        """
        A decoded address is a L{TransportAddress} in canonical text form.
        """
        value = bytes.fromhex("00020d96") + bytes(15) + b"\x01"
        address = _decode(A.MAPPED_ADDRESS, value)
        self.assertIsInstance(address, TransportAddress)
        self.assertEqual(address, TransportAddress("::1", 3478))
        value = bytes.fromhex("00020d96") + bytes(10) + b"\xff\xff\xc0\x00\x02\x01"
        self.assertEqual(_decode(A.MAPPED_ADDRESS, value).host, "::ffff:192.0.2.1")

    def test_encodeRefusesBadValues(self) -> None:
        """
        A port outside 0 to 65535 or a host that is not an IP address cannot
        be encoded (ValueError).
        """
        for attributeType in ADDRESS_TYPES:
            for address in (
                TransportAddress("192.0.2.1", -1),
                TransportAddress("192.0.2.1", 65536),
                TransportAddress("example.org", 1),
                TransportAddress("2001:db8::g", 1),
                TransportAddress("", 1),
            ):
                self.assertRaises(ValueError, _encode, attributeType, address)


class ErrorCodeTests(SynchronousTestCase):
    """
    ERROR-CODE and ADDRESS-ERROR-CODE (RFC 8489 section 14.8; RFC 8656
    section 18.12; checklist item 16).
    """

    def test_classAndNumber(self) -> None:
        """
        437 is carried as class 4 and number 37 after 21 reserved zero bits.
        """
        encoded = _encode(A.ERROR_CODE, ErrorCode(437, "Allocation Mismatch"))
        self.assertEqual(encoded, b"\x00\x00\x04\x25Allocation Mismatch")
        self.assertEqual(_decode(A.ERROR_CODE, b"\x00\x00\x04\x25"), ErrorCode(437, ""))

    def test_reservedBitsIgnored(self) -> None:
        """
        The reserved bits above the class are ignored on receipt.
        """
        self.assertEqual(_decode(A.ERROR_CODE, b"\xff\xff\xfc\x25x"), ErrorCode(437, "x"))

    def test_invalidClass(self) -> None:
        """
        A class outside 3 to 6, or a number above 99, is malformed.
        """
        for errorClass in (0, 1, 2, 7):
            self.assertRaises(STUNDecodeError, _decode, A.ERROR_CODE, bytes((0, 0, errorClass, 0)))
        for number in (100, 255):
            self.assertRaises(STUNDecodeError, _decode, A.ERROR_CODE, bytes((0, 0, 4, number)))
        self.assertEqual(_decode(A.ERROR_CODE, bytes((0, 0, 6, 99))).code, 699)

    def test_encodeRange(self) -> None:
        """
        Codes outside 300 to 699 and reasons over 127 characters cannot be
        encoded (RFC 8489 section 14.8).
        """
        for code in (0, 299, 700, 1000):
            self.assertRaises(ValueError, _encode, A.ERROR_CODE, ErrorCode(code))
        self.assertRaises(ValueError, _encode, A.ERROR_CODE, ErrorCode(400, "x" * 128))
        self.assertEqual(len(_encode(A.ERROR_CODE, ErrorCode(400, "\u00e9" * 127))), 4 + 254)

    def test_invalidUTF8Reason(self) -> None:
        """
        A reason phrase that is not UTF-8 is malformed.
        """
        self.assertRaises(STUNDecodeError, _decode, A.ERROR_CODE, b"\x00\x00\x04\x00\xff")

    def test_addressErrorCode(self) -> None:
        """
        ADDRESS-ERROR-CODE puts the family in its first byte, then the class
        and number (RFC 8656 section 18.12).
        """
        value = AddressErrorCode(FAMILY_IPV6, 508, "Insufficient Capacity")
        encoded = _encode(A.ADDRESS_ERROR_CODE, value)
        self.assertEqual(encoded, b"\x02\x00\x05\x08Insufficient Capacity")
        self.assertEqual(_decode(A.ADDRESS_ERROR_CODE, encoded), value)
        self.assertRaises(ValueError, _encode, A.ADDRESS_ERROR_CODE, AddressErrorCode(256, 440))
        self.assertRaises(
            ValueError, _encode, A.ADDRESS_ERROR_CODE, AddressErrorCode(FAMILY_IPV4, 200)
        )


class ListTests(SynchronousTestCase):
    """
    UNKNOWN-ATTRIBUTES, PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS (RFC 8489
    sections 14.11 to 14.13).
    """

    def test_unknownAttributes(self) -> None:
        """
        UNKNOWN-ATTRIBUTES is a list of 16-bit types; an odd length is
        malformed (RFC 8489 section 14.13).
        """
        self.assertEqual(_encode(A.UNKNOWN_ATTRIBUTES, (0x7FF0, 0x0024)), b"\x7f\xf0\x00\x24")
        self.assertEqual(_decode(A.UNKNOWN_ATTRIBUTES, b"\x7f\xf0\x00\x24"), (0x7FF0, 0x0024))
        for size in (1, 3, 5):
            self.assertRaises(STUNDecodeError, _decode, A.UNKNOWN_ATTRIBUTES, bytes(size))

    def test_unknownAttributesPaddedInMessage(self) -> None:
        """
        A single unknown type is padded to 4 bytes in a message (checklist
        item 12).
        """
        message = STUNMessage(Method.ALLOCATE, MessageClass.ERROR_RESPONSE, TID)
        message.add(A.UNKNOWN_ATTRIBUTES, (0x7FF0,))
        self.assertEqual(message.encode()[20:], b"\x00\x0a\x00\x02\x7f\xf0\x00\x00")

    def test_passwordAlgorithmsPadding(self) -> None:
        """
        Each entry's parameters are padded to 4 bytes, the padding is not
        counted in the parameters length, and the list decodes back (RFC 8489
        section 14.11).
        """
        entries = (PasswordAlgorithm(9, b"p"), PasswordAlgorithm(2), PasswordAlgorithm(8, b"abcd"))
        encoded = _encode(A.PASSWORD_ALGORITHMS, entries)
        self.assertEqual(
            encoded,
            b"\x00\x09\x00\x01p\x00\x00\x00" + b"\x00\x02\x00\x00" + b"\x00\x08\x00\x04abcd",
        )
        self.assertEqual(_decode(A.PASSWORD_ALGORITHMS, encoded), entries)

    def test_passwordAlgorithmsMalformed(self) -> None:
        """
        A truncated entry, parameters running past the attribute or padding
        missing after the last entry's parameters are malformed.
        """
        for value in (
            b"\x00\x02",
            b"\x00\x02\x00\x00\x00\x01",
            b"\x00\x09\x00\x05abcd",
            b"\x00\x09\x00\x01p",
            b"\x00\x09\x00\x02pq\x00",
        ):
            self.assertRaises(STUNDecodeError, _decode, A.PASSWORD_ALGORITHMS, value)

    def test_passwordAlgorithm(self) -> None:
        """
        PASSWORD-ALGORITHM holds one entry; trailing bytes after its padded
        parameters are malformed (RFC 8489 section 14.12).
        """
        self.assertEqual(_encode(A.PASSWORD_ALGORITHM, PasswordAlgorithm(2)), b"\x00\x02\x00\x00")
        self.assertEqual(
            _decode(A.PASSWORD_ALGORITHM, b"\x00\x01\x00\x02ab\x00\x00"),
            PasswordAlgorithm(1, b"ab"),
        )
        self.assertRaises(
            STUNDecodeError, _decode, A.PASSWORD_ALGORITHM, b"\x00\x02\x00\x00\x00\x01\x00\x00"
        )


class SmallValueTests(SynchronousTestCase):
    """
    ICMP, EVEN-PORT and the number attributes (RFC 8656 sections 18.4 to
    18.13).
    """

    def test_icmpLayout(self) -> None:
        """
        ICMP is 18 reserved bits, a 7-bit type, a 9-bit code and 32 bits of
        error data (RFC 8656 section 18.13).
        """
        encoded = _encode(A.ICMP_ATTRIBUTE, ICMP(3, 4, 1400))
        self.assertEqual(encoded, struct.pack("!II", (3 << 9) | 4, 1400))
        self.assertEqual(
            _encode(A.ICMP_ATTRIBUTE, ICMP(127, 511, 0xFFFFFFFF)),
            b"\x00\x00\xff\xff\xff\xff\xff\xff",
        )
        self.assertEqual(
            _decode(A.ICMP_ATTRIBUTE, b"\x00\x00\x02\x00\x00\x00\x00\x00"), ICMP(1, 0, 0)
        )
        self.assertEqual(
            _decode(A.ICMP_ATTRIBUTE, b"\x00\x00\x01\x00\x00\x00\x00\x00"), ICMP(0, 256, 0)
        )

    def test_icmpReservedIgnored(self) -> None:
        """
        The 18 reserved bits are ignored on receipt.
        """
        value = struct.pack("!II", 0xFFFC0000 | (3 << 9) | 4, 1400)
        self.assertEqual(_decode(A.ICMP_ATTRIBUTE, value), ICMP(3, 4, 1400))

    def test_icmpRange(self) -> None:
        """
        A type above 127 or a code above 511 cannot be encoded.
        """
        for icmp in (ICMP(128, 0), ICMP(0, 512), ICMP(-1, 0), ICMP(0, -1)):
            self.assertRaises(ValueError, _encode, A.ICMP_ATTRIBUTE, icmp)

    def test_evenPort(self) -> None:
        """
        EVEN-PORT is one byte whose top bit is R; the other seven are ignored
        (RFC 8656 section 18.8).
        """
        self.assertEqual(_encode(A.EVEN_PORT, True), b"\x80")
        self.assertEqual(_encode(A.EVEN_PORT, False), b"\x00")
        self.assertIs(_decode(A.EVEN_PORT, b"\x80"), True)
        self.assertIs(_decode(A.EVEN_PORT, b"\xff"), True)
        self.assertIs(_decode(A.EVEN_PORT, b"\x00"), False)
        self.assertIs(_decode(A.EVEN_PORT, b"\x7f"), False)

    def test_reservedBytes(self) -> None:
        """
        CHANNEL-NUMBER and REQUESTED-TRANSPORT write their reserved bytes as
        zeros and ignore them on receipt (RFC 8656 sections 18.1 and 18.7).
        """
        self.assertEqual(_encode(A.CHANNEL_NUMBER, 0x4001), b"\x40\x01\x00\x00")
        self.assertEqual(_decode(A.CHANNEL_NUMBER, b"\x40\x01\xff\xff"), 0x4001)
        self.assertEqual(_encode(A.REQUESTED_TRANSPORT, 17), b"\x11\x00\x00\x00")
        self.assertEqual(_decode(A.REQUESTED_TRANSPORT, b"\x06\x01\x02\x03"), 6)
        self.assertEqual(_encode(A.REQUESTED_ADDRESS_FAMILY, 2), b"\x02\x00\x00\x00")

    def test_numberRange(self) -> None:
        """
        A number that does not fit its field cannot be encoded.
        """
        self.assertRaises(ValueError, _encode, A.LIFETIME, 2**32)
        self.assertRaises(ValueError, _encode, A.LIFETIME, -1)
        self.assertRaises(ValueError, _encode, A.CHANNEL_NUMBER, 0x10000)
        self.assertRaises(ValueError, _encode, A.REQUESTED_TRANSPORT, 256)
        self.assertRaises(ValueError, _encode, A.ICE_CONTROLLING, 2**64)

    def test_fixedSizeBytes(self) -> None:
        """
        USERHASH and RESERVATION-TOKEN of the wrong size cannot be encoded.
        """
        self.assertRaises(ValueError, _encode, A.USERHASH, bytes(31))
        self.assertRaises(ValueError, _encode, A.RESERVATION_TOKEN, bytes(9))
        self.assertRaises(ValueError, _encode, A.MESSAGE_INTEGRITY, bytes(19))


class TextTests(SynchronousTestCase):
    """
    The text attributes and their limits (RFC 8489 sections 14.3, 14.9,
    14.10 and 14.14; checklist item 15).
    """

    def test_usernameDecodeLimit(self) -> None:
        """
        A USERNAME of up to 763 bytes decodes; longer is malformed.
        """
        self.assertEqual(_decode(A.USERNAME, b"u" * 763), "u" * 763)
        self.assertRaises(STUNDecodeError, _decode, A.USERNAME, b"u" * 764)
        message = STUNMessage(Method.ALLOCATE, MessageClass.REQUEST, TID, [(0x7FF0, b"u" * 763)])
        data = message.encode()
        data = data[:20] + struct.pack("!H", A.USERNAME) + data[22:]
        self.assertEqual(decodeMessage(data).get(A.USERNAME), "u" * 763)

    def test_textDecodeLimit(self) -> None:
        """
        REALM, NONCE and SOFTWARE also decode up to 763 bytes.
        """
        for attributeType in (A.REALM, A.NONCE, A.SOFTWARE):
            self.assertEqual(_decode(attributeType, "\u00e9".encode() * 381), "\u00e9" * 381)
            self.assertRaises(STUNDecodeError, _decode, attributeType, b"x" * 764)

    def test_invalidUTF8(self) -> None:
        """
        Text that is not UTF-8 is malformed, including encoded surrogates and
        truncated sequences.
        """
        for attributeType in (A.USERNAME, A.REALM, A.NONCE, A.SOFTWARE):
            for value in (b"\xff", b"abc\xc3", b"\xed\xa0\x80", b"\xc0\x80"):
                self.assertRaises(STUNDecodeError, _decode, attributeType, value)

    def test_usernameEncodeLimit(self) -> None:
        """
        A USERNAME is sent only when under 509 bytes of UTF-8 (RFC 8489
        section 14.3).
        """
        self.assertEqual(len(_encode(A.USERNAME, "u" * 508)), 508)
        self.assertRaises(ValueError, _encode, A.USERNAME, "u" * 509)
        self.assertEqual(len(_encode(A.USERNAME, "\u00e9" * 254)), 508)
        self.assertRaises(ValueError, _encode, A.USERNAME, "\u00e9" * 255)

    def test_textEncodeLimit(self) -> None:
        """
        REALM, NONCE, SOFTWARE are sent only when under 128 characters,
        however many bytes those take (RFC 8489 sections 14.9, 14.10 and
        14.14).
        """
        for attributeType in (A.REALM, A.NONCE, A.SOFTWARE):
            self.assertEqual(_encode(attributeType, "r" * 127), b"r" * 127)
            self.assertEqual(len(_encode(attributeType, "\u30de" * 127)), 381)
            self.assertRaises(ValueError, _encode, attributeType, "r" * 128)

    def test_thirdPartyAuthorization(self) -> None:
        """
        THIRD-PARTY-AUTHORIZATION holds a server name of up to 255 characters.
        """
        self.assertEqual(_encode(A.THIRD_PARTY_AUTHORIZATION, "a" * 255), b"a" * 255)
        self.assertRaises(ValueError, _encode, A.THIRD_PARTY_AUTHORIZATION, "a" * 256)

    def test_encodeNeverExceedsDecodeLimit(self) -> None:
        """
        No text attribute encodes to more than the 763 bytes the decoder
        accepts, even within its character limit (255 four-byte characters
        of THIRD-PARTY-AUTHORIZATION would be 1020 bytes).
        """
        self.assertRaises(ValueError, _encode, A.THIRD_PARTY_AUTHORIZATION, "\U0001f600" * 255)
        encoded = _encode(A.THIRD_PARTY_AUTHORIZATION, "\U0001f600" * 190)
        self.assertEqual(_decode(A.THIRD_PARTY_AUTHORIZATION, encoded), "\U0001f600" * 190)

    def test_alternateDomain(self) -> None:
        """
        ALTERNATE-DOMAIN is ASCII of up to 255 bytes (RFC 8489 section 14.16).
        """
        self.assertEqual(_decode(A.ALTERNATE_DOMAIN, b"turn.example.org"), "turn.example.org")
        self.assertRaises(ValueError, _encode, A.ALTERNATE_DOMAIN, "a" * 256)
        self.assertRaises(ValueError, _encode, A.ALTERNATE_DOMAIN, "\u00e9.example")


class TransportAddressTests(SynchronousTestCase):
    """
    L{TransportAddress} and L{unmapIPv4}.
    """

    def test_family(self) -> None:
        """
        The family is 2 for an IPv6 host and 1 for an IPv4 host.
        """
        self.assertEqual(TransportAddress("192.0.2.1", 1).family, FAMILY_IPV4)
        self.assertEqual(TransportAddress("2001:db8::1", 1).family, FAMILY_IPV6)
        self.assertEqual(TransportAddress("::ffff:192.0.2.1", 1).family, FAMILY_IPV6)

    def test_str(self) -> None:
        """
        IPv6 hosts are bracketed in the text form, IPv4 hosts are not.
        """
        self.assertEqual(str(TransportAddress("192.0.2.1", 3478)), "192.0.2.1:3478")
        self.assertEqual(str(TransportAddress("2001:db8::1", 3478)), "[2001:db8::1]:3478")

    def test_tuple(self) -> None:
        """
        A transport address equals and hashes like Twisted's C{(host, port)}
        pairs.
        """
        address = TransportAddress("192.0.2.1", 3478)
        self.assertEqual(address, ("192.0.2.1", 3478))
        self.assertEqual(hash(address), hash(("192.0.2.1", 3478)))
        self.assertEqual(address.host, "192.0.2.1")
        self.assertEqual(address.port, 3478)

    def test_unmapIPv4(self) -> None:
        """
        An IPv4-mapped IPv6 address becomes the IPv4 address; anything else
        is returned unchanged.
        """
        self.assertEqual(unmapIPv4("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(unmapIPv4("::FFFF:192.0.2.1"), "192.0.2.1")
        for host in ("192.0.2.1", "2001:db8::1", "::1", "::", "::ffff:1"):
            self.assertEqual(unmapIPv4(host), host)
