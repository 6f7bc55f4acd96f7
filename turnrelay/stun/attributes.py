# -*- test-case-name: tests.test_stun_attributes -*-
"""
STUN attribute types and their typed values: one concept, every codec of
the attribute registry, in one module.

Each known attribute type has a codec: a pair of functions turning the
attribute's value bytes into a Python value and back.  The value types are:

  - addresses (MAPPED-ADDRESS, the XOR-*-ADDRESS family, ALTERNATE-SERVER,
    RESPONSE-ORIGIN, OTHER-ADDRESS): L{TransportAddress};
  - ERROR-CODE: L{ErrorCode}; ADDRESS-ERROR-CODE: L{AddressErrorCode};
  - PASSWORD-ALGORITHM: L{PasswordAlgorithm}; PASSWORD-ALGORITHMS: a tuple
    of them; ICMP: L{ICMP};
  - UNKNOWN-ATTRIBUTES: a tuple of attribute types;
  - numbers (LIFETIME, CHANNEL-NUMBER, REQUESTED-TRANSPORT, the address
    family requests, CONNECTION-ID, PRIORITY, ...): L{int};
  - text (USERNAME, REALM, NONCE, SOFTWARE, ...): L{str};
  - EVEN-PORT: L{bool}, the R (reserve) bit; flags with no value
    (DONT-FRAGMENT, USE-CANDIDATE): C{True};
  - opaque values (DATA, USERHASH, RESERVATION-TOKEN, the integrity
    values, ACCESS-TOKEN, MOBILITY-TICKET, PADDING) and every unknown
    attribute: L{bytes}.

Every decoder checks the value's length before reading a field from it
(pion/stun CVE-2026-54909 read the family byte first).

@see: RFC 8489 section 14, RFC 8656 section 18, RFC 6062 section 6.2,
    RFC 5780 section 7, RFC 7635 section 6, RFC 8016 section 3.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Dict, NamedTuple, Tuple

import attr

from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.errors import STUNDecodeError

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)

# Comprehension-required (0x0000-0x7FFF).
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA = 0x0013
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
ACCESS_TOKEN = 0x001B
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
RESERVATION_TOKEN = 0x0022
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
PADDING = 0x0026
RESPONSE_PORT = 0x0027
CONNECTION_ID = 0x002A
# Comprehension-optional (0x8000-0xFFFF).
ADDITIONAL_ADDRESS_FAMILY = 0x8000
ADDRESS_ERROR_CODE = 0x8001
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
ICMP_ATTRIBUTE = 0x8004
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C
THIRD_PARTY_AUTHORIZATION = 0x802E
MOBILITY_TICKET = 0x8030

# REQUESTED-TRANSPORT protocol numbers (RFC 8656 section 18.7, RFC 6062).
TRANSPORT_UDP = 17
TRANSPORT_TCP = 6

# PASSWORD-ALGORITHM numbers (RFC 8489 section 18.5).
PASSWORD_ALGORITHM_MD5 = 0x0001
PASSWORD_ALGORITHM_SHA256 = 0x0002

# Text limits (RFC 8489 sections 14.3, 14.8-14.10, 14.14): what we send is
# below the first figure, what we accept may reach the second.
USERNAME_MAX_BYTES = 508
TEXT_MAX_CHARACTERS = 127
TEXT_DECODE_MAX_BYTES = 763


def isComprehensionRequired(attributeType: int) -> bool:
    """
    @return: whether an agent that does not know C{attributeType} must reject
        the message carrying it (RFC 8489 section 14).
    """
    return attributeType < 0x8000


@attr.frozen
class ErrorCode:
    """
    The ERROR-CODE attribute (RFC 8489 section 14.8).

    @ivar code: 300 to 699.
    @ivar reason: the reason phrase.
    """

    code: int
    reason: str = ""


@attr.frozen
class AddressErrorCode:
    """
    ADDRESS-ERROR-CODE (RFC 8656 section 18.12): why one family of a dual
    allocation could not be had.

    @ivar family: L{FAMILY_IPV4} or L{FAMILY_IPV6}.
    @ivar code: 440 or 508 in practice.
    @ivar reason: the reason phrase.
    """

    family: int
    code: int
    reason: str = ""


@attr.frozen
class PasswordAlgorithm:
    """
    One entry of PASSWORD-ALGORITHM or PASSWORD-ALGORITHMS (RFC 8489 sections
    14.11 and 14.12).

    @ivar algorithm: L{PASSWORD_ALGORITHM_MD5} or L{PASSWORD_ALGORITHM_SHA256}.
    @ivar parameters: the algorithm's parameters, empty for both of those.
    """

    algorithm: int
    parameters: bytes = b""


@attr.frozen
class ICMP:
    """
    The ICMP attribute (RFC 8656 section 18.13): an ICMP error from a peer.

    @ivar icmpType: the ICMP type, 0 to 127.
    @ivar icmpCode: the ICMP code, 0 to 511.
    @ivar errorData: the 32-bit error data (an MTU for "too big").
    """

    icmpType: int
    icmpCode: int
    errorData: int = 0


class AttributeCodec(NamedTuple):
    """
    How one attribute type's value is read and written.

    @ivar name: the RFC's name for the attribute.
    @ivar decode: C{(value bytes, transaction ID) -> value}; raises
        L{STUNDecodeError}.
    @ivar encode: C{(value, transaction ID) -> value bytes}; raises
        L{ValueError} for a value the attribute cannot carry.
    """

    name: str
    decode: Callable[[bytes, bytes], Any]
    encode: Callable[[Any, bytes], bytes]


def _fail(reason: str) -> STUNDecodeError:
    return STUNDecodeError(reason)


# Addresses -------------------------------------------------------------------


def _xorMask(family: int, transactionID: bytes) -> int:
    if family == FAMILY_IPV4:
        return MAGIC_COOKIE
    return int.from_bytes(MAGIC_COOKIE_BYTES + transactionID, "big")


def _decodeAddress(value: bytes, transactionID: bytes, xor: bool) -> TransportAddress:
    length = len(value)
    if length < 4:
        raise _fail(f"address attribute of {length} bytes")
    family = value[1]
    if family == FAMILY_IPV4:
        size, addressFamily = 4, socket.AF_INET
    elif family == FAMILY_IPV6:
        size, addressFamily = 16, socket.AF_INET6
    else:
        raise _fail(f"unknown address family {family}")
    if length != 4 + size:
        raise _fail(f"address attribute of {length} bytes for family {family}")
    port = (value[2] << 8) | value[3]
    raw = value[4:]
    if xor:
        port ^= MAGIC_COOKIE >> 16
        masked = int.from_bytes(raw, "big") ^ _xorMask(family, transactionID)
        raw = masked.to_bytes(size, "big")
    return TransportAddress(socket.inet_ntop(addressFamily, raw), port)


def _encodeAddress(address: TransportAddress, transactionID: bytes, xor: bool) -> bytes:
    host, port = address
    try:
        if ":" in host:
            family, size, raw = FAMILY_IPV6, 16, socket.inet_pton(socket.AF_INET6, host)
        else:
            family, size, raw = FAMILY_IPV4, 4, socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not 0 to 65535")
    if xor:
        port ^= MAGIC_COOKIE >> 16
        masked = int.from_bytes(raw, "big") ^ _xorMask(family, transactionID)
        raw = masked.to_bytes(size, "big")
    return bytes((0, family, port >> 8, port & 0xFF)) + raw


# An IPv4 XOR address does not depend on the transaction ID, so the same
# bytes always decode to the same address: remember the peers a relay sees
# over and over.  Bounded, and cleared whole when full.
_IPV4_XOR_CACHE: Dict[bytes, TransportAddress] = {}
_IPV4_XOR_CACHE_SIZE = 4096


def _decodeXORAddress(value: bytes, transactionID: bytes) -> TransportAddress:
    address = _IPV4_XOR_CACHE.get(value)
    if address is None:
        address = _decodeAddress(value, transactionID, True)
        if len(value) == 8:
            if len(_IPV4_XOR_CACHE) >= _IPV4_XOR_CACHE_SIZE:
                _IPV4_XOR_CACHE.clear()
            _IPV4_XOR_CACHE[value] = address
    return address


def _decodePlainAddress(value: bytes, transactionID: bytes) -> TransportAddress:
    return _decodeAddress(value, transactionID, False)


def _addressCodec(name: str, xor: bool) -> AttributeCodec:
    return AttributeCodec(
        name,
        _decodeXORAddress if xor else _decodePlainAddress,
        lambda address, tid: _encodeAddress(address, tid, xor),
    )


# Numbers, flags, opaque bytes ------------------------------------------------


def _numberCodec(name: str, fmt: str, rffu: int = 0) -> AttributeCodec:
    """
    A big-endian number followed by C{rffu} bytes reserved for future use
    (zero when sent, ignored when received).
    """
    packer = struct.Struct("!" + fmt)
    size = packer.size + rffu
    padding = bytes(rffu)

    def decode(value: bytes, tid: bytes) -> int:
        if len(value) != size:
            raise _fail(f"{name} of {len(value)} bytes, expected {size}")
        result: int = packer.unpack_from(value)[0]
        return result

    def encode(number: int, tid: bytes) -> bytes:
        try:
            return packer.pack(number) + padding
        except struct.error:
            raise ValueError(f"{name} cannot hold {number!r}") from None

    return AttributeCodec(name, decode, encode)


def _flagCodec(name: str) -> AttributeCodec:
    def decode(value: bytes, tid: bytes) -> bool:
        if value:
            raise _fail(f"{name} of {len(value)} bytes, expected none")
        return True

    return AttributeCodec(name, decode, lambda flag, tid: b"")


def _bytesCodec(name: str, sizes: Tuple[int, ...] = ()) -> AttributeCodec:
    """
    Opaque bytes, of one of C{sizes} bytes if given.
    """

    def decode(value: bytes, tid: bytes) -> bytes:
        if sizes and len(value) not in sizes:
            raise _fail(f"{name} of {len(value)} bytes")
        return value

    def encode(value: bytes, tid: bytes) -> bytes:
        if sizes and len(value) not in sizes:
            raise ValueError(f"{name} of {len(value)} bytes")
        return bytes(value)

    return AttributeCodec(name, decode, encode)


# Text ------------------------------------------------------------------------


def _decodeText(name: str, value: bytes) -> str:
    if len(value) > TEXT_DECODE_MAX_BYTES:
        raise _fail(f"{name} of {len(value)} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(f"{name} is not UTF-8") from None


def _textCodec(name: str, maxCharacters: int = TEXT_MAX_CHARACTERS) -> AttributeCodec:
    def encode(text: str, tid: bytes) -> bytes:
        if len(text) > maxCharacters:
            raise ValueError(f"{name} longer than {maxCharacters} characters")
        encoded = text.encode("utf-8")
        if len(encoded) > TEXT_DECODE_MAX_BYTES:
            # Never send what our own decoder (and RFC 8489's limit) refuses.
            raise ValueError(f"{name} longer than {TEXT_DECODE_MAX_BYTES} bytes")
        return encoded

    return AttributeCodec(name, lambda value, tid: _decodeText(name, value), encode)


def _encodeUsername(text: str, tid: bytes) -> bytes:
    encoded = text.encode("utf-8")
    if len(encoded) > USERNAME_MAX_BYTES:
        raise ValueError(f"USERNAME longer than {USERNAME_MAX_BYTES} bytes")
    return encoded


def _decodeAlternateDomain(value: bytes, tid: bytes) -> str:
    if len(value) > 255:
        raise _fail(f"ALTERNATE-DOMAIN of {len(value)} bytes")
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _fail("ALTERNATE-DOMAIN is not ASCII") from None


def _encodeAlternateDomain(domain: str, tid: bytes) -> bytes:
    encoded = domain.encode("ascii")
    if len(encoded) > 255:
        raise ValueError("ALTERNATE-DOMAIN longer than 255 bytes")
    return encoded


# Error codes -----------------------------------------------------------------


def _splitCode(code: int) -> Tuple[int, int]:
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} is not 300 to 699")
    return divmod(code, 100)


def _joinCode(name: str, errorClass: int, number: int) -> int:
    if not 3 <= errorClass <= 6 or number > 99:
        raise _fail(f"{name} class {errorClass} number {number}")
    return errorClass * 100 + number


def _decodeErrorCode(value: bytes, tid: bytes) -> ErrorCode:
    if len(value) < 4:
        raise _fail(f"ERROR-CODE of {len(value)} bytes")
    code = _joinCode("ERROR-CODE", value[2] & 0x07, value[3])
    return ErrorCode(code, _decodeText("ERROR-CODE reason", value[4:]))


def _encodeErrorCode(error: ErrorCode, tid: bytes) -> bytes:
    errorClass, number = _splitCode(error.code)
    if len(error.reason) > TEXT_MAX_CHARACTERS:
        raise ValueError("ERROR-CODE reason longer than 127 characters")
    return bytes((0, 0, errorClass, number)) + error.reason.encode("utf-8")


def _decodeAddressErrorCode(value: bytes, tid: bytes) -> AddressErrorCode:
    if len(value) < 4:
        raise _fail(f"ADDRESS-ERROR-CODE of {len(value)} bytes")
    code = _joinCode("ADDRESS-ERROR-CODE", value[2] & 0x07, value[3])
    return AddressErrorCode(value[0], code, _decodeText("ADDRESS-ERROR-CODE reason", value[4:]))


def _encodeAddressErrorCode(error: AddressErrorCode, tid: bytes) -> bytes:
    errorClass, number = _splitCode(error.code)
    if not 0 <= error.family <= 0xFF:
        raise ValueError(f"address family {error.family}")
    if len(error.reason) > TEXT_MAX_CHARACTERS:
        raise ValueError("ADDRESS-ERROR-CODE reason longer than 127 characters")
    return bytes((error.family, 0, errorClass, number)) + error.reason.encode("utf-8")


def _decodeUnknownAttributes(value: bytes, tid: bytes) -> Tuple[int, ...]:
    if len(value) % 2:
        raise _fail(f"UNKNOWN-ATTRIBUTES of {len(value)} bytes")
    return struct.unpack(f"!{len(value) // 2}H", value)


def _encodeUnknownAttributes(types: Tuple[int, ...], tid: bytes) -> bytes:
    return struct.pack(f"!{len(types)}H", *types)


# Password algorithms ---------------------------------------------------------


def _readPasswordAlgorithm(value: bytes, offset: int) -> Tuple[PasswordAlgorithm, int]:
    if len(value) - offset < 4:
        raise _fail("truncated password algorithm")
    algorithm, paramsLength = struct.unpack_from("!HH", value, offset)
    start = offset + 4
    end = start + paramsLength
    if end > len(value):
        raise _fail("password algorithm parameters run past the attribute")
    return PasswordAlgorithm(algorithm, value[start:end]), end + (-paramsLength % 4)


def _writePasswordAlgorithm(entry: PasswordAlgorithm) -> bytes:
    params = entry.parameters
    return struct.pack("!HH", entry.algorithm, len(params)) + params + bytes(-len(params) % 4)


def _decodePasswordAlgorithm(value: bytes, tid: bytes) -> PasswordAlgorithm:
    entry, end = _readPasswordAlgorithm(value, 0)
    if end < len(value):
        raise _fail("PASSWORD-ALGORITHM has trailing bytes")
    return entry


def _decodePasswordAlgorithms(value: bytes, tid: bytes) -> Tuple[PasswordAlgorithm, ...]:
    entries = []
    offset = 0
    while offset < len(value):
        entry, offset = _readPasswordAlgorithm(value, offset)
        entries.append(entry)
    if offset != len(value):
        raise _fail("PASSWORD-ALGORITHMS padding runs past the attribute")
    return tuple(entries)


def _encodePasswordAlgorithms(entries: Tuple[PasswordAlgorithm, ...], tid: bytes) -> bytes:
    return b"".join(_writePasswordAlgorithm(entry) for entry in entries)


# EVEN-PORT -------------------------------------------------------------------


def _decodeEvenPort(value: bytes, tid: bytes) -> bool:
    if len(value) != 1:
        raise _fail(f"EVEN-PORT of {len(value)} bytes, expected 1")
    return bool(value[0] & 0x80)


def _encodeEvenPort(reserve: bool, tid: bytes) -> bytes:
    return b"\x80" if reserve else b"\x00"


# ICMP ------------------------------------------------------------------------


def _decodeICMP(value: bytes, tid: bytes) -> ICMP:
    if len(value) != 8:
        raise _fail(f"ICMP of {len(value)} bytes")
    head, errorData = struct.unpack("!II", value)
    return ICMP((head >> 9) & 0x7F, head & 0x1FF, errorData)


def _encodeICMP(icmp: ICMP, tid: bytes) -> bytes:
    if not (0 <= icmp.icmpType <= 0x7F and 0 <= icmp.icmpCode <= 0x1FF):
        raise ValueError(f"ICMP type {icmp.icmpType} code {icmp.icmpCode}")
    return struct.pack("!II", (icmp.icmpType << 9) | icmp.icmpCode, icmp.errorData)


# The table -------------------------------------------------------------------


def _familyCodec(name: str) -> AttributeCodec:
    return _numberCodec(name, "B", rffu=3)


ATTRIBUTE_CODECS: Dict[int, AttributeCodec] = {
    MAPPED_ADDRESS: _addressCodec("MAPPED-ADDRESS", xor=False),
    CHANGE_REQUEST: _numberCodec("CHANGE-REQUEST", "I"),
    USERNAME: AttributeCodec(
        "USERNAME", lambda value, tid: _decodeText("USERNAME", value), _encodeUsername
    ),
    MESSAGE_INTEGRITY: _bytesCodec("MESSAGE-INTEGRITY", (20,)),
    ERROR_CODE: AttributeCodec("ERROR-CODE", _decodeErrorCode, _encodeErrorCode),
    UNKNOWN_ATTRIBUTES: AttributeCodec(
        "UNKNOWN-ATTRIBUTES", _decodeUnknownAttributes, _encodeUnknownAttributes
    ),
    CHANNEL_NUMBER: _numberCodec("CHANNEL-NUMBER", "H", rffu=2),
    LIFETIME: _numberCodec("LIFETIME", "I"),
    XOR_PEER_ADDRESS: _addressCodec("XOR-PEER-ADDRESS", xor=True),
    DATA: _bytesCodec("DATA"),
    REALM: _textCodec("REALM"),
    NONCE: _textCodec("NONCE"),
    XOR_RELAYED_ADDRESS: _addressCodec("XOR-RELAYED-ADDRESS", xor=True),
    REQUESTED_ADDRESS_FAMILY: _familyCodec("REQUESTED-ADDRESS-FAMILY"),
    EVEN_PORT: AttributeCodec("EVEN-PORT", _decodeEvenPort, _encodeEvenPort),
    REQUESTED_TRANSPORT: _numberCodec("REQUESTED-TRANSPORT", "B", rffu=3),
    DONT_FRAGMENT: _flagCodec("DONT-FRAGMENT"),
    ACCESS_TOKEN: _bytesCodec("ACCESS-TOKEN"),
    MESSAGE_INTEGRITY_SHA256: _bytesCodec("MESSAGE-INTEGRITY-SHA256", (16, 20, 24, 28, 32)),
    PASSWORD_ALGORITHM: AttributeCodec(
        "PASSWORD-ALGORITHM",
        _decodePasswordAlgorithm,
        lambda entry, tid: _writePasswordAlgorithm(entry),
    ),
    USERHASH: _bytesCodec("USERHASH", (32,)),
    XOR_MAPPED_ADDRESS: _addressCodec("XOR-MAPPED-ADDRESS", xor=True),
    RESERVATION_TOKEN: _bytesCodec("RESERVATION-TOKEN", (8,)),
    PRIORITY: _numberCodec("PRIORITY", "I"),
    USE_CANDIDATE: _flagCodec("USE-CANDIDATE"),
    PADDING: _bytesCodec("PADDING"),
    RESPONSE_PORT: _numberCodec("RESPONSE-PORT", "H", rffu=2),
    CONNECTION_ID: _numberCodec("CONNECTION-ID", "I"),
    ADDITIONAL_ADDRESS_FAMILY: _familyCodec("ADDITIONAL-ADDRESS-FAMILY"),
    ADDRESS_ERROR_CODE: AttributeCodec(
        "ADDRESS-ERROR-CODE", _decodeAddressErrorCode, _encodeAddressErrorCode
    ),
    PASSWORD_ALGORITHMS: AttributeCodec(
        "PASSWORD-ALGORITHMS", _decodePasswordAlgorithms, _encodePasswordAlgorithms
    ),
    ALTERNATE_DOMAIN: AttributeCodec(
        "ALTERNATE-DOMAIN", _decodeAlternateDomain, _encodeAlternateDomain
    ),
    ICMP_ATTRIBUTE: AttributeCodec("ICMP", _decodeICMP, _encodeICMP),
    SOFTWARE: _textCodec("SOFTWARE"),
    ALTERNATE_SERVER: _addressCodec("ALTERNATE-SERVER", xor=False),
    FINGERPRINT: _numberCodec("FINGERPRINT", "I"),
    ICE_CONTROLLED: _numberCodec("ICE-CONTROLLED", "Q"),
    ICE_CONTROLLING: _numberCodec("ICE-CONTROLLING", "Q"),
    RESPONSE_ORIGIN: _addressCodec("RESPONSE-ORIGIN", xor=False),
    OTHER_ADDRESS: _addressCodec("OTHER-ADDRESS", xor=False),
    THIRD_PARTY_AUTHORIZATION: _textCodec("THIRD-PARTY-AUTHORIZATION", 255),
    MOBILITY_TICKET: _bytesCodec("MOBILITY-TICKET"),
}


def attributeName(attributeType: int) -> str:
    """
    @return: the RFC name of C{attributeType}, or its hex value if unknown.
    """
    codec = ATTRIBUTE_CODECS.get(attributeType)
    return codec.name if codec is not None else f"0x{attributeType:04X}"
