# -*- test-case-name: tests.test_turn_allocate -*-
"""
The one registry of allocations, whatever transport their clients came in
on, and the totals of those that ended.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from turnrelay.interfaces import IAllocationObserver
from turnrelay.logs import Logger, LogLevels
from turnrelay.turn.allocation import TRAFFIC_COUNTERS, Allocation, FiveTuple


@implementer(IAllocationObserver)
class AllocationObserver:
    """
    An L{IAllocationObserver} that lets every event pass: subclass it and
    override the events you watch.
    """

    def allocationCreated(self, allocation: Any) -> None:
        pass

    def allocationRefreshed(self, allocation: Any, lifetime: float) -> None:
        pass

    def allocationPermissionAdded(self, allocation: Any, host: str) -> None:
        pass

    def allocationEnded(self, allocation: Any, reason: str, usage: Dict[str, Any]) -> None:
        pass


class UsageTotals:
    """
    What ended allocations relayed, so that totals stay monotonic counters
    when allocations come and go (metrics add the live ones).
    """

    FIELDS = TRAFFIC_COUNTERS

    def __init__(self) -> None:
        self.allocations = 0
        self.counts: Dict[str, int] = dict.fromkeys(self.FIELDS, 0)

    def add(self, allocation: Allocation) -> None:
        """
        Count an allocation that ended.
        """
        self.allocations += 1
        for field in self.FIELDS:
            self.counts[field] += getattr(allocation, field)


class AllocationRegistry:
    """
    Every live allocation, keyed by 5-tuple, for all transports at once.

    Adding and removing keep each client's link pointing at its
    allocation, so that the data path finds it with one attribute read.
    Removing releases the allocation's timers and relay socket and logs its
    usage.

    @ivar observers: the L{IAllocationObserver}s told of every allocation's
        creation, refreshes, permissions and end, whatever the log level.
    """

    log = Logger()

    def __init__(self, logLevels: Optional[LogLevels] = None) -> None:
        """
        @param logLevels: the relay's log levels.
        """
        self.logLevels = logLevels
        self._allocations: Dict[FiveTuple, Allocation] = {}
        self._byUser: Dict[str, Set[Allocation]] = {}
        self._emptyWaiters: List[Deferred[None]] = []
        self.observers: List[IAllocationObserver] = []
        # Totals of ended allocations, by client transport.
        self.ended: Dict[str, UsageTotals] = {}

    def whenEmpty(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires when no allocation is left (at
            once if none is).
        """
        if not self._allocations:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._emptyWaiters.append(d)
        return d

    def __len__(self) -> int:
        return len(self._allocations)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self._allocations.values()))

    def get(self, fiveTuple: FiveTuple) -> Optional[Allocation]:
        """
        @return: the allocation on C{fiveTuple}, or L{None}.
        """
        return self._allocations.get(fiveTuple)

    def countForUser(self, username: str) -> int:
        """
        @return: how many allocations C{username} holds (the 486 quota counts
            per username, RFC 8656 section 7.2).
        """
        return len(self._byUser.get(username, ()))

    def forUser(self, username: str) -> List[Allocation]:
        """
        @return: C{username}'s allocations.
        """
        return list(self._byUser.get(username, ()))

    def addObserver(self, observer: IAllocationObserver) -> None:
        """
        Tell C{observer} of allocations' lifecycle events from now on.
        """
        self.observers.append(observer)

    def removeObserver(self, observer: IAllocationObserver) -> None:
        """
        Stop telling C{observer}.
        """
        self.observers.remove(observer)

    def _notify(self, event: str, *args: object) -> None:
        for observer in list(self.observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                self.log.failure("allocation observer {observer!r} failed", observer=observer)

    def refreshed(self, allocation: Allocation, lifetime: float) -> None:
        """
        Tell observers that C{allocation} was refreshed for C{lifetime} s.
        """
        if self.observers:
            self._notify("allocationRefreshed", allocation, lifetime)

    def permissionAdded(self, allocation: Allocation, host: str) -> None:
        """
        Tell observers that a permission for C{host} was installed on
        C{allocation}.
        """
        if self.observers:
            self._notify("allocationPermissionAdded", allocation, host)

    def endAllocations(
        self,
        username: Optional[str] = None,
        predicate: Optional[Callable[[Allocation], bool]] = None,
        reason: str = "ended by the application",
    ) -> int:
        """
        End the allocations of a user, or those a predicate picks (a call's,
        say), or both conditions at once; their clients are told nothing
        (as for an expiry) and later requests on them get 437.

        @param username: end only this user's allocations.
        @param predicate: end only the allocations it returns true for.
        @param reason: for the log and the observers.
        @return: how many allocations were ended.
        @raise ValueError: neither C{username} nor C{predicate} is given
            (ending everything is L{TURNServer.stop
            <turnrelay.turn.server.TURNServer.stop>}'s business).
        """
        if username is None and predicate is None:
            raise ValueError("endAllocations needs a username or a predicate")
        candidates = self.forUser(username) if username is not None else list(self)
        ended = 0
        for allocation in candidates:
            if predicate is None or predicate(allocation):
                self.remove(allocation, reason)
                ended += 1
        return ended

    def add(self, allocation: Allocation) -> None:
        """
        Register a new allocation and point its client's link at it.
        """
        self._allocations[allocation.fiveTuple] = allocation
        self._byUser.setdefault(allocation.username, set()).add(allocation)
        allocation.link.attach(allocation)
        self.log.info(
            "allocation {relayed} created for {username} on {client}, lifetime {lifetime} s",
            relayed=" ".join(str(address) for address in allocation.relayedAddresses),
            username=allocation.username,
            client=str(allocation.fiveTuple),
            lifetime=allocation.lifetime,
        )
        if self.observers:
            self._notify("allocationCreated", allocation)

    def remove(self, allocation: Allocation, reason: str) -> None:
        """
        End an allocation: unregister it, release it, log its usage.

        @param reason: C{"deleted"}, C{"expired"}, C{"closed"}, ...
        """
        if self._allocations.get(allocation.fiveTuple) is not allocation:
            return
        del self._allocations[allocation.fiveTuple]
        owned = self._byUser[allocation.username]
        owned.discard(allocation)
        if not owned:
            del self._byUser[allocation.username]
        allocation.link.detach(allocation)
        allocation.release()
        usage = allocation.usage()
        self.log.info(
            "allocation {relayed} {reason}: {username} on {client}, {duration} s, "
            "{packetsToPeer} packets ({bytesToPeer} bytes) to peers, "
            "{packetsFromPeer} packets ({bytesFromPeer} bytes) from peers, {dropped} dropped",
            reason=reason,
            **usage,
        )
        if self.observers:
            self._notify("allocationEnded", allocation, reason, usage)
        transport = allocation.fiveTuple.transportProtocol
        self.ended.setdefault(transport, UsageTotals()).add(allocation)
        if not self._allocations:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)
