# -*- test-case-name: tests.test_fleet_registry -*-
"""
The fleet's nodes: each one's addresses, load and state.

Every node writes, at each heartbeat (every second), its record under
C{turnrelay:node:<id>}, a JSON string that expires after C{redis-lease-ttl}
seconds, and its id in the sorted set C{turnrelay:nodes} (scored with the
time of that heartbeat, so that ids whose records are long gone are pruned).
A node that dies, or loses Redis, stops renewing its record and leaves the
fleet within the TTL; one that stops cleanly deletes it at once.  The
record::

    {"node": "relay-2", "state": "serving",
     "allocations": 12, "packetsPerSecond": 3100.5,
     "addresses": [["udp", "203.0.113.10", 3478], ["tcp", "203.0.113.10", 3478]],
     "urls": ["turn:turn2.example.org:3478?transport=udp", ...],
     "heartbeat": 1700000000.25}

At the same heartbeat the node reads every record, and uses them twice:

  - while it drains, new Allocates get 300 Try Alternate with the address
    of the least-loaded node still serving (L{NodeRegistry.alternates});
  - the credentials endpoint adds the URLs of the least-loaded other node,
    if it is less loaded than this one (L{NodeRegistry.steeringURLs}).

Load is compared as (live allocations, relayed packets per second).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall

from turnrelay.config import RelayConfig
from turnrelay.fleet.link import RedisUnavailable
from turnrelay.logs import Logger
from turnrelay.stun.address import FAMILY_IPV4, FAMILY_IPV6, TransportAddress
from turnrelay.turn.policy import canonicalIP
from turnrelay.urls import iceServerURLs

# Seconds between two heartbeats (shorter when the lease is shorter, so a
# live node's record never lapses between two renewals).
HEARTBEAT_INTERVAL = 1.0

SERVING = "serving"
DRAINING = "draining"
STATES = (SERVING, DRAINING)

# The transports whose listener address ALTERNATE-SERVER may carry, in order
# of preference: it carries one address, with no transport, and a client
# retries over the transport it used (nodes of a fleet usually listen on
# the same port for both).
_ALTERNATE_TRANSPORTS = ("udp", "tcp")


@attr.s(auto_attribs=True, frozen=True)
class NodeRecord:
    """
    What one node of the fleet published at its last heartbeat.

    @ivar node: its node-id.
    @ivar state: L{SERVING} or L{DRAINING}.
    @ivar allocations: its live allocations.
    @ivar packetsPerSecond: packets it relayed per second (both ways, all
        transports) over its last heartbeat interval.
    @ivar addresses: C{(transport, address)} where clients reach it.
    @ivar urls: its C{turn:}/C{turns:} URLs, for the credentials endpoint.
    @ivar heartbeat: when it published this, by its own clock.
    """

    node: str
    state: str
    allocations: int
    packetsPerSecond: float
    addresses: Tuple[Tuple[str, TransportAddress], ...]
    urls: Tuple[str, ...]
    heartbeat: float

    @property
    def load(self) -> Tuple[int, float, str]:
        """
        What least-loaded means: fewer allocations, then fewer packets per
        second (the node id breaks ties, so every node orders alike).
        """
        return (self.allocations, self.packetsPerSecond, self.node)

    def toJSON(self) -> str:
        """
        @return: the record as it is stored in Redis.
        """
        return json.dumps(
            {
                "node": self.node,
                "state": self.state,
                "allocations": self.allocations,
                "packetsPerSecond": self.packetsPerSecond,
                "addresses": [
                    [transport, address.host, address.port] for transport, address in self.addresses
                ],
                "urls": list(self.urls),
                "heartbeat": self.heartbeat,
            },
            separators=(",", ":"),
        )

    @classmethod
    def fromJSON(cls, text: str) -> NodeRecord:
        """
        @raise ValueError: C{text} is not a node record.
        """
        try:
            value = json.loads(text)
            return cls(
                node=str(value["node"]),
                state=str(value["state"]),
                allocations=int(value["allocations"]),
                packetsPerSecond=float(value["packetsPerSecond"]),
                addresses=tuple(
                    (str(transport), TransportAddress(str(host), int(port)))
                    for transport, host, port in value["addresses"]
                ),
                urls=tuple(str(url) for url in value.get("urls", ())),
                heartbeat=float(value.get("heartbeat", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a node record: {e!r}") from None


def advertisedAddresses(
    config: RelayConfig, listeners: Sequence[Tuple[str, TransportAddress]]
) -> List[Tuple[str, TransportAddress]]:
    """
    Where other nodes may send clients: each listener's address, with the
    IP clients reach it on rather than a wildcard.

    An IPv4 listener advertises C{external-ip}, else its own address when it
    is specific, else the relay IP; an IPv6 one its own address when it is
    specific, else the IPv6 relay IP.  (C{server-name} is a name, and
    ALTERNATE-SERVER carries an address: the URLs carry the name.)

    @param listeners: C{(transport, address)} of each listener, as
        L{RelayService.listeningAddresses
        <turnrelay.service.RelayService.listeningAddresses>} gives them.
    @return: C{(transport, address)}, duplicates and listeners with nothing
        to advertise left out.
    """
    advertised: List[Tuple[str, TransportAddress]] = []
    for transport, address in listeners:
        ip = canonicalIP(address.host)
        host: Optional[str]
        if ip.version == 4:
            host = (
                config.externalIP
                or (None if ip.is_unspecified else str(ip))
                or config.effectiveRelayIP()
            )
        else:
            host = None if ip.is_unspecified else str(ip)
            host = host or config.effectiveRelayIP6()
        if host is None:
            continue
        entry = (transport, TransportAddress(host, address.port))
        if entry not in advertised:
            advertised.append(entry)
    return advertised


class NodeRegistry(Service):
    """
    This node's record in the fleet, renewed at every heartbeat, and the
    other nodes' records as last read.

    @ivar node: the L{FleetNode<turnrelay.fleet.node.FleetNode>}.
    @ivar nodes: every node's last record (this one's included), by
        node-id: those read at the last heartbeat that reached Redis, less
        those older than the lease since (while Redis is down).
    @ivar alternates: the addresses this node sends new clients to while it
        drains, least-loaded first (empty when it does not).
    @ivar heartbeats: heartbeats that reached Redis.
    """

    name = "registry"
    log = Logger()

    def __init__(self, node: Any) -> None:
        self.node = node
        self.logLevels = node.logLevels
        self.nodes: Dict[str, NodeRecord] = {}
        self.alternates: Tuple[TransportAddress, ...] = ()
        self.heartbeats = 0
        # When each record of nodes was read, by this node's clock.
        self._readAt: Dict[str, float] = {}
        self._heartbeat: Optional[LoopingCall] = None
        self._beating: Optional[Deferred[None]] = None
        # Packets relayed so far and when, for the rate over an interval.
        self._lastCount: Optional[Tuple[float, int]] = None
        self._packetsPerSecond = 0.0

    @property
    def _key(self) -> str:
        return f"{self.node.prefix}node:{self.node.nodeID}"

    @property
    def _setKey(self) -> str:
        return f"{self.node.prefix}nodes"

    @property
    def _ttl(self) -> float:
        ttl: float = self.node.config.redisLeaseTTL
        return ttl

    def startService(self) -> None:
        super().startService()
        self._heartbeat = LoopingCall(self.beat)
        self._heartbeat.clock = self.node.reactor
        self._heartbeat.start(min(HEARTBEAT_INTERVAL, self._ttl / 3), now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        self._restoreAlternates()
        # Leave the fleet at once rather than at the lease's end.
        link = self.node.link
        if link.up:
            link.call("registry", "delete", [self._key]).addErrback(lambda _: None)
            link.call("registry", "zrem", self._setKey, self.node.nodeID).addErrback(lambda _: None)
        return None

    def reconfigure(self, config: RelayConfig) -> None:
        # The relay's reload put the configured alternate-server back in
        # force: while draining, the fleet's take over again.
        if self.alternates:
            self.alternates = ()
            self._steer()

    # The heartbeat ------------------------------------------------------

    def beat(self) -> None:
        """
        One heartbeat: publish this node's record and read the others'
        (skipped while the previous one is unanswered).
        """
        self._measure()
        self._forgetStale()
        self._steer()
        if self._beating is not None or not self.node.link.up:
            return
        beating = ensureDeferred(self._exchange())

        def done(result: Any) -> None:
            self._beating = None

        self._beating = beating
        beating.addErrback(self._failed).addBoth(done)

    async def _exchange(self) -> None:
        link = self.node.link
        now = self.node.reactor.seconds()
        record = self.ownRecord()
        await link.call("registry", "set", self._key, record.toJSON(), None, int(self._ttl * 1000))
        await link.call("registry", "zadd", self._setKey, now, self.node.nodeID)
        # Ids whose records are long gone (a node that died): kept a few
        # leases, so that a clock ahead or behind does not prune the living.
        await link.call("registry", "zremrangebyscore", self._setKey, "-inf", now - 3 * self._ttl)
        ids: List[str] = list(await link.call("registry", "zrange", self._setKey, 0, -1))
        texts: List[Optional[str]] = (
            list(await link.call("registry", "mget", [f"{self.node.prefix}node:{i}" for i in ids]))
            if ids
            else []
        )
        nodes: Dict[str, NodeRecord] = {}
        for nodeID, text in zip(ids, texts, strict=True):
            if text is None:
                # Its lease expired: it is gone.
                continue
            try:
                nodes[nodeID] = NodeRecord.fromJSON(text)
            except ValueError as e:
                self.log.warn("node {node}: unreadable record ({why})", node=nodeID, why=str(e))
        nodes[record.node] = record
        self._update(nodes)

    def _failed(self, failure: Any) -> None:
        if not failure.check(RedisUnavailable):
            self.log.failure("heartbeat failed", failure)
        # RedisUnavailable is counted by the link, and its going down logged.

    def _update(self, nodes: Dict[str, NodeRecord]) -> None:
        now = self.node.reactor.seconds()
        joined = set(nodes) - set(self.nodes)
        left = set(self.nodes) - set(nodes)
        for nodeID in sorted(joined - {self.node.nodeID}):
            self.log.info("fleet node {node} joined", node=nodeID)
        for nodeID in sorted(left - {self.node.nodeID}):
            self.log.info("fleet node {node} left", node=nodeID)
        self.nodes = nodes
        self._readAt = dict.fromkeys(nodes, now)
        self.heartbeats += 1
        self._steer()

    def _forgetStale(self) -> None:
        # While Redis is down, records go on ageing as their leases would.
        now = self.node.reactor.seconds()
        for nodeID, readAt in list(self._readAt.items()):
            if now - readAt > self._ttl and nodeID != self.node.nodeID:
                del self._readAt[nodeID]
                self.nodes.pop(nodeID, None)

    def _measure(self) -> None:
        now = self.node.reactor.seconds()
        relayed = self.node.relay.stats()["relayed"]
        count = sum(
            counts.get("packetsToPeer", 0) + counts.get("packetsFromPeer", 0)
            for counts in relayed.values()
        )
        if self._lastCount is not None:
            then, before = self._lastCount
            if now > then:
                self._packetsPerSecond = round(max(0, count - before) / (now - then), 3)
        self._lastCount = (now, count)

    def ownRecord(self) -> NodeRecord:
        """
        @return: this node's record as of now.
        """
        node = self.node
        relay = node.relay
        listeners = relay.listeningAddresses()
        return NodeRecord(
            node=node.nodeID,
            state=DRAINING if node.server.draining else SERVING,
            allocations=len(node.server.registry),
            packetsPerSecond=self._packetsPerSecond,
            addresses=tuple(advertisedAddresses(relay.config, listeners)),
            urls=tuple(iceServerURLs(relay.config, listeners)),
            heartbeat=node.reactor.seconds(),
        )

    # Using what was read ------------------------------------------------

    def serving(self) -> List[NodeRecord]:
        """
        @return: the other nodes that take new allocations, least-loaded
            first.
        """
        return sorted(
            (
                record
                for nodeID, record in self.nodes.items()
                if nodeID != self.node.nodeID and record.state == SERVING
            ),
            key=lambda record: record.load,
        )

    def alternatesFor(self, records: Sequence[NodeRecord]) -> Tuple[TransportAddress, ...]:
        """
        @param records: nodes, least-loaded first.
        @return: an address of the least-loaded node of each family (a UDP
            listener's, else a TCP one's), least-loaded first.
        """
        chosen: Dict[int, Tuple[Tuple[int, float, str], TransportAddress]] = {}
        for record in records:
            for family in (FAMILY_IPV4, FAMILY_IPV6):
                if family in chosen:
                    continue
                for transport in _ALTERNATE_TRANSPORTS:
                    addresses = [
                        address
                        for kind, address in record.addresses
                        if kind == transport and address.family == family
                    ]
                    if addresses:
                        chosen[family] = (record.load, addresses[0])
                        break
        return tuple(address for _, address in sorted(chosen.values(), key=lambda c: c[0]))

    def _steer(self) -> None:
        """
        While draining, send new clients to the least-loaded serving nodes;
        otherwise put the configured C{alternate-server} back if it was
        replaced.
        """
        server = self.node.server
        if not server.draining or not self.running:
            self._restoreAlternates()
            return
        alternates = self.alternatesFor(self.serving())
        if not alternates:
            # No other node serves: the configured alternate, or 403.
            self._restoreAlternates()
            return
        if alternates != self.alternates:
            self.log.info(
                "draining: new clients go to {alternates}",
                alternates=", ".join(str(a) for a in alternates),
            )
        self.alternates = alternates
        server.alternateServers = alternates

    def _restoreAlternates(self) -> None:
        if self.alternates:
            self.alternates = ()
            self.node.server.alternateServers = self.node.relay.config.alternateServers

    def steeringURLs(self) -> List[str]:
        """
        The URLs the credentials endpoint adds to this node's: those of the
        least-loaded other serving node, when it is less loaded than this
        one (now); none otherwise.
        """
        others = self.serving()
        if not others:
            return []
        own = self.ownRecord()
        best = others[0]
        if best.load[:2] >= own.load[:2]:
            return []
        return list(best.urls)

    def stats(self) -> Dict[str, Any]:
        """
        @return: C{nodesByState} (every node known, this one included, by
            state), C{alternates} (where new clients go while draining) and
            C{heartbeats}.
        """
        byState: Counter[str] = Counter(record.state for record in self.nodes.values())
        return {
            "nodesByState": {state: byState.get(state, 0) for state in STATES},
            "alternates": [str(address) for address in self.alternates],
            "heartbeats": self.heartbeats,
        }
