"""
Tests for L{turnrelay.stun.channeldata}: ChannelData messages and the
framing of STUN and ChannelData on byte streams (RFC 8656 sections 12.4 to
12.7; RFC 8489 section 6.2.2; checklist sections 13 and 14).
"""

from __future__ import annotations

import struct
from typing import List

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import DATA, LIFETIME, SOFTWARE, XOR_PEER_ADDRESS
from turnrelay.stun.channeldata import (
    CHANNEL_NUMBER_MAX_RFC5766,
    StreamFramer,
    decodeChannelData,
    encodeChannelData,
    frameLength,
    isChannelNumber,
)
from turnrelay.stun.message import MessageClass, Method, STUNDecodeError, STUNMessage

TID = bytes(range(100, 112))
STUN_HEADER = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + TID


def _frames() -> List[bytes]:
    """
    A mix of STUN messages and padded ChannelData messages, as a TURN client
    might send them on one TCP connection.
    """
    frames = [STUN_HEADER]
    for size in range(8):
        frames.append(encodeChannelData(0x4000 + size, bytes([size]) * size, pad=True))
    frames.append(
        STUNMessage(
            Method.SEND,
            MessageClass.INDICATION,
            TID,
            [(XOR_PEER_ADDRESS, TransportAddress("2001:db8::7", 9)), (DATA, b"hello")],
        ).encode(fingerprint=True)
    )
    frames.append(encodeChannelData(0x4FFF, b"thirteen byte", pad=True))
    frames.append(
        STUNMessage(
            Method.ALLOCATE, MessageClass.REQUEST, TID, [(LIFETIME, 600), (SOFTWARE, "x")]
        ).encode(b"key", sha256=True, fingerprint=True)
    )
    frames.append(encodeChannelData(0x4ABC, bytes(64), pad=True))
    frames.append(STUN_HEADER)
    return frames


class ChannelDataTests(SynchronousTestCase):
    """
    L{encodeChannelData}, L{decodeChannelData} and L{isChannelNumber}.
    """

    def test_encodeUnpadded(self) -> None:
        """
        Without C{pad}, a ChannelData message is the number, the length and
        the data, with no padding (RFC 8656 section 12.4; checklist item 82).
        """
        self.assertEqual(encodeChannelData(0x4000, b"abc"), b"\x40\x00\x00\x03abc")
        self.assertEqual(encodeChannelData(0x4001, b""), b"\x40\x01\x00\x00")

    def test_encodePadded(self) -> None:
        """
        With C{pad}, the frame is 4 plus the length rounded up to a multiple
        of 4, padded with zeros, and the length field excludes the padding
        (RFC 8656 section 12.5; checklist item 83).
        """
        for size in range(13):
            data = b"\xff" * size
            frame = encodeChannelData(0x4ABC, data, pad=True)
            self.assertEqual(len(frame), (4 + size + 3) // 4 * 4)
            self.assertEqual(frame[:4], struct.pack("!HH", 0x4ABC, size))
            self.assertEqual(frame[4 : 4 + size], data)
            self.assertEqual(frame[4 + size :], bytes(len(frame) - 4 - size))

    def test_decode(self) -> None:
        """
        A ChannelData message decodes to its number and data, including an
        empty one (checklist item 82).
        """
        self.assertEqual(decodeChannelData(b"\x40\x00\x00\x03abc"), (0x4000, b"abc"))
        self.assertEqual(decodeChannelData(b"\x4f\xff\x00\x00"), (0x4FFF, b""))

    def test_decodeTrailingPadding(self) -> None:
        """
        Bytes beyond the length, such as padding, are ignored (checklist
        item 84).
        """
        self.assertEqual(decodeChannelData(b"\x40\x00\x00\x03abc\x00"), (0x4000, b"abc"))
        self.assertEqual(decodeChannelData(b"\x40\x00\x00\x01a\x00\x00\x00junk"), (0x4000, b"a"))
        for size in range(9):
            frame = encodeChannelData(0x4123, bytes(range(size)), pad=True)
            self.assertEqual(decodeChannelData(frame), (0x4123, bytes(range(size))))

    def test_decodeShort(self) -> None:
        """
        A frame shorter than its header or than 4 plus its length is an error
        (checklist item 84).
        """
        for frame in (b"", b"\x40", b"\x40\x00\x00", b"\x40\x00\x00\x04abc", b"\x40\x00\xff\xff"):
            self.assertRaises(STUNDecodeError, decodeChannelData, frame)

    def test_decodeNotAChannel(self) -> None:
        """
        A number outside 0x4000 to 0x4FFF is an error (RFC 8656 section 12;
        checklist item 84).
        """
        for number in (0x0000, 0x0001, 0x3FFF, 0x5000, 0x7FFF, 0x8000, 0xFFFF):
            frame = struct.pack("!HH", number, 1) + b"a"
            self.assertRaises(STUNDecodeError, decodeChannelData, frame)

    def test_decodeRFC5766Range(self) -> None:
        """
        With the RFC 5766 maximum, 0x5000 to 0x7FFF decode and 0x8000 does not.
        """
        for number in (0x5000, 0x7FFF):
            frame = struct.pack("!HH", number, 1) + b"a"
            self.assertEqual(decodeChannelData(frame, CHANNEL_NUMBER_MAX_RFC5766), (number, b"a"))
        frame = struct.pack("!HH", 0x8000, 1) + b"a"
        self.assertRaises(STUNDecodeError, decodeChannelData, frame, CHANNEL_NUMBER_MAX_RFC5766)

    def test_isChannelNumber(self) -> None:
        """
        Channel numbers are 0x4000 to 0x4FFF (RFC 8656 section 12; checklist
        item 75).
        """
        self.assertFalse(isChannelNumber(0x0000))
        self.assertFalse(isChannelNumber(0x3FFF))
        self.assertTrue(isChannelNumber(0x4000))
        self.assertTrue(isChannelNumber(0x4A00))
        self.assertTrue(isChannelNumber(0x4FFF))
        self.assertFalse(isChannelNumber(0x5000))
        self.assertFalse(isChannelNumber(0x7FFF))
        self.assertFalse(isChannelNumber(0xFFFF))
        self.assertTrue(isChannelNumber(0x7FFF, CHANNEL_NUMBER_MAX_RFC5766))
        self.assertFalse(isChannelNumber(0x8000, CHANNEL_NUMBER_MAX_RFC5766))


class FrameLengthTests(SynchronousTestCase):
    """
    L{frameLength} (checklist item 87).
    """

    def test_tooShortToTell(self) -> None:
        """
        Fewer than 4 bytes cannot tell the frame's size, whatever they are.
        """
        for buffer in (b"", b"\x00", b"\x40\x00", b"\xff\xff\xff"):
            self.assertIsNone(frameLength(buffer))

    def test_stun(self) -> None:
        """
        A STUN frame is 20 bytes plus its length field (RFC 8489 section 5).
        """
        self.assertEqual(frameLength(STUN_HEADER[:4]), 20)
        self.assertEqual(frameLength(b"\x01\x13\x00\x08"), 28)
        self.assertEqual(frameLength(b"\x00\x03\xff\xfc"), 20 + 0xFFFC)
        self.assertEqual(frameLength(STUN_HEADER), 20)
        self.assertEqual(frameLength(bytearray(STUN_HEADER)), 20)
        self.assertEqual(frameLength(memoryview(STUN_HEADER)), 20)

    def test_channelData(self) -> None:
        """
        A ChannelData frame is 4 plus its length, rounded up to a multiple of
        4 (RFC 8656 section 12.5).
        """
        for size, expected in ((0, 4), (1, 8), (4, 8), (5, 12), (0xFFFF, 65540)):
            self.assertEqual(frameLength(struct.pack("!HH", 0x4000, size)), expected)
        self.assertEqual(frameLength(b"\x4f\xff\x00\x03abc"), 8)

    def test_junkFirstByte(self) -> None:
        """
        A first byte that is neither STUN (top bits 00) nor ChannelData (top
        bits 01) is an error (checklist items 86 and 87).
        """
        for first in (0x80, 0xBF, 0xC0, 0xFF):
            self.assertRaises(STUNDecodeError, frameLength, bytes((first, 0, 0, 4)))

    def test_rfc5766ChannelsFramed(self) -> None:
        """
        First bytes 0x50 to 0x7F frame as ChannelData: RFC 5766 clients use
        channels up to 0x7FFF, and whether one is bound is the receiver's call.
        """
        for first in (0x50, 0x5F, 0x7F):
            self.assertEqual(frameLength(bytes((first, 0, 0, 4))), 8)

    def test_stunLengthNotMultipleOfFour(self) -> None:
        """
        A STUN header whose length is not a multiple of 4 is an error.
        """
        for length in (1, 2, 3, 6, 0xFFFF):
            self.assertRaises(STUNDecodeError, frameLength, b"\x00\x01" + struct.pack("!H", length))

    def test_wrongCookie(self) -> None:
        """
        A STUN header without the magic cookie is an error once the 8 bytes
        that hold it are present, and not before.
        """
        buffer = b"\x00\x01\x00\x00\x21\x12\xa4\x43"
        for size in range(4, 8):
            self.assertEqual(frameLength(buffer[:size]), 20)
        self.assertRaises(STUNDecodeError, frameLength, buffer)
        self.assertRaises(STUNDecodeError, frameLength, buffer + TID)


class StreamFramerTests(SynchronousTestCase):
    """
    L{StreamFramer} (RFC 8489 section 6.2.2; checklist items 87 and 88).
    """

    def test_everyChunkSize(self) -> None:
        """
        A stream of mixed STUN and padded ChannelData frames fed in chunks of
        any size from 1 byte to the whole stream yields exactly the frames,
        in order, with nothing left pending.
        """
        frames = _frames()
        stream = b"".join(frames)
        for chunkSize in range(1, len(stream) + 1):
            framer = StreamFramer()
            received: List[bytes] = []
            for start in range(0, len(stream), chunkSize):
                received.extend(framer.feed(stream[start : start + chunkSize]))
            self.assertEqual(received, frames, chunkSize)
            self.assertEqual(framer.pending, 0)
            for frame in received:
                self.assertIsInstance(frame, bytes)

    def test_wholeFrame(self) -> None:
        """
        A whole frame fed at once comes back at once.
        """
        framer = StreamFramer()
        for frame in _frames():
            self.assertEqual(framer.feed(frame), [frame])
            self.assertEqual(framer.pending, 0)

    def test_pending(self) -> None:
        """
        C{pending} counts the bytes held for an incomplete frame.
        """
        frames = _frames()
        framer = StreamFramer()
        self.assertEqual(framer.pending, 0)
        self.assertEqual(framer.feed(STUN_HEADER[:3]), [])
        self.assertEqual(framer.pending, 3)
        self.assertEqual(framer.feed(STUN_HEADER[3:10]), [])
        self.assertEqual(framer.pending, 10)
        partial = frames[9][:5]
        self.assertEqual(framer.feed(STUN_HEADER[10:] + partial), [STUN_HEADER])
        self.assertEqual(framer.pending, 5)
        self.assertEqual(framer.feed(frames[9][5:] + frames[5]), [frames[9], frames[5]])
        self.assertEqual(framer.pending, 0)
        self.assertEqual(framer.feed(b""), [])
        self.assertEqual(framer.pending, 0)

    def test_junk(self) -> None:
        """
        Bytes that are neither STUN nor ChannelData raise L{STUNDecodeError},
        at the start of the stream or after good frames (checklist item 87).
        """
        for junk in (
            b"\x80\x00\x00\x00",
            b"\xc0",
            b"\x90\x00\x00\x04abcd",
            b"\x16\x03\x01\x02\x00",
        ):
            framer = StreamFramer()
            if len(junk) < 4:
                self.assertEqual(framer.feed(junk), [])
                self.assertRaises(STUNDecodeError, framer.feed, b"\x00\x00\x00")
            else:
                self.assertRaises(STUNDecodeError, framer.feed, junk)
            framer = StreamFramer()
            self.assertEqual(framer.feed(STUN_HEADER[:10]), [])
            self.assertRaises(STUNDecodeError, framer.feed, STUN_HEADER[10:] + junk + bytes(4))

    def test_badStunHeader(self) -> None:
        """
        A STUN header with a wrong cookie or a length that is not a multiple
        of 4 raises L{STUNDecodeError}.
        """
        framer = StreamFramer()
        self.assertRaises(STUNDecodeError, framer.feed, STUN_HEADER[:4] + b"\x00\x00\x00\x00")
        framer = StreamFramer()
        self.assertRaises(STUNDecodeError, framer.feed, b"\x00\x01\x00\x02" + bytes(4))

    def test_errorKeptThenFedAgain(self) -> None:
        """
        Feeding again after an error whose exception is still referenced
        raises L{STUNDecodeError} again, not another exception.
        """
        framer = StreamFramer()
        framer.feed(STUN_HEADER[:8])
        error = self.assertRaises(
            STUNDecodeError,
            framer.feed,
            STUN_HEADER[8:] + b"\x40\x00\x00\x01\xff\x00\x00\x00\x80\x00\x00\x00",
        )
        self.assertIsNotNone(error.__traceback__)
        self.assertRaises(STUNDecodeError, framer.feed, b"more")
