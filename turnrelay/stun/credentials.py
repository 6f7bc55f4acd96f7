# -*- test-case-name: tests.test_stun_credentials -*-
"""
The long-term credential mechanism's arithmetic (RFC 8489 section 9.2):
keys, USERHASH, the nonce cookie and OpaqueString.

OpaqueString (RFC 8265 section 4.2) is delegated to C{precis_i18n}, whose
PRECIS tables follow the Unicode version of the running Python; writing our
own would mean shipping and maintaining those derived-property tables.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Optional

from precis_i18n import get_profile

from turnrelay.stun.attributes import PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256

NONCE_COOKIE = "obMatJos2"
NONCE_COOKIE_LENGTH = len(NONCE_COOKIE) + 4

# Security feature bits of the nonce cookie; bit 0 is the most significant
# bit of the 24 (RFC 8489 section 18.1).
FEATURE_PASSWORD_ALGORITHMS = 0x800000
FEATURE_USERNAME_ANONYMITY = 0x400000

_opaqueString = get_profile("OpaqueString")


def opaqueString(text: str) -> str:
    """
    Prepare a password or realm with the PRECIS OpaqueString profile.

    @raise ValueError: C{text} holds a code point OpaqueString disallows, or
        is empty.
    """
    try:
        result: str = _opaqueString.enforce(text)
    except UnicodeError as e:
        # precis_i18n says why in a UnicodeEncodeError's reason.
        raise ValueError(f"not a valid OpaqueString: {getattr(e, 'reason', e)}") from None
    return result


def longTermKey(
    username: str, realm: str, password: str, algorithm: int = PASSWORD_ALGORITHM_MD5
) -> bytes:
    """
    Derive the long-term credential key.

    The key is C{H(username ":" OpaqueString(realm) ":" OpaqueString(password))}
    where C{H} is MD5 (16 bytes) or SHA-256 (32 bytes).  The username is
    used as it travels in USERNAME.

    @param algorithm: L{PASSWORD_ALGORITHM_MD5} or L{PASSWORD_ALGORITHM_SHA256}.
    @raise ValueError: an unknown algorithm, or a realm or password that is
        not a valid OpaqueString.
    @see: RFC 8489 sections 9.2.2 and 18.5.1.
    """
    material = ":".join((username, opaqueString(realm), opaqueString(password))).encode("utf-8")
    if algorithm == PASSWORD_ALGORITHM_MD5:
        return hashlib.md5(material).digest()
    if algorithm == PASSWORD_ALGORITHM_SHA256:
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm 0x{algorithm:04X}")


def userHash(username: str, realm: str) -> bytes:
    """
    The USERHASH value: C{SHA-256(OpaqueString(username) ":" OpaqueString(realm))}.

    @see: RFC 8489 section 14.4.
    """
    material = f"{opaqueString(username)}:{opaqueString(realm)}"
    return hashlib.sha256(material.encode("utf-8")).digest()


def nonceCookie(features: int) -> str:
    """
    The 13-character prefix that announces RFC 8489 security features.

    @param features: a combination of the C{FEATURE_*} bits.
    @see: RFC 8489 section 9.2.
    """
    if not 0 <= features <= 0xFFFFFF:
        raise ValueError(f"security features 0x{features:X} do not fit in 24 bits")
    return NONCE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode("ascii")


def nonceFeatures(nonce: str) -> Optional[int]:
    """
    Read the security feature bits from a nonce.

    @return: the 24 feature bits, or L{None} if the nonce has no cookie.
    """
    if len(nonce) < NONCE_COOKIE_LENGTH or not nonce.startswith(NONCE_COOKIE):
        return None
    try:
        raw = base64.b64decode(nonce[len(NONCE_COOKIE) : NONCE_COOKIE_LENGTH], validate=True)
    except ValueError:
        return None
    return int.from_bytes(raw, "big")
