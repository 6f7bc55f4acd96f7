"""
Authentication for the relay: the long-term credential mechanism with
stateless nonces, static users and TURN REST API shared secrets.

L{LongTermAuthenticator} decides, for each request, whether it is
authenticated and which error answers it if not; it draws keys from an
L{ICredentialStore} and nonces from a L{NonceMinter}.  Nothing here reads
the wall clock or keeps per-client state.

@see: RFC 8489 section 9.2; RFC 8656 sections 5-7;
    draft-uberti-behave-turn-rest-00.
"""

from turnrelay.auth.credentials import (
    ChainedCredentials,
    ICredentialStore,
    IExpiringCredentials,
    RESTSecrets,
    StaticCredentials,
    mintRESTCredential,
    restExpiry,
    restPassword,
)
from turnrelay.auth.longterm import AuthResult, LongTermAuthenticator
from turnrelay.auth.nonce import NonceMinter

__all__ = [
    "AuthResult",
    "ChainedCredentials",
    "ICredentialStore",
    "IExpiringCredentials",
    "LongTermAuthenticator",
    "NonceMinter",
    "RESTSecrets",
    "StaticCredentials",
    "mintRESTCredential",
    "restExpiry",
    "restPassword",
]
