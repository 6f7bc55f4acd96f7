"""
The kernel fast path end to end: C{twistd turnrelay} in a relay namespace,
with its eBPF program on the relay's veths, relays a TURN client's UDP
ChannelData to an echo peer and the echo back, in the kernel, and stops
relaying what it no longer should once the allocation is gone.

Three namespaces the test makes and removes (names from
L{tests._netns.NAME_PREFIX}, addresses from a random C{10.X.Y.0/24} pair
and C{fd00::/8}, which exist only inside them), IP forwarding on in the
relay's::

    client  cv --- rc  relay  rp --- pv  peer
                server      relayed
                address     address

The relay listens on its C{rc} address and relays from its C{rp} address,
so the kernel path attaches to both.  The client (L{CLIENT}, a script on
turnrelay's codec and a blocking socket) and the peer (L{PEER}, a UDP echo
that also sends on command) run in their namespaces on ordinary UDP
sockets.

Checksums: a UDP socket sending over a veth leaves the UDP checksum to be
finished (C{CHECKSUM_PARTIAL}, the veth's tx checksum offload), and the
program passes such datagrams up to user space rather than move the header
the checksum would be finished from.  So that the kernel path relays, the
test turns tx checksum offload off on the client's and the peer's veths
(C{ethtool -K DEV tx off}): their datagrams leave with full checksums, as
from another host.

The control socket (C{turnrelayctl --json status}) says which path relayed
the packets; the relay's log says it attached and how many packets each
allocation relayed each way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Dict

from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from tests._netns import RelayNamespaces, command
from tests._processes import (
    ChildProcess,
    controlJSON,
    describe,
    pythonEnvironment,
    spawn,
    turnrelayCommand,
)
from tests._timing import PROMPTLY, reactor, within

REALM = "turnrelay-offload"
USERNAME = "kernel"
PASSWORD = "kernel-path-pw"
TURN_PORT = 3478
PEER_PORT = 7000
# Round trips each test relays.
MESSAGES = 20
# How long a datagram that must not arrive is waited for.
SILENCE = 1.0

CLIENT = r"""
import ipaddress, json, os, socket, sys, time
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV6, TransportAddress
from turnrelay.stun.channeldata import (
    CHANNEL_NUMBER_MAX_RFC5766, decodeChannelData, encodeChannelData)
from turnrelay.stun.credentials import longTermKey
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage

server = (sys.argv[1], int(sys.argv[2]))
serverIP = ipaddress.ip_address(server[0])
username, password = sys.argv[3], sys.argv[4]
peer = TransportAddress(sys.argv[5], int(sys.argv[6]))
six = ":" in server[0]
sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[7], 0))
CHANNEL = 0x4001
frames = []
auth = {"realm": "", "nonce": ""}

def emit(**record):
    print(json.dumps(record), flush=True)

def receive(deadline):
    if frames:
        return frames.pop(0)
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    sock.settimeout(left)
    try:
        data, source = sock.recvfrom(65536)
    except socket.timeout:
        return None
    if ipaddress.ip_address(source[0]) != serverIP or source[1] != server[1]:
        emit(event="stray", source=[source[0], source[1]])
        return receive(deadline)
    return data

def transact(request, key):
    encoded = request.encode(key=key)
    deadline = time.monotonic() + 5
    interval = 0.25
    held = []
    try:
        while time.monotonic() < deadline:
            sock.sendto(encoded, server)
            wait = min(deadline, time.monotonic() + interval)
            interval *= 2
            while True:
                data = receive(wait)
                if data is None:
                    break
                if data[0] >= 0x40:
                    held.append(data)
                    continue
                message = decodeMessage(data)
                if message.transactionID == request.transactionID:
                    return message
    finally:
        frames.extend(held)
    raise SystemExit("no answer to %s" % Method(request.method).name)

def request(method, attributes):
    for _ in range(3):
        message = STUNMessage(method, MessageClass.REQUEST, os.urandom(12), list(attributes))
        # Big enough that the relay's 401 stays within 3 times its size.
        message.add(A.SOFTWARE, "turnrelay offload end-to-end test client")
        key = None
        if auth["nonce"]:
            message.add(A.USERNAME, username)
            message.add(A.REALM, auth["realm"])
            message.add(A.NONCE, auth["nonce"])
            key = longTermKey(username, auth["realm"], password)
        response = transact(message, key)
        if response.messageClass == MessageClass.ERROR_RESPONSE:
            code = response.get(A.ERROR_CODE).code
            if code in (401, 438):
                auth["realm"] = response.get(A.REALM, auth["realm"])
                auth["nonce"] = response.get(A.NONCE, "")
                continue
            raise SystemExit("%s refused with %s" % (Method(method).name, code))
        if key is None or not response.verifyMessageIntegrity(key):
            raise SystemExit("%s response without integrity" % Method(method).name)
        return response
    raise SystemExit("challenged again and again")

allocate = [(A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP)]
if six:
    allocate.append((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6))
relayed = request(Method.ALLOCATE, allocate).get(A.XOR_RELAYED_ADDRESS)
request(Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, CHANNEL), (A.XOR_PEER_ADDRESS, peer)])
emit(event="allocated", relayed=[relayed.host, relayed.port])

for line in sys.stdin:
    words = line.split()
    if words[0] == "roundtrips":
        for index in range(int(words[1])):
            payload = b"%d " % index + os.urandom(1 + (index * 97) % 1200)
            sock.sendto(encodeChannelData(CHANNEL, payload), server)
            data = receive(time.monotonic() + 5)
            if data is None:
                raise SystemExit("round trip %d: nothing came back" % index)
            number, echoed = decodeChannelData(data, CHANNEL_NUMBER_MAX_RFC5766)
            if (number, echoed) != (CHANNEL, payload):
                raise SystemExit("round trip %d came back changed" % index)
        emit(event="roundTrips", intact=int(words[1]))
    elif words[0] == "receive":
        deadline = time.monotonic() + float(words[1])
        got = []
        while len(got) < int(words[2]):
            data = receive(deadline)
            if data is None:
                break
            if data[0] >= 0x40:
                number, payload = decodeChannelData(data, CHANNEL_NUMBER_MAX_RFC5766)
                got.append({"channel": number, "data": payload.decode("ascii", "replace")})
            else:
                got.append({"stun": decodeMessage(data).method})
        emit(event="received", frames=got)
    elif words[0] == "delete":
        request(Method.REFRESH, [(A.LIFETIME, 0)])
        emit(event="deleted")
"""

PEER = r"""
import json, os, selectors, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, port))
selector = selectors.DefaultSelector()
selector.register(sock, selectors.EVENT_READ, "udp")
selector.register(0, selectors.EVENT_READ, "stdin")
print(json.dumps({"event": "listening"}), flush=True)
pending = b""
while True:
    for key, _ in selector.select():
        if key.data == "udp":
            data, source = sock.recvfrom(65536)
            sock.sendto(data, source)
            continue
        chunk = os.read(0, 4096)
        if not chunk:
            sys.exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            target, targetPort, text = line.decode().split(" ", 2)
            sock.sendto(text.encode(), (target, int(targetPort)))
            print(json.dumps({"event": "sent", "text": text}), flush=True)
"""


def ended(relayed: str) -> bytes:
    """
    @return: a pattern for the log line of the allocation on C{relayed}
        ending, with the packets it relayed each way.
    """
    return (
        rb"allocation "
        + re.escape(relayed.encode())
        + rb" (?P<reason>\w+)(?: by the administrator)?: .*?, "
        rb"(?P<toPeers>\d+) packets \(\d+ bytes\) to peers, "
        rb"(?P<fromPeers>\d+) packets \(\d+ bytes\) from peers"
    )


class OffloadE2ETests(RelayNamespaces, TestCase):
    """
    A TURN client relays through C{twistd turnrelay} whose kernel path is
    on (or off), between namespaces.
    """

    timeout = 90

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest(f"namespaces and BPF need root; running as uid {os.geteuid()}")
        ethtool = shutil.which("ethtool")
        if ethtool is None:
            message = (
                "ethtool is not installed; `make test` (tools/install-system-deps) installs it"
            )
            if os.environ.get("CI") == "true":
                self.fail(message + " (CI=true: not skipping)")
            raise SkipTest(message)
        # Made first, so that they are removed last: after every process
        # is stopped.
        self.makeNamespaces(self)
        # The kernel path relays datagrams with full checksums only (see
        # the module's docstring): the senders' veths compute them.
        for host, device in [("client", "cv"), ("peer", "pv")]:
            command(self._in(host, [ethtool, "-K", device, "tx", "off"]))
        # A Unix socket's path must fit in 108 bytes: trial's temp dir may not.
        self.controlDirectory = tempfile.mkdtemp(prefix="trk")
        self.addCleanup(shutil.rmtree, self.controlDirectory, True)
        self.controlSocket = os.path.join(self.controlDirectory, "ctl")

    # The processes -----------------------------------------------------------------

    async def _startRelay(self, offload: str) -> ChildProcess:
        """
        Start C{twistd turnrelay} in the relay namespace: UDP on the server
        addresses, relaying from the C{rp} addresses to the peer networks.
        """
        four, six = self.addresses["4"], self.addresses["6"]
        args = turnrelayCommand(
            "--relay-ip",
            four["relay"],
            "--relay-ip6",
            six["relay"],
            "--allow-peer",
            four["peers"],
            "--allow-peer",
            six["peers"],
            "--realm",
            REALM,
            "--user",
            f"{USERNAME}:{PASSWORD}",
            "--control-socket",
            self.controlSocket,
            "--offload",
            offload,
            "--log-level",
            "debug",
            listen=[
                f"udp:{TURN_PORT}:interface={four['server']}",
                f"udp:{TURN_PORT}:interface=[{six['server']}]",
            ],
            twistdOptions=["--logfile=-"],
        )
        relay = self.relay = spawn(self, self._in("relay", args), env=pythonEnvironment())
        for host in (four["server"], six["server"]):
            await within(
                relay.waitForOutput(rb"listening for udp on \[?" + re.escape(host.encode())),
                PROMPTLY,
                f"the relay listening on {host}\n{describe(relay)}",
            )
        return relay

    async def _line(self, child: ChildProcess, event: str, start: int) -> Dict[str, Any]:
        """
        @return: the first JSON line C{child} printed from C{start} on for
            C{event}.
        """
        try:
            match = await within(
                child.waitForOutput(rb'\{"event": "' + event.encode() + rb'".*\n', start),
                PROMPTLY,
                f"{event} from the script",
            )
        except AssertionError as e:
            raise AssertionError(
                f"{e}\n{describe(child)}\n--- the relay:\n{self._relayLog()}"
            ) from None
        record: Dict[str, Any] = json.loads(match.group(0))
        return record

    def _relayLog(self) -> str:
        relay = getattr(self, "relay", None)
        return "(not started)" if relay is None else describe(relay)

    async def _tell(self, child: ChildProcess, line: str, event: str) -> Dict[str, Any]:
        """
        Write C{line} to a script and wait for its answer, C{event}.
        """
        start = len(child.output)
        child.transport.write(line.encode() + b"\n")  # type: ignore[union-attr]
        return await self._line(child, event, start)

    async def _status(self) -> Dict[str, Any]:
        """
        @return: C{turnrelayctl --json status}.
        """
        status: Dict[str, Any] = await controlJSON(self, self.controlSocket, "status")
        return status

    async def _offloaded(self, toPeer: int, fromPeer: int) -> Dict[str, Any]:
        """
        Read the status until the kernel path's counters (read back every
        second) reach C{toPeer} and C{fromPeer} packets.

        @return: that status.
        """
        deadline = reactor.seconds() + PROMPTLY
        while True:
            status = await self._status()
            figures = status["offload"]
            if figures["packetsToPeer"] >= toPeer and figures["packetsFromPeer"] >= fromPeer:
                return status
            if reactor.seconds() > deadline:
                raise AssertionError(f"the kernel relayed too few packets: {status}")
            await deferLater(reactor, 0.25, lambda: None)

    async def _roundTrips(self, family: str, offload: str, kill: bool = False) -> None:
        """
        Relay L{MESSAGES} round trips from the client to the echo peer and
        back, then end the allocation (the client deletes it, or
        C{turnrelayctl kill}) and check that the peer no longer reaches the
        client.

        @param family: C{"4"} or C{"6"}.
        @param offload: the relay's C{--offload}: C{auto} (the kernel path
            must then be active and relay every round trip) or C{off}.
        @param kill: end the allocation with C{turnrelayctl kill USER}
            rather than the client's Refresh with a lifetime of 0.
        """
        names = self.addresses[family]
        relay = await self._startRelay(offload)
        peer = spawn(
            self,
            self._in("peer", [sys.executable, "-c", PEER, names["peer"], str(PEER_PORT)]),
            input=None,
        )
        await self._line(peer, "listening", 0)
        client = spawn(
            self,
            self._in(
                "client",
                [
                    sys.executable,
                    "-c",
                    CLIENT,
                    names["server"],
                    str(TURN_PORT),
                    USERNAME,
                    PASSWORD,
                    names["peer"],
                    str(PEER_PORT),
                    names["client"],
                ],
            ),
            env=pythonEnvironment(),
            input=None,
        )
        allocated = await self._line(client, "allocated", 0)
        relayedHost, relayedPort = allocated["relayed"]
        self.assertEqual(relayedHost, names["relay"])
        relayed = (
            f"[{relayedHost}]:{relayedPort}" if family == "6" else f"{relayedHost}:{relayedPort}"
        )

        trips = await self._tell(client, f"roundtrips {MESSAGES}", "roundTrips")
        self.assertEqual(trips["intact"], MESSAGES)

        # The peer reaches the client through the allocation, unasked.
        await self._tell(peer, f"{relayedHost} {relayedPort} while-bound", "sent")
        received = await self._tell(client, f"receive {PROMPTLY} 1", "received")
        self.assertEqual(received["frames"], [{"channel": 0x4001, "data": "while-bound"}])

        if offload == "auto":
            self.assertIn(
                b"relaying UDP ChannelData in the kernel (tc on rc, rp), the rest in user space",
                relay.output,
            )
            status = await self._offloaded(MESSAGES, MESSAGES + 1)
            self.assertEqual(status["offload"]["mode"], "tc", status)
        else:
            self.assertIn(b"relaying ChannelData in user space (offload = off)", relay.output)
            status = await self._status()
            self.assertEqual(status["offload"]["mode"], "off", status)
            self.assertEqual(status["offload"]["packetsToPeer"], 0, status)
            self.assertEqual(status["offload"]["packetsFromPeer"], 0, status)

        if kill:
            await controlJSON(self, self.controlSocket, "kill", USERNAME)
        else:
            await self._tell(client, "delete", "deleted")
        match = await within(
            relay.waitForOutput(ended(relayed)),
            PROMPTLY,
            f"the allocation {relayed} ending\n{describe(relay)}",
        )
        self.assertEqual(match["reason"].decode(), "killed" if kill else "deleted")
        self.assertEqual((int(match["toPeers"]), int(match["fromPeers"])), (MESSAGES, MESSAGES + 1))

        # The entries are gone with the allocation: the peer no longer
        # reaches the client.
        await self._tell(peer, f"{relayedHost} {relayedPort} after-deletion", "sent")
        received = await self._tell(client, f"receive {SILENCE} 1", "received")
        self.assertEqual(received["frames"], [])
        status = await self._status()
        self.assertEqual(status["offload"].get("entries", 0), 0, status)
        self.assertNotIn(b"Traceback", relay.output + relay.errors)
        self.assertNotIn(b"stray", client.output)

    async def test_ipv4(self) -> None:
        """
        Over IPv4 with offload = auto, the kernel relays every ChannelData
        round trip intact, the usage log counts them, and once the client
        deletes its allocation the peer no longer reaches it.
        """
        await self._roundTrips("4", "auto")

    async def test_ipv6Killed(self) -> None:
        """
        Over IPv6, the same; C{turnrelayctl kill USER} ends the allocation
        and removes its entries.
        """
        await self._roundTrips("6", "auto", kill=True)

    async def test_offloadOff(self) -> None:
        """
        offload = off gives the same results, relayed in user space: the
        status shows mode off and nothing offloaded.
        """
        await self._roundTrips("4", "off")
