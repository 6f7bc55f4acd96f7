"""
Tests for L{turnrelay.stun.credentials}: long-term keys, OpaqueString,
USERHASH and the nonce cookie (RFC 8489 sections 9.2, 14.4 and 18.1).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun.attributes import PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256
from turnrelay.stun.credentials import (
    FEATURE_PASSWORD_ALGORITHMS,
    FEATURE_USERNAME_ANONYMITY,
    longTermKey,
    nonceCookie,
    nonceFeatures,
    opaqueString,
    userHash,
)

MATRIX_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
# "The" SOFT HYPHEN "M" FEMININE ORDINAL "tr" ROMAN NUMERAL NINE, as the RFCs
# print the password before SASLprep.
RAW_MATRIX_PASSWORD = "The\u00adM\u00aatr\u2168"


class LongTermKeyTests(SynchronousTestCase):
    """
    L{longTermKey} (RFC 8489 sections 9.2.2 and 18.5.1; checklist item 34).
    """

    def test_md5Example(self) -> None:
        """
        The MD5 key of user, realm, pass is 8493fbc5... (RFC 8489 section
        9.2.2), and MD5 is the default.
        """
        expected = bytes.fromhex("8493fbc53ba582fb4c044c456bdc40eb")
        self.assertEqual(longTermKey("user", "realm", "pass"), expected)
        self.assertEqual(longTermKey("user", "realm", "pass", PASSWORD_ALGORITHM_MD5), expected)

    def test_sha256(self) -> None:
        """
        The SHA-256 key is SHA-256 of the same string, 32 bytes (RFC 8489
        section 18.5.1.2).
        """
        self.assertEqual(
            longTermKey("user", "realm", "pass", PASSWORD_ALGORITHM_SHA256),
            bytes.fromhex("07e934117abd40836e7c6329b54731b2b2d2a5f9a71f544922d75e0730d8251b"),
        )

    def test_matrixKeys(self) -> None:
        """
        The RFC 5769 / RFC 8489 B.1 credentials give e8ca7ad5... (MD5) and
        dd295a61... (SHA-256).
        """
        self.assertEqual(
            longTermKey(MATRIX_USERNAME, "example.org", "TheMatrIX"),
            bytes.fromhex("e8ca7ad59d5eb0518e312911d2dab2a9"),
        )
        self.assertEqual(
            longTermKey(MATRIX_USERNAME, "example.org", "TheMatrIX", PASSWORD_ALGORITHM_SHA256),
            bytes.fromhex("dd295a613b9058c3c23d6dc7165bda072304d989c9d0af3a8c7e184b4f9bb4a1"),
        )

    def test_unknownAlgorithm(self) -> None:
        """
        An algorithm other than MD5 (1) or SHA-256 (2) is a ValueError.
        """
        for algorithm in (0, 3, 0xFFFF):
            self.assertRaises(ValueError, longTermKey, "user", "realm", "pass", algorithm)

    def test_realmAndPasswordPrepared(self) -> None:
        """
        The realm and password go through OpaqueString, so a non-ASCII space
        or a decomposed accent gives the same key as its prepared form
        (RFC 8489 section 9.2.2).
        """
        self.assertEqual(
            longTermKey("user", "my\u00a0realm", "pa\u3000ss"),
            longTermKey("user", "my realm", "pa ss"),
        )
        self.assertEqual(
            longTermKey("user", "realm", "caf\u0065\u0301"),
            longTermKey("user", "realm", "caf\u00e9"),
        )

    def test_usernameAsSent(self) -> None:
        """
        The username is used as it travels in USERNAME, unprepared.
        """
        self.assertNotEqual(
            longTermKey("caf\u0065\u0301", "realm", "pass"),
            longTermKey("caf\u00e9", "realm", "pass"),
        )

    def test_invalidPassword(self) -> None:
        """
        A password OpaqueString rejects, such as the RFC's raw password with
        its soft hyphen, or an empty one, is a ValueError.
        """
        self.assertRaises(
            ValueError, longTermKey, MATRIX_USERNAME, "example.org", RAW_MATRIX_PASSWORD
        )
        self.assertRaises(ValueError, longTermKey, "user", "realm", "")
        self.assertRaises(ValueError, longTermKey, "user", "", "pass")


class OpaqueStringTests(SynchronousTestCase):
    """
    L{opaqueString}, the PRECIS OpaqueString profile (RFC 8265 section 4.2;
    checklist item 40).
    """

    def test_ascii(self) -> None:
        """
        Printable ASCII is unchanged.
        """
        for text in ("TheMatrIX", "example.org", "VOkJxbRl1RmTxUk/WvJxBt", "a b"):
            self.assertEqual(opaqueString(text), text)

    def test_nfc(self) -> None:
        """
        Text is normalised to NFC.
        """
        self.assertEqual(opaqueString("e\u0301"), "\u00e9")
        self.assertEqual(opaqueString(MATRIX_USERNAME), MATRIX_USERNAME)

    def test_nonASCIISpace(self) -> None:
        """
        Non-ASCII spaces become the ASCII space.
        """
        self.assertEqual(opaqueString("a\u00a0b"), "a b")
        self.assertEqual(opaqueString("a\u3000b"), "a b")
        self.assertEqual(opaqueString("a\u2003b"), "a b")

    def test_noCompatibilityMapping(self) -> None:
        """
        Unlike SASLprep, OpaqueString keeps compatibility characters such as
        U+00AA and U+2168 as they are.
        """
        self.assertEqual(opaqueString("M\u00aatr\u2168"), "M\u00aatr\u2168")

    def test_rawMatrixPassword(self) -> None:
        """
        The RFC 5769 raw password is rejected: its SOFT HYPHEN is a default
        ignorable code point that OpaqueString disallows.
        """
        self.assertRaises(ValueError, opaqueString, RAW_MATRIX_PASSWORD)

    def test_disallowed(self) -> None:
        """
        The empty string and control characters are rejected with ValueError.
        """
        for text in ("", "\x00", "a\tb", "\x7f"):
            self.assertRaises(ValueError, opaqueString, text)


class UserHashTests(SynchronousTestCase):
    """
    L{userHash} (RFC 8489 section 14.4; checklist item 37).
    """

    def test_matrix(self) -> None:
        """
        The B.1 username and realm give 4a3cf38f...407f1704.
        """
        self.assertEqual(
            userHash(MATRIX_USERNAME, "example.org"),
            bytes.fromhex("4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"),
        )

    def test_prepared(self) -> None:
        """
        Both the username and the realm go through OpaqueString.
        """
        self.assertEqual(userHash("caf\u0065\u0301", "a\u00a0b"), userHash("caf\u00e9", "a b"))
        self.assertEqual(len(userHash("user", "realm")), 32)
        self.assertRaises(ValueError, userHash, "", "realm")


class NonceCookieTests(SynchronousTestCase):
    """
    The nonce cookie and its security feature bits (RFC 8489 sections 9.2
    and 18.1; checklist item 30).
    """

    def test_encodings(self) -> None:
        """
        The four feature combinations give obMatJos2AAAA, gAAA, QAAA and wAAA,
        counting bit 0 as the most significant.
        """
        both = FEATURE_PASSWORD_ALGORITHMS | FEATURE_USERNAME_ANONYMITY
        self.assertEqual(FEATURE_PASSWORD_ALGORITHMS, 0x800000)
        self.assertEqual(FEATURE_USERNAME_ANONYMITY, 0x400000)
        self.assertEqual(nonceCookie(0), "obMatJos2AAAA")
        self.assertEqual(nonceCookie(FEATURE_PASSWORD_ALGORITHMS), "obMatJos2gAAA")
        self.assertEqual(nonceCookie(FEATURE_USERNAME_ANONYMITY), "obMatJos2QAAA")
        self.assertEqual(nonceCookie(both), "obMatJos2wAAA")

    def test_roundTrip(self) -> None:
        """
        L{nonceFeatures} reads back what L{nonceCookie} wrote, whatever
        follows the cookie.
        """
        for features in (0, 0x800000, 0x400000, 0xC00000, 0x000002, 0xFFFFFF):
            self.assertEqual(len(nonceCookie(features)), 13)
            self.assertEqual(nonceFeatures(nonceCookie(features)), features)
            self.assertEqual(nonceFeatures(nonceCookie(features) + "f//499k9"), features)

    def test_outOfRange(self) -> None:
        """
        Features that do not fit in 24 bits are a ValueError.
        """
        self.assertRaises(ValueError, nonceCookie, -1)
        self.assertRaises(ValueError, nonceCookie, 0x1000000)

    def test_noCookie(self) -> None:
        """
        A nonce without the full cookie has no features: L{None}.
        """
        for nonce in (
            "",
            "f//499k954d6OL34oL9FSTvy64sA",
            "obMatJos2",
            "obMatJos2AAA",
            "obmatjos2AAAA",
        ):
            self.assertIsNone(nonceFeatures(nonce))

    def test_b1Nonce(self) -> None:
        """
        The B.1 nonce's "AAAC" reads as 0x000002, only the unassigned bit 22.
        """
        self.assertEqual(nonceFeatures("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"), 0x000002)

    def test_badBase64(self) -> None:
        """
        Feature characters that are not base64 give L{None}.
        """
        for nonce in (
            "obMatJos2!!!!rest",
            "obMatJos2AA=Arest",
            "obMatJos2\u00e9\u00e9\u00e9\u00e9",
        ):
            self.assertIsNone(nonceFeatures(nonce))
