"""
Property-based and fuzz tests for the STUN codec.

L{RoundTripTests} uses Hypothesis to check that any message made of valid
typed attributes survives encoding and decoding, integrity and FINGERPRINT
included, and that the encoding is canonical.

L{DecoderFuzzTests} feeds a large, reproducible stream of random and
mutated inputs (a fixed C{random.Random} seed per test) to
L{decodeMessage}, L{frameLength}, L{decodeChannelData} and
L{StreamFramer}: whatever the bytes, the only exception allowed out of them
is L{STUNDecodeError}.
"""

from __future__ import annotations

import json
import random
import socket
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import (
    ATTRIBUTE_CODECS,
    ICMP,
    AddressErrorCode,
    ErrorCode,
    PasswordAlgorithm,
)
from turnrelay.stun.channeldata import (
    StreamFramer,
    decodeChannelData,
    encodeChannelData,
    frameLength,
)
from turnrelay.stun.message import (
    MAGIC_COOKIE,
    STUNDecodeError,
    STUNMessage,
    decodeMessage,
)

VECTORS = Path(__file__).parent / "vectors"
KEY = b"VOkJxbRl1RmTxUk/WvJxBt"

ADDRESS_TYPES = [
    A.MAPPED_ADDRESS,
    A.XOR_PEER_ADDRESS,
    A.XOR_RELAYED_ADDRESS,
    A.XOR_MAPPED_ADDRESS,
    A.ALTERNATE_SERVER,
    A.RESPONSE_ORIGIN,
    A.OTHER_ADDRESS,
]
KNOWN_TYPES = sorted(ATTRIBUTE_CODECS)


# Hypothesis strategies --------------------------------------------------------


def _text(maxSize: int) -> st.SearchStrategy[str]:
    """
    Text of up to C{maxSize} characters that UTF-8 can encode.
    """
    return st.text(st.characters(codec="utf-8"), max_size=maxSize)


def _fromPacked(family: int, size: int) -> st.SearchStrategy[str]:
    """
    Canonical text forms of random addresses of one family.
    """
    return st.binary(min_size=size, max_size=size).map(lambda raw: socket.inet_ntop(family, raw))


_hosts = st.one_of(
    _fromPacked(socket.AF_INET, 4),
    _fromPacked(socket.AF_INET6, 16),
    st.sampled_from(["0.0.0.0", "255.255.255.255", "::", "::1", "::ffff:192.0.2.1", "fe80::1"]),
)
_addresses = st.builds(TransportAddress, _hosts, st.integers(0, 0xFFFF))
_passwordAlgorithms = st.builds(PasswordAlgorithm, st.integers(0, 0xFFFF), st.binary(max_size=11))
_unknownTypes = st.integers(0, 0xFFFF).filter(lambda kind: kind not in ATTRIBUTE_CODECS)


def _typed(kinds: List[int], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """
    C{(type, value)} pairs with a type drawn from C{kinds}.
    """
    return st.tuples(st.sampled_from(kinds), values)


_attributes: st.SearchStrategy[Tuple[int, Any]] = st.one_of(
    _typed(ADDRESS_TYPES, _addresses),
    _typed([A.ERROR_CODE], st.builds(ErrorCode, st.integers(300, 699), _text(127))),
    _typed(
        [A.ADDRESS_ERROR_CODE],
        st.builds(AddressErrorCode, st.integers(0, 255), st.integers(300, 699), _text(127)),
    ),
    _typed([A.LIFETIME, A.PRIORITY, A.CONNECTION_ID, A.CHANGE_REQUEST], st.integers(0, 2**32 - 1)),
    _typed([A.CHANNEL_NUMBER, A.RESPONSE_PORT], st.integers(0, 0xFFFF)),
    _typed(
        [A.REQUESTED_TRANSPORT, A.REQUESTED_ADDRESS_FAMILY, A.ADDITIONAL_ADDRESS_FAMILY],
        st.integers(0, 0xFF),
    ),
    _typed([A.ICE_CONTROLLED, A.ICE_CONTROLLING], st.integers(0, 2**64 - 1)),
    _typed([A.EVEN_PORT], st.booleans()),
    _typed([A.DONT_FRAGMENT, A.USE_CANDIDATE], st.just(True)),
    _typed([A.DATA, A.ACCESS_TOKEN, A.PADDING, A.MOBILITY_TICKET], st.binary(max_size=300)),
    _typed([A.USERHASH], st.binary(min_size=32, max_size=32)),
    _typed([A.RESERVATION_TOKEN], st.binary(min_size=8, max_size=8)),
    _typed([A.USERNAME, A.REALM, A.NONCE, A.SOFTWARE], _text(127)),
    _typed([A.THIRD_PARTY_AUTHORIZATION], _text(255)),
    _typed([A.ALTERNATE_DOMAIN], st.text(st.characters(max_codepoint=0x7F), max_size=255)),
    _typed([A.UNKNOWN_ATTRIBUTES], st.lists(st.integers(0, 0xFFFF), max_size=9).map(tuple)),
    _typed([A.PASSWORD_ALGORITHM], _passwordAlgorithms),
    _typed([A.PASSWORD_ALGORITHMS], st.lists(_passwordAlgorithms, max_size=4).map(tuple)),
    _typed(
        [A.ICMP_ATTRIBUTE],
        st.builds(ICMP, st.integers(0, 0x7F), st.integers(0, 0x1FF), st.integers(0, 2**32 - 1)),
    ),
    st.tuples(_unknownTypes, st.binary(max_size=40)),
)

_messages = st.builds(
    STUNMessage,
    st.integers(0, 0xFFF),
    st.integers(0, 3),
    st.binary(min_size=12, max_size=12),
    st.lists(_attributes, max_size=10),
)


class RoundTripTests(SynchronousTestCase):
    """
    Any well-formed message survives encoding and decoding.
    """

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        message=_messages,
        key=st.one_of(st.none(), st.binary(max_size=64)),
        sha256=st.booleans(),
        fingerprint=st.booleans(),
    )
    def test_roundTrip(
        self, message: STUNMessage, key: Optional[bytes], sha256: bool, fingerprint: bool
    ) -> None:
        """
        C{decodeMessage(m.encode(...)) == m}, the integrity attribute verifies
        with the key, FINGERPRINT is present when asked for, and encoding the
        decoded message again gives the same bytes (RFC 8489 sections 5, 14.5
        to 14.7).
        """
        data = message.encode(key, sha256=sha256, fingerprint=fingerprint)
        self.assertEqual(len(data) % 4, 0)
        decoded = decodeMessage(data)
        self.assertEqual(decoded, message)
        if key is None:
            self.assertIsNone(decoded.messageIntegrity)
            self.assertIsNone(decoded.messageIntegritySHA256)
        elif sha256:
            self.assertIsNone(decoded.messageIntegrity)
            self.assertTrue(decoded.verifyMessageIntegritySHA256(key))
            self.assertFalse(decoded.verifyMessageIntegritySHA256(key + b"!"))
        else:
            self.assertIsNone(decoded.messageIntegritySHA256)
            self.assertTrue(decoded.verifyMessageIntegrity(key))
            self.assertFalse(decoded.verifyMessageIntegrity(key + b"!"))
        self.assertEqual(decoded.fingerprint is not None, fingerprint)
        self.assertEqual(decoded.encode(key, sha256=sha256, fingerprint=fingerprint), data)

    @settings(max_examples=100, deadline=None, database=None)
    @given(
        number=st.integers(0x4000, 0x4FFF),
        data=st.binary(max_size=100),
        pad=st.booleans(),
    )
    def test_channelDataRoundTrip(self, number: int, data: bytes, pad: bool) -> None:
        """
        Any ChannelData message decodes to its number and data, and its frame
        length is its padded size (RFC 8656 sections 12.4 and 12.5).
        """
        frame = encodeChannelData(number, data, pad=pad)
        self.assertEqual(decodeChannelData(frame), (number, data))
        self.assertEqual(frameLength(frame), (4 + len(data) + 3) & ~3)


# Deterministic fuzzing --------------------------------------------------------


def _vectorMessages() -> List[bytes]:
    """
    Every message of the vector files, the known-bad B.1 one included.
    """
    with (VECTORS / "rfc5769.json").open(encoding="utf-8") as f:
        rfc5769 = json.load(f)
    with (VECTORS / "rfc8489-b1.json").open(encoding="utf-8") as f:
        b1 = json.load(f)
    messages = [bytes.fromhex(vector["message_hex"]) for vector in rfc5769["vectors"]]
    messages.append(bytes.fromhex(b1["errata_6268"]["message_hex"]))
    messages.append(bytes.fromhex(b1["as_published"]["message_hex"]))
    return messages


def _randomText(rng: random.Random, maxCharacters: int) -> str:
    """
    Random text mixing ASCII and wider code points (no surrogates).
    """
    pools = ((0x20, 0x7E), (0xA0, 0x7FF), (0x3000, 0x30FF), (0x1F600, 0x1F64F))
    characters = []
    for _ in range(rng.randrange(maxCharacters + 1)):
        low, high = rng.choice(pools)
        characters.append(chr(rng.randint(low, high)))
    return "".join(characters)


def _randomAddress(rng: random.Random) -> TransportAddress:
    """
    A random IPv4 or IPv6 transport address.
    """
    if rng.random() < 0.5:
        host = socket.inet_ntop(socket.AF_INET, rng.randbytes(4))
    else:
        host = socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
    return TransportAddress(host, rng.randrange(0x10000))


def _randomAlgorithm(rng: random.Random) -> PasswordAlgorithm:
    """
    A random PASSWORD-ALGORITHM entry.
    """
    return PasswordAlgorithm(
        rng.choice((1, 2, rng.randrange(0x10000))), rng.randbytes(rng.randrange(6))
    )


_VALUES: Dict[int, Callable[[random.Random], Any]] = {
    **{kind: _randomAddress for kind in ADDRESS_TYPES},
    A.ERROR_CODE: lambda rng: ErrorCode(rng.randint(300, 699), _randomText(rng, 20)),
    A.LIFETIME: lambda rng: rng.randrange(2**32),
    A.CHANNEL_NUMBER: lambda rng: rng.randint(0x4000, 0x4FFF),
    A.REQUESTED_TRANSPORT: lambda rng: rng.choice((6, 17)),
    A.EVEN_PORT: lambda rng: rng.random() < 0.5,
    A.DONT_FRAGMENT: lambda rng: True,
    A.DATA: lambda rng: rng.randbytes(rng.randrange(40)),
    A.USERNAME: lambda rng: _randomText(rng, 30),
    A.REALM: lambda rng: _randomText(rng, 20),
    A.NONCE: lambda rng: _randomText(rng, 40),
    A.SOFTWARE: lambda rng: _randomText(rng, 20),
    A.USERHASH: lambda rng: rng.randbytes(32),
    A.RESERVATION_TOKEN: lambda rng: rng.randbytes(8),
    A.UNKNOWN_ATTRIBUTES: lambda rng: tuple(
        rng.randrange(0x10000) for _ in range(rng.randrange(5))
    ),
    A.PASSWORD_ALGORITHM: _randomAlgorithm,
    A.PASSWORD_ALGORITHMS: lambda rng: tuple(
        _randomAlgorithm(rng) for _ in range(rng.randrange(4))
    ),
    A.ADDRESS_ERROR_CODE: lambda rng: AddressErrorCode(rng.choice((1, 2)), 440, "x"),
    A.ICMP_ATTRIBUTE: lambda rng: ICMP(
        rng.randrange(128), rng.randrange(512), rng.randrange(2**32)
    ),
    A.ICE_CONTROLLING: lambda rng: rng.randrange(2**64),
    A.ALTERNATE_DOMAIN: lambda rng: "turn.example.org",
}


def _randomMessage(rng: random.Random) -> bytes:
    """
    A valid, randomly built message, randomly protected.
    """
    message = STUNMessage(rng.randrange(0x1000), rng.randrange(4), rng.randbytes(12))
    kinds = list(_VALUES)
    for _ in range(rng.randrange(8)):
        if rng.random() < 0.1:
            message.add(rng.choice((0x7FF0, 0x0002, 0xC0DE)), rng.randbytes(rng.randrange(12)))
        else:
            kind = rng.choice(kinds)
            message.add(kind, _VALUES[kind](rng))
    key = rng.choice((None, KEY, b"other"))
    return message.encode(key, sha256=rng.random() < 0.5, fingerprint=rng.random() < 0.5)


def _randomChannelData(rng: random.Random) -> bytes:
    """
    A ChannelData message, padded or not.
    """
    data = rng.randbytes(rng.randrange(30))
    return encodeChannelData(rng.randint(0x4000, 0x4FFF), data, pad=rng.random() < 0.7)


def _attributeOffsets(data: bytes) -> List[int]:
    """
    The offsets of the attribute headers that C{data}'s own attribute
    lengths lead to, stopping at the first that does not fit.
    """
    offsets = []
    offset = 20
    while offset + 4 <= len(data):
        offsets.append(offset)
        (length,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + length + (-length % 4)
    return offsets


def _fixLength(data: bytearray) -> None:
    """
    Make the header length field match the bytes after the header, when it
    can.
    """
    if 20 <= len(data) <= 20 + 0xFFFF:
        data[2:4] = struct.pack("!H", len(data) - 20)


def _interestingLength(rng: random.Random, current: int) -> int:
    """
    A replacement for a 16-bit length field.
    """
    choice = rng.randrange(6)
    if choice == 0:
        return 0xFFFF
    if choice == 1:
        return rng.choice((0, 0xFFFC, 0x8000, 0x7FFF))
    if choice == 2:
        return max(0, min(0xFFFF, current + rng.randint(-8, 8)))
    return rng.randrange(0x10000) if choice == 3 else rng.randrange(64)


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    """
    Apply one to three random mutations to a valid frame.
    """
    data = bytearray(seed)
    lengthOverwritten = False
    for _ in range(rng.randint(1, 3)):
        offsets = _attributeOffsets(bytes(data))
        mutation = rng.randrange(11)
        if mutation == 0 and data:
            del data[rng.randrange(len(data)) :]
        elif mutation == 1 and data:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif mutation == 2 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif mutation == 3 and len(data) >= 4:
            current = struct.unpack_from("!H", data, 2)[0]
            data[2:4] = struct.pack("!H", _interestingLength(rng, current))
            lengthOverwritten = True
        elif mutation == 4 and offsets:
            at = rng.choice(offsets)
            current = struct.unpack_from("!H", data, at + 2)[0]
            data[at + 2 : at + 4] = struct.pack("!H", _interestingLength(rng, current))
        elif mutation == 5 and offsets:
            at = rng.choice(offsets)
            data[at : at + 2] = struct.pack("!H", rng.choice(KNOWN_TYPES))
        elif mutation == 6 and offsets:
            at = rng.choice(offsets)
            data[at : at + 2] = struct.pack("!H", rng.choice(ADDRESS_TYPES))
            if at + 5 < len(data):
                data[at + 5] = rng.choice((0, 1, 2, 3, rng.randrange(256)))
        elif mutation == 7:
            data += rng.randbytes(rng.choice((1, 2, 3, 4, 8, rng.randrange(64))))
        elif mutation == 8 and data:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif mutation == 9 and offsets:
            at = rng.choice(offsets)
            size = 4 * rng.randint(1, 4)
            data[at:at] = data[at : at + size]
        elif data:
            start = rng.randrange(len(data))
            del data[start : start + rng.randint(1, 8)]
    if not lengthOverwritten and rng.random() < 0.75:
        # Most inputs get past the header checks, to reach the attributes.
        if rng.random() < 0.7:
            data += bytes(-len(data) % 4)
        _fixLength(data)
    return bytes(data)


def _randomBody(rng: random.Random) -> bytes:
    """
    A sound header followed by random bytes of a matching length.
    """
    body = rng.randbytes(4 * rng.randrange(16))
    kind = rng.randrange(0x4000)
    return struct.pack("!HHI", kind, len(body), MAGIC_COOKIE) + rng.randbytes(12) + body


def _randomAttributes(rng: random.Random) -> bytes:
    """
    A sound header followed by well-framed attributes of mostly known types
    holding random values of plausible sizes.
    """
    parts = []
    for _ in range(rng.randrange(1, 7)):
        if rng.random() < 0.8:
            kind = rng.choice(KNOWN_TYPES)
        else:
            kind = rng.randrange(0x10000)
        size = rng.choice((0, 1, 2, 3, 4, 5, 8, 12, 20, 32, rng.randrange(64)))
        value = bytearray(rng.randbytes(size))
        if kind in ADDRESS_TYPES and size > 1 and rng.random() < 0.7:
            value[1] = rng.choice((1, 2))
        if kind in (A.ERROR_CODE, A.ADDRESS_ERROR_CODE) and size >= 4 and rng.random() < 0.7:
            value[2] = rng.randint(3, 6)
            value[3] = rng.randrange(100)
        parts.append(struct.pack("!HH", kind, size) + bytes(value) + bytes(-size % 4))
    body = b"".join(parts)
    kind = rng.randrange(0x4000)
    return struct.pack("!HHI", kind, len(body), MAGIC_COOKIE) + rng.randbytes(12) + body


class _Harness:
    """
    Feed inputs to every decoding entry point and record any exception other
    than L{STUNDecodeError}.

    @ivar count: the number of inputs fed.
    @ivar failures: a description of each unexpected exception.
    """

    def __init__(self, rng: random.Random, frames: List[bytes]) -> None:
        self.rng = rng
        self.frames = frames
        self.count = 0
        self.failures: List[str] = []
        self._resetFramer()

    def _resetFramer(self) -> None:
        """
        Start a new stream, as a server would after closing a connection.
        """
        self.framer = StreamFramer()
        self.fed = 0
        self.framed = 0

    def _fail(self, where: str, data: bytes, error: BaseException) -> None:
        """
        Record an unexpected outcome with the input that caused it.
        """
        if len(self.failures) < 20:
            self.failures.append(f"{where}({data.hex()}): {error!r}")

    def feed(self, data: bytes) -> None:
        """
        Run one input through L{decodeMessage}, L{frameLength},
        L{decodeChannelData} and a long-lived L{StreamFramer}.
        """
        self.count += 1
        try:
            message = decodeMessage(data)
        except STUNDecodeError:
            pass
        except Exception as e:
            self._fail("decodeMessage", data, e)
        else:
            self._reencode(message, data)
        for function in (frameLength, decodeChannelData):
            try:
                function(data)
            except STUNDecodeError:
                pass
            except Exception as e:
                self._fail(function.__name__, data, e)
        self._stream(data)

    def _reencode(self, message: STUNMessage, data: bytes) -> None:
        """
        Check that a decoded message can be verified, shown and encoded
        (or refused with ValueError), and that what it encodes to decodes
        back to an equal message.
        """
        try:
            message.verifyMessageIntegrity(KEY)
            message.verifyMessageIntegritySHA256(KEY)
            repr(message)
            encoded = message.encode()
        except ValueError:
            return
        except Exception as e:
            self._fail("decoded message", data, e)
            return
        try:
            again = decodeMessage(encoded)
        except Exception as e:
            self._fail("re-encoded message", data, e)
            return
        if again != message:
            self._fail("re-encoded message", data, AssertionError(encoded.hex()))

    def _stream(self, data: bytes) -> None:
        """
        Feed C{data}, often preceded by good frames, to the framer in random
        chunks, checking that the framer accounts for every byte.
        """
        rng = self.rng
        chunk = rng.choice(self.frames) + data if rng.random() < 0.5 else data
        cut = rng.randrange(len(chunk) + 1)
        try:
            for piece in (chunk[:cut], chunk[cut:]):
                frames = self.framer.feed(piece)
                self.fed += len(piece)
                for frame in frames:
                    self.framed += len(frame)
                    if frameLength(frame) != len(frame):
                        self._fail("StreamFramer frame", chunk, AssertionError(frame.hex()))
            if self.framed + self.framer.pending != self.fed:
                self._fail("StreamFramer accounting", chunk, AssertionError(self.fed))
        except STUNDecodeError:
            self._resetFramer()
        except Exception as e:
            self._fail("StreamFramer", chunk, e)
            self._resetFramer()
        if self.framer.pending > 0x20000:
            self._resetFramer()


class DecoderFuzzTests(SynchronousTestCase):
    """
    Whatever the bytes, decoding raises nothing but L{STUNDecodeError}.

    The four tests together feed 200,000 inputs, each to L{decodeMessage},
    L{frameLength}, L{decodeChannelData} and a L{StreamFramer}.
    """

    def setUp(self) -> None:
        rng = random.Random(6268)
        self.seeds = _vectorMessages()
        self.seeds += [_randomMessage(rng) for _ in range(300)]
        # The generated seeds (after the six vectors) must all be valid.
        for data in self.seeds[6:]:
            decodeMessage(data)
        self.seeds += [_randomChannelData(rng) for _ in range(60)]

    def runFuzz(self, seed: int, count: int, generate: Callable[[random.Random], bytes]) -> int:
        """
        Feed C{count} inputs made by C{generate} and fail, showing the inputs,
        if anything but L{STUNDecodeError} escaped.

        @return: the number of inputs fed.
        """
        rng = random.Random(seed)
        harness = _Harness(rng, self.seeds)
        for _ in range(count):
            harness.feed(generate(rng))
        if harness.failures:
            self.fail("unexpected exceptions:\n" + "\n".join(harness.failures))
        self.assertEqual(harness.count, count)
        return harness.count

    def test_randomBytes(self) -> None:
        """
        Pure random bytes of 0 to 80 bytes, most with a STUN or ChannelData
        first byte.
        """

        def generate(rng: random.Random) -> bytes:
            data = bytearray(rng.randbytes(rng.randrange(81)))
            if data and rng.random() < 0.7:
                data[0] = rng.choice((0x00, 0x01, 0x40, 0x4F, rng.randrange(0x50)))
            if len(data) >= 8 and rng.random() < 0.5:
                data[4:8] = struct.pack("!I", MAGIC_COOKIE)
            return bytes(data)

        self.runFuzz(1, 20_000, generate)

    def test_soundHeaderRandomBody(self) -> None:
        """
        A sound header with a random body, or a body of well-framed random
        attributes that the codecs must judge.
        """

        def generate(rng: random.Random) -> bytes:
            if rng.random() < 0.3:
                return _randomBody(rng)
            return _randomAttributes(rng)

        self.runFuzz(2, 60_000, generate)

    def test_mutatedMessages(self) -> None:
        """
        Valid messages (the vectors and generated ones) and ChannelData frames,
        truncated, bit-flipped, with header or attribute lengths overwritten
        (0xFFFF included), attribute types swapped, address families changed,
        bytes inserted or removed, and junk appended.
        """

        def generate(rng: random.Random) -> bytes:
            return _mutate(rng, rng.choice(self.seeds))

        self.runFuzz(3, 110_000, generate)

    def test_concatenated(self) -> None:
        """
        Two frames run together, then mutated: a datagram holding more than
        one message, or a stream read spanning a boundary.
        """

        def generate(rng: random.Random) -> bytes:
            data = rng.choice(self.seeds) + rng.choice(self.seeds)
            return _mutate(rng, data) if rng.random() < 0.7 else data

        self.runFuzz(4, 10_000, generate)
