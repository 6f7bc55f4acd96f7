"""
Tests for L{turnrelay.auth.nonce}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.auth.nonce import NonceMinter
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.credentials import (
    FEATURE_PASSWORD_ALGORITHMS,
    FEATURE_USERNAME_ANONYMITY,
    nonceFeatures,
)

CLIENT = TransportAddress("192.0.2.10", 40000)
CLIENT6 = TransportAddress("2001:db8::10", 40000)


class NonceMinterTests(SynchronousTestCase):
    """
    Tests for L{NonceMinter}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.minter = NonceMinter(self.clock, lifetime=600.0, secret=b"s" * 32)

    def test_roundTrip(self) -> None:
        """
        A nonce minted for a client checks for that client (RFC 8489 section 9.2).
        """
        for client in (CLIENT, CLIENT6):
            self.assertTrue(self.minter.check(self.minter.mint(client), client))

    def test_otherHost(self) -> None:
        """
        A nonce is bound to its client's host: one nonce is never valid for two sources (item 28).
        """
        nonce = self.minter.mint(CLIENT)
        self.assertFalse(self.minter.check(nonce, TransportAddress("192.0.2.11", CLIENT.port)))
        self.assertFalse(self.minter.check(nonce, CLIENT6))

    def test_otherPort(self) -> None:
        """
        A nonce is valid from another port of its client's host: RFC 6062 data
        connections reuse their control connection's nonce.
        """
        nonce = self.minter.mint(CLIENT)
        self.assertTrue(self.minter.check(nonce, TransportAddress(CLIENT.host, CLIENT.port + 1)))

    def test_neverTheSameNonce(self) -> None:
        """
        Two sources, even two ports of one host in the same second, are never
        handed the same nonce (item 28).
        """
        nonces = {
            self.minter.mint(TransportAddress(CLIENT.host, CLIENT.port + n)) for n in range(50)
        }
        self.assertEqual(len(nonces), 50)

    def test_expiry(self) -> None:
        """
        A nonce is valid for C{lifetime} seconds and stale after (RFC 8656 section 5).
        """
        nonce = self.minter.mint(CLIENT)
        self.clock.advance(600)
        self.assertTrue(self.minter.check(nonce, CLIENT))
        self.clock.advance(1)
        self.assertFalse(self.minter.check(nonce, CLIENT))

    def test_future(self) -> None:
        """
        A nonce whose issue time lies beyond the allowed clock skew is refused.
        """
        ahead = Clock()
        ahead.advance(self.clock.seconds() + 60)
        nonce = NonceMinter(ahead, secret=b"s" * 32).mint(CLIENT)
        self.assertFalse(self.minter.check(nonce, CLIENT))

    def test_sharedSecret(self) -> None:
        """
        Minters sharing a secret accept each other's nonces, so servers can share nonces.
        """
        other = NonceMinter(self.clock, secret=b"s" * 32)
        self.assertTrue(other.check(self.minter.mint(CLIENT), CLIENT))

    def test_otherMinter(self) -> None:
        """
        A nonce minted with a different secret is refused.
        """
        other = NonceMinter(self.clock)
        self.assertFalse(self.minter.check(other.mint(CLIENT), CLIENT))

    def test_otherFeatures(self) -> None:
        """
        A nonce whose cookie announces other security features is refused.
        """
        other = NonceMinter(self.clock, secret=b"s" * 32, features=FEATURE_USERNAME_ANONYMITY)
        self.assertFalse(self.minter.check(other.mint(CLIENT), CLIENT))

    def test_garbage(self) -> None:
        """
        Garbage, truncated or altered nonces are refused without raising.
        """
        nonce = self.minter.mint(CLIENT)
        flipped = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
        plussed = nonce[:20] + "+" + nonce[21:]
        for bad in ["", "x", "obMatJos2gAAA", nonce[:-1], nonce + "A", flipped, plussed, "é" * 45]:
            self.assertFalse(self.minter.check(bad, CLIENT), bad)
        self.assertFalse(self.minter.check(nonce, TransportAddress("not an address", -1)))
        self.assertFalse(self.minter.check(None, CLIENT))  # type: ignore[arg-type]

    def test_cookie(self) -> None:
        """
        Nonces start with the RFC 8489 nonce cookie announcing password algorithms (item 30).
        """
        nonce = self.minter.mint(CLIENT)
        self.assertTrue(nonce.startswith("obMatJos2gAAA"))
        self.assertEqual(nonceFeatures(nonce), FEATURE_PASSWORD_ALGORITHMS)
        self.assertEqual(self.minter.features, FEATURE_PASSWORD_ALGORITHMS)

    def test_length(self) -> None:
        """
        Nonces are far shorter than the 128 characters NONCE allows (RFC 8489 section 14.10).
        """
        self.assertLess(len(self.minter.mint(CLIENT6)), 128)

    def test_distinct(self) -> None:
        """
        Different clients, and one client at different times, get different nonces.
        """
        first = self.minter.mint(CLIENT)
        self.assertNotEqual(first, self.minter.mint(CLIENT6))
        self.clock.advance(1)
        self.assertNotEqual(first, self.minter.mint(CLIENT))

    def test_randomSecret(self) -> None:
        """
        Without a secret, each minter makes its own, so its nonces are its alone.
        """
        first = NonceMinter(self.clock)
        second = NonceMinter(self.clock)
        self.assertTrue(first.check(first.mint(CLIENT), CLIENT))
        self.assertFalse(second.check(first.mint(CLIENT), CLIENT))


class CompactNonceTests(SynchronousTestCase):
    """
    Compact nonces: without the nonce cookie, for the smallest 401.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.minter = NonceMinter(self.clock, lifetime=600.0, secret=b"s" * 32)

    def test_roundTrip(self) -> None:
        """
        A compact nonce checks for its client, and only for its client.
        """
        for client in (CLIENT, CLIENT6):
            nonce = self.minter.mint(client, compact=True)
            self.assertTrue(self.minter.check(nonce, client))
        nonce = self.minter.mint(CLIENT, compact=True)
        self.assertFalse(self.minter.check(nonce, TransportAddress("192.0.2.11", CLIENT.port)))

    def test_noCookie(self) -> None:
        """
        A compact nonce is 32 characters with no nonce cookie: it announces no
        security feature (RFC 8489 section 9.2), so no PASSWORD-ALGORITHMS.
        """
        nonce = self.minter.mint(CLIENT, compact=True)
        self.assertEqual(len(nonce), 32)
        self.assertIsNone(nonceFeatures(nonce))

    def test_expiry(self) -> None:
        """
        A compact nonce goes stale like any other.
        """
        nonce = self.minter.mint(CLIENT, compact=True)
        self.clock.advance(601)
        self.assertFalse(self.minter.check(nonce, CLIENT))

    def test_cookieCannotBeStripped(self) -> None:
        """
        Stripping the cookie off a nonce does not make a valid compact one,
        nor does adding it to a compact one: the MAC covers the cookie, so an
        attacker on the path cannot bid the client down to a nonce that
        announces nothing.
        """
        full = self.minter.mint(CLIENT)
        compact = self.minter.mint(CLIENT, compact=True)
        self.assertFalse(self.minter.check(full[13:], CLIENT))
        self.assertFalse(self.minter.check(full[:13] + compact, CLIENT))
