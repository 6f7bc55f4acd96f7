"""
Tests for L{turnrelay.auth.credentials}.
"""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from turnrelay.auth.credentials import (
    ChainedCredentials,
    IClientCredentialStore,
    ICredentialStore,
    IExpiringCredentials,
    RESTSecrets,
    StaticCredentials,
    mintRESTCredential,
    restExpiry,
    restPassword,
)
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256
from turnrelay.stun.credentials import longTermKey, userHash

REALM = "example.org"
MD5 = PASSWORD_ALGORITHM_MD5
SHA256 = PASSWORD_ALGORITHM_SHA256

# The TURN REST API known answer (test-vectors.md).
REST_SECRET = b"north"
REST_USERNAME = "1700000000:alice"
REST_PASSWORD = "Cd/49soE35ICqcJF/bCTn8Z4OyE="
REST_MD5_KEY = bytes.fromhex("d9a6a3d964467baeffd2fce41704a913")


def _strings(value: Any, seen: set[int] | None = None) -> Iterator[str]:
    """
    Every string reachable from C{value} through containers and instance
    dictionaries.
    """
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, seen)
            yield from _strings(item, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _strings(item, seen)
    elif hasattr(value, "__dict__"):
        yield from _strings(vars(value), seen)


class StaticCredentialsTests(SynchronousTestCase):
    """
    Tests for L{StaticCredentials}.
    """

    def setUp(self) -> None:
        self.md5Key = longTermKey("carol", REALM, "carol-pw", MD5)
        self.sha256Key = longTermKey("dave", REALM, "dave-pw", SHA256)
        self.store = StaticCredentials(
            REALM,
            {
                "alice": "alice-password",
                "carol": "0x" + self.md5Key.hex(),
                "dave": "0X" + self.sha256Key.hex().upper(),
            },
        )

    def test_interface(self) -> None:
        """
        L{StaticCredentials} provides L{ICredentialStore}.
        """
        self.assertTrue(verifyObject(ICredentialStore, self.store))

    def test_passwordKeys(self) -> None:
        """
        A password yields its MD5 and SHA-256 long-term keys (RFC 8489 section 9.2.2, item 34).
        """
        for algorithm in (MD5, SHA256):
            self.assertEqual(
                self.store.keysFor("alice", REALM, algorithm),
                [longTermKey("alice", REALM, "alice-password", algorithm)],
            )

    def test_hexKeys(self) -> None:
        """
        A C{0x} hex key is used as is, for the algorithm its length implies, and only that.
        """
        self.assertEqual(self.store.keysFor("carol", REALM, MD5), [self.md5Key])
        self.assertEqual(self.store.keysFor("carol", REALM, SHA256), [])
        self.assertEqual(self.store.keysFor("dave", REALM, SHA256), [self.sha256Key])
        self.assertEqual(self.store.keysFor("dave", REALM, MD5), [])

    def test_noPlaintext(self) -> None:
        """
        No password is kept once the keys are derived (RFC 8656 section 6, item 38).
        """
        self.assertNotIn("alice-password", list(_strings(self.store)))

    def test_unknownUser(self) -> None:
        """
        An unknown user has no keys.
        """
        self.assertEqual(self.store.keysFor("mallory", REALM, MD5), [])

    def test_otherRealm(self) -> None:
        """
        Keys are only given out for the store's realm.
        """
        self.assertEqual(self.store.keysFor("alice", "example.com", MD5), [])
        self.assertIsNone(self.store.usernameForHash(userHash("alice", REALM), "example.com"))

    def test_unknownAlgorithm(self) -> None:
        """
        There are no keys for an algorithm the store does not know.
        """
        self.assertEqual(self.store.keysFor("alice", REALM, 0x0003), [])

    def test_userHash(self) -> None:
        """
        A user is found from its USERHASH (RFC 8489 section 14.4, item 37).
        """
        self.assertEqual(self.store.usernameForHash(userHash("alice", REALM), REALM), "alice")
        self.assertEqual(self.store.usernameForHash(userHash("carol", REALM), REALM), "carol")
        self.assertIsNone(self.store.usernameForHash(userHash("mallory", REALM), REALM))

    def test_usernames(self) -> None:
        """
        The users can be listed, for the administrator.
        """
        self.assertEqual(self.store.usernames(), ["alice", "carol", "dave"])

    def test_badPassword(self) -> None:
        """
        A password OpaqueString refuses is an error naming the user, not the password (item 40).
        """
        error = self.assertRaises(ValueError, StaticCredentials, REALM, {"bob": "bad\x07pw"})
        self.assertIn("'bob'", str(error))
        self.assertNotIn("bad\x07pw", str(error))

    def test_badKeys(self) -> None:
        """
        A hex key that is not hex, or neither 16 nor 32 bytes, is an error naming the user.
        """
        for secret in ("0xnothex", "0x" + "ab" * 20):
            error = self.assertRaises(ValueError, StaticCredentials, REALM, {"bob": secret})
            self.assertIn("'bob'", str(error))
            self.assertNotIn(secret, str(error))

    def test_badUsername(self) -> None:
        """
        An empty username is refused: it has no USERHASH (RFC 8489 section 14.4).
        """
        self.assertRaises(ValueError, StaticCredentials, REALM, {"": "pw"})


class RESTTests(SynchronousTestCase):
    """
    Tests for the TURN REST API helpers and L{RESTSecrets}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000 - 3600)
        self.store = RESTSecrets(self.clock, [REST_SECRET])

    def test_interfaces(self) -> None:
        """
        L{RESTSecrets} provides L{ICredentialStore} and L{IExpiringCredentials}.
        """
        self.assertTrue(verifyObject(ICredentialStore, self.store))
        self.assertTrue(verifyObject(IExpiringCredentials, self.store))

    def test_knownAnswer(self) -> None:
        """
        The password is base64(HMAC-SHA1(secret, username)) (item 131's known answer).
        """
        self.assertEqual(restPassword(REST_SECRET, REST_USERNAME), REST_PASSWORD)
        self.assertEqual(self.store.keysFor(REST_USERNAME, REALM, MD5), [REST_MD5_KEY])

    def test_sha256(self) -> None:
        """
        A REST credential gives a SHA-256 key when that algorithm is negotiated (item 129).
        """
        self.assertEqual(
            self.store.keysFor(REST_USERNAME, REALM, SHA256),
            [longTermKey(REST_USERNAME, REALM, REST_PASSWORD, SHA256)],
        )

    def test_expired(self) -> None:
        """
        A username whose expiry has come has no keys (item 129 step 2).
        """
        self.clock.advance(3600)
        self.assertEqual(self.store.keysFor(REST_USERNAME, REALM, MD5), [])
        self.assertTrue(self.store.isExpired(REST_USERNAME))

    def test_notExpired(self) -> None:
        """
        A username expiring within C{maxTTL} is valid and not expired.
        """
        self.clock.advance(3599)
        self.assertEqual(self.store.keysFor(REST_USERNAME, REALM, MD5), [REST_MD5_KEY])
        self.assertFalse(self.store.isExpired(REST_USERNAME))
        self.assertFalse(self.store.isExpired("alice"))

    def test_tooFarAhead(self) -> None:
        """
        A username expiring later than C{maxTTL} from now has no keys (item 129).
        """
        store = RESTSecrets(self.clock, [REST_SECRET], maxTTL=3599)
        self.assertEqual(store.keysFor(REST_USERNAME, REALM, MD5), [])
        self.assertFalse(store.isExpired(REST_USERNAME))

    def test_rotation(self) -> None:
        """
        With two secrets, credentials signed with either verify (item 129, rotation).
        """
        store = RESTSecrets(self.clock, [b"old", b"new"])
        now = self.clock.seconds()
        for secret in (b"old", b"new"):
            username, password = mintRESTCredential(secret, "bob", 600, now)
            key = longTermKey(username, REALM, password, MD5)
            self.assertIn(key, store.keysFor(username, REALM, MD5))
        username, password = mintRESTCredential(b"other", "bob", 600, now)
        key = longTermKey(username, REALM, password, MD5)
        self.assertNotIn(key, store.keysFor(username, REALM, MD5))

    def test_mint(self) -> None:
        """
        A minted credential is expiry, separator, user id, and the HMAC password (item 127).
        """
        username, password = mintRESTCredential(REST_SECRET, "alice", 3600, 1_699_996_400)
        self.assertEqual((username, password), (REST_USERNAME, REST_PASSWORD))

    def test_bareTimestamp(self) -> None:
        """
        A bare timestamp without a user id is a valid username (item 127).
        """
        username, password = mintRESTCredential(REST_SECRET, "", 600, self.clock.seconds())
        self.assertEqual(username, str(int(self.clock.seconds()) + 600))
        self.assertEqual(
            self.store.keysFor(username, REALM, MD5),
            [longTermKey(username, REALM, password, MD5)],
        )

    def test_nonNumeric(self) -> None:
        """
        A username not starting with a decimal timestamp has no keys (item 129).
        """
        for username in ("alice", "alice:1700000000", "-1:x", "1.7e9:x", "\u0661\u0662:x", ""):
            self.assertEqual(self.store.keysFor(username, REALM, MD5), [], username)
            self.assertIsNone(restExpiry(username), username)

    def test_separator(self) -> None:
        """
        The separator between expiry and user id is configurable (item 127).
        """
        store = RESTSecrets(self.clock, [REST_SECRET], separator="|")
        now = self.clock.seconds()
        username, password = mintRESTCredential(REST_SECRET, "alice", 600, now, separator="|")
        self.assertIn("|", username)
        self.assertEqual(
            store.keysFor(username, REALM, MD5), [longTermKey(username, REALM, password, MD5)]
        )
        self.assertEqual(store.keysFor(REST_USERNAME, REALM, MD5), [])

    def test_unknownAlgorithm(self) -> None:
        """
        There are no keys for an algorithm that is neither MD5 nor SHA-256.
        """
        self.assertEqual(self.store.keysFor(REST_USERNAME, REALM, 0x0003), [])

    def test_noUserHash(self) -> None:
        """
        REST usernames cannot be found from a USERHASH.
        """
        self.assertIsNone(self.store.usernameForHash(userHash(REST_USERNAME, REALM), REALM))

    def test_noSecrets(self) -> None:
        """
        A store without secrets, or with an empty separator, is a configuration error.
        """
        self.assertRaises(ValueError, RESTSecrets, self.clock, [])
        self.assertRaises(ValueError, RESTSecrets, self.clock, [b"x"], separator="")

    def test_reprHidesSecrets(self) -> None:
        """
        The store's repr does not show its secrets (they must never be logged).
        """
        self.assertNotIn("north", repr(self.store))


class ChainedCredentialsTests(SynchronousTestCase):
    """
    Tests for L{ChainedCredentials}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000 - 3600)
        self.static = StaticCredentials(REALM, {"alice": "alice-password"})
        self.rest = RESTSecrets(self.clock, [REST_SECRET])
        self.store = ChainedCredentials([self.static, self.rest])

    def test_interfaces(self) -> None:
        """
        L{ChainedCredentials} provides L{ICredentialStore} and L{IExpiringCredentials}.
        """
        self.assertTrue(verifyObject(ICredentialStore, self.store))
        self.assertTrue(verifyObject(IExpiringCredentials, self.store))

    def test_keys(self) -> None:
        """
        Every store is asked for keys, and their answers are put together.
        """
        self.assertEqual(
            self.store.keysFor("alice", REALM, MD5), self.static.keysFor("alice", REALM, MD5)
        )
        self.assertEqual(self.store.keysFor(REST_USERNAME, REALM, MD5), [REST_MD5_KEY])
        both = ChainedCredentials([self.rest, RESTSecrets(self.clock, [b"other"])])
        self.assertEqual(len(both.keysFor(REST_USERNAME, REALM, MD5)), 2)
        self.assertEqual(self.store.keysFor("mallory", REALM, MD5), [])

    def test_userHash(self) -> None:
        """
        The first store that knows a USERHASH answers.
        """
        self.assertEqual(self.store.usernameForHash(userHash("alice", REALM), REALM), "alice")
        self.assertIsNone(self.store.usernameForHash(userHash("bob", REALM), REALM))

    def test_expired(self) -> None:
        """
        A chain reports expiry if one of its stores does.
        """
        self.assertFalse(self.store.isExpired(REST_USERNAME))
        self.clock.advance(3600)
        self.assertTrue(self.store.isExpired(REST_USERNAME))
        self.assertFalse(ChainedCredentials([self.static]).isExpired(REST_USERNAME))

    def test_clientSeen(self) -> None:
        """
        A chain provides L{IClientCredentialStore}: stores that provide it
        are told the client's address and transport, the others are asked
        C{keysFor} as before.
        """
        asked: list[tuple[TransportAddress, str | None]] = []

        @implementer(IClientCredentialStore)
        class ByClient:
            def keysFor(self, username: str, realm: str, algorithm: int) -> list[bytes]:
                raise AssertionError("keysForClient must be asked instead")

            def keysForClient(
                self,
                username: str,
                realm: str,
                algorithm: int,
                clientAddress: TransportAddress,
                transport: str | None,
            ) -> list[bytes]:
                asked.append((clientAddress, transport))
                return [b"k" * 16] if transport == "tls" else []

            def usernameForHash(self, userhash: bytes, realm: str) -> str | None:
                return None

        byClient = ByClient()
        self.assertTrue(verifyObject(IClientCredentialStore, byClient))
        chain = ChainedCredentials([byClient, self.static])
        self.assertTrue(verifyObject(IClientCredentialStore, chain))
        client = TransportAddress("192.0.2.7", 4000)
        static = self.static.keysFor("alice", REALM, MD5)
        self.assertEqual(chain.keysForClient("alice", REALM, MD5, client, "udp"), static)
        self.assertEqual(
            chain.keysForClient("alice", REALM, MD5, client, "tls"), [b"k" * 16, *static]
        )
        self.assertEqual(asked, [(client, "udp"), (client, "tls")])
