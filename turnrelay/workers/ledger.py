# -*- test-case-name: tests.test_workers_ledger -*-
"""
The control process's count of the allocations of all its workers, so that
the per-user and total allocation quotas hold across them.

Each worker asks before it makes an allocation (L{QuotaLedger.reserve}) and
says when one ends (L{QuotaLedger.release}); the worker side is
L{IAllocationQuota<turnrelay.interfaces.IAllocationQuota>} on its
L{TURNServer<turnrelay.turn.server.TURNServer>}.  The ledger knows nothing
of the transport between them: it is plain bookkeeping, counted by worker
so that a worker that dies takes its allocations with it
(L{QuotaLedger.workerGone}).
"""

from __future__ import annotations

from collections import Counter
from typing import Counter as CounterType
from typing import Dict


class QuotaLedger:
    """
    The allocations of every worker, by worker and by username.

    @ivar userQuota: the most allocations one username may hold across all
        workers (RFC 8656 section 7.2's 486), 0 for no limit.
    @ivar totalQuota: the most allocations all workers may hold, 0 for no
        limit.  Both may be changed (on a reload): allocations already
        counted are kept even when they exceed a lowered quota, and new
        ones are refused until the counts fall below it.
    @ivar refused: reservations refused, by which quota was reached
        (C{"user"} or C{"total"}).
    @ivar unmatchedReleases: releases of allocations that were not counted
        (a worker's bug, or a release after L{workerGone}), ignored.
    """

    def __init__(self, userQuota: int = 0, totalQuota: int = 0) -> None:
        """
        @param userQuota: see L{userQuota}.
        @param totalQuota: see L{totalQuota}.
        """
        self.userQuota = userQuota
        self.totalQuota = totalQuota
        self._byWorker: Dict[int, CounterType[str]] = {}
        self._byUser: CounterType[str] = Counter()
        self._total = 0
        self.refused: CounterType[str] = Counter()
        self.unmatchedReleases = 0

    def reserve(self, worker: int, username: str) -> bool:
        """
        One more allocation for C{username}, on C{worker}: grant it if
        neither quota is reached, and count it.

        @return: whether it is granted.
        """
        if self.userQuota and self._byUser[username] >= self.userQuota:
            self.refused["user"] += 1
            return False
        if self.totalQuota and self._total >= self.totalQuota:
            self.refused["total"] += 1
            return False
        self._byWorker.setdefault(worker, Counter())[username] += 1
        self._byUser[username] += 1
        self._total += 1
        return True

    def release(self, worker: int, username: str) -> None:
        """
        An allocation of C{username} on C{worker} ended (or was never made
        after its grant): stop counting it.  A release of nothing counted
        is ignored and counted in L{unmatchedReleases}.
        """
        counts = self._byWorker.get(worker)
        if counts is None or counts[username] <= 0:
            self.unmatchedReleases += 1
            return
        self._uncount(counts, username, 1)

    def workerGone(self, worker: int) -> int:
        """
        Forget everything counted for a worker that died: its allocations
        died with it.

        @return: how many allocations that was.
        """
        counts = self._byWorker.pop(worker, None)
        if counts is None:
            return 0
        forgotten = 0
        for username, count in list(counts.items()):
            forgotten += count
            self._uncount(counts, username, count)
        return forgotten

    def _uncount(self, counts: CounterType[str], username: str, count: int) -> None:
        # Emptied entries go, so that the counters do not grow with every
        # username ever seen.
        counts[username] -= count
        if counts[username] <= 0:
            del counts[username]
        self._byUser[username] -= count
        if self._byUser[username] <= 0:
            del self._byUser[username]
        self._total -= count

    def countFor(self, username: str) -> int:
        """
        @return: how many allocations C{username} holds across all workers.
        """
        return self._byUser.get(username, 0)

    @property
    def total(self) -> int:
        """
        How many allocations all workers hold.
        """
        return self._total

    def byWorker(self) -> Dict[int, int]:
        """
        @return: how many allocations each worker holds, for every worker
            that reserved since it started (0 once its allocations ended).
        """
        return {worker: sum(counts.values()) for worker, counts in self._byWorker.items()}
