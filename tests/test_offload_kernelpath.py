"""
The kernel fast path's control plane (L{turnrelay.offload.kernelpath}): its
map entries follow permissions, channels, allocations and the peer policy
exactly; what the kernel relayed is folded into the allocations' counters;
the relay falls back to user space whenever the program cannot be had.

The program is a fake whose maps are dicts, on a fake relay.
"""

from __future__ import annotations

import struct
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

from tests._assertions import TURNTestCase
from tests._logs import LogRecorder, isEnded
from tests._relays import CLIENT_HOST, LISTENER, PEER_6, PEER_A, PEER_B, RELAY_IP6, FakeRelay
from tests._session import TURNClient
from turnrelay.offload import kernelpath
from turnrelay.offload.entries import clientKey, counters, peerKey, toClient, toPeer
from turnrelay.offload.kernelpath import (
    TO_CLIENT,
    TO_PEER,
    KernelPath,
)
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV6, TransportAddress
from turnrelay.stun.channeldata import encodeChannelData
from turnrelay.stun.message import Method
from turnrelay.testing import FakeSocket
from turnrelay.turn.allocation import CHANNEL_LIFETIME, PERMISSION_LIFETIME, Allocation

CHANNEL = 0x4000


class FakeMap:
    """
    A kernel map: a dict, with a capacity, and a way to play the program
    counting packets.

    @ivar entries: key -> value.
    @ivar capacity: the most entries, as the map's max_entries.
    """

    def __init__(self, capacity: int = 1000) -> None:
        self.entries: Dict[bytes, bytes] = {}
        self.capacity = capacity

    def update(self, key: bytes, value: bytes) -> None:
        if key not in self.entries and len(self.entries) >= self.capacity:
            raise OSError(7, "Argument list too long")  # E2BIG: the map is full
        self.entries[key] = value

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None

    def lookup(self, key: bytes) -> Optional[bytes]:
        return self.entries.get(key)

    def relay(self, key: bytes, packets: int, octets: int) -> None:
        """
        Count packets as the program does, in the entry's value.
        """
        value = self.entries[key]
        before = counters(value)
        self.entries[key] = value[:-16] + struct.pack(
            "=QQ", before.packets + packets, before.octets + octets
        )


class FakeProgram:
    """
    A loaded kernel program: two fake maps, and what it was attached to.
    """

    def __init__(self) -> None:
        self.maps = {TO_PEER: FakeMap(), TO_CLIENT: FakeMap()}
        self.attached: List[int] = []
        self.attachedXDP: List[int] = []
        self.detached: List[int] = []
        self.closed = False
        self.xdpError: Optional[OSError] = None

    def attach(self, ifindex: int) -> None:
        self.attached.append(ifindex)

    def attachXDP(self, ifindex: int) -> str:
        if self.xdpError is not None:
            raise self.xdpError
        self.attachedXDP.append(ifindex)
        return "generic"

    def detach(self, ifindex: int) -> None:
        self.detached.append(ifindex)

    def close(self) -> None:
        self.closed = True

    def statsTotals(self) -> Dict[str, int]:
        return {}


def _getsockopt(self: FakeSocket, level: int, option: int) -> Any:
    return self.options.get((level, option), 0)


def readableOptions(testCase: TURNTestCase) -> None:
    """
    Let the fake relay sockets answer C{getsockopt} from the options they
    remember: the kernel path reads DF back from them.
    """
    if not hasattr(FakeSocket, "getsockopt"):
        FakeSocket.getsockopt = _getsockopt  # type: ignore[attr-defined]
        testCase.addCleanup(delattr, FakeSocket, "getsockopt")


class KernelPathTestCase(TURNTestCase):
    """
    A fake relay with a L{KernelPath} on a fake program.
    """

    settings: Dict[str, Any] = {}

    def setUp(self) -> None:
        readableOptions(self)
        self.relay = FakeRelay(**self.settings)
        self.server = self.relay.server
        self.program = FakeProgram()
        self.kernelPath = KernelPath(self.program, self.server, self.relay.reactor)
        self.server.kernelPath = self.kernelPath
        self.kernelPath.start()
        self.addCleanup(self.kernelPath.stop)
        self.toPeer = self.program.maps[TO_PEER]
        self.toClient = self.program.maps[TO_CLIENT]

    def allocated(
        self, *attributes: Tuple[int, Any], transport: str = "udp"
    ) -> Tuple[TURNClient, Allocation]:
        client = self.relay.client(transport=transport)
        self.assertSuccess(client.allocate(*attributes))
        allocation = client.link.allocation
        assert allocation is not None
        return client, allocation

    def bind(
        self, client: TURNClient, peer: TransportAddress = PEER_A, number: int = CHANNEL
    ) -> None:
        self.assertSuccess(
            client.request(
                Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, number), (A.XOR_PEER_ADDRESS, peer)]
            )
        )

    def expectedEntries(
        self, client: TURNClient, allocation: Allocation, peer: TransportAddress, number: int
    ) -> Tuple[Dict[bytes, bytes], Dict[bytes, bytes]]:
        """
        @return: the entries of one channel, as L{turnrelay.offload.entries}
            makes them.
        """
        bound = allocation.relayPort.getHost()
        relayed = (bound.host, bound.port)
        clientAddress = client.link.clientAddress
        return (
            {clientKey(clientAddress, LISTENER, number): toPeer(relayed, peer)},
            {peerKey(relayed, peer): toClient(clientAddress, LISTENER, number)},
        )

    def assertNoEntries(self) -> None:
        self.assertEqual(self.toPeer.entries, {})
        self.assertEqual(self.toClient.entries, {})


class EntriesTests(KernelPathTestCase):
    """
    Entries exist exactly while the channel is bound, its peer permitted
    and allowed.
    """

    def test_channelBind(self) -> None:
        """
        ChannelBind (with its permission) installs both entries, byte for
        byte as L{turnrelay.offload.entries} lays them out.
        """
        client, allocation = self.allocated()
        self.bind(client)
        self.assertEqual(
            (self.toPeer.entries, self.toClient.entries),
            self.expectedEntries(client, allocation, PEER_A, CHANNEL),
        )

    def test_twoChannels(self) -> None:
        """
        Each channel has its pair; a refresh changes nothing.
        """
        client, allocation = self.allocated()
        self.bind(client)
        self.bind(client, PEER_B, CHANNEL + 1)
        self.bind(client)
        self.assertEqual(len(self.toPeer.entries), 2)
        self.assertEqual(len(self.toClient.entries), 2)
        self.assertEqual(len(self.kernelPath.installed[allocation]), 4)

    def test_createPermissionAlone(self) -> None:
        """
        A permission without a channel offloads nothing: Send and Data
        indications stay in user space.
        """
        client, _ = self.allocated()
        self.assertSuccess(client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)]))
        self.assertNoEntries()

    def test_notForStreamClients(self) -> None:
        """
        A client over TCP (or TLS) is not offloaded: the program handles UDP.
        """
        for transport in ("tcp", "tls"):
            client, _ = self.allocated(transport=transport)
            self.bind(client)
        self.assertNoEntries()

    def test_notWithDontFragment(self) -> None:
        """
        An allocation with DONT-FRAGMENT is not offloaded.
        """
        client, _ = self.allocated((A.DONT_FRAGMENT, True))
        self.bind(client)
        self.assertNoEntries()

    def test_dontFragmentLater(self) -> None:
        """
        A Send indication with DONT-FRAGMENT sets DF on the relay socket:
        the next reading of the counters takes the allocation off the
        kernel path.
        """
        client, _ = self.allocated()
        self.bind(client)
        client.indication(
            Method.SEND, (A.XOR_PEER_ADDRESS, PEER_A), (A.DATA, b"x"), (A.DONT_FRAGMENT, True)
        )
        self.relay.reactor.advance(self.kernelPath.interval)
        self.assertNoEntries()

    def test_permissionExpiry(self) -> None:
        """
        When the permission expires (300 s unless refreshed), the entries
        go, though the channel is still bound.
        """
        client, allocation = self.allocated()
        self.bind(client)
        self.relay.reactor.advance(PERMISSION_LIFETIME - 1)
        self.assertEqual(len(self.toPeer.entries), 1)
        self.relay.reactor.advance(1)
        self.assertIn(CHANNEL, allocation.channels)
        self.assertNoEntries()

    def test_permissionBackAgain(self) -> None:
        """
        A CreatePermission for the peer of a bound channel puts its entries
        back.
        """
        client, _ = self.allocated()
        self.bind(client)
        self.relay.reactor.advance(PERMISSION_LIFETIME)
        self.assertNoEntries()
        self.assertSuccess(client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)]))
        self.assertEqual(len(self.toPeer.entries), 1)
        self.assertEqual(len(self.toClient.entries), 1)

    def test_channelExpiry(self) -> None:
        """
        When the channel expires (600 s), its entries go, though the
        permission is refreshed.
        """
        client, allocation = self.allocated()
        self.bind(client)
        for _ in range(2):
            self.relay.reactor.advance(PERMISSION_LIFETIME - 10)
            self.assertSuccess(
                client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
            )
            client.request(Method.REFRESH, [(A.LIFETIME, 600)])
        self.assertEqual(len(self.toPeer.entries), 1)
        self.relay.reactor.advance(CHANNEL_LIFETIME - 2 * (PERMISSION_LIFETIME - 10))
        self.assertNotIn(CHANNEL, allocation.channels)
        self.assertIn(PEER_A.host, allocation.permissions)
        self.assertNoEntries()

    def test_refreshZero(self) -> None:
        """
        A Refresh with LIFETIME 0 removes the allocation's entries.
        """
        client, allocation = self.allocated()
        self.bind(client)
        self.assertSuccess(client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        self.assertNoEntries()
        self.assertNotIn(allocation, self.kernelPath.installed)

    def test_allocationExpiry(self) -> None:
        """
        An allocation that expires takes its entries with it.
        """
        client, _ = self.allocated()
        self.bind(client)
        self.relay.reactor.advance(600)
        self.assertIsNone(client.link.allocation)
        self.assertNoEntries()

    def test_policyReload(self) -> None:
        """
        A configuration reload whose policy denies the peer removes its
        entries; others stay.
        """
        client, _ = self.allocated()
        self.bind(client)
        self.bind(client, PEER_B, CHANNEL + 1)
        self.relay.service.reloadConfig(
            self.relay.configWith(allow_peer=["198.51.100.21/32", "2001:db8:1::/48"])
        )
        self.assertEqual(len(self.toPeer.entries), 1)
        self.assertEqual(set(self.toClient.entries), {peerKey(self._relayed(client), PEER_B)})

    def _relayed(self, client: TURNClient) -> Tuple[str, int]:
        allocation = client.link.allocation
        assert allocation is not None
        bound = allocation.relayPort.getHost()
        return (bound.host, bound.port)

    def test_peerFilter(self) -> None:
        """
        Setting an application peer filter that refuses the peer removes its
        entries; a filter that raises fails closed.
        """
        client, _ = self.allocated()
        self.bind(client)
        self.server.peerFilter = lambda allocation, peer: "no" if peer == PEER_A else None
        self.assertNoEntries()
        self.server.peerFilter = None
        self.assertEqual(len(self.toPeer.entries), 1)

        def broken(allocation: Any, peer: Any) -> Optional[str]:
            raise RuntimeError("oops")

        self.server.peerFilter = broken
        self.assertNoEntries()
        self.flushLoggedErrors(RuntimeError)

    def test_stop(self) -> None:
        """
        Stopping the kernel path removes every entry; allocations go on in
        user space.
        """
        client, allocation = self.allocated()
        self.bind(client)
        self.kernelPath.stop()
        self.assertNoEntries()
        self.assertIn(CHANNEL, allocation.channels)


class BandwidthTests(KernelPathTestCase):
    settings = {"bandwidth": 1000}

    def test_notWithBandwidthCap(self) -> None:
        """
        An allocation with a bandwidth cap stays in user space, which
        enforces it.
        """
        client, _ = self.allocated()
        self.bind(client)
        self.assertNoEntries()


class CrossFamilyTests(KernelPathTestCase):
    settings = {"relay_ip6": RELAY_IP6}

    def test_sameFamilyOnly(self) -> None:
        """
        Of a dual allocation of an IPv4 client, only the IPv4 peers'
        channels are offloaded: the program does not translate families.
        """
        client, allocation = self.allocated((A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertEqual(len(allocation.relays), 2)
        self.bind(client, PEER_6, CHANNEL + 1)
        self.assertNoEntries()
        self.bind(client)
        self.assertEqual(len(self.toPeer.entries), 1)

    def test_ipv6RelayForIPv4Client(self) -> None:
        """
        An IPv6 relayed address for an IPv4 client is not offloaded.
        """
        client, _ = self.allocated((A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6))
        self.bind(client, PEER_6)
        self.assertNoEntries()


class CountersTests(KernelPathTestCase):
    """
    What the kernel relayed is added to the allocation's counters, once.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client, self.allocation = self.allocated()
        self.bind(self.client)
        self.peerKey = peerKey(self._relayed(), PEER_A)
        self.clientKey = clientKey(self.client.link.clientAddress, LISTENER, CHANNEL)

    def _relayed(self) -> Tuple[str, int]:
        bound = self.allocation.relayPort.getHost()
        return (bound.host, bound.port)

    def test_byDelta(self) -> None:
        """
        Each reading adds what was relayed since the last: nothing is
        counted twice.
        """
        self.toPeer.relay(self.clientKey, 3, 300)
        self.toClient.relay(self.peerKey, 2, 50)
        self.relay.reactor.advance(1)
        self.assertEqual(
            (
                self.allocation.packetsToPeer,
                self.allocation.bytesToPeer,
                self.allocation.packetsFromPeer,
                self.allocation.bytesFromPeer,
            ),
            (3, 300, 2, 50),
        )
        self.relay.reactor.advance(1)
        self.assertEqual((self.allocation.packetsToPeer, self.allocation.bytesToPeer), (3, 300))
        self.toPeer.relay(self.clientKey, 1, 10)
        self.relay.reactor.advance(1)
        self.assertEqual((self.allocation.packetsToPeer, self.allocation.bytesToPeer), (4, 310))
        self.assertEqual(self.kernelPath.offloadedPackets, {TO_PEER: 4, TO_CLIENT: 2})

    def test_sameAsUserSpace(self) -> None:
        """
        Packets relayed in user space and in the kernel add up in the same
        counters, in the same unit: ChannelData payload bytes.
        """
        payload = b"hello"  # padded to 8 on the wire
        self.server.channelDataReceived(encodeChannelData(CHANNEL, payload, True), self.client.link)
        self.toPeer.relay(self.clientKey, 1, len(payload))
        self.relay.reactor.advance(1)
        self.assertEqual((self.allocation.packetsToPeer, self.allocation.bytesToPeer), (2, 10))

    def test_atEnd(self) -> None:
        """
        What the kernel relayed since the last reading is counted when the
        allocation ends, in its usage log line and in the relay's totals.
        """
        events = LogRecorder(self)
        self.toPeer.relay(self.clientKey, 5, 500)
        self.toClient.relay(self.peerKey, 4, 400)
        self.relay.reactor.advance(1)
        self.toPeer.relay(self.clientKey, 1, 100)
        self.assertSuccess(self.client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        [ended] = [event for event in events.events if isEnded(event)]
        self.assertEqual(
            (ended["packetsToPeer"], ended["bytesToPeer"]),
            (6, 600),
        )
        self.assertEqual((ended["packetsFromPeer"], ended["bytesFromPeer"]), (4, 400))
        relayed = self.relay.service.stats()["relayed"]["udp"]
        self.assertEqual(relayed["packetsToPeer"], 6)
        self.assertEqual(relayed["packetsFromPeer"], 4)

    def test_atStop(self) -> None:
        """
        Stopping the kernel path reads the counters one last time.
        """
        self.toPeer.relay(self.clientKey, 2, 20)
        self.kernelPath.stop()
        self.assertEqual(self.allocation.packetsToPeer, 2)

    def test_rebindAfterExpiry(self) -> None:
        """
        A channel that expired and is bound again starts from zero in the
        kernel; what was relayed before is kept.
        """
        self.toPeer.relay(self.clientKey, 2, 20)
        self.relay.reactor.advance(CHANNEL_LIFETIME / 2)
        self.client.request(Method.REFRESH, [(A.LIFETIME, 600)])
        self.relay.reactor.advance(CHANNEL_LIFETIME / 2)
        self.assertNoEntries()
        self.assertEqual(self.allocation.packetsToPeer, 2)
        self.bind(self.client)
        self.toPeer.relay(self.clientKey, 1, 10)
        self.relay.reactor.advance(1)
        self.assertEqual((self.allocation.packetsToPeer, self.allocation.bytesToPeer), (3, 30))


class FailureTests(KernelPathTestCase):
    """
    A map that refuses an entry leaves the allocation in user space.
    """

    def test_mapFull(self) -> None:
        """
        A full map: no exception, the update counted and logged once, no
        half-installed pair, and the allocation relays in user space.
        """
        events = LogRecorder(self)
        self.toClient.capacity = 0
        for _ in range(3):
            client, allocation = self.allocated()
            self.bind(client)
        self.assertNoEntries()
        self.assertEqual(self.kernelPath.failures, 3)
        warnings = [e for e in events.events if "map update failed" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.server.channelDataReceived(encodeChannelData(CHANNEL, b"data"), client.link)
        self.assertEqual(allocation.packetsToPeer, 1)

    def test_retriedOnChange(self) -> None:
        """
        Once the map has room, the allocation's next change offloads it.
        """
        self.toPeer.capacity = 0
        client, _ = self.allocated()
        self.bind(client)
        self.assertNoEntries()
        self.toPeer.capacity = 10
        self.bind(client, PEER_B, CHANNEL + 1)
        self.assertEqual(len(self.toPeer.entries), 2)


class ServiceTests(TURNTestCase):
    """
    The relay loads the kernel path at start, as C{offload} says.
    """

    def setUp(self) -> None:
        self.program = FakeProgram()
        self.loads = 0
        self.failure: Optional[str] = None

        class OffloadUnavailable(Exception):
            pass

        testCase = self

        class KernelProgram:
            @staticmethod
            def load() -> FakeProgram:
                testCase.loads += 1
                if testCase.failure is not None:
                    raise OffloadUnavailable(testCase.failure)
                return testCase.program

        bpf = types.ModuleType("turnrelay.offload.bpf")
        bpf.OffloadUnavailable = OffloadUnavailable  # type: ignore[attr-defined]
        bpf.KernelProgram = KernelProgram  # type: ignore[attr-defined]
        previous = sys.modules.get(bpf.__name__)
        sys.modules[bpf.__name__] = bpf
        if previous is None:
            self.addCleanup(sys.modules.pop, bpf.__name__)
        else:
            self.addCleanup(sys.modules.__setitem__, bpf.__name__, previous)
        self.events = LogRecorder(self)
        readableOptions(self)
        # The fake program sends nothing: whether loopback forwards is moot.
        self.patch(kernelpath, "_forwards", lambda name: True)

    def offloadEvents(self) -> List[Any]:
        return [
            event
            for event in self.events.events
            if event.get("log_namespace", "").startswith("turnrelay.offload")
        ]

    def test_off(self) -> None:
        """
        offload = off loads nothing and builds no kernel path.
        """
        relay = FakeRelay(offload="off").start(self)
        self.assertEqual(self.loads, 0)
        self.assertIsNone(relay.server.kernelPath)
        self.assertEqual(relay.service.stats()["offload"]["mode"], "off")

    def test_autoUnavailable(self) -> None:
        """
        offload = auto with a program that cannot be loaded: one info line
        saying why, user space relays, no traceback.
        """
        self.failure = "no CAP_BPF"
        relay = FakeRelay(offload="auto", offload_interfaces=["lo"]).start(self)
        self.assertIsNone(relay.server.kernelPath)
        [event] = self.offloadEvents()
        self.assertEqual(event["log_level"].name, "info")
        self.assertEqual(event["reason"], "no CAP_BPF")
        self.assertIn("user space", event["log_format"])
        stats = relay.service.stats()["offload"]
        self.assertEqual((stats["mode"], stats["reason"]), ("off", "no CAP_BPF"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_tcUnavailable(self) -> None:
        """
        offload = tc asked for and not had: a warning.
        """
        self.failure = "no CAP_BPF"
        FakeRelay(offload="tc", offload_interfaces=["lo"]).start(self)
        [event] = self.offloadEvents()
        self.assertEqual(event["log_level"].name, "warn")

    def test_xdp(self) -> None:
        """
        offload = xdp attaches the XDP program (no TC one) and says in
        which XDP mode; the relay's channels go to the same maps, and
        stopping detaches it.
        """
        relay = FakeRelay(offload="xdp", offload_interfaces=["lo"])
        relay.service.startService()
        self.assertIsNotNone(relay.server.kernelPath)
        self.assertEqual((len(self.program.attachedXDP), self.program.attached), (1, []))
        [event] = self.offloadEvents()
        self.assertIn("xdp", event["log_format"])
        self.assertIn("lo (generic mode)", event["interfaces"])
        stats = relay.service.stats()["offload"]
        self.assertEqual((stats["mode"], stats["xdpModes"]), ("xdp", {"lo": "generic"}))
        client = relay.client()
        self.assertSuccess(client.allocate())
        self.assertSuccess(
            client.request(
                Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, CHANNEL), (A.XOR_PEER_ADDRESS, PEER_A)]
            )
        )
        self.assertEqual(len(self.program.maps[TO_PEER].entries), 1)
        relay.service.stopService()
        self.assertEqual(self.program.detached, self.program.attachedXDP)
        self.assertTrue(self.program.closed)
        self.assertEqual(relay.service.stats()["offload"]["mode"], "off")

    def test_xdpBusy(self) -> None:
        """
        An interface with an XDP program already (another worker's): a
        warning naming the interface, and user space relays.
        """
        self.program.xdpError = OSError(16, "attaching to interface 1 (xdp): busy")
        relay = FakeRelay(offload="xdp", offload_interfaces=["lo"]).start(self)
        self.assertIsNone(relay.server.kernelPath)
        [event] = self.offloadEvents()
        self.assertEqual(event["log_level"].name, "warn")
        self.assertIn("cannot attach to lo", relay.service.stats()["offload"]["reason"])
        self.assertTrue(self.program.closed)

    def test_unknownInterface(self) -> None:
        """
        An interface that does not exist: user space, saying which.
        """
        relay = FakeRelay(offload="tc", offload_interfaces=["nosuchif0"]).start(self)
        self.assertIsNone(relay.server.kernelPath)
        self.assertIn("nosuchif0", relay.service.stats()["offload"]["reason"])

    def test_loaded(self) -> None:
        """
        A program that loads is attached to the interfaces and relays the
        relay's channels until the relay stops, which removes its entries
        and detaches it.
        """
        relay = FakeRelay(offload="auto", offload_interfaces=["lo"])
        relay.service.startService()
        self.assertIsNotNone(relay.server.kernelPath)
        self.assertEqual(len(self.program.attached), 1)
        [event] = self.offloadEvents()
        self.assertIn("in the kernel", event["log_format"])
        client = relay.client()
        self.assertSuccess(client.allocate())
        self.assertSuccess(
            client.request(
                Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, CHANNEL), (A.XOR_PEER_ADDRESS, PEER_A)]
            )
        )
        toPeerMap = self.program.maps[TO_PEER]
        [key] = toPeerMap.entries
        self.assertEqual(
            key, clientKey((CLIENT_HOST, client.link.clientAddress.port), LISTENER, CHANNEL)
        )
        toPeerMap.relay(key, 7, 70)
        relay.reactor.advance(1)
        stats = relay.service.stats()["offload"]
        self.assertEqual((stats["mode"], stats["packetsToPeer"]), ("tc", 7))
        relay.service.stopService()
        self.assertEqual(self.program.maps[TO_PEER].entries, {})
        self.assertEqual(self.program.maps[TO_CLIENT].entries, {})
        self.assertEqual(self.program.detached, self.program.attached)
        self.assertTrue(self.program.closed)
        self.assertIsNone(relay.server.kernelPath)
        self.assertEqual(relay.service.stats()["relayed"]["udp"]["packetsToPeer"], 7)

    def test_metrics(self) -> None:
        """
        C{/metrics} says whether the kernel path is active and how many
        packets it relayed each way; they are in the relayed totals too.
        """
        from prometheus_client import generate_latest

        from turnrelay.admin.metrics import makeMetricsRegistry

        relay = FakeRelay(offload="auto", offload_interfaces=["lo"]).start(self)
        client = relay.client()
        self.assertSuccess(client.allocate())
        self.assertSuccess(
            client.request(
                Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, CHANNEL), (A.XOR_PEER_ADDRESS, PEER_A)]
            )
        )
        [key] = self.program.maps[TO_CLIENT].entries
        self.program.maps[TO_CLIENT].relay(key, 3, 30)
        relay.reactor.advance(1)
        text = generate_latest(makeMetricsRegistry(relay.service)).decode()
        self.assertIn("turnrelay_offload_active 1.0", text)
        self.assertIn('turnrelay_offloaded_packets_total{direction="from_peer"} 3.0', text)
        self.assertIn('turnrelay_offloaded_packets_total{direction="to_peer"} 0.0', text)
        self.assertIn(
            'turnrelay_relayed_packets_total{direction="from_peer",transport="udp"} 3.0', text
        )
