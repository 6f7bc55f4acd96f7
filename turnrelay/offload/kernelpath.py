# -*- test-case-name: tests.test_offload_kernelpath -*-
"""
The control plane of the kernel fast path for UDP ChannelData.

The eBPF program (C{channeldata.bpf.c}, loaded by L{turnrelay.offload.bpf})
relays what its two maps name: C{to_peer} (ChannelData from a client on a
channel, sent on as a datagram from the relayed address to the peer) and
C{to_client} (a datagram from that peer to the relayed address, sent back
as ChannelData).  L{KernelPath} keeps those maps equal to what the
controller allows, one allocation at a time: whenever a permission or a
channel of an allocation comes or goes, or the policy changes, it computes
the entries the allocation should have, compares them with those it
installed, and applies the difference.  An entry pair exists exactly while
its channel is bound, its peer's IP has a permission, and the peer policy
and the application's peer filter allow the peer; anything the kernel does
not find in its maps reaches the user-space data path as before.

What the program relayed is read back from the entries' counters every
C{interval} seconds, and when the allocation ends, and added to the
allocation's own counters, so that usage logs, quotas, the console and
metrics count the same whichever path relayed a packet.

The loader is imported lazily (L{loadKernelProgram}): it needs libbpf, and
only Linux has it.
"""

from __future__ import annotations

import array
import fcntl
import importlib
import ipaddress
import os
import socket
import struct
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from turnrelay.interfaces import IKernelPath
from turnrelay.logs import Logger, LogLevels
from turnrelay.offload.entries import clientKey, counters, peerKey, toClient, toPeer
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.stun.attributes import TRANSPORT_UDP
from turnrelay.turn.allocation import Allocation
from turnrelay.turn.policy import canonicalIP
from turnrelay.turn.relay import IP_MTU_DISCOVER, IP_PMTUDISC_DO

TO_PEER = "to_peer"
TO_CLIENT = "to_client"

# Which allocation counters each map's counters add to.
_COUNTERS = {
    TO_PEER: ("packetsToPeer", "bytesToPeer"),
    TO_CLIENT: ("packetsFromPeer", "bytesFromPeer"),
}

# At most one log line per this many seconds about failing map updates.
FAILURE_LOG_INTERVAL = 60.0

_IFF_UP = 0x1
# ioctl: the IPv4 addresses of every interface (linux/sockios.h).
_SIOCGIFCONF = 0x8912
_IFF_LOOPBACK = 0x8

# The installed entries of one allocation: (map name, key) -> (value as
# installed, packets and bytes already added to the allocation).
_Installed = Dict[Tuple[str, bytes], List[Any]]


class KernelPathUnavailable(Exception):
    """
    The kernel path cannot be had here; the message says why, in one line.
    """


def loadKernelProgram() -> Any:
    """
    Load the eBPF program, through L{turnrelay.offload.bpf}, imported only
    now.

    @return: the loader's C{KernelProgram}: C{maps[TO_PEER]},
        C{maps[TO_CLIENT]}, C{attach(ifindex)}, C{attachXDP(ifindex)},
        C{detach(ifindex)}, C{close()}.
    @raise KernelPathUnavailable: why it cannot be loaded.
    """
    try:
        bpf = importlib.import_module("turnrelay.offload.bpf")
    except ImportError as e:
        raise KernelPathUnavailable(f"the eBPF loader cannot be imported: {e}") from None
    try:
        return bpf.KernelProgram.load()
    except (bpf.OffloadUnavailable, OSError) as e:
        raise KernelPathUnavailable(str(e) or e.__class__.__name__) from None


def _interfaceFlags(name: str) -> int:
    try:
        with open(os.path.join("/sys/class/net", name, "flags")) as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 0


def offloadInterfaces(
    names: Sequence[str] = (), addresses: Sequence[str] = ()
) -> List[Tuple[str, int]]:
    """
    The interfaces to attach the program to.

    @param names: the interfaces asked for (C{offload-interfaces}).
    @param addresses: the relay's own addresses (listeners, relay
        addresses): without C{names}, the interfaces that are up and hold
        one of them, but loopback; a wildcard listener means every such
        interface.  A relay on loopback alone (the default) attaches to none.
    @return: C{(name, ifindex)} for each.
    @raise KernelPathUnavailable: an interface asked for does not exist, or
        none is chosen, or IP forwarding is off on every chosen one.
    """
    indexes = {name: index for index, name in socket.if_nameindex()}
    if names:
        missing = [name for name in names if name not in indexes]
        if missing:
            raise KernelPathUnavailable(f"no network interface {', '.join(missing)}")
        chosen = [(name, indexes[name]) for name in names]
    else:
        held = interfaceAddresses()
        ours = {str(canonicalIP(address)) for address in addresses}
        wildcard = any(canonicalIP(address).is_unspecified for address in addresses)
        chosen = []
        for name, index in sorted(indexes.items(), key=lambda item: item[1]):
            flags = _interfaceFlags(name)
            if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                continue
            if wildcard or ours & held.get(name, set()):
                chosen.append((name, index))
        if not chosen:
            raise KernelPathUnavailable(
                "no interface but loopback holds the relay's addresses (the kernel path "
                "serves clients on other hosts)"
            )
    # The program sends through the routing table (bpf_fib_lookup), which
    # answers only where the interface forwards.
    forwarding = [(name, index) for name, index in chosen if _forwards(name)]
    if not forwarding:
        names = ", ".join(name for name, _ in chosen)
        raise KernelPathUnavailable(
            f"IP forwarding is off on {names}: the kernel path sends through the routing "
            f"table; sysctl net.ipv4.conf.{chosen[0][0]}.forwarding=1 (and "
            f"net.ipv6.conf.{chosen[0][0]}.forwarding=1) to use it"
        )
    return forwarding


def _forwards(name: str) -> bool:
    for family in ("ipv4", "ipv6"):
        try:
            with open(f"/proc/sys/net/{family}/conf/{name}/forwarding") as f:
                if f.read().strip() == "1":
                    return True
        except OSError:
            pass
    return False


def interfaceAddresses() -> Dict[str, Set[str]]:
    """
    The addresses each network interface holds, canonical: IPv4 from the
    kernel's interface list (C{SIOCGIFCONF}), IPv6 from C{/proc/net/if_inet6}.
    """
    held: Dict[str, Set[str]] = {}
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        size = 40  # struct ifreq on 64-bit Linux
        buffer = array.array("B", b"\0" * size * 1024)
        address, _ = buffer.buffer_info()
        request = struct.pack("iL", len(buffer), address)
        answer = fcntl.ioctl(probe.fileno(), _SIOCGIFCONF, request)
        length = struct.unpack("iL", answer)[0]
        data = buffer.tobytes()[:length]
        for offset in range(0, length, size):
            name = data[offset : offset + 16].split(b"\0", 1)[0].decode()
            ip = socket.inet_ntoa(data[offset + 20 : offset + 24])
            held.setdefault(name.split(":", 1)[0], set()).add(ip)
    except OSError:
        pass
    finally:
        probe.close()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6:
                    ip = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
                    held.setdefault(fields[5], set()).add(ip)
    except OSError:
        pass
    return held


def dontFragment(port: Any) -> bool:
    """
    Whether a relay socket sets DF on what it sends (DONT-FRAGMENT, asked
    at Allocate or by a Send indication): read back from the socket, where
    L{RelayPortPool.setDontFragment
    <turnrelay.turn.relay.RelayPortPool.setDontFragment>} set it.

    @return: C{True} also when the socket cannot say: the kernel path would
        then relay without knowing, so it keeps off.
    """
    sock = getattr(port, "socket", None)
    getsockopt = getattr(sock, "getsockopt", None)
    if getsockopt is None:
        return True
    try:
        if port.getHost().host.find(":") >= 0:
            option = getattr(socket, "IPV6_DONTFRAG", None)
            return option is not None and bool(getsockopt(socket.IPPROTO_IPV6, option))
        if IP_MTU_DISCOVER is None:
            return False
        return bool(getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DO)
    except OSError:
        return True


def _specific(address: Tuple[str, int], family: int) -> bool:
    # The kernel matches packets on real addresses: a wildcard bind (or
    # an IPv4 client on an IPv6 socket) names none.
    host = address[0]
    if (":" in host) != (family == FAMILY_IPV6):
        return False
    return host not in ("0.0.0.0", "::")


def _family(host: str) -> int:
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


@implementer(IKernelPath)
class KernelPath:
    """
    Keeps the kernel program's maps in line with one relay's allocations,
    and folds what the program relayed into their counters.

    @ivar program: the loaded program (its C{maps}).
    @ivar server: the controller (L{turnrelay.turn.server.TURNServer}): its
        peer policy and the application's filter decide with the
        allocations' permissions and channels.
    @ivar interval: seconds between two readings of the counters.
    @ivar offloadedPackets: packets the kernel relayed, by map
        (C{"to_peer"}, C{"to_client"}), read back so far.
    @ivar offloadedBytes: their ChannelData payload bytes, likewise.
    @ivar failures: map updates that failed (a full map, say); those
        allocations stayed on the user-space path.
    @ivar installed: allocation -> its entries in the maps.
    """

    log = Logger()

    def __init__(
        self,
        program: Any,
        server: Any,
        clock: IReactorTime,
        interval: float = 1.0,
        logLevels: Optional[LogLevels] = None,
    ) -> None:
        self.program = program
        self.server = server
        self.logLevels = logLevels
        self.interval = interval
        self.offloadedPackets: Dict[str, int] = {TO_PEER: 0, TO_CLIENT: 0}
        self.offloadedBytes: Dict[str, int] = {TO_PEER: 0, TO_CLIENT: 0}
        self.failures = 0
        self.installed: Dict[Allocation, _Installed] = {}
        self._clock = clock
        self._timer: Optional[IDelayedCall] = None
        self._lastFailureLog: Optional[float] = None
        self._failuresUnlogged = 0
        self._stopped = False

    # Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """
        Read the counters back every L{interval} seconds from now on.
        """
        self._stopped = False
        if self._timer is None:
            self._timer = self._clock.callLater(self.interval, self._poll)

    def stop(self) -> None:
        """
        Fold the counters in one last time, remove every entry and stop
        reading.  The allocations relay in user space from then on.
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for allocation in list(self.installed):
            self._removeAll(allocation)

    def _poll(self) -> None:
        self._timer = None
        try:
            self.readCounters()
        except Exception:
            self.log.failure("while reading the kernel path's counters")
        if not self._stopped:
            self._timer = self._clock.callLater(self.interval, self._poll)

    # IKernelPath -----------------------------------------------------------------

    def allocationChanged(self, allocation: Allocation) -> None:
        """
        Resynchronise C{allocation}'s entries (see the module docstring).
        """
        if self._stopped:
            return
        try:
            self._resync(allocation)
        except Exception:
            # The control plane must go on whatever happens here.
            self.log.failure(
                "while updating the kernel path for {allocation}", allocation=allocation
            )

    def allocationEnded(self, allocation: Allocation) -> None:
        """
        Add what the kernel relayed for C{allocation} to its counters and
        remove its entries.
        """
        try:
            self._removeAll(allocation)
        except Exception:
            self.log.failure("while ending {allocation} on the kernel path", allocation=allocation)

    def policyChanged(self) -> None:
        """
        Resynchronise every allocation with the policy and filter in force.
        """
        for allocation in list(self.server.registry):
            if allocation.kernelPath is self:
                self.allocationChanged(allocation)

    # Counters --------------------------------------------------------------------

    def readCounters(self) -> None:
        """
        Add what the kernel relayed since the last reading to every
        allocation's counters; and drop the entries of an allocation that
        set DONT-FRAGMENT since (a Send indication may).
        """
        for allocation in list(self.installed):
            self._fold(allocation, self.installed[allocation])
            if any(dontFragment(relay.port) for relay in allocation.relays.values()):
                self.allocationChanged(allocation)

    def _fold(self, allocation: Allocation, entries: _Installed) -> None:
        maps = self.program.maps
        for (mapName, key), entry in entries.items():
            try:
                value = maps[mapName].lookup(key)
            except OSError:
                value = None
            if value is None:
                continue
            packets, octets = counters(value)
            # A counter lower than last read was reset: count it whole.
            newPackets = packets - entry[1] if packets >= entry[1] else packets
            newOctets = octets - entry[2] if octets >= entry[2] else octets
            entry[1], entry[2] = packets, octets
            if newPackets or newOctets:
                packetsField, octetsField = _COUNTERS[mapName]
                setattr(allocation, packetsField, getattr(allocation, packetsField) + newPackets)
                setattr(allocation, octetsField, getattr(allocation, octetsField) + newOctets)
                self.offloadedPackets[mapName] += newPackets
                self.offloadedBytes[mapName] += newOctets

    # What an allocation should have ------------------------------------------------

    def wanted(self, allocation: Allocation) -> Dict[Tuple[str, bytes], bytes]:
        """
        The entries C{allocation} should have now.

        @return: C{(map name, key) -> value}, counters at zero.
        """
        fiveTuple = allocation.fiveTuple
        client = fiveTuple.clientAddress
        serverAddress = fiveTuple.serverAddress
        family = _family(client.host)
        if (
            fiveTuple.transportProtocol != "udp"
            or allocation.transport != TRANSPORT_UDP
            or allocation.bucket is not None
            or not _specific(serverAddress, family)
            or not allocation.channels
        ):
            return {}
        relay = allocation.relays.get(family)
        if relay is None:
            return {}
        bound = relay.port.getHost()
        relayed = TransportAddress(bound.host, bound.port)
        if not _specific(relayed, family) or any(
            dontFragment(r.port) for r in allocation.relays.values()
        ):
            return {}
        policy = self.server.peerPolicy
        peerFilter = self.server.dataPath.peerFilter
        entries: Dict[Tuple[str, bytes], bytes] = {}
        for number, binding in allocation.channels.items():
            peer = binding.peer
            if (
                peer.family != family
                or peer.host not in allocation.permissions
                or policy.peerDenialReason(peer) is not None
                or (peerFilter is not None and peerFilter(allocation, peer) is not None)
            ):
                continue
            entries[TO_PEER, clientKey(client, serverAddress, number)] = toPeer(relayed, peer)
            entries[TO_CLIENT, peerKey(relayed, peer)] = toClient(client, serverAddress, number)
        return entries

    # Applying -------------------------------------------------------------------

    def _resync(self, allocation: Allocation) -> None:
        wanted = self.wanted(allocation)
        installed = self.installed.get(allocation, {})
        if not wanted and not installed:
            return
        self._fold(allocation, installed)
        maps = self.program.maps
        for mapKey in [
            mapKey for mapKey, entry in installed.items() if wanted.get(mapKey) != entry[0]
        ]:
            del installed[mapKey]
            self._delete(maps[mapKey[0]], mapKey[1])
        for mapKey, value in wanted.items():
            if mapKey in installed:
                continue
            try:
                maps[mapKey[0]].update(mapKey[1], value)
            except OSError as e:
                self._failed(allocation, e)
                # All or nothing: the allocation stays on the user-space
                # path until its next change tries again.
                for other in installed:
                    self._delete(maps[other[0]], other[1])
                self.installed.pop(allocation, None)
                return
            installed[mapKey] = [value, 0, 0]
        if installed:
            self.installed[allocation] = installed
        else:
            self.installed.pop(allocation, None)

    def _removeAll(self, allocation: Allocation) -> None:
        installed = self.installed.pop(allocation, None)
        if not installed:
            return
        self._fold(allocation, installed)
        maps = self.program.maps
        for mapName, key in installed:
            self._delete(maps[mapName], key)

    def _delete(self, kernelMap: Any, key: bytes) -> None:
        try:
            kernelMap.delete(key)
        except OSError as e:
            # Gone already, or the program was unloaded: either way it
            # relays nothing more for it.
            self.log.debug("kernel map delete failed: {error}", error=e)

    def _failed(self, allocation: Allocation, error: OSError) -> None:
        self.failures += 1
        self._failuresUnlogged += 1
        now = self._clock.seconds()
        last = self._lastFailureLog
        if last is not None and now - last < FAILURE_LOG_INTERVAL:
            return
        self._lastFailureLog = now
        self.log.warn(
            "kernel path map update failed ({count} since the last report), the last for "
            "{allocation}: {error}; those allocations relay in user space",
            count=self._failuresUnlogged,
            allocation=str(allocation.fiveTuple),
            error=str(error),
        )
        self._failuresUnlogged = 0

    # Figures ---------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """
        @return: packets and bytes relayed by the kernel per direction,
            entries installed, failed updates.
        """
        return {
            "packetsToPeer": self.offloadedPackets[TO_PEER],
            "packetsFromPeer": self.offloadedPackets[TO_CLIENT],
            "bytesToPeer": self.offloadedBytes[TO_PEER],
            "bytesFromPeer": self.offloadedBytes[TO_CLIENT],
            "entries": sum(len(entries) for entries in self.installed.values()),
            "allocations": len(self.installed),
            "updateFailures": self.failures,
        }


class KernelPathService(Service):
    """
    The kernel path of one relay, as a child service of its
    L{RelayService<turnrelay.service.RelayService>}: on start, load the
    program, attach it to the interfaces and hand the controller a
    L{KernelPath}; on stop, remove every entry and detach.  When it cannot
    be had, it says why once and the user-space path relays.

    Loading waits for the start, so that a relay built and thrown away
    (as a check of a configuration) loads nothing.

    @ivar mode: what was asked: C{"auto"}, C{"off"}, C{"tc"} or C{"xdp"}.
    @ivar active: the path in use: C{"tc"}, C{"xdp"} or C{"off"}.
    @ivar reason: why it is off, or L{None}.
    @ivar kernelPath: the L{KernelPath} while active.
    @ivar attached: C{(name, ifindex)} of the interfaces attached to.
    @ivar xdpModes: with C{xdp}, the XDP mode (C{"driver"} or C{"generic"})
        of each interface attached to, by name.
    """

    log = Logger()

    def __init__(
        self,
        server: Any,
        clock: IReactorTime,
        mode: str = "auto",
        interfaces: Sequence[str] = (),
        logLevels: Optional[LogLevels] = None,
        interval: float = 1.0,
        addresses: Sequence[str] = (),
    ) -> None:
        """
        @param interfaces: C{offload-interfaces}.
        @param addresses: the relay's listening and relay addresses, which
            choose the interfaces when C{interfaces} is empty.
        """
        self.server = server
        self.mode = mode
        self.interfaces = tuple(interfaces)
        self.addresses = tuple(addresses)
        self.logLevels = logLevels
        self.interval = interval
        self.active = "off"
        self.reason: Optional[str] = "not started" if mode != "off" else "offload = off"
        self.kernelPath: Optional[KernelPath] = None
        self.attached: List[Tuple[str, int]] = []
        self.xdpModes: Dict[str, str] = {}
        self._clock = clock
        self._program: Any = None
        # What the last kernel path relayed, still reported once stopped.
        self._figures: Dict[str, Any] = {"packetsToPeer": 0, "packetsFromPeer": 0}

    def startService(self) -> None:
        super().startService()
        if self.mode == "off":
            self.log.info("relaying ChannelData in user space (offload = off)")
            return
        try:
            self._load()
        except KernelPathUnavailable as e:
            self.reason = str(e)
            emit = self.log.info if self.mode == "auto" else self.log.warn
            emit(
                "kernel path (offload = {mode}) not available: {reason}; "
                "relaying ChannelData in user space",
                mode=self.mode,
                reason=self.reason,
            )
            return
        if self.mode == "xdp":
            self.active, self.reason = "xdp", None
            self.log.info(
                "relaying UDP ChannelData in the kernel (xdp on {interfaces}), the rest in "
                "user space",
                interfaces=", ".join(
                    f"{name} ({self.xdpModes[name]} mode)" for name, _ in self.attached
                ),
            )
            return
        self.active, self.reason = "tc", None
        self.log.info(
            "relaying UDP ChannelData in the kernel (tc on {interfaces}), the rest in user space",
            interfaces=", ".join(name for name, _ in self.attached),
        )

    def _load(self) -> None:
        interfaces = offloadInterfaces(self.interfaces, self.addresses)
        program = loadKernelProgram()
        try:
            for name, index in interfaces:
                if self.mode == "xdp":
                    # What XDP passes goes to the stack: no TC program
                    # behind it, and turnrelay relays the rest.
                    self.xdpModes[name] = program.attachXDP(index)
                else:
                    program.attach(index)
                self.attached.append((name, index))
        except Exception as e:
            self._unload(program)
            reason = str(e) or e.__class__.__name__
            raise KernelPathUnavailable(f"cannot attach to {name}: {reason}") from None
        self._program = program
        kernelPath = KernelPath(program, self.server, self._clock, self.interval, self.logLevels)
        kernelPath.start()
        self.kernelPath = kernelPath
        self.server.kernelPath = kernelPath

    def _unload(self, program: Any) -> None:
        for name, index in self.attached:
            try:
                program.detach(index)
            except Exception as e:
                self.log.warn(
                    "cannot detach the kernel path from {interface}: {error}",
                    interface=name,
                    error=str(e),
                )
        self.attached = []
        self.xdpModes = {}
        try:
            program.close()
        except Exception as e:
            self.log.warn("cannot close the kernel program: {error}", error=str(e))

    def stopService(self) -> None:
        super().stopService()
        kernelPath, self.kernelPath = self.kernelPath, None
        if kernelPath is not None:
            if self.server.kernelPath is kernelPath:
                self.server.kernelPath = None
            kernelPath.stop()
            self._figures = kernelPath.stats()
            for allocation in self.server.registry:
                allocation.kernelPath = None
        if self._program is not None:
            program, self._program = self._program, None
            self._unload(program)
            self.active, self.reason = "off", "stopped"

    def stats(self) -> Dict[str, Any]:
        """
        @return: the path in use, why not the kernel's if so, and what the
            kernel relayed.
        """
        figures: Dict[str, Any] = {"mode": self.active, "asked": self.mode, "reason": self.reason}
        if self.xdpModes:
            figures["xdpModes"] = dict(self.xdpModes)
        kernelPath = self.kernelPath
        figures.update(self._figures if kernelPath is None else kernelPath.stats())
        return figures
