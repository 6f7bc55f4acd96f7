"""
The kernel fast path on real interfaces: C{channeldata.bpf.c} attached by
L{turnrelay.offload.bpf.KernelProgram} to the veths of a relay namespace
relays a client's ChannelData to a peer's UDP socket and the peer's answer
back to the client's, with nothing listening in the relay namespace; the
TC program, then the XDP program in driver and in generic mode.

Three namespaces the test makes and removes (names from
L{tests._netns.NAME_PREFIX}, addresses from a random C{10.X.Y.0/24} pair
and C{fd00::/8} that exist only inside them)::

    client  cv --- rc  relay  rp --- pv  peer

The client and the peer put their datagrams on the wire through packet
sockets, with their checksums computed here, so they arrive as a NIC
would hand them over (the checksum not yet verified); the receivers are
ordinary UDP sockets, which the kernel gives only datagrams whose checksum
is right.  (A UDP socket over a veth would hand over its datagram with the
checksum still to be done, which the program does not support.)
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from typing import Optional, Tuple

from twisted.trial.unittest import SkipTest, TestCase

from tests._netns import RelayNamespaces, command
from tests._timing import PROMPTLY
from tests.test_offload_program import channelData, frame
from turnrelay.offload import entries
from turnrelay.offload.bpf import KernelProgram, OffloadUnavailable

CHANNEL = 0x4ABC
CLIENT_PORT = 41000
SERVER_PORT = 3478
RELAY_PORT = 52000
PEER_PORT = 7000
_CLONE_NEWNET = 0x40000000

RECEIVE = """\
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
data, source = s.recvfrom(65535)
print(data.hex(), source[0], source[1], flush=True)
"""

SEND = """\
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
"""


class _Namespace:
    """
    Run the calling thread in a network namespace for the time of a
    C{with} block (libbpf's netlink calls act in the caller's namespace).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._libc = ctypes.CDLL(None, use_errno=True)

    def _enter(self, fd: int) -> None:
        if self._libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns: {os.strerror(code)}")

    def __enter__(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            self._enter(target)
        finally:
            os.close(target)

    def __exit__(self, *exc: object) -> None:
        try:
            self._enter(self._home)
        finally:
            os.close(self._home)


class VethOffloadTests(RelayNamespaces, TestCase):
    """
    ChannelData relayed by the kernel between namespaces, both ways.
    """

    timeout = 60

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest(f"namespaces and BPF need root; running as uid {os.geteuid()}")
        # Made first, so that they are removed last: after the program
        # is closed.
        self.makeNamespaces(self)
        try:
            self.program = KernelProgram.load()
        except OffloadUnavailable as e:
            raise SkipTest(f"the offload program cannot be loaded: {e}") from None
        self.addCleanup(self._closeProgram)
        with _Namespace(self._name("relay")):
            for device in ("rc", "rp"):
                self._attach(int(str(self._link_info("relay", device)["ifindex"])))

    def _attach(self, ifindex: int) -> None:
        self.program.attach(ifindex)

    def _closeProgram(self) -> None:
        with _Namespace(self._name("relay")):
            self.program.close()

    def _exchange(
        self,
        sender: str,
        device: str,
        relayDevice: str,
        packet: bytes,
        receiver: str,
        port: int,
        wait: float = PROMPTLY,
    ) -> Tuple[bytes, str, int]:
        """
        Put C{packet} (an Ethernet frame without its MAC addresses) on
        C{device} of C{sender}, addressed to the relay's C{relayDevice},
        and return what a UDP socket on C{receiver}'s address and C{port}
        gets, with its source.
        """
        family = "6" if packet[:2] == b"\x86\xdd" else "4"
        address = self.addresses[family][receiver]
        listening = subprocess.Popen(
            self._in(receiver, [sys.executable, "-c", RECEIVE, address, str(port), str(wait)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(_reap, listening)
        assert listening.stdout is not None
        self.assertEqual(listening.stdout.readline().strip(), "ready")
        wire = self._mac("relay", relayDevice) + self._mac(sender, device) + packet
        command(self._in(sender, [sys.executable, "-c", SEND, device, wire.hex()]))
        out, errors = listening.communicate(timeout=wait + 5)
        self.assertEqual(listening.returncode, 0, f"nothing received: {errors.strip()}")
        data, source, sourcePort = out.split()
        return bytes.fromhex(data), source, int(sourcePort)

    def _roundTrip(self, family: str) -> None:
        names = self.addresses[family]
        client, server = (names["client"], CLIENT_PORT), (names["server"], SERVER_PORT)
        relay, peer = (names["relay"], RELAY_PORT), (names["peer"], PEER_PORT)
        maps = self.program.maps
        maps["to_peer"].update(
            entries.clientKey(client, server, CHANNEL), entries.toPeer(relay, peer)
        )
        maps["to_client"].update(
            entries.peerKey(relay, peer), entries.toClient(client, server, CHANNEL)
        )
        data = b"from the client " + family.encode() * 101
        received = self._exchange(
            "client",
            "cv",
            "rc",
            frame(client, server, channelData(CHANNEL, data))[12:],
            "peer",
            PEER_PORT,
        )
        self.assertEqual(received, (data, names["relay"], RELAY_PORT))
        answer = b"the peer answers " + family.encode() * 7
        received = self._exchange(
            "peer", "pv", "rp", frame(peer, relay, answer)[12:], "client", CLIENT_PORT
        )
        self.assertEqual(received, (channelData(CHANNEL, answer), names["server"], SERVER_PORT))
        toPeer = maps["to_peer"].lookup(entries.clientKey(client, server, CHANNEL))
        toClient = maps["to_client"].lookup(entries.peerKey(relay, peer))
        assert toPeer is not None and toClient is not None
        self.assertEqual(entries.counters(toPeer), (1, len(data)))
        self.assertEqual(entries.counters(toClient), (1, len(answer)))

    def test_ipv4(self) -> None:
        """
        Over IPv4: the peer gets the data from the relayed address, and
        the client the answer as ChannelData from the server address.
        """
        self._roundTrip("4")
        totals = self.program.statsTotals()
        self.assertEqual((totals["clientToPeer"], totals["peerToClient"]), (1, 1))

    def test_ipv6(self) -> None:
        """
        The same over IPv6.
        """
        self._roundTrip("6")
        totals = self.program.statsTotals()
        self.assertEqual((totals["clientToPeer"], totals["peerToClient"]), (1, 1))

    def test_closeDetaches(self) -> None:
        """
        Closing the program closes its tcx links: the interfaces no longer
        run it (a relay that dies closes them too), so ChannelData goes up
        to the relay's own stack, where nothing listens, and the peer gets
        nothing.  No qdisc is ever added.
        """
        self._roundTrip("4")
        self._closeProgram()
        names = self.addresses["4"]
        client, server = (names["client"], CLIENT_PORT), (names["server"], SERVER_PORT)
        packet = frame(client, server, channelData(CHANNEL, b"late"))[12:]
        with self.assertRaises(AssertionError):
            self._exchange("client", "cv", "rc", packet, "peer", PEER_PORT, wait=0.5)
        for device in ("rc", "rp"):
            shown = command(["tc", "-n", self._name("relay"), "qdisc", "show", "dev", device])
            self.assertNotIn("clsact", shown)


def _reap(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate()


class XDPVethOffloadTests(VethOffloadTests):
    """
    The same with the XDP program (C{offload = xdp}) on the relay's veths,
    in the veth driver's own (native) XDP mode.  A veth sends a frame
    redirected to it by XDP only when the other end can take it without a
    socket buffer: an XDP program there, or GRO on, as here on the
    client's and the peer's ends.

    @cvar xdpMode: the mode asked for (L{None}: the loader's choice).
    @cvar expectedMode: the mode it runs in.
    @cvar attachedMode: C{ip link}'s number for it (C{XDP_ATTACHED_*}).
    """

    xdpMode: Optional[str] = None
    expectedMode = "driver"
    attachedMode = 1

    def _attach(self, ifindex: int) -> None:
        mode = self.program.attachXDP(ifindex, self.xdpMode)
        self.assertEqual(mode, self.expectedMode)

    def setUp(self) -> None:
        super().setUp()
        for short, device, relayDevice in [("client", "cv", "rc"), ("peer", "pv", "rp")]:
            command(self._in(short, ["ethtool", "-K", device, "gro", "on"]))
            # XDP cannot resolve a neighbour (TC's bpf_redirect_neigh
            # can): until one is known, the stack gets the packet, and
            # the user-space relay sending it resolves it.  Nothing relays
            # in user space here, so the relay knows its neighbours.
            mac = ":".join(f"{b:02x}" for b in self._mac(short, device))
            for family in ("4", "6"):
                command(
                    ["ip", "-n", self._name("relay"), "neigh", "replace"]
                    + [self.addresses[family][short], "lladdr", mac, "dev", relayDevice]
                    + ["nud", "permanent"]
                )

    def test_attachedInMode(self) -> None:
        """
        The relay's veths run the XDP program in the expected mode, and no
        TC program.
        """
        for device in ("rc", "rp"):
            info = self._link_info("relay", device)
            self.assertIn("xdp", info)
            self.assertEqual(
                dict(info["xdp"])["mode"],  # type: ignore[call-overload]
                self.attachedMode,
            )
            shown = command(["tc", "-n", self._name("relay"), "filter", "show", "dev", device])
            self.assertEqual(shown.strip(), "")


class XDPGenericVethOffloadTests(XDPVethOffloadTests):
    """
    The same in generic (skb) mode, which drivers without XDP get.
    """

    xdpMode = "generic"
    expectedMode = "generic"
    attachedMode = 2
