# -*- test-case-name: tests.test_auth_nonce -*-
"""
Stateless nonces for the long-term credential mechanism.

A nonce carries its own issue time and a MAC binding that time to the
client's IP address, so the server can hand out 401 challenges without
remembering anything about the client and still recognise, later, a nonce
it issued to that host and how old it is.

The MAC covers the IP address but not the port: an RFC 6062 client opens a
data connection from a new port and sends ConnectionBind with the nonce of
its control connection (coturn's client does, and does not retry after
438).  Four random bytes in every nonce keep RFC 8489's rule that no two
sources are handed the same nonce.

A nonce normally starts with RFC 8489's nonce cookie, which announces the
server's security features (the PASSWORD-ALGORITHMS negotiation).  A
I{compact} nonce leaves the cookie out, as an RFC 5389 server's would: it
is for the smallest 401 a UDP request may get without the answer being
more than three times larger (L{turnrelay.turn.sources}), and a client
given one uses MD5.  The MAC covers the cookie, so that one form cannot be
made into the other.

@see: RFC 8489 section 9.2; RFC 8656 section 5.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os

from twisted.internet.interfaces import IReactorTime

from turnrelay.stun.address import TransportAddress
from turnrelay.stun.credentials import FEATURE_PASSWORD_ALGORITHMS, nonceCookie

# Issue time (8 bytes), a random salt (4) and the truncated MAC (12): 24
# bytes are 32 base64 characters exactly, with no padding and no spare bits.
_TIME_SIZE = 8
_SALT_SIZE = 4
_MAC_SIZE = 12
_BODY_CHARACTERS = 32
_URLSAFE_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _addressBytes(clientAddress: TransportAddress) -> bytes:
    """
    The client's host as the MAC covers it: the packed IP address, so that
    different spellings of one address agree.
    """
    host = clientAddress[0]
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return host.encode("utf-8")


class NonceMinter:
    """
    Issue and check stateless nonces.

    A nonce is the RFC 8489 nonce cookie followed by URL-safe base64 (no
    padding) of the issue time in whole seconds, four random bytes and a
    truncated HMAC-SHA256, keyed with a server secret, over those and the
    client's IP address.  Servers that share C{secret} accept each other's
    nonces.

    @ivar clock: where the time comes from.
    @ivar lifetime: how many seconds a nonce stays valid.
    @ivar features: the security feature bits announced in the nonce cookie
        (C{FEATURE_*} from L{turnrelay.stun.credentials}).
    @ivar clockSkew: how many seconds a nonce's issue time may lie in the
        future (another server sharing the secret may run slightly ahead).
    @see: RFC 8489 section 9.2.
    """

    clockSkew = 5.0

    def __init__(
        self,
        clock: IReactorTime,
        lifetime: float = 600.0,
        secret: bytes | None = None,
        features: int = FEATURE_PASSWORD_ALGORITHMS,
    ) -> None:
        """
        @param clock: the time source.
        @param lifetime: seconds a nonce stays valid; RFC 8656 section 5
            wants nonces to expire at least once an hour.
        @param secret: the MAC key; 32 random bytes when not given, which
            makes the nonces valid for this process only.
        @param features: the nonce cookie's security feature bits.
        @raise ValueError: C{features} does not fit in 24 bits.
        """
        self.clock = clock
        self.lifetime = lifetime
        self.features = features
        self._cookie = nonceCookie(features)
        self._secret = os.urandom(32) if secret is None else secret

    def _mac(self, cookie: str, issuedAndSalt: bytes, clientAddress: TransportAddress) -> bytes:
        """
        The truncated MAC over the cookie (or none), an encoded issue time,
        the salt and a client's IP address.
        """
        material = issuedAndSalt + _addressBytes(clientAddress) + cookie.encode("ascii")
        return hmac.new(self._secret, material, hashlib.sha256).digest()[:_MAC_SIZE]

    def mint(self, clientAddress: TransportAddress, compact: bool = False) -> str:
        """
        Issue a nonce for one client.

        @param clientAddress: the client's transport address; the nonce is
            valid from its IP address only, and never handed to anyone else
            (RFC 8489 section 9.2.4).
        @param compact: leave the nonce cookie out, announcing no security
            feature.
        @return: the nonce: 45 characters, or 32 when compact.
        """
        cookie = "" if compact else self._cookie
        issued = max(0, int(self.clock.seconds())).to_bytes(_TIME_SIZE, "big")
        issuedAndSalt = issued + os.urandom(_SALT_SIZE)
        body = issuedAndSalt + self._mac(cookie, issuedAndSalt, clientAddress)
        return cookie + base64.urlsafe_b64encode(body).decode("ascii")

    def check(self, nonce: str, clientAddress: TransportAddress) -> bool:
        """
        Decide whether a nonce is one of ours, for this client, and fresh.

        @param nonce: the NONCE a request carried; anything at all.
        @param clientAddress: the request's source.
        @return: C{True} if this minter (or one sharing its secret and
            features) issued C{nonce}, compact or not, to C{clientAddress}'s
            IP address no more than C{lifetime} seconds ago; C{False}
            otherwise.  Never raises.
        """
        if not isinstance(nonce, str):
            return False
        if len(nonce) == _BODY_CHARACTERS:
            cookie = ""
        elif len(nonce) == len(self._cookie) + _BODY_CHARACTERS and nonce.startswith(self._cookie):
            cookie = self._cookie
        else:
            return False
        body = nonce[len(cookie) :]
        if not _URLSAFE_ALPHABET.issuperset(body):
            return False
        raw = base64.urlsafe_b64decode(body)
        issuedAndSalt, mac = raw[: _TIME_SIZE + _SALT_SIZE], raw[_TIME_SIZE + _SALT_SIZE :]
        issued = issuedAndSalt[:_TIME_SIZE]
        try:
            expected = self._mac(cookie, issuedAndSalt, clientAddress)
        except (TypeError, ValueError, OverflowError, AttributeError):
            return False
        if not hmac.compare_digest(expected, mac):
            return False
        age = self.clock.seconds() - int.from_bytes(issued, "big")
        return -self.clockSkew <= age <= self.lifetime
