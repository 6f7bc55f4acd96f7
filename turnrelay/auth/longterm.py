# -*- test-case-name: tests.test_auth_longterm -*-
"""
The server side of the long-term credential mechanism: decide whether a
request is authenticated and, if not, which error answers it.

@see: RFC 8489 section 9.2.4; RFC 8656 sections 5 and 7.2.
"""

from __future__ import annotations

import attr

from turnrelay.auth.credentials import (
    ICredentialStore,
    IExpiringCredentials,
    keysForClient,
    sameRealm,
)
from turnrelay.auth.nonce import NonceMinter
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import (
    NONCE,
    PASSWORD_ALGORITHM,
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    PASSWORD_ALGORITHMS,
    REALM,
    USERHASH,
    USERNAME,
    PasswordAlgorithm,
)
from turnrelay.stun.credentials import FEATURE_PASSWORD_ALGORITHMS, nonceFeatures, opaqueString
from turnrelay.stun.message import STUNMessage


@attr.frozen
class AuthResult:
    """
    The outcome of authenticating one request.

    On success, C{errorCode} is L{None} and C{username} and C{key} say who
    sent the request and which key its response must be protected with.
    Otherwise the caller answers with an error response carrying
    C{errorCode} and C{errorAttributes}, without integrity.

    @ivar username: the authenticated user (the USERNAME, or the user a
        USERHASH resolved to), or L{None}.
    @ivar key: the long-term key that verified the request, or L{None}.
        Never shown by C{repr}.
    @ivar useSHA256: protect the response with MESSAGE-INTEGRITY-SHA256
        rather than MESSAGE-INTEGRITY.
    @ivar errorCode: the error to answer with, or L{None} on success.
    @ivar errorAttributes: C{(type, value)} pairs to add to the error
        response after ERROR-CODE (REALM, NONCE, PASSWORD-ALGORITHMS).
    @ivar reason: why, in one word for logs and metrics: C{"ok"},
        C{"no-integrity"}, C{"missing-attribute"}, C{"stale-nonce"},
        C{"bid-down"}, C{"bad-realm"}, C{"unknown-user"}, C{"expired"} or
        C{"bad-integrity"}.
    """

    username: str | None
    key: bytes | None = attr.field(repr=False)
    useSHA256: bool
    errorCode: int | None
    errorAttributes: tuple[tuple[int, object], ...]
    reason: str

    @property
    def ok(self) -> bool:
        """
        Whether the request is authenticated.
        """
        return self.errorCode is None


def _failure(code: int, reason: str, attributes: tuple[tuple[int, object], ...] = ()) -> AuthResult:
    """
    An L{AuthResult} for a rejected request.
    """
    return AuthResult(None, None, False, code, attributes, reason)


class LongTermAuthenticator:
    """
    Check requests against long-term credentials, keeping no state per
    client: nonces are checked by recomputing their MAC.

    The checks follow RFC 8489 section 9.2.4, except that the nonce is
    checked as soon as the request is known to carry one rather than last:
    a forged or stale nonce then costs neither a credential lookup nor a
    key derivation, and the client, told 438, simply retries.

    @ivar realm: the server's realm.
    @ivar credentials: where keys come from.
    @ivar nonces: issues and checks nonces.
    @ivar passwordAlgorithms: the algorithms offered in PASSWORD-ALGORITHMS,
        in order of preference.
    @see: RFC 8489 sections 9.2.1 and 9.2.4; C{turn-checklist.md} items
        28-37.
    """

    passwordAlgorithms: tuple[PasswordAlgorithm, ...] = (
        PasswordAlgorithm(PASSWORD_ALGORITHM_SHA256),
        PasswordAlgorithm(PASSWORD_ALGORITHM_MD5),
    )

    def __init__(self, realm: str, credentials: ICredentialStore, nonces: NonceMinter) -> None:
        """
        @param realm: the server's realm; it must be a valid OpaqueString.
        @param credentials: the credential store.
        @param nonces: the nonce minter.
        @raise ValueError: C{realm} is not a valid OpaqueString.
        """
        self.realm = realm
        self.credentials = credentials
        self.nonces = nonces

    def challenge(
        self, clientAddress: TransportAddress, compact: bool = False
    ) -> tuple[tuple[int, object], ...]:
        """
        What 401 and 438 responses carry: REALM, a fresh NONCE and, if the
        nonce cookie announces them, PASSWORD-ALGORITHMS.

        @param clientAddress: the client the nonce is for.
        @param compact: only what RFC 8489 section 9.2.4 requires: REALM
            and a compact NONCE, without the nonce cookie, so without
            PASSWORD-ALGORITHMS (the client then uses MD5).  For UDP
            requests too small to get more without amplification.
        @return: C{(type, value)} pairs for the error response.
        """
        attributes: tuple[tuple[int, object], ...] = (
            (REALM, self.realm),
            (NONCE, self.nonces.mint(clientAddress, compact)),
        )
        if not compact and self.nonces.features & FEATURE_PASSWORD_ALGORITHMS:
            attributes += ((PASSWORD_ALGORITHMS, self.passwordAlgorithms),)
        return attributes

    @property
    def realm(self) -> str:
        """
        The server's realm; setting it (a configuration reload) prepares it
        with OpaqueString for comparisons.
        """
        return self._realm

    @realm.setter
    def realm(self, realm: str) -> None:
        self._preparedRealm = opaqueString(realm)
        self._realm = realm

    def _algorithm(self, request: STUNMessage, nonce: str) -> int | None:
        """
        The password algorithm the request uses, after bid-down protection.

        @return: the algorithm number, or L{None} if the request's
            PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS break the rules.
        @see: RFC 8489 sections 9.2.1 and 9.2.4.
        """
        features = nonceFeatures(nonce) or 0
        if not features & FEATURE_PASSWORD_ALGORITHMS:
            return PASSWORD_ALGORITHM_MD5
        offered = request.get(PASSWORD_ALGORITHMS)
        chosen = request.get(PASSWORD_ALGORITHM)
        if offered is None and chosen is None:
            return PASSWORD_ALGORITHM_MD5
        if (
            offered is None
            or chosen is None
            or not isinstance(offered, tuple)
            or offered != self.passwordAlgorithms
            or chosen not in self.passwordAlgorithms
        ):
            return None
        algorithm: int = chosen.algorithm
        return algorithm

    def _unknownUser(self, username: str) -> str:
        """
        Tell an expired REST credential from an unknown user, for logs.
        """
        store = self.credentials
        if IExpiringCredentials.providedBy(store) and IExpiringCredentials(store).isExpired(
            username
        ):
            return "expired"
        return "unknown-user"

    def authenticate(
        self,
        request: STUNMessage,
        clientAddress: TransportAddress,
        transport: str | None = None,
    ) -> AuthResult:
        """
        Authenticate one request.

        @param request: a decoded request (L{decodeMessage}'s, so that its
            integrity can be checked).
        @param clientAddress: its source, which the nonce is bound to, and
            which a store providing L{IClientCredentialStore
            <turnrelay.auth.credentials.IClientCredentialStore>} is told.
        @param transport: C{"udp"}, C{"tcp"} or C{"tls"}, told to such a
            store too.
        @return: the outcome; see L{AuthResult}.
        @see: RFC 8489 section 9.2.4.
        """
        sha256 = request.messageIntegritySHA256 is not None
        if not sha256 and request.messageIntegrity is None:
            return _failure(401, "no-integrity", self.challenge(clientAddress))

        username = request.get(USERNAME)
        userhash = request.get(USERHASH)
        realm = request.get(REALM)
        nonce = request.get(NONCE)
        if (username is None and userhash is None) or realm is None or nonce is None:
            return _failure(400, "missing-attribute")

        if not self.nonces.check(nonce, clientAddress):
            return _failure(438, "stale-nonce", self.challenge(clientAddress))

        algorithm = self._algorithm(request, nonce)
        if algorithm is None:
            return _failure(400, "bid-down")

        if not sameRealm(realm, self._preparedRealm):
            return _failure(401, "bad-realm", self.challenge(clientAddress))
        if username is None:
            username = self.credentials.usernameForHash(userhash, self.realm)
            if username is None:
                return _failure(401, "unknown-user", self.challenge(clientAddress))

        keys = keysForClient(
            self.credentials, username, self.realm, algorithm, clientAddress, transport
        )
        if not keys:
            return _failure(401, self._unknownUser(username), self.challenge(clientAddress))

        verify = request.verifyMessageIntegritySHA256 if sha256 else request.verifyMessageIntegrity
        for key in keys:
            if verify(key):
                return AuthResult(username, key, sha256, None, (), "ok")
        return _failure(401, "bad-integrity", self.challenge(clientAddress))
