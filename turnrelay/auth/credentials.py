# -*- test-case-name: tests.test_auth_credentials -*-
"""
Where long-term credential keys come from.

An L{ICredentialStore} answers one question for the authenticator: which
keys could this username have in this realm for this password algorithm.
Three stores are provided: L{StaticCredentials} (a fixed user list, keys
derived once and passwords dropped), L{RESTSecrets} (ephemeral credentials
of the TURN REST API, computed from shared secrets) and
L{ChainedCredentials} (several stores at once).

@see: RFC 8489 section 9.2; RFC 8656 section 6;
    draft-uberti-behave-turn-rest-00.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Iterable, Mapping, Sequence

from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256
from turnrelay.stun.credentials import longTermKey, opaqueString, userHash

_ALGORITHMS = (PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256)
_KEY_SIZES = {16: PASSWORD_ALGORITHM_MD5, 32: PASSWORD_ALGORITHM_SHA256}


class ICredentialStore(Interface):
    """
    A source of long-term credential keys.

    Stores hand out keys, never passwords: the key is all the authenticator
    needs, and all a server may keep (RFC 8656 section 6).
    """

    def keysFor(username: str, realm: str, algorithm: int) -> list[bytes]:
        """
        The keys C{username} may be using.

        @param username: the USERNAME as the request carried it.
        @param realm: the realm the key is for.
        @param algorithm: C{PASSWORD_ALGORITHM_MD5} or
            C{PASSWORD_ALGORITHM_SHA256}.
        @return: every candidate key (more than one while a secret is being
            rotated); empty for an unknown or expired user, a foreign realm
            or an algorithm the store has no key for.
        """

    def usernameForHash(userhash: bytes, realm: str) -> str | None:
        """
        Find the user behind a USERHASH.

        @param userhash: the 32-byte USERHASH value.
        @param realm: the realm the hash was computed with.
        @return: the username, or L{None} if no user of this store has that
            hash.
        @see: RFC 8489 section 14.4.
        """


class IClientCredentialStore(ICredentialStore):
    """
    A credential store that wants to know who is asking: an embedding
    application's own user database may give a user keys only from its
    network, or only over TLS.

    The authenticator calls L{keysForClient} instead of C{keysFor} on a
    store that provides this; other stores keep working unchanged.
    """

    def keysForClient(
        username: str,
        realm: str,
        algorithm: int,
        clientAddress: TransportAddress,
        transport: str | None,
    ) -> list[bytes]:
        """
        The keys C{username} may be using from C{clientAddress}.

        @param clientAddress: the request's source (IPv4-mapped addresses
            already turned into IPv4).
        @param transport: C{"udp"}, C{"tcp"} or C{"tls"}, or L{None} when
            the caller does not say.
        @return: as L{ICredentialStore.keysFor}; empty to refuse (401).
        """


def keysForClient(
    store: ICredentialStore,
    username: str,
    realm: str,
    algorithm: int,
    clientAddress: TransportAddress,
    transport: str | None,
) -> list[bytes]:
    """
    Ask any store for keys: L{IClientCredentialStore.keysForClient} when it
    provides it, else L{ICredentialStore.keysFor}.
    """
    if IClientCredentialStore.providedBy(store):
        return IClientCredentialStore(store).keysForClient(
            username, realm, algorithm, clientAddress, transport
        )
    return store.keysFor(username, realm, algorithm)


class IExpiringCredentials(Interface):
    """
    A credential store whose usernames can expire (the TURN REST API's).

    Optional: the authenticator asks it only to tell an expired credential
    from an unknown one in its logs; both are rejected alike.
    """

    def isExpired(username: str) -> bool:
        """
        @return: whether C{username} names a credential that has expired.
        """


def sameRealm(realm: str, preparedRealm: str) -> bool:
    """
    Compare a realm with one already prepared with OpaqueString, in their
    prepared forms (RFC 8489 section 14.9).
    """
    if realm == preparedRealm:
        return True
    try:
        return opaqueString(realm) == preparedRealm
    except ValueError:
        return False


@implementer(ICredentialStore)
class StaticCredentials:
    """
    A fixed list of users, for one realm.

    Each user's secret is a password, or a key written C{"0x"} and hex
    (coturn's convention): 16 bytes make an MD5 key, 32 bytes a SHA-256
    key.  Passwords are turned into both keys at construction and then
    forgotten; a user given by a key can only use that key's algorithm.

    @ivar realm: the realm the keys were derived for.
    @see: RFC 8656 section 6; RFC 8489 sections 9.2.2 and 18.5.
    """

    def __init__(self, realm: str, users: Mapping[str, str]) -> None:
        """
        @param realm: the server's realm.
        @param users: username to password, or to C{"0x"} and a hex key.
        @raise ValueError: the realm, a username or a password is not a
            valid OpaqueString, or a key is not 16 or 32 bytes of hex.  The
            message names the user, never the secret.
        """
        self.realm = realm
        self._preparedRealm = opaqueString(realm)
        self._keys: dict[str, dict[int, bytes]] = {}
        self._userHashes: dict[bytes, str] = {}
        for username, secret in users.items():
            self._keys[username] = self._deriveKeys(username, secret)
            try:
                self._userHashes[userHash(username, realm)] = username
            except ValueError:
                raise ValueError(f"username {username!r} is not a valid OpaqueString") from None

    def _deriveKeys(self, username: str, secret: str) -> dict[int, bytes]:
        """
        Turn one user's password or hex key into keys by algorithm.
        """
        if secret[:2].lower() == "0x":
            try:
                key = bytes.fromhex(secret[2:])
            except ValueError:
                raise ValueError(f"the key of user {username!r} is not hex") from None
            if len(key) not in _KEY_SIZES:
                raise ValueError(
                    f"the key of user {username!r} is {len(key)} bytes,"
                    " expected 16 (MD5) or 32 (SHA-256)"
                )
            return {_KEY_SIZES[len(key)]: key}
        try:
            return {
                algorithm: longTermKey(username, self.realm, secret, algorithm)
                for algorithm in _ALGORITHMS
            }
        except ValueError:
            raise ValueError(
                f"the password of user {username!r} is not a valid OpaqueString"
            ) from None

    def usernames(self) -> list[str]:
        """
        @return: the users' names, sorted.
        """
        return sorted(self._keys)

    def keysFor(self, username: str, realm: str, algorithm: int) -> list[bytes]:
        """
        @see: L{ICredentialStore.keysFor}
        """
        keys = self._keys.get(username)
        if keys is None or algorithm not in keys or not sameRealm(realm, self._preparedRealm):
            return []
        return [keys[algorithm]]

    def usernameForHash(self, userhash: bytes, realm: str) -> str | None:
        """
        @see: L{ICredentialStore.usernameForHash}
        """
        if not sameRealm(realm, self._preparedRealm):
            return None
        return self._userHashes.get(userhash)


def restExpiry(username: str, separator: str = ":") -> int | None:
    """
    Read the expiry time of a TURN REST API username.

    The username is C{<expiry>} or C{<expiry><separator><user id>}, the
    expiry being Unix time in whole seconds.

    @return: the expiry, or L{None} if C{username} does not start with one.
    @see: draft-uberti-behave-turn-rest-00 section 2.2.
    """
    head = username.split(separator, 1)[0] if separator else username
    if not (head.isascii() and head.isdigit()):
        return None
    return int(head)


def restPassword(secret: bytes, username: str) -> str:
    """
    The TURN REST API password of a username:
    C{base64(HMAC-SHA1(secret, username))}.

    @param secret: the secret shared with the web service.
    @see: draft-uberti-behave-turn-rest-00 section 2.2.
    """
    mac = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def mintRESTCredential(
    secret: bytes, userID: str, ttl: float, now: float, separator: str = ":"
) -> tuple[str, str]:
    """
    Issue a TURN REST API credential, as the web service would.

    @param secret: the shared secret.
    @param userID: the user's identifier; an empty one gives a bare
        timestamp username.
    @param ttl: seconds the credential should last.
    @param now: the current Unix time.
    @return: C{(username, password)}.
    @see: draft-uberti-behave-turn-rest-00 section 2.2.
    """
    expiry = str(int(now + ttl))
    username = f"{expiry}{separator}{userID}" if userID else expiry
    return username, restPassword(secret, username)


@implementer(ICredentialStore, IExpiringCredentials)
class RESTSecrets:
    """
    Ephemeral credentials of the TURN REST API.

    A username starts with its expiry time; its password is an HMAC of the
    username under a secret shared with a web service, so any username the
    web service signed is valid until it expires, with no user list.
    Several secrets may be valid at once, so that one can be rotated out.

    @ivar clock: the time source expiry is judged against.
    @ivar maxTTL: the longest remaining lifetime accepted; a credential
        expiring later than that is refused, which bounds the damage of a
        leaked or mis-minted one.
    @ivar separator: what separates the expiry from the user id.
    @see: draft-uberti-behave-turn-rest-00;
        C{turn-checklist.md} section 21.
    """

    def __init__(
        self,
        clock: IReactorTime,
        secrets: Sequence[bytes],
        maxTTL: float = 86400.0,
        separator: str = ":",
    ) -> None:
        """
        @param clock: the time source.
        @param secrets: the shared secrets, any of which may have signed a
            credential.
        @param maxTTL: see L{maxTTL}.
        @param separator: see L{separator}.
        @raise ValueError: no secrets, or an empty separator.
        """
        if not secrets:
            raise ValueError("the TURN REST API needs at least one shared secret")
        if not separator:
            raise ValueError("the TURN REST API username separator must not be empty")
        self.clock = clock
        self._secrets = tuple(secrets)
        self.maxTTL = maxTTL
        self.separator = separator

    def __repr__(self) -> str:
        return f"<RESTSecrets: {len(self._secrets)} secret(s), maxTTL={self.maxTTL}>"

    def isExpired(self, username: str) -> bool:
        """
        @return: whether C{username} is a REST username whose expiry has
            passed.
        """
        expiry = restExpiry(username, self.separator)
        return expiry is not None and expiry <= self.clock.seconds()

    def keysFor(self, username: str, realm: str, algorithm: int) -> list[bytes]:
        """
        @return: one key per secret if C{username} carries an expiry in the
            future but within L{maxTTL}; otherwise none.
        @see: L{ICredentialStore.keysFor}
        """
        expiry = restExpiry(username, self.separator)
        if expiry is None or algorithm not in _ALGORITHMS:
            return []
        now = self.clock.seconds()
        if expiry <= now or expiry > now + self.maxTTL:
            return []
        try:
            return [
                longTermKey(username, realm, restPassword(secret, username), algorithm)
                for secret in self._secrets
            ]
        except ValueError:
            # A realm that is not a valid OpaqueString has no keys.
            return []

    def usernameForHash(self, userhash: bytes, realm: str) -> str | None:
        """
        @return: L{None}: REST usernames are not known in advance, so their
            hashes cannot be looked up.
        """
        return None


@implementer(IClientCredentialStore, IExpiringCredentials)
class ChainedCredentials:
    """
    Several credential stores consulted as one, for example a static
    administrator account next to REST API users.  Stores that provide
    L{IClientCredentialStore} are told the client's address and transport.

    @ivar stores: the stores, in the order they are asked.
    """

    def __init__(self, stores: Iterable[ICredentialStore]) -> None:
        """
        @param stores: the stores to consult.
        """
        self.stores = tuple(stores)

    def keysFor(self, username: str, realm: str, algorithm: int) -> list[bytes]:
        """
        @return: every store's candidate keys, in store order.
        @see: L{ICredentialStore.keysFor}
        """
        keys: list[bytes] = []
        for store in self.stores:
            keys.extend(store.keysFor(username, realm, algorithm))
        return keys

    def keysForClient(
        self,
        username: str,
        realm: str,
        algorithm: int,
        clientAddress: TransportAddress,
        transport: str | None,
    ) -> list[bytes]:
        """
        @return: every store's candidate keys for this client, in store
            order.
        @see: L{IClientCredentialStore.keysForClient}
        """
        keys: list[bytes] = []
        for store in self.stores:
            keys.extend(keysForClient(store, username, realm, algorithm, clientAddress, transport))
        return keys

    def usernameForHash(self, userhash: bytes, realm: str) -> str | None:
        """
        @return: the first store's answer that is not L{None}.
        @see: L{ICredentialStore.usernameForHash}
        """
        for store in self.stores:
            username = store.usernameForHash(userhash, realm)
            if username is not None:
                return username
        return None

    def isExpired(self, username: str) -> bool:
        """
        @return: whether any store that knows about expiry says C{username}
            has expired.
        """
        return any(
            IExpiringCredentials(store).isExpired(username)
            for store in self.stores
            if IExpiringCredentials.providedBy(store)
        )
