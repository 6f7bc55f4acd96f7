# -*- test-case-name: tests.test_fleet_quota -*-
"""
Per-user and total allocation quotas counted over the whole fleet.

Each node keeps its own share in Redis, as a field named after it in one
hash per user and in one hash for the total::

    turnrelay:lease:NODE           "1", expiring after redis-lease-ttl
    turnrelay:quota:user:USERNAME  {NODE: allocations of USERNAME on NODE}
    turnrelay:quota:total          {NODE: allocations on NODE}

A share counts only while its node's lease key lives: a node that dies
stops renewing it, and its fields are ignored (and dropped) once it has
expired.  Every renewal rewrites the node's fields from its own count, so
that whatever Redis lost (a restart) or missed (releases while it was
down) is right again within one renewal.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional, Set

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from turnrelay.config import RelayConfig
from turnrelay.fleet.link import RedisUnavailable
from turnrelay.interfaces import IAllocationQuota
from turnrelay.logs import Logger

# Renewals per lease TTL: a lease survives two renewals lost in a row.
RENEWALS_PER_TTL = 3

# The hashes outlive the last renewal or grant that touched them by this
# many lease TTLs: a user whose every holder died leaves no key behind.
HASH_LIFETIME_TTLS = 3

# What a reservation asks of Redis, in one round trip.
#   KEYS: the user's hash, the total hash, this node's lease key.
#   ARGV: this node, the user quota, the total quota (0: none), the prefix
#         of lease keys, the hashes' lifetime (ms).
# The other nodes' lease keys are built here from their fields' names: this
# needs a single Redis server (not a cluster), as the whole fleet does.
# Returns {granted (1), or refused by the user (0) or total (-1) quota,
# whether this node's own lease was missing (1) or not (0)}.
RESERVE = """
local node = ARGV[1]
local function live(hash)
  local sum = 0
  local entries = redis.call('HGETALL', hash)
  for i = 1, #entries, 2 do
    local holder = entries[i]
    if holder == node or redis.call('EXISTS', ARGV[4] .. holder) == 1 then
      sum = sum + (tonumber(entries[i + 1]) or 0)
    else
      redis.call('HDEL', hash, holder)
    end
  end
  return sum
end
local leaseMissing = 1 - redis.call('EXISTS', KEYS[3])
local userQuota = tonumber(ARGV[2])
local totalQuota = tonumber(ARGV[3])
if userQuota > 0 and live(KEYS[1]) >= userQuota then
  return {0, leaseMissing}
end
if totalQuota > 0 and live(KEYS[2]) >= totalQuota then
  return {-1, leaseMissing}
end
redis.call('HINCRBY', KEYS[1], node, 1)
redis.call('HINCRBY', KEYS[2], node, 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, leaseMissing}
"""

# One allocation fewer for this node.
#   KEYS: the user's hash, the total hash.  ARGV: this node.
# Never below zero: the field goes at one.
RELEASE = """
for _, hash in ipairs(KEYS) do
  local held = tonumber(redis.call('HGET', hash, ARGV[1]) or '0') or 0
  if held > 1 then
    redis.call('HINCRBY', hash, ARGV[1], -1)
  elseif held == 1 then
    redis.call('HDEL', hash, ARGV[1])
  end
end
return 1
"""

# Renew this node's lease and rewrite its counts.
#   KEYS: this node's lease key, the total hash, then users' hashes.
#   ARGV: this node, the lease TTL (ms), the hashes' lifetime (ms), the
#         node's total, then each user's count (in the order of KEYS).
RENEW = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
local function put(hash, count)
  if count > 0 then
    redis.call('HSET', hash, ARGV[1], count)
    redis.call('PEXPIRE', hash, ARGV[3])
  else
    redis.call('HDEL', hash, ARGV[1])
  end
end
put(KEYS[2], tonumber(ARGV[4]))
for i = 3, #KEYS do
  put(KEYS[i], tonumber(ARGV[i + 2]))
end
return 1
"""


@implementer(IAllocationQuota)
class FleetQuota(Service):
    """
    The C{user-quota} and C{total-quota} held over every node sharing the
    Redis server: the relay's
    L{IAllocationQuota<turnrelay.interfaces.IAllocationQuota>}, asked after
    the node's own quotas have passed.

    It counts the reservations it granted and has not seen released, per
    user: exactly this node's share, which every lease renewal (each third
    of C{redis-lease-ttl}, and when Redis answers again) writes to Redis.
    While Redis does not answer, C{redis-unavailable} decides: C{local}
    grants (and counts the grant, for the next renewal), C{refuse} fails
    (the client gets 508).

    @ivar node: the L{FleetNode<turnrelay.fleet.node.FleetNode>}.
    @ivar held: allocations granted and not released, per user.
    @ivar refused: reservations refused by a fleet quota (486).
    @ivar fallbacks: reservations granted by the node alone, Redis not
        answering.
    @ivar unanswered: reservations failed, Redis not answering and
        C{redis-unavailable} being C{refuse} (508).
    @ivar renewals: lease renewals Redis took.
    """

    name = "quota"
    log = Logger()

    def __init__(self, node: Any) -> None:
        self.node = node
        self.logLevels = getattr(node, "logLevels", None)
        self.held: Counter[str] = Counter()
        self.refused = 0
        self.fallbacks = 0
        self.unanswered = 0
        self.renewals = 0
        # Reservations sent and not answered yet: a renewal counts them, as
        # Redis has counted (or will have, before the renewal) those granted.
        self._asking: Counter[str] = Counter()
        # Users whose count fell to zero since the last renewal: their
        # fields go at the next one.
        self._emptied: Set[str] = set()
        self._renewing: Optional[LoopingCall] = None
        self._interval = 0.0
        # Whether the last reservation went without Redis: logged when it
        # changes, never per Allocate.
        self._fallingBack = False
        node.link.whenUp(self._redisAnswers)

    # Keys ------------------------------------------------------------------

    def _userKey(self, username: str) -> str:
        return f"{self.node.prefix}quota:user:{username}"

    def _totalKey(self) -> str:
        return f"{self.node.prefix}quota:total"

    def _leasePrefix(self) -> str:
        return f"{self.node.prefix}lease:"

    def _leaseTTL(self) -> float:
        ttl: float = self.node.config.redisLeaseTTL
        return ttl

    def _hashLifetime(self) -> int:
        return int(self._leaseTTL() * HASH_LIFETIME_TTLS * 1000)

    # IAllocationQuota -----------------------------------------------------

    def reserve(self, username: str) -> Deferred[bool]:
        """
        One more allocation for C{username}, if the fleet's quotas allow it
        (read from the configuration in force, so a reload applies).

        @return: a L{Deferred} firing with C{True} (granted) or C{False} (a
            quota is reached), or failing with L{RedisUnavailable} when
            Redis does not answer and C{redis-unavailable} is C{refuse}.
        """
        try:
            config = self.node.config
            nodeID = self.node.nodeID
            asked = self.node.link.call(
                "quota",
                "eval",
                RESERVE,
                [self._userKey(username), self._totalKey(), self._leasePrefix() + nodeID],
                [
                    nodeID,
                    config.userQuota,
                    config.totalQuota,
                    self._leasePrefix(),
                    self._hashLifetime(),
                ],
            )
        except Exception:
            # call() does not raise; should it, the client still gets an
            # answer.
            asked = fail()
        self._asking[username] += 1
        asked.addBoth(self._answered, username)
        return asked.addCallbacks(
            self._reserved, self._unanswered, (username,), errbackArgs=(username,)
        )

    def _answered(self, result: Any, username: str) -> Any:
        self._asking[username] -= 1
        if self._asking[username] <= 0:
            del self._asking[username]
            # A renewal may have written this reservation while it was
            # asked: unless it is granted, the next one takes it back.
            if self.held[username] <= 0:
                self._emptied.add(username)
        return result

    def _reserved(self, answer: Any, username: str) -> Any:
        try:
            granted, leaseMissing = int(answer[0]), int(answer[1])
        except (TypeError, ValueError, IndexError):
            return self._unanswered(
                Failure(RedisUnavailable(f"unexpected answer {answer!r}")), username
            )
        if self._fallingBack:
            self._fallingBack = False
            self.log.info("fleet quotas: Redis answers again, reservations are shared")
        if granted == 1:
            self.held[username] += 1
            self._emptied.discard(username)
        else:
            self.refused += 1
        if leaseMissing and self.running:
            # Redis lost this node's lease (a restart it did not see, or a
            # renewal late): rewrite the node's share at once, this grant
            # counted.
            self.log.info(
                "fleet quotas: the lease of {node} was gone, rewriting its counts",
                node=self.node.nodeID,
            )
            self.renew()
        return granted == 1

    def _unanswered(self, failure: Failure, username: str) -> Any:
        refuse = self.node.config.redisUnavailable == "refuse"
        if not self._fallingBack:
            self._fallingBack = True
            self.log.warn(
                "fleet quotas: Redis does not answer ({why}); new allocations are {what}",
                why=failure.getErrorMessage(),
                what="refused (508)" if refuse else "granted on this node's own quotas",
            )
        if refuse:
            self.unanswered += 1
            if failure.check(RedisUnavailable):
                return failure
            return Failure(RedisUnavailable(failure.getErrorMessage()))
        self.fallbacks += 1
        self.held[username] += 1
        self._emptied.discard(username)
        return True

    def release(self, username: str) -> None:
        """
        An allocation granted for C{username} has ended: one fewer for this
        node, here and in Redis.  A release of nothing held is ignored.
        """
        if self.held[username] <= 0:
            del self.held[username]
            return
        self.held[username] -= 1
        if self.held[username] == 0:
            del self.held[username]
            self._emptied.add(username)
        try:
            released = self.node.link.call(
                "quota",
                "eval",
                RELEASE,
                [self._userKey(username), self._totalKey()],
                [self.node.nodeID],
            )
        except Exception:
            return
        # Not answered: the next renewal writes the count anyway.
        released.addErrback(lambda _: None)

    # Leases ----------------------------------------------------------------

    def counts(self) -> Dict[str, int]:
        """
        @return: this node's share as it writes it to Redis: allocations
            held, and reservations asked and not answered yet, per user.
        """
        counts = Counter(self.held)
        counts.update(self._asking)
        return {user: count for user, count in counts.items() if count > 0}

    def renew(self) -> Deferred[bool]:
        """
        Renew this node's lease and rewrite its counts in Redis.

        @return: a L{Deferred} firing with whether Redis took it; it never
            fails.
        """
        counts = self.counts()
        emptied = self._emptied - set(counts)
        users = sorted(counts) + sorted(emptied)
        nodeID = self.node.nodeID
        try:
            renewed = self.node.link.call(
                "lease",
                "eval",
                RENEW,
                [self._leasePrefix() + nodeID, self._totalKey()]
                + [self._userKey(user) for user in users],
                [
                    nodeID,
                    int(self._leaseTTL() * 1000),
                    self._hashLifetime(),
                    sum(counts.values()),
                ]
                + [counts.get(user, 0) for user in users],
            )
        except Exception:
            return succeed(False)

        def done(_: Any) -> bool:
            self.renewals += 1
            # Those still at zero are gone from Redis now.
            self._emptied -= {user for user in emptied if user not in self.counts()}
            return True

        return renewed.addCallbacks(done, lambda _: False)

    def _redisAnswers(self) -> None:
        # Redis may have lost everything (a restart): write it all again.
        if self.running:
            self.renew()

    def _startRenewing(self) -> None:
        self._interval = self._leaseTTL() / RENEWALS_PER_TTL
        self._renewing = LoopingCall(self.renew)
        self._renewing.clock = self.node.reactor
        self._renewing.start(self._interval, now=True)

    def _stopRenewing(self) -> None:
        if self._renewing is not None and self._renewing.running:
            self._renewing.stop()
        self._renewing = None

    def startService(self) -> None:
        super().startService()
        self._startRenewing()

    def stopService(self) -> Any:
        """
        Stop renewing, and give the node's share back at once: its lease
        goes (its fields no longer count), rather than expiring.
        """
        super().stopService()
        self._stopRenewing()
        try:
            gone = self.node.link.call("lease", "delete", self._leasePrefix() + self.node.nodeID)
        except Exception:
            return None
        gone.addErrback(lambda _: None)
        return None

    # A node's part ---------------------------------------------------------

    def reconfigure(self, config: RelayConfig) -> None:
        """
        The quotas are read at each reservation; a new lease TTL changes
        how often the lease is renewed.
        """
        if self.running and config.redisLeaseTTL / RENEWALS_PER_TTL != self._interval:
            self._stopRenewing()
            self._startRenewing()

    def stats(self) -> Dict[str, Any]:
        """
        @return: the fleet quotas' figures.
        """
        return {
            "quotaHeld": sum(self.held.values()),
            "quotaRefused": self.refused,
            "quotaFallbacks": self.fallbacks,
            "quotaUnanswered": self.unanswered,
            "leaseRenewals": self.renewals,
        }
