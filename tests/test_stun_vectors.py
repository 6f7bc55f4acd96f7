"""
Tests for L{turnrelay.stun} against the published STUN test vectors.

The vectors are the four messages of RFC 5769 (sections 2.1 to 2.4) and the
RFC 8489 appendix B.1 request, both as published and as corrected by the
verified erratum 6268.  Their bytes live in C{tests/vectors/}, copied
unchanged from the project's specification folder.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Callable, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun.attributes import (
    ICE_CONTROLLED,
    NONCE,
    PASSWORD_ALGORITHM,
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    PRIORITY,
    REALM,
    SOFTWARE,
    USERHASH,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    PasswordAlgorithm,
)
from turnrelay.stun.credentials import longTermKey, nonceFeatures, userHash
from turnrelay.stun.message import (
    MessageClass,
    Method,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
)

VECTORS = Path(__file__).parent / "vectors"

# RFC 5769 section 2 / RFC 8489 appendix B.1 parameters.
SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
MATRIX_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
MATRIX_REALM = "example.org"
MATRIX_PASSWORD = "TheMatrIX"
MATRIX_MD5_KEY = bytes.fromhex("e8ca7ad59d5eb0518e312911d2dab2a9")
MATRIX_SHA256_KEY = bytes.fromhex(
    "dd295a613b9058c3c23d6dc7165bda072304d989c9d0af3a8c7e184b4f9bb4a1"
)
RFC5769_TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
LONG_TERM_TID = bytes.fromhex("78ad3433c6ad72c029da412e")


def _load(name: str) -> Dict[str, Any]:
    """
    Read one of the JSON vector files.
    """
    with (VECTORS / name).open(encoding="utf-8") as f:
        loaded: Dict[str, Any] = json.load(f)
    return loaded


def _rfc5769(section: str) -> bytes:
    """
    @return: the bytes of the RFC 5769 vector of C{section} ("2.1" to "2.4").
    """
    for vector in _load("rfc5769.json")["vectors"]:
        if vector["rfc5769_section"] == section:
            return bytes.fromhex(vector["message_hex"])
    raise KeyError(section)


def _b1(which: str) -> bytes:
    """
    @return: the bytes of the RFC 8489 B.1 vector, C{"errata_6268"} or
        C{"as_published"}.
    """
    return bytes.fromhex(_load("rfc8489-b1.json")[which]["message_hex"])


def _verifies(data: bytes, check: Callable[[STUNMessage], bool]) -> bool:
    """
    Decide whether C{data} passes every check a receiver would make.

    @param check: the integrity (and FINGERPRINT presence) check to apply to
        the decoded message.
    @return: C{False} if C{data} does not decode or C{check} fails.
    """
    try:
        message = decodeMessage(data)
    except STUNDecodeError:
        return False
    return check(message)


def _flipsThatVerify(data: bytes, check: Callable[[STUNMessage], bool]) -> List[int]:
    """
    Flip each bit of C{data} in turn.

    @return: the bit positions whose flip still verifies (an empty list for a
        properly protected message).
    """
    survivors = []
    for position in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[position // 8] ^= 0x80 >> (position % 8)
        if _verifies(bytes(flipped), check):
            survivors.append(position)
    return survivors


def _shortTermCheck(message: STUNMessage) -> bool:
    """
    The full check for RFC 5769 vectors 2.1 to 2.3: MESSAGE-INTEGRITY with
    the short-term key, and the FINGERPRINT still present (decodeMessage
    has already checked its value).
    """
    return message.verifyMessageIntegrity(SHORT_TERM_KEY) and message.fingerprint is not None


def _assertShortTermReencodes(testCase: SynchronousTestCase, data: bytes) -> None:
    """
    Re-encode a short-term RFC 5769 vector with the key and FINGERPRINT.

    The RFC pads with spaces, so the bytes differ, but the result must be
    as long, decode to an equal, verifying message, and be canonical.
    """
    message = decodeMessage(data)
    encoded = message.encode(SHORT_TERM_KEY, fingerprint=True)
    testCase.assertNotEqual(encoded, data)
    testCase.assertEqual(len(encoded), len(data))
    again = decodeMessage(encoded)
    testCase.assertEqual(again, message)
    testCase.assertTrue(again.verifyMessageIntegrity(SHORT_TERM_KEY))
    testCase.assertIsNotNone(again.fingerprint)
    testCase.assertEqual(again.encode(SHORT_TERM_KEY, fingerprint=True), encoded)


class SampleRequestTests(SynchronousTestCase):
    """
    RFC 5769 section 2.1: a Binding request with ICE attributes, short-term
    credentials and FINGERPRINT.
    """

    def setUp(self) -> None:
        self.data = _rfc5769("2.1")

    def test_header(self) -> None:
        """
        The vector decodes as a Binding request with its transaction ID
        (RFC 5769 section 2.1).
        """
        message = decodeMessage(self.data)
        self.assertEqual(len(self.data), 108)
        self.assertEqual(message.method, Method.BINDING)
        self.assertEqual(message.messageClass, MessageClass.REQUEST)
        self.assertEqual(message.transactionID, RFC5769_TID)

    def test_attributes(self) -> None:
        """
        SOFTWARE, PRIORITY, ICE-CONTROLLED and USERNAME decode to their typed
        values, in order, despite the 0x20 padding (checklist item 10).
        """
        message = decodeMessage(self.data)
        self.assertEqual(
            message.attributes,
            [
                (SOFTWARE, "STUN test client"),
                (PRIORITY, 0x6E0001FF),
                (ICE_CONTROLLED, 0x932FF9B151263B36),
                (USERNAME, "evtj:h6vY"),
            ],
        )

    def test_messageIntegrity(self) -> None:
        """
        MESSAGE-INTEGRITY verifies with the password as the short-term key
        and not with another key (RFC 8489 section 14.5).
        """
        message = decodeMessage(self.data)
        self.assertEqual(
            message.messageIntegrity, bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")
        )
        self.assertTrue(message.verifyMessageIntegrity(SHORT_TERM_KEY))
        self.assertFalse(message.verifyMessageIntegrity(SHORT_TERM_KEY + b"x"))
        self.assertFalse(message.verifyMessageIntegritySHA256(SHORT_TERM_KEY))

    def test_fingerprint(self) -> None:
        """
        The decoded FINGERPRINT is e57a3bcf (checklist item 19).
        """
        self.assertEqual(decodeMessage(self.data).fingerprint, 0xE57A3BCF)

    def test_reencode(self) -> None:
        """
        Re-encoding with the short-term key and FINGERPRINT yields an equal,
        verifying message (the RFC's 0x20 padding is not canonical).
        """
        _assertShortTermReencodes(self, self.data)

    def test_bitFlips(self) -> None:
        """
        Flipping any single bit makes the message fail to decode or fail
        verification; a flip that turns FINGERPRINT into an ignored attribute
        after MESSAGE-INTEGRITY counts as a failure because the FINGERPRINT
        is gone (RFC 8489 sections 14.5 and 14.7).
        """
        self.assertTrue(_verifies(self.data, _shortTermCheck))
        self.assertEqual(_flipsThatVerify(self.data, _shortTermCheck), [])


class SampleIPv4ResponseTests(SynchronousTestCase):
    """
    RFC 5769 section 2.2: a Binding success response with an IPv4
    XOR-MAPPED-ADDRESS.
    """

    def setUp(self) -> None:
        self.data = _rfc5769("2.2")

    def test_decode(self) -> None:
        """
        The vector is a Binding success response carrying SOFTWARE "test
        vector" and XOR-MAPPED-ADDRESS 192.0.2.1:32853 (RFC 8489 section 14.2).
        """
        message = decodeMessage(self.data)
        self.assertEqual(message.method, Method.BINDING)
        self.assertEqual(message.messageClass, MessageClass.SUCCESS_RESPONSE)
        self.assertEqual(message.transactionID, RFC5769_TID)
        self.assertEqual(message.get(SOFTWARE), "test vector")
        address = message.get(XOR_MAPPED_ADDRESS)
        self.assertEqual(address, ("192.0.2.1", 32853))
        self.assertEqual(str(address), "192.0.2.1:32853")

    def test_integrityAndFingerprint(self) -> None:
        """
        MESSAGE-INTEGRITY verifies with the short-term key and FINGERPRINT is
        c07d4c96 (RFC 8489 sections 14.5 and 14.7).
        """
        message = decodeMessage(self.data)
        self.assertEqual(
            message.messageIntegrity, bytes.fromhex("2b91f599fd9e90c38c7489f92af9ba53f06be7d7")
        )
        self.assertTrue(message.verifyMessageIntegrity(SHORT_TERM_KEY))
        self.assertFalse(message.verifyMessageIntegrity(b"wrong"))
        self.assertEqual(message.fingerprint, 0xC07D4C96)

    def test_reencode(self) -> None:
        """
        Re-encoding with the short-term key and FINGERPRINT yields an equal,
        verifying message (the RFC's 0x20 padding is not canonical).
        """
        _assertShortTermReencodes(self, self.data)

    def test_bitFlips(self) -> None:
        """
        Flipping any single bit makes the message fail to decode or fail
        verification (RFC 8489 sections 14.5 and 14.7).
        """
        self.assertTrue(_verifies(self.data, _shortTermCheck))
        self.assertEqual(_flipsThatVerify(self.data, _shortTermCheck), [])


class SampleIPv6ResponseTests(SynchronousTestCase):
    """
    RFC 5769 section 2.3: a Binding success response with an IPv6
    XOR-MAPPED-ADDRESS.
    """

    def setUp(self) -> None:
        self.data = _rfc5769("2.3")

    def test_decode(self) -> None:
        """
        XOR-MAPPED-ADDRESS decodes to [2001:db8:1234:5678:11:2233:4455:6677]:32853,
        unmasked with the cookie and the transaction ID (RFC 8489 section 14.2).
        """
        message = decodeMessage(self.data)
        self.assertEqual(message.messageClass, MessageClass.SUCCESS_RESPONSE)
        self.assertEqual(message.get(SOFTWARE), "test vector")
        address = message.get(XOR_MAPPED_ADDRESS)
        self.assertEqual(address, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
        self.assertEqual(str(address), "[2001:db8:1234:5678:11:2233:4455:6677]:32853")

    def test_integrityAndFingerprint(self) -> None:
        """
        MESSAGE-INTEGRITY verifies with the short-term key and FINGERPRINT is
        c8fb0b4c (RFC 8489 sections 14.5 and 14.7).
        """
        message = decodeMessage(self.data)
        self.assertEqual(
            message.messageIntegrity, bytes.fromhex("a382954e4be67bf11784c97c8292c275bfe3ed41")
        )
        self.assertTrue(message.verifyMessageIntegrity(SHORT_TERM_KEY))
        self.assertEqual(message.fingerprint, 0xC8FB0B4C)

    def test_reencode(self) -> None:
        """
        Re-encoding with the short-term key and FINGERPRINT yields an equal,
        verifying message (the RFC's 0x20 padding is not canonical).
        """
        _assertShortTermReencodes(self, self.data)

    def test_bitFlips(self) -> None:
        """
        Flipping any single bit makes the message fail to decode or fail
        verification (RFC 8489 sections 14.5 and 14.7).
        """
        self.assertTrue(_verifies(self.data, _shortTermCheck))
        self.assertEqual(_flipsThatVerify(self.data, _shortTermCheck), [])


class LongTermRequestTests(SynchronousTestCase):
    """
    RFC 5769 section 2.4: a Binding request with long-term credentials
    (MD5 key) and no FINGERPRINT.
    """

    def setUp(self) -> None:
        self.data = _rfc5769("2.4")

    def test_decode(self) -> None:
        """
        USERNAME, NONCE and REALM decode to the RFC's values (RFC 5769
        section 2.4).
        """
        message = decodeMessage(self.data)
        self.assertEqual(message.method, Method.BINDING)
        self.assertEqual(message.messageClass, MessageClass.REQUEST)
        self.assertEqual(message.transactionID, LONG_TERM_TID)
        self.assertEqual(
            message.attributes,
            [
                (USERNAME, MATRIX_USERNAME),
                (NONCE, "f//499k954d6OL34oL9FSTvy64sA"),
                (REALM, MATRIX_REALM),
            ],
        )
        self.assertIsNone(message.fingerprint)
        self.assertIsNone(message.messageIntegritySHA256)

    def test_key(self) -> None:
        """
        The MD5 long-term key of the vector's credentials is e8ca7ad5...
        (RFC 8489 section 9.2.2).
        """
        key = longTermKey(MATRIX_USERNAME, MATRIX_REALM, MATRIX_PASSWORD)
        self.assertEqual(key, MATRIX_MD5_KEY)

    def test_messageIntegrity(self) -> None:
        """
        MESSAGE-INTEGRITY verifies with the MD5 long-term key only (RFC 8489
        sections 9.2.2 and 14.5).
        """
        message = decodeMessage(self.data)
        self.assertEqual(
            message.messageIntegrity, bytes.fromhex("f67024656dd64a3e02b8e0712e85c9a28ca89666")
        )
        self.assertTrue(message.verifyMessageIntegrity(MATRIX_MD5_KEY))
        self.assertFalse(
            message.verifyMessageIntegrity(longTermKey(MATRIX_USERNAME, MATRIX_REALM, "TheMatrIx"))
        )
        self.assertFalse(
            message.verifyMessageIntegrity(
                longTermKey(MATRIX_USERNAME, "example.com", MATRIX_PASSWORD)
            )
        )
        self.assertFalse(
            message.verifyMessageIntegrity(longTermKey("matrix", MATRIX_REALM, MATRIX_PASSWORD))
        )
        self.assertFalse(message.verifyMessageIntegrity(MATRIX_SHA256_KEY))
        self.assertFalse(message.verifyMessageIntegritySHA256(MATRIX_MD5_KEY))

    def test_reencode(self) -> None:
        """
        The vector's bytes are canonical: encoding the decoded message with
        the key reproduces them byte for byte.
        """
        message = decodeMessage(self.data)
        self.assertEqual(message.encode(MATRIX_MD5_KEY), self.data)

    def test_bitFlips(self) -> None:
        """
        Flipping any single bit makes the message fail to decode or fail
        MESSAGE-INTEGRITY (RFC 8489 section 14.5).
        """

        def check(message: STUNMessage) -> bool:
            return message.verifyMessageIntegrity(MATRIX_MD5_KEY)

        self.assertTrue(_verifies(self.data, check))
        self.assertEqual(_flipsThatVerify(self.data, check), [])


class B1ErratumTests(SynchronousTestCase):
    """
    RFC 8489 appendix B.1 as corrected by verified erratum 6268: a Binding
    request with USERHASH, PASSWORD-ALGORITHM SHA-256 and
    MESSAGE-INTEGRITY-SHA256.
    """

    def setUp(self) -> None:
        self.data = _b1("errata_6268")

    def test_decode(self) -> None:
        """
        USERHASH, NONCE, REALM and PASSWORD-ALGORITHM decode to their typed
        values (RFC 8489 appendix B.1, erratum 6268).
        """
        message = decodeMessage(self.data)
        self.assertEqual(message.method, Method.BINDING)
        self.assertEqual(message.messageClass, MessageClass.REQUEST)
        self.assertEqual(message.transactionID, LONG_TERM_TID)
        self.assertEqual(
            message.attributes,
            [
                (
                    USERHASH,
                    bytes.fromhex(
                        "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
                    ),
                ),
                (NONCE, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
                (REALM, MATRIX_REALM),
                (PASSWORD_ALGORITHM, PasswordAlgorithm(PASSWORD_ALGORITHM_SHA256, b"")),
            ],
        )
        self.assertIsNone(message.messageIntegrity)
        self.assertIsNone(message.fingerprint)

    def test_userHash(self) -> None:
        """
        The USERHASH attribute is SHA-256 of the username and realm (RFC 8489
        section 14.4).
        """
        message = decodeMessage(self.data)
        self.assertEqual(message.get(USERHASH), userHash(MATRIX_USERNAME, MATRIX_REALM))

    def test_keys(self) -> None:
        """
        The SHA-256 long-term key is dd295a61... and the MD5 one e8ca7ad5...
        (RFC 8489 sections 9.2.2 and 18.5.1).
        """
        self.assertEqual(
            longTermKey(MATRIX_USERNAME, MATRIX_REALM, MATRIX_PASSWORD, PASSWORD_ALGORITHM_SHA256),
            MATRIX_SHA256_KEY,
        )
        self.assertEqual(
            longTermKey(MATRIX_USERNAME, MATRIX_REALM, MATRIX_PASSWORD, PASSWORD_ALGORITHM_MD5),
            MATRIX_MD5_KEY,
        )

    def test_messageIntegritySHA256(self) -> None:
        """
        MESSAGE-INTEGRITY-SHA256 verifies with the SHA-256 long-term key and
        not with the MD5 one (RFC 8489 section 14.6).
        """
        message = decodeMessage(self.data)
        self.assertEqual(
            message.messageIntegritySHA256,
            bytes.fromhex("b5c7bf005b6c52a21c51c5e892f81924136296cb927c43149309278cc6518e65"),
        )
        self.assertTrue(message.verifyMessageIntegritySHA256(MATRIX_SHA256_KEY))
        self.assertFalse(message.verifyMessageIntegritySHA256(MATRIX_MD5_KEY))
        self.assertFalse(message.verifyMessageIntegrity(MATRIX_SHA256_KEY))

    def test_nonceFeatures(self) -> None:
        """
        The nonce's cookie "AAAC" reads as the feature bits 0x000002 (RFC 8489
        section 18.1 numbers bits from the most significant end).
        """
        message = decodeMessage(self.data)
        self.assertEqual(nonceFeatures(message.get(NONCE)), 0x000002)

    def test_reencode(self) -> None:
        """
        The erratum's bytes are canonical: encoding the decoded message with
        the SHA-256 key reproduces them byte for byte.
        """
        message = decodeMessage(self.data)
        self.assertEqual(message.encode(MATRIX_SHA256_KEY, sha256=True), self.data)

    def test_bitFlips(self) -> None:
        """
        Flipping any single bit makes the message fail to decode or fail
        MESSAGE-INTEGRITY-SHA256 (RFC 8489 section 14.6).
        """

        def check(message: STUNMessage) -> bool:
            return message.verifyMessageIntegritySHA256(MATRIX_SHA256_KEY)

        self.assertTrue(_verifies(self.data, check))
        self.assertEqual(_flipsThatVerify(self.data, check), [])


class B1AsPublishedTests(SynchronousTestCase):
    """
    RFC 8489 appendix B.1 exactly as printed in the RFC, which is
    inconsistent and must not verify.
    """

    def setUp(self) -> None:
        self.data = _b1("as_published")

    def test_rejected(self) -> None:
        """
        The published vector does not decode: its header says 156 bytes
        follow but only 136 do, and a STUN message must fill its datagram
        exactly (RFC 8489 section 6.3; checklist item 6).
        """
        self.assertEqual(int.from_bytes(self.data[2:4], "big"), 156)
        self.assertEqual(len(self.data) - 20, 136)
        error = self.assertRaises(STUNDecodeError, decodeMessage, self.data)
        self.assertIsNone(error.transactionID)

    def test_integrityFailsEvenWithLengthRepaired(self) -> None:
        """
        With the length field repaired to 136 the message decodes, but its
        MESSAGE-INTEGRITY-SHA256 verifies with neither key: it was computed
        over the unadjusted length 0x009c, not the length up to and including
        the integrity attribute that RFC 8489 section 14.6 requires (and
        with the SHA-256 key although no PASSWORD-ALGORITHM says so).
        """
        repaired = self.data[:2] + (136).to_bytes(2, "big") + self.data[4:]
        message = decodeMessage(repaired)
        self.assertNotIn(PASSWORD_ALGORITHM, message)
        self.assertFalse(message.verifyMessageIntegritySHA256(MATRIX_SHA256_KEY))
        self.assertFalse(message.verifyMessageIntegritySHA256(MATRIX_MD5_KEY))
        # The published value is the HMAC over the bytes as printed, with the
        # wrong length left in the header: that is the erratum's diagnosis.
        integrityOffset = len(self.data) - 36
        published = hmac.new(
            MATRIX_SHA256_KEY, self.data[:integrityOffset], hashlib.sha256
        ).digest()
        self.assertEqual(message.messageIntegritySHA256, published)
