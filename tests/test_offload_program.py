"""
C{turnrelay/offload/channeldata.bpf.c} run by the kernel on frames built
here (C{BPF_PROG_TEST_RUN}), loaded in test mode: it rewrites what it
relays and returns C{TC_ACT_REDIRECT} (the XDP program C{XDP_REDIRECT})
without routing it, so the output is the packet it would send.  Every
checksum is checked here independently of the program's arithmetic.

Needs root (or CAP_BPF) and the compiled object (C{make offload}); skipped
with the reason otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Tuple

from twisted.trial.unittest import SkipTest, TestCase

from turnrelay.offload import entries
from turnrelay.offload.bpf import (
    TC_ACT_REDIRECT,
    TC_ACT_UNSPEC,
    XDP_PASS,
    XDP_REDIRECT,
    KernelProgram,
    OffloadUnavailable,
)

MACS = bytes.fromhex("020000000001020000000002")

CLIENT4 = ("192.0.2.10", 40000)
SERVER4 = ("198.51.100.1", 3478)
RELAY4 = ("198.51.100.1", 50000)
PEER4 = ("203.0.113.7", 6000)
CLIENT6 = ("2001:db8::10", 40000)
SERVER6 = ("2001:db8:1::1", 3478)
RELAY6 = ("2001:db8:1::1", 50000)
PEER6 = ("2001:db8:2::7", 6000)
CHANNEL = 0x4001
DATA = b"hello, peer: an odd-length payload!"


def checksum(data: bytes) -> int:
    """
    The Internet checksum (RFC 1071) of C{data}.
    """
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudoHeader(src: str, dst: str, length: int) -> bytes:
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version == 4:
        return source.packed + destination.packed + struct.pack("!BBH", 0, 17, length)
    return source.packed + destination.packed + struct.pack("!I3xB", length, 17)


def udpChecksum(src: str, dst: str, segment: bytes) -> int:
    value = checksum(pseudoHeader(src, dst, len(segment)) + segment)
    return value or 0xFFFF


def frame(
    src: Tuple[str, int],
    dst: Tuple[str, int],
    payload: bytes,
    ttl: int = 64,
    options: bytes = b"",
    fragment: int = 0,
    withChecksum: bool = True,
    identification: int = 0x1234,
) -> bytes:
    """
    An Ethernet frame of a UDP datagram, with valid checksums (or none
    for IPv4 with C{withChecksum=False}).

    @param fragment: the IPv4 flags and fragment offset field.
    """
    length = 8 + len(payload)
    segment = struct.pack("!HHHH", src[1], dst[1], length, 0) + payload
    if withChecksum:
        value = udpChecksum(src[0], dst[0], segment)
        segment = segment[:6] + struct.pack("!H", value) + segment[8:]
    if ipaddress.ip_address(src[0]).version == 4:
        headerLength = 20 + len(options)
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | headerLength // 4,
            0,
            headerLength + length,
            identification,
            fragment,
            ttl,
            17,
            0,
            ipaddress.ip_address(src[0]).packed,
            ipaddress.ip_address(dst[0]).packed,
        )
        header += options
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return MACS + b"\x08\x00" + header + segment
    header = struct.pack(
        "!IHBB16s16s",
        0x60000000,
        length,
        17,
        ttl,
        ipaddress.ip_address(src[0]).packed,
        ipaddress.ip_address(dst[0]).packed,
    )
    return MACS + b"\x86\xdd" + header + segment


def channelData(channel: int, data: bytes) -> bytes:
    return struct.pack("!HH", channel, len(data)) + data


class ChannelDataProgramTests(TestCase):
    """
    The program's rewriting, counting, and passing up.

    @cvar xdp: run the XDP program instead of the TC one.
    @cvar relayed: what the program returns for a packet it relayed.
    @cvar passed: what it returns for a packet it passed up.
    """

    xdp = False
    relayed = TC_ACT_REDIRECT
    passed = TC_ACT_UNSPEC

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest(f"loading a BPF program needs root; running as uid {os.geteuid()}")
        try:
            self.program = KernelProgram.load(testMode=True)
        except OffloadUnavailable as e:
            raise SkipTest(f"the offload program cannot be loaded: {e}") from None
        self.addCleanup(self.program.close)
        maps = self.program.maps
        for client, server, relay, peer in [
            (CLIENT4, SERVER4, RELAY4, PEER4),
            (CLIENT6, SERVER6, RELAY6, PEER6),
        ]:
            maps["to_peer"].update(
                entries.clientKey(client, server, CHANNEL), entries.toPeer(relay, peer)
            )
            maps["to_client"].update(
                entries.peerKey(relay, peer), entries.toClient(client, server, CHANNEL)
            )

    def assertValidChecksums(self, packet: bytes) -> None:
        """
        The IPv4 header checksum (if IPv4) and the UDP checksum (unless
        zero over IPv4) of C{packet} are right.
        """
        if packet[12:14] == b"\x08\x00":
            self.assertEqual(checksum(packet[14:34]), 0, "IPv4 header checksum")
            src, dst = (
                str(ipaddress.IPv4Address(packet[26:30])),
                str(ipaddress.IPv4Address(packet[30:34])),
            )
            segment = packet[34 : 14 + struct.unpack("!H", packet[16:18])[0]]
            if segment[6:8] == b"\0\0":
                return
        else:
            src, dst = (
                str(ipaddress.IPv6Address(packet[22:38])),
                str(ipaddress.IPv6Address(packet[38:54])),
            )
            segment = packet[54 : 54 + struct.unpack("!H", packet[18:20])[0]]
        self.assertEqual(checksum(pseudoHeader(src, dst, len(segment)) + segment), 0, "UDP")

    def counters(self, mapName: str, key: bytes) -> entries.Counters:
        value = self.program.maps[mapName].lookup(key)
        assert value is not None
        return entries.counters(value)

    def relays(self, given: bytes, expected: bytes) -> None:
        result, out = self.program.testRun(given, xdp=self.xdp)
        self.assertEqual(result, self.relayed)
        self.assertEqual(out.hex(), expected.hex())
        self.assertValidChecksums(out)

    def passesUp(self, given: bytes, statistic: str = "passedUnsupported") -> None:
        before = self.program.statsTotals()[statistic]
        result, out = self.program.testRun(given, xdp=self.xdp)
        self.assertEqual((result, out), (self.passed, given))
        self.assertEqual(self.program.statsTotals()[statistic], before + 1)

    def test_clientToPeerIPv4(self) -> None:
        """
        ChannelData from a client goes to the peer as its data, from the
        relayed address, with a fresh TTL and valid checksums; the entry
        counts one packet and the data's bytes.
        """
        self.relays(
            frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA), ttl=30),
            frame(RELAY4, PEER4, DATA),
        )
        key = entries.clientKey(CLIENT4, SERVER4, CHANNEL)
        self.assertEqual(self.counters("to_peer", key), (1, len(DATA)))
        self.assertEqual(self.program.statsTotals()["clientToPeer"], 1)

    def test_peerToClientIPv4(self) -> None:
        """
        A datagram from a peer goes to the client as ChannelData on its
        channel, from the server address the client uses.
        """
        self.relays(
            frame(PEER4, RELAY4, DATA, ttl=9),
            frame(SERVER4, CLIENT4, channelData(CHANNEL, DATA)),
        )
        key = entries.peerKey(RELAY4, PEER4)
        self.assertEqual(self.counters("to_client", key), (1, len(DATA)))
        self.assertEqual(self.program.statsTotals()["peerToClient"], 1)

    def test_clientToPeerIPv6(self) -> None:
        """
        The same over IPv6, where the UDP checksum is always there.
        """
        self.relays(
            frame(CLIENT6, SERVER6, channelData(CHANNEL, DATA), ttl=2),
            frame(RELAY6, PEER6, DATA),
        )
        key = entries.clientKey(CLIENT6, SERVER6, CHANNEL)
        self.assertEqual(self.counters("to_peer", key), (1, len(DATA)))

    def test_peerToClientIPv6(self) -> None:
        """
        A peer's datagram over IPv6 becomes ChannelData to the client.
        """
        self.relays(
            frame(PEER6, RELAY6, DATA, ttl=255),
            frame(SERVER6, CLIENT6, channelData(CHANNEL, DATA)),
        )
        key = entries.peerKey(RELAY6, PEER6)
        self.assertEqual(self.counters("to_client", key), (1, len(DATA)))

    def test_manySizes(self) -> None:
        """
        Payloads of every length parity and a few sizes, empty included,
        keep valid checksums both ways; the counters add up.
        """
        total = 0
        for size in [0, 1, 2, 3, 17, 64, 1200, 1401]:
            data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            total += size
            self.relays(
                frame(CLIENT4, SERVER4, channelData(CHANNEL, data)), frame(RELAY4, PEER4, data)
            )
            self.relays(
                frame(PEER6, RELAY6, data), frame(SERVER6, CLIENT6, channelData(CHANNEL, data))
            )
        key = entries.clientKey(CLIENT4, SERVER4, CHANNEL)
        self.assertEqual(self.counters("to_peer", key), (8, total))

    def test_noChecksumIPv4(self) -> None:
        """
        IPv4 UDP without a checksum (zero) is relayed without one, both
        ways.
        """
        self.relays(
            frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA), withChecksum=False),
            frame(RELAY4, PEER4, DATA, withChecksum=False),
        )
        self.relays(
            frame(PEER4, RELAY4, DATA, withChecksum=False),
            frame(SERVER4, CLIENT4, channelData(CHANNEL, DATA), withChecksum=False),
        )

    def test_dontFragmentKept(self) -> None:
        """
        The IPv4 identification and Don't Fragment flag are the client's.
        """
        self.relays(
            frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA), fragment=0x4000),
            frame(RELAY4, PEER4, DATA, fragment=0x4000),
        )

    def test_unknownChannel(self) -> None:
        """
        ChannelData on a channel without an entry goes up untouched; so
        does it from another client port, and a datagram from an unknown
        peer.
        """
        self.passesUp(frame(CLIENT4, SERVER4, channelData(0x4002, DATA)), "passedNotOurs")
        self.passesUp(
            frame((CLIENT4[0], 40001), SERVER4, channelData(CHANNEL, DATA)), "passedNotOurs"
        )
        self.passesUp(frame(("203.0.113.8", 6000), RELAY4, DATA), "passedNotOurs")
        self.passesUp(frame(PEER6, (RELAY6[0], 50001), DATA), "passedNotOurs")

    def test_notIP(self) -> None:
        """
        Neither IPv4 nor IPv6, or not UDP: not ours.
        """
        self.passesUp(MACS + b"\x08\x06" + bytes(28), "passedNotOurs")
        tcp = bytearray(frame(PEER4, RELAY4, DATA))
        tcp[23] = 6
        self.passesUp(bytes(tcp), "passedNotOurs")

    def test_paddedChannelData(self) -> None:
        """
        ChannelData padded to 4 bytes, or shorter than it says, is left to
        user space.
        """
        self.passesUp(frame(CLIENT4, SERVER4, channelData(CHANNEL, b"abc") + b"\0"))
        self.passesUp(frame(CLIENT6, SERVER6, struct.pack("!HH", CHANNEL, 10) + b"short"))

    def test_ipOptions(self) -> None:
        """
        An IPv4 header with options is passed up.
        """
        self.passesUp(frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA), options=b"\x01" * 4))

    def test_fragments(self) -> None:
        """
        First fragments (more to come) and later ones are passed up.
        """
        self.passesUp(frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA), fragment=0x2000))
        self.passesUp(frame(PEER4, RELAY4, DATA, fragment=0x0010))

    def test_expiringTTL(self) -> None:
        """
        A TTL or hop limit of 1 is passed up, for the stack to answer.
        """
        self.passesUp(frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA), ttl=1))
        self.passesUp(frame(PEER6, RELAY6, DATA, ttl=1))

    def test_unfinishedChecksum(self) -> None:
        """
        A datagram whose UDP checksum is only its pseudo-header's sum (a
        sender on this host with checksum offload, over a veth, leaves the
        rest to the stack) is passed up untouched, IPv4 and IPv6: its
        headers cannot move under the stack's feet.
        """
        for client, server in [(CLIENT4, SERVER4), (CLIENT6, SERVER6)]:
            given = frame(client, server, channelData(CHANNEL, DATA))
            start = len(given) - 8 - 4 - len(DATA)
            seed = ~checksum(pseudoHeader(client[0], server[0], 8 + 4 + len(DATA))) & 0xFFFF
            given = given[: start + 6] + struct.pack("!H", seed) + given[start + 8 :]
            self.passesUp(given)

    def test_ethernetPadding(self) -> None:
        """
        A short frame padded by Ethernet is relayed by IP's length; the
        padding stays behind the datagram, where IP's length leaves it out.
        """
        result, out = self.program.testRun(
            frame(CLIENT4, SERVER4, channelData(CHANNEL, b"x")) + bytes(10), xdp=self.xdp
        )
        self.assertEqual(result, self.relayed)
        expected = frame(RELAY4, PEER4, b"x")
        self.assertEqual(out[: len(expected)], expected)
        self.assertValidChecksums(out)

    def test_mapEntries(self) -> None:
        """
        The loader's map access: entries can be listed, read and deleted.
        """
        toPeer = self.program.maps["to_peer"]
        key = entries.clientKey(CLIENT4, SERVER4, CHANNEL)
        self.assertEqual(len(list(toPeer.items())), 2)
        self.assertEqual(toPeer.lookup(key), entries.toPeer(RELAY4, PEER4))
        self.assertTrue(toPeer.delete(key))
        self.assertFalse(toPeer.delete(key))
        self.assertIsNone(toPeer.lookup(key))
        self.passesUp(frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA)), "passedNotOurs")


class XDPChannelDataProgramTests(ChannelDataProgramTests):
    """
    The XDP program (C{offload = xdp}) on the same frames: it shares the
    maps and the header arithmetic, moves the headers itself
    (C{bpf_xdp_adjust_head}), returns C{XDP_REDIRECT} in test mode for
    what it relayed and C{XDP_PASS} for what it leaves to the stack, and
    comes out byte for byte the same.
    """

    xdp = True
    relayed = XDP_REDIRECT
    passed = XDP_PASS

    def test_sharedCounters(self) -> None:
        """
        Both programs count in the same entries and statistics.
        """
        self.relays(frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA)), frame(RELAY4, PEER4, DATA))
        result, _ = self.program.testRun(frame(CLIENT4, SERVER4, channelData(CHANNEL, DATA)))
        self.assertEqual(result, TC_ACT_REDIRECT)
        key = entries.clientKey(CLIENT4, SERVER4, CHANNEL)
        self.assertEqual(self.counters("to_peer", key), (2, 2 * len(DATA)))
        self.assertEqual(self.program.statsTotals()["clientToPeer"], 2)
