# -*- test-case-name: tests.test_stun_channeldata -*-
"""
ChannelData messages and the framing of STUN and ChannelData on byte streams.

@see: RFC 8656 sections 12.4-12.7; RFC 8489 section 6.2.2.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

from turnrelay.stun.attributes import MAGIC_COOKIE
from turnrelay.stun.errors import STUNDecodeError

CHANNEL_NUMBER_MIN = 0x4000
# RFC 8656 narrowed the channel numbers to 0x4000-0x4FFF; RFC 5766 allowed
# up to 0x7FFF, and clients written for it (coturn's own, libre) still use
# the whole range.
CHANNEL_NUMBER_MAX = 0x4FFF
CHANNEL_NUMBER_MAX_RFC5766 = 0x7FFF
CHANNEL_DATA_HEADER_SIZE = 4
_channelHeader = struct.Struct("!HH")
_ZEROS = bytes(3)


def isChannelNumber(number: int, maximum: int = CHANNEL_NUMBER_MAX) -> bool:
    """
    @param maximum: the highest number allowed: L{CHANNEL_NUMBER_MAX} (RFC
        8656) or L{CHANNEL_NUMBER_MAX_RFC5766}.
    @return: whether C{number} may name a channel.
    """
    return CHANNEL_NUMBER_MIN <= number <= maximum


def encodeChannelData(channelNumber: int, data: bytes, pad: bool = False) -> bytes:
    """
    Frame application data for a channel.

    @param pad: pad to a multiple of 4 bytes with zeros, as TCP and TLS
        require (RFC 8656 section 12.5); UDP needs no padding.
    """
    size = len(data)
    frame = _channelHeader.pack(channelNumber, size) + data
    if pad and size & 3:
        frame += _ZEROS[: 4 - (size & 3)]
    return frame


def splitChannelData(frame: bytes) -> Optional[Tuple[int, bytes]]:
    """
    Split a ChannelData message into its channel number and data, without
    judging the number: the data path's decoder, for which an unknown
    channel and a malformed frame are the same drop.

    @return: C{(channelNumber, data)}, or L{None} when the frame is shorter
        than its header or than its length field says.
    """
    size = len(frame)
    if size < CHANNEL_DATA_HEADER_SIZE:
        return None
    end = CHANNEL_DATA_HEADER_SIZE + ((frame[2] << 8) | frame[3])
    if size < end:
        return None
    return (frame[0] << 8) | frame[1], frame[CHANNEL_DATA_HEADER_SIZE:end]


def decodeChannelData(frame: bytes, maximum: int = CHANNEL_NUMBER_MAX) -> Tuple[int, bytes]:
    """
    Split a ChannelData message into its channel number and data.

    Bytes beyond the stated length are padding and ignored (a UDP sender may
    pad too).

    @param maximum: the highest channel number accepted.

    @return: C{(channelNumber, data)}.
    @raise STUNDecodeError: the frame is shorter than its length field says,
        or the number is not a channel number.
    """
    split = splitChannelData(frame)
    if split is None:
        if len(frame) < CHANNEL_DATA_HEADER_SIZE:
            raise STUNDecodeError(f"ChannelData of {len(frame)} bytes")
        size = (frame[2] << 8) | frame[3]
        raise STUNDecodeError(f"ChannelData says {size} bytes, {len(frame) - 4} present")
    if not CHANNEL_NUMBER_MIN <= split[0] <= maximum:
        raise STUNDecodeError(f"0x{split[0]:04X} is not a channel number")
    return split


def frameLength(buffer: bytes | bytearray | memoryview) -> Optional[int]:
    """
    Tell how many bytes the next frame on a TURN byte stream occupies.

    A frame is a STUN message (20 bytes plus its length, first two bits 00)
    or a ChannelData message (4 bytes plus its length, padded to a multiple
    of 4, first two bits 01).  Whether the channel is bound is for the
    receiver to judge.

    @param buffer: the bytes received so far, starting at a frame boundary.
    @return: the frame's size, padding included, or L{None} if fewer than 4
        bytes are there to tell.
    @raise STUNDecodeError: the stream cannot be STUN or ChannelData here;
        a stream cannot be resynchronised after that.
    """
    if len(buffer) < 4:
        return None
    first = buffer[0]
    length = (buffer[2] << 8) | buffer[3]
    if first < 0x40:
        if length & 3:
            raise STUNDecodeError(f"STUN length {length} is not a multiple of 4")
        if len(buffer) >= 8 and int.from_bytes(buffer[4:8], "big") != MAGIC_COOKIE:
            raise STUNDecodeError("STUN header without the magic cookie")
        return 20 + length
    if first <= 0x7F:
        return (CHANNEL_DATA_HEADER_SIZE + length + 3) & ~3
    raise STUNDecodeError(f"first byte 0x{first:02X} is neither STUN nor ChannelData")


class StreamFramer:
    """
    Cut a TURN byte stream into frames.

    Feed it bytes as they arrive; it returns every complete frame and keeps
    the rest.  At most one incomplete frame (65,552 bytes at worst) is held.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """
        The number of bytes held for an incomplete frame.
        """
        return len(self._buffer)

    def takePending(self) -> bytes:
        """
        Hand over the bytes held for an incomplete frame and forget them: the
        stream stops being framed (an RFC 6062 data connection).
        """
        pending = bytes(self._buffer)
        self._buffer.clear()
        return pending

    def feed(self, data: bytes) -> List[bytes]:
        """
        Add received bytes.

        @return: the complete frames, in order, padding included.
        @raise STUNDecodeError: the stream holds something that is neither
            STUN nor ChannelData; the frames before it are lost with it, so
            the caller should close the connection.
        """
        buffer = self._buffer
        if not buffer:
            # The common case: whole frames arrive in one read.
            size = frameLength(data)
            if size is not None and size == len(data):
                return [data]
        buffer += data
        frames: List[bytes] = []
        offset = 0
        total = len(buffer)
        while True:
            # A copied slice, not a memoryview: a view kept alive by a raised
            # error's traceback would forbid resizing the buffer later.
            size = frameLength(buffer[offset : offset + 8])
            if size is None or offset + size > total:
                break
            frames.append(bytes(buffer[offset : offset + size]))
            offset += size
        if offset:
            del buffer[:offset]
        return frames
