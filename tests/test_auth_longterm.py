"""
Tests for L{turnrelay.auth.longterm}: the server side of the long-term
credential mechanism, driven with real encoded and decoded requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.auth.credentials import (
    ChainedCredentials,
    ICredentialStore,
    RESTSecrets,
    StaticCredentials,
    mintRESTCredential,
)
from turnrelay.auth.longterm import AuthResult, LongTermAuthenticator
from turnrelay.auth.nonce import NonceMinter
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import (
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    NONCE,
    PASSWORD_ALGORITHM,
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    PASSWORD_ALGORITHMS,
    REALM,
    REQUESTED_TRANSPORT,
    TRANSPORT_UDP,
    USERHASH,
    USERNAME,
    PasswordAlgorithm,
)
from turnrelay.stun.credentials import FEATURE_PASSWORD_ALGORITHMS, longTermKey, userHash
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage

REALM_VALUE = "example.org"
CLIENT = TransportAddress("192.0.2.10", 40000)
TRANSACTION_ID = bytes(range(12))
MD5 = PasswordAlgorithm(PASSWORD_ALGORITHM_MD5)
SHA256 = PasswordAlgorithm(PASSWORD_ALGORITHM_SHA256)
OFFERED = (SHA256, MD5)

# Marks an argument of LongTermAuthenticatorTests.request that was not given.
_DEFAULT: Any = object()


class TrustingMinter(NonceMinter):
    """
    A nonce minter that accepts every nonce, to feed the authenticator
    published vectors whose nonces it never issued.
    """

    def check(self, nonce: str, clientAddress: TransportAddress) -> bool:
        """
        @return: C{True}, whatever the nonce.
        """
        return True


class LongTermAuthenticatorTests(SynchronousTestCase):
    """
    Tests for L{LongTermAuthenticator.authenticate}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000 - 3600)
        self.minter = NonceMinter(self.clock, lifetime=600.0)
        self.static = StaticCredentials(REALM_VALUE, {"alice": "alice-password"})
        self.rest = RESTSecrets(self.clock, [b"north", b"south"])
        self.credentials = ChainedCredentials([self.static, self.rest])
        self.authenticator = LongTermAuthenticator(REALM_VALUE, self.credentials, self.minter)

    def request(
        self,
        username: str | None = "alice",
        password: str = "alice-password",
        realm: str | None = REALM_VALUE,
        nonce: str | None = _DEFAULT,
        offered: Any = None,
        chosen: PasswordAlgorithm | None = None,
        sha256: bool = False,
        userhash: bytes | None = None,
        key: bytes | None = _DEFAULT,
    ) -> STUNMessage:
        """
        Build, encode and decode an Allocate request as a client would send it.

        @param nonce: the NONCE; a fresh one for L{CLIENT} by default.
        @param offered: the PASSWORD-ALGORITHMS to echo, if any.
        @param chosen: the PASSWORD-ALGORITHM, if any; it decides the key.
        @param sha256: protect with MESSAGE-INTEGRITY-SHA256.
        @param key: the integrity key; derived from the other arguments by
            default, L{None} for no integrity at all.
        """
        if nonce is _DEFAULT:
            nonce = self.minter.mint(CLIENT)
        attributes: list[tuple[int, Any]] = [(REQUESTED_TRANSPORT, TRANSPORT_UDP)]
        if username is not None:
            attributes.append((USERNAME, username))
        if userhash is not None:
            attributes.append((USERHASH, userhash))
        if realm is not None:
            attributes.append((REALM, realm))
        if nonce is not None:
            attributes.append((NONCE, nonce))
        if offered is not None:
            attributes.append((PASSWORD_ALGORITHMS, offered))
        if chosen is not None:
            attributes.append((PASSWORD_ALGORITHM, chosen))
        if key is _DEFAULT:
            algorithm = PASSWORD_ALGORITHM_MD5 if chosen is None else chosen.algorithm
            key = longTermKey(username or "alice", REALM_VALUE, password, algorithm)
        message = STUNMessage(Method.ALLOCATE, MessageClass.REQUEST, TRANSACTION_ID, attributes)
        return decodeMessage(message.encode(key=key, sha256=sha256))

    def assertChallenge(self, result: AuthResult, code: int, reason: str) -> None:
        """
        Assert C{result} is an error carrying REALM, a fresh nonce for
        L{CLIENT} and PASSWORD-ALGORITHMS, and nothing else (items 28, 33, 35).
        """
        self.assertFalse(result.ok)
        self.assertEqual((result.errorCode, result.reason), (code, reason))
        self.assertIsNone(result.username)
        self.assertIsNone(result.key)
        attributes = dict(result.errorAttributes)
        self.assertEqual(sorted(attributes), sorted([REALM, NONCE, PASSWORD_ALGORITHMS]))
        self.assertEqual(attributes[REALM], REALM_VALUE)
        nonce = attributes[NONCE]
        assert isinstance(nonce, str)
        self.assertTrue(nonce.startswith("obMatJos2gAAA"))
        self.assertTrue(self.minter.check(nonce, CLIENT))
        self.assertEqual(attributes[PASSWORD_ALGORITHMS], OFFERED)

    def assertError(self, result: AuthResult, code: int, reason: str) -> None:
        """
        Assert C{result} is an error without extra attributes.
        """
        self.assertFalse(result.ok)
        self.assertEqual((result.errorCode, result.reason), (code, reason))
        self.assertEqual(result.errorAttributes, ())
        self.assertIsNone(result.key)

    def assertAuthenticated(
        self, result: AuthResult, username: str, key: bytes, useSHA256: bool = False
    ) -> None:
        """
        Assert C{result} is a success for C{username} with C{key}.
        """
        self.assertTrue(result.ok, result)
        self.assertEqual(
            (result.username, result.key, result.useSHA256, result.errorCode, result.reason),
            (username, key, useSHA256, None, "ok"),
        )
        self.assertEqual(result.errorAttributes, ())

    def test_noIntegrity(self) -> None:
        """
        A request without integrity gets 401 with REALM, NONCE and PASSWORD-ALGORITHMS (item 28).
        """
        result = self.authenticator.authenticate(self.request(key=None), CLIENT)
        self.assertChallenge(result, 401, "no-integrity")

    def test_challengeContents(self) -> None:
        """
        A 401 challenge encodes with no USERNAME, USERHASH or integrity (RFC 8489 section 9.2.4).
        """
        request = self.request(key=None)
        result = self.authenticator.authenticate(request, CLIENT)
        response = request.errorResponse(401)
        for attributeType, value in result.errorAttributes:
            response.add(attributeType, value)
        decoded = decodeMessage(response.encode())
        self.assertEqual(decoded.get(REALM), REALM_VALUE)
        self.assertTrue(self.minter.check(decoded.get(NONCE), CLIENT))
        self.assertEqual(decoded.get(PASSWORD_ALGORITHMS), OFFERED)
        for absent in (USERNAME, USERHASH, MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256):
            self.assertNotIn(absent, decoded)
        self.assertIsNone(decoded.messageIntegrity)
        self.assertIsNone(decoded.messageIntegritySHA256)

    def test_noPasswordAlgorithmsWithoutFeature(self) -> None:
        """
        PASSWORD-ALGORITHMS is only offered if the nonce cookie announces it (item 28).
        """
        minter = NonceMinter(self.clock, features=0)
        authenticator = LongTermAuthenticator(REALM_VALUE, self.credentials, minter)
        result = authenticator.authenticate(self.request(key=None), CLIENT)
        self.assertEqual([kind for kind, _ in result.errorAttributes], [REALM, NONCE])

    def test_compactChallenge(self) -> None:
        """
        The compact challenge is RFC 8489 section 9.2.4's minimum: REALM and a
        NONCE without the nonce cookie, so without PASSWORD-ALGORITHMS.
        """
        attributes = self.authenticator.challenge(CLIENT, compact=True)
        self.assertEqual([kind for kind, _ in attributes], [REALM, NONCE])
        nonce = dict(attributes)[NONCE]
        assert isinstance(nonce, str)
        self.assertFalse(nonce.startswith("obMatJos2"))
        self.assertTrue(self.minter.check(nonce, CLIENT))

    def test_compactNonceIsMD5(self) -> None:
        """
        A request with a compact nonce is checked with the MD5 key, whatever
        password algorithm it names: the nonce announced none.
        """
        nonce = dict(self.authenticator.challenge(CLIENT, compact=True))[NONCE]
        assert isinstance(nonce, str)
        key = longTermKey("alice", REALM_VALUE, "alice-password")
        result = self.authenticator.authenticate(self.request(nonce=nonce), CLIENT)
        self.assertAuthenticated(result, "alice", key)
        sha256 = self.request(nonce=nonce, offered=OFFERED, chosen=SHA256, sha256=True)
        self.assertChallenge(self.authenticator.authenticate(sha256, CLIENT), 401, "bad-integrity")

    def test_missingAttribute(self) -> None:
        """
        Integrity without USERNAME or USERHASH, REALM or NONCE is a 400 (item 31).
        """
        key = longTermKey("alice", REALM_VALUE, "alice-password")
        for request in (
            self.request(username=None, key=key),
            self.request(realm=None),
            self.request(nonce=None),
        ):
            self.assertError(
                self.authenticator.authenticate(request, CLIENT), 400, "missing-attribute"
            )

    def test_staleNonce(self) -> None:
        """
        A nonce older than its lifetime gets 438 with a new nonce (item 35).
        """
        request = self.request()
        self.clock.advance(601)
        result = self.authenticator.authenticate(request, CLIENT)
        self.assertChallenge(result, 438, "stale-nonce")
        self.assertNotEqual(dict(result.errorAttributes)[NONCE], request.get(NONCE))

    def test_foreignNonce(self) -> None:
        """
        A nonce issued to another client host, or not by us, gets 438 (item 28).
        """
        other = TransportAddress("192.0.2.99", CLIENT.port)
        result = self.authenticator.authenticate(self.request(), other)
        self.assertEqual((result.errorCode, result.reason), (438, "stale-nonce"))
        forged = self.request(nonce="obMatJos2gAAA" + "A" * 32)
        result = self.authenticator.authenticate(forged, CLIENT)
        self.assertChallenge(result, 438, "stale-nonce")

    def test_md5(self) -> None:
        """
        Without PASSWORD-ALGORITHM(S) the request is MD5 and MESSAGE-INTEGRITY (item 32).
        """
        result = self.authenticator.authenticate(self.request(), CLIENT)
        key = longTermKey("alice", REALM_VALUE, "alice-password", PASSWORD_ALGORITHM_MD5)
        self.assertAuthenticated(result, "alice", key)

    def test_sha256(self) -> None:
        """
        PASSWORD-ALGORITHM SHA-256 with MESSAGE-INTEGRITY-SHA256 authenticates (items 32, 34, 36).
        """
        request = self.request(offered=OFFERED, chosen=SHA256, sha256=True)
        result = self.authenticator.authenticate(request, CLIENT)
        key = longTermKey("alice", REALM_VALUE, "alice-password", PASSWORD_ALGORITHM_SHA256)
        self.assertAuthenticated(result, "alice", key, useSHA256=True)

    def test_md5Negotiated(self) -> None:
        """
        PASSWORD-ALGORITHM MD5 chosen from the offered list authenticates with the MD5 key.
        """
        request = self.request(offered=OFFERED, chosen=MD5)
        result = self.authenticator.authenticate(request, CLIENT)
        key = longTermKey("alice", REALM_VALUE, "alice-password", PASSWORD_ALGORITHM_MD5)
        self.assertAuthenticated(result, "alice", key)

    def test_md5KeyWithSHA256Integrity(self) -> None:
        """
        MESSAGE-INTEGRITY-SHA256 is verified whenever present, whatever the key algorithm (item 34).
        """
        result = self.authenticator.authenticate(self.request(sha256=True), CLIENT)
        key = longTermKey("alice", REALM_VALUE, "alice-password", PASSWORD_ALGORITHM_MD5)
        self.assertAuthenticated(result, "alice", key, useSHA256=True)

    def test_bidDownMissingList(self) -> None:
        """
        PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS is a 400 (item 32).
        """
        request = self.request(chosen=SHA256, sha256=True)
        self.assertError(self.authenticator.authenticate(request, CLIENT), 400, "bid-down")

    def test_bidDownMissingChoice(self) -> None:
        """
        PASSWORD-ALGORITHMS without PASSWORD-ALGORITHM is a 400 (item 32).
        """
        request = self.request(offered=OFFERED)
        self.assertError(self.authenticator.authenticate(request, CLIENT), 400, "bid-down")

    def test_bidDownAlteredList(self) -> None:
        """
        A PASSWORD-ALGORITHMS other than exactly the one we sent is a 400 (item 32).
        """
        for offered in ((MD5, SHA256), (MD5,), (SHA256,), (SHA256, MD5, MD5)):
            request = self.request(offered=offered, chosen=MD5)
            self.assertError(self.authenticator.authenticate(request, CLIENT), 400, "bid-down")

    def test_bidDownUnlistedChoice(self) -> None:
        """
        A PASSWORD-ALGORITHM that is not one of PASSWORD-ALGORITHMS is a 400 (item 32).
        """
        request = self.request(offered=OFFERED, chosen=PasswordAlgorithm(0x0003), key=b"k" * 16)
        self.assertError(self.authenticator.authenticate(request, CLIENT), 400, "bid-down")

    def test_badRealm(self) -> None:
        """
        A REALM other than ours is a 401 challenge.
        """
        request = self.request(realm="example.com")
        self.assertChallenge(self.authenticator.authenticate(request, CLIENT), 401, "bad-realm")

    def test_unknownUser(self) -> None:
        """
        An unknown user gets 401 with REALM, NONCE and PASSWORD-ALGORITHMS (item 33).
        """
        request = self.request(username="mallory")
        result = self.authenticator.authenticate(request, CLIENT)
        self.assertChallenge(result, 401, "unknown-user")

    def test_wrongPassword(self) -> None:
        """
        A MESSAGE-INTEGRITY that does not verify gets 401 with REALM and NONCE (item 34).
        """
        for request in (
            self.request(password="guess"),
            self.request(password="guess", offered=OFFERED, chosen=SHA256, sha256=True),
        ):
            result = self.authenticator.authenticate(request, CLIENT)
            self.assertChallenge(result, 401, "bad-integrity")

    def test_userHash(self) -> None:
        """
        A USERHASH instead of USERNAME finds a static user (RFC 8489 section 9.2.5, item 37).
        """
        key = longTermKey("alice", REALM_VALUE, "alice-password", PASSWORD_ALGORITHM_SHA256)
        request = self.request(
            username=None,
            userhash=userHash("alice", REALM_VALUE),
            offered=OFFERED,
            chosen=SHA256,
            sha256=True,
            key=key,
        )
        result = self.authenticator.authenticate(request, CLIENT)
        self.assertAuthenticated(result, "alice", key, useSHA256=True)

    def test_unknownUserHash(self) -> None:
        """
        A USERHASH no user has gets 401 (item 33).
        """
        request = self.request(username=None, userhash=userHash("mallory", REALM_VALUE))
        result = self.authenticator.authenticate(request, CLIENT)
        self.assertChallenge(result, 401, "unknown-user")

    def test_rest(self) -> None:
        """
        A TURN REST API credential authenticates like any long-term one (item 130).
        """
        username, password = mintRESTCredential(b"north", "bob", 600, self.clock.seconds())
        result = self.authenticator.authenticate(
            self.request(username=username, password=password), CLIENT
        )
        key = longTermKey(username, REALM_VALUE, password, PASSWORD_ALGORITHM_MD5)
        self.assertAuthenticated(result, username, key)

    def test_restRotation(self) -> None:
        """
        A REST credential signed with any configured secret authenticates (item 129).
        """
        for secret in (b"north", b"south"):
            username, password = mintRESTCredential(secret, "bob", 600, self.clock.seconds())
            request = self.request(
                username=username, password=password, offered=OFFERED, chosen=SHA256, sha256=True
            )
            result = self.authenticator.authenticate(request, CLIENT)
            key = longTermKey(username, REALM_VALUE, password, PASSWORD_ALGORITHM_SHA256)
            self.assertAuthenticated(result, username, key, useSHA256=True)

    def test_restExpired(self) -> None:
        """
        An expired REST credential gets 401, logged as expired (item 129 step 2).
        """
        username, password = mintRESTCredential(b"north", "bob", 60, self.clock.seconds())
        self.clock.advance(61)
        request = self.request(username=username, password=password)
        self.assertChallenge(self.authenticator.authenticate(request, CLIENT), 401, "expired")

    def test_keyHiddenFromRepr(self) -> None:
        """
        The key never shows in an L{AuthResult}'s repr, so logging one cannot leak it.
        """
        result = self.authenticator.authenticate(self.request(), CLIENT)
        assert result.key is not None
        self.assertNotIn(repr(result.key), repr(result))

    def test_stateless(self) -> None:
        """
        Authenticating leaves no trace in the authenticator (security notes 2.2).
        """
        before = dict(vars(self.authenticator))
        self.authenticator.authenticate(self.request(key=None), CLIENT)
        self.authenticator.authenticate(self.request(), CLIENT)
        self.assertEqual(vars(self.authenticator), before)


class VectorTests(SynchronousTestCase):
    """
    The authenticator against the RFC 5769 long-term request.
    """

    def test_rfc5769LongTerm(self) -> None:
        """
        RFC 5769 section 2.4 authenticates as MD5 with the user's key (item 34).
        """
        path = Path(__file__).parent / "vectors" / "rfc5769.json"
        vectors = json.loads(path.read_text(encoding="utf-8"))["vectors"]
        (vector,) = [v for v in vectors if v["rfc5769_section"] == "2.4"]
        username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
        credentials: ICredentialStore = StaticCredentials("example.org", {username: "TheMatrIX"})
        minter = TrustingMinter(Clock(), features=FEATURE_PASSWORD_ALGORITHMS)
        authenticator = LongTermAuthenticator("example.org", credentials, minter)
        request = decodeMessage(bytes.fromhex(vector["message_hex"]))
        result = authenticator.authenticate(request, CLIENT)
        self.assertTrue(result.ok, result)
        self.assertEqual(result.username, username)
        self.assertEqual(result.key, bytes.fromhex("e8ca7ad59d5eb0518e312911d2dab2a9"))
        self.assertFalse(result.useSHA256)
