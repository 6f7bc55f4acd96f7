# -*- test-case-name: tests.test_fleet_accounting -*-
"""
Usage per user, added up over the fleet, for billing.

When an allocation ends, its user's relayed bytes (both ways), seconds and
one allocation are added, on every node, to the hash of that day (UTC, by
the node's clock when it ended)::

    turnrelay:usage:2024-05-01
        alice:bytes        1048576     (HINCRBY)
        alice:seconds      612.25      (HINCRBYFLOAT)
        alice:allocations  3           (HINCRBY)

Fields are C{<username>:<what>}: a username may hold C{:} itself (REST
usernames do), so billing splits on the last one.  Each day's hash expires
L{USAGE_DAYS} days after its last write, so the keys stay bounded.

Amounts are sent in batches (at most one a second, one in flight), each
applied by one Lua script, so a batch is added whole or not at all.  A
batch that fails (Redis down or late) is kept, and sent again, as it was,
once Redis answers; new amounts go to the next batch.  A batch that timed
out may have been applied all the same: the script records, under
C{turnrelay:usage-applied:<node-id>}, the last batch applied (this process's
epoch and the batch's number), and skips a batch applied already.  What
waits in memory is bounded: past L{MAX_PENDING_USERS} users waiting, the
usage of further users is dropped, and counted.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from turnrelay.config import RelayConfig
from turnrelay.fleet.link import RedisUnavailable
from turnrelay.logs import Logger
from turnrelay.turn.registry import AllocationObserver

# Days a day's hash is kept after its last write: a month of billing, and
# a margin.
USAGE_DAYS = 40
# (day, user) entries that may wait in memory for Redis, all batches
# together; past this, usage is dropped (and counted).
MAX_PENDING_USERS = 100_000
# Seconds between two batches: allocations ending together go in one.
FLUSH_INTERVAL = 1.0
# Seconds between two attempts while Redis fails (also retried as soon as
# Redis answers again).
RETRY_INTERVAL = 5.0

# KEYS[1]: the node's applied mark; KEYS[2..]: the days' hashes.
# ARGV: epoch, batch number, expiry seconds, then for each day a count n
# and n times user, bytes, seconds, allocations.
_ADD_USAGE = """
local mark = redis.call('GET', KEYS[1])
if mark then
  local epoch, number = string.match(mark, '^(%S+) (%d+)$')
  if epoch == ARGV[1] and tonumber(number) >= tonumber(ARGV[2]) then
    return 0
  end
end
local i = 4
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for j = 1, n do
    local user = ARGV[i]
    redis.call('HINCRBY', KEYS[k], user .. ':bytes', ARGV[i + 1])
    redis.call('HINCRBYFLOAT', KEYS[k], user .. ':seconds', ARGV[i + 2])
    redis.call('HINCRBY', KEYS[k], user .. ':allocations', ARGV[i + 3])
    i = i + 4
  end
  redis.call('EXPIRE', KEYS[k], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
return 1
"""

# (day, username) -> [bytes, seconds, allocations]
Amounts = Dict[Tuple[str, str], List[Any]]


def usageDay(seconds: float) -> str:
    """
    @param seconds: a time, in Unix time.
    @return: its UTC date, C{YYYY-MM-DD}: the day its usage is billed to.
    """
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def _add(amounts: Amounts, key: Tuple[str, str], bytes: int, seconds: float, count: int) -> None:
    entry = amounts.get(key)
    if entry is None:
        amounts[key] = [bytes, seconds, count]
    else:
        entry[0] += bytes
        entry[1] += seconds
        entry[2] += count


class Accounting(Service, AllocationObserver):
    """
    Adds every ended allocation's usage to the fleet's per-day hashes.

    @ivar node: the L{FleetNode<turnrelay.fleet.node.FleetNode>}.
    @ivar batchesWritten: batches Redis applied.
    @ivar dropped: allocations whose usage was dropped for want of room
        while Redis was failing.
    """

    name = "accounting"
    log = Logger()

    def __init__(self, node: Any) -> None:
        self.node = node
        self.logLevels = node.logLevels
        self.batchesWritten = 0
        self.dropped = 0
        # Batches not yet applied, oldest first: (number, amounts).  The
        # first may be in flight; the last, if not in flight, still fills.
        self._batches: List[Tuple[int, Amounts]] = []
        self._open: Amounts = {}
        self._number = 0
        # Tells this process's batches from those of the node's earlier runs.
        self._epoch = secrets.token_hex(8)
        self._sending: Optional[Deferred[Any]] = None
        self._timer: Optional[IDelayedCall] = None
        node.link.whenUp(self._redisBack)

    def startService(self) -> None:
        super().startService()
        self.node.server.registry.addObserver(self)

    def stopService(self) -> Any:
        super().stopService()
        registry = self.node.server.registry
        if self in registry.observers:
            registry.removeObserver(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # A last try for what ended as the relay stopped.
        self._send()
        return None

    def reconfigure(self, config: RelayConfig) -> None:
        pass

    # IAllocationObserver ------------------------------------------------

    def allocationEnded(self, allocation: Any, reason: str, usage: Dict[str, Any]) -> None:
        """
        Add C{usage} to its user's amounts of today, sent within
        L{FLUSH_INTERVAL}.
        """
        key = (usageDay(self.node.reactor.seconds()), str(usage["username"]))
        if key not in self._open and self.pendingUsers() >= MAX_PENDING_USERS:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                self.log.error(
                    "usage of {dropped} allocations dropped: {pending} users wait for Redis",
                    dropped=self.dropped,
                    pending=self.pendingUsers(),
                )
            return
        _add(
            self._open,
            key,
            int(usage.get("bytesToPeer", 0)) + int(usage.get("bytesFromPeer", 0)),
            float(usage.get("duration", 0.0)),
            1,
        )
        self._schedule(FLUSH_INTERVAL)

    # Sending ------------------------------------------------------------

    def pendingUsers(self) -> int:
        """
        @return: (day, user) entries waiting to be written.
        """
        return len(self._open) + sum(len(amounts) for _, amounts in self._batches)

    def _schedule(self, delay: float) -> None:
        if self._timer is None or not self._timer.active():
            self._timer = self.node.reactor.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        self._send()

    def _redisBack(self) -> None:
        if self.running and (self._batches or self._open):
            self._send()

    def _send(self) -> None:
        """
        Send the oldest batch waiting, closing the open one first if none
        waits; one at a time.
        """
        if self._sending is not None:
            return
        if not self._batches:
            if not self._open:
                return
            self._number += 1
            self._batches.append((self._number, self._open))
            self._open = {}
        number, amounts = self._batches[0]
        keys, arguments = self._script(number, amounts)
        sending = self.node.link.call("accounting", "eval", _ADD_USAGE, keys, arguments)
        self._sending = sending

        def applied(result: Any) -> None:
            self._sending = None
            self._batches.pop(0)
            self.batchesWritten += 1
            if self._batches or self._open:
                self._send()

        def failed(failure: Any) -> None:
            self._sending = None
            if not failure.check(RedisUnavailable):
                self.log.failure("adding usage to Redis failed", failure)
            # Kept whole; tried again when Redis answers, or in a while.
            if self.running:
                self._schedule(RETRY_INTERVAL)

        sending.addCallbacks(applied, failed)

    def _script(self, number: int, amounts: Amounts) -> Tuple[List[str], List[Any]]:
        prefix = self.node.prefix
        byDay: Dict[str, List[Tuple[str, List[Any]]]] = {}
        for (day, user), entry in sorted(amounts.items()):
            byDay.setdefault(day, []).append((user, entry))
        keys = [f"{prefix}usage-applied:{self.node.nodeID}"]
        arguments: List[Any] = [self._epoch, number, USAGE_DAYS * 86400]
        for day, entries in byDay.items():
            keys.append(f"{prefix}usage:{day}")
            arguments.append(len(entries))
            for user, (bytes, seconds, count) in entries:
                arguments.extend([user, bytes, f"{seconds:.3f}", count])
        return keys, arguments

    def stats(self) -> Dict[str, Any]:
        """
        @return: C{usagePendingUsers} ((day, user) entries waiting for
            Redis), C{usageDropped} (allocations whose usage was dropped)
            and C{usageBatchesWritten}.
        """
        return {
            "usagePendingUsers": self.pendingUsers(),
            "usageDropped": self.dropped,
            "usageBatchesWritten": self.batchesWritten,
        }
