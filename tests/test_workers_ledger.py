"""
The control process's ledger of the allocations of all workers
(L{turnrelay.workers.ledger}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.workers.ledger import QuotaLedger


class UnlimitedTests(SynchronousTestCase):
    def test_grantsAndCounts(self) -> None:
        """
        Without quotas every reservation is granted, and counted by user,
        by worker and in total.
        """
        ledger = QuotaLedger()
        for worker, username in [(0, "alice"), (1, "alice"), (1, "bob"), (1, "alice")]:
            self.assertTrue(ledger.reserve(worker, username))
        self.assertEqual(ledger.countFor("alice"), 3)
        self.assertEqual(ledger.countFor("bob"), 1)
        self.assertEqual(ledger.countFor("carol"), 0)
        self.assertEqual(ledger.total, 4)
        self.assertEqual(ledger.byWorker(), {0: 1, 1: 3})


class QuotaTests(SynchronousTestCase):
    def test_userQuotaAcrossWorkers(self) -> None:
        """
        The user quota counts the user's allocations on every worker; other
        users are not held to it.
        """
        ledger = QuotaLedger(userQuota=2)
        self.assertTrue(ledger.reserve(0, "alice"))
        self.assertTrue(ledger.reserve(1, "alice"))
        self.assertFalse(ledger.reserve(2, "alice"))
        self.assertTrue(ledger.reserve(2, "bob"))
        self.assertEqual(ledger.countFor("alice"), 2)
        self.assertEqual(ledger.refused, {"user": 1})

    def test_totalQuotaAcrossWorkers(self) -> None:
        """
        The total quota counts every allocation of every worker.
        """
        ledger = QuotaLedger(totalQuota=2)
        self.assertTrue(ledger.reserve(0, "alice"))
        self.assertTrue(ledger.reserve(1, "bob"))
        self.assertFalse(ledger.reserve(2, "carol"))
        self.assertEqual(ledger.total, 2)
        self.assertEqual(ledger.countFor("carol"), 0)
        self.assertEqual(ledger.refused, {"total": 1})

    def test_releaseMakesRoom(self) -> None:
        """
        Once an allocation is released, another may be granted.
        """
        ledger = QuotaLedger(userQuota=1, totalQuota=1)
        self.assertTrue(ledger.reserve(0, "alice"))
        self.assertFalse(ledger.reserve(1, "alice"))
        ledger.release(0, "alice")
        self.assertTrue(ledger.reserve(1, "alice"))
        self.assertEqual(ledger.byWorker(), {0: 0, 1: 1})

    def test_reload(self) -> None:
        """
        Quotas may be changed: what is counted stays, new reservations are
        held to the new quotas.
        """
        ledger = QuotaLedger(userQuota=3)
        for worker in range(3):
            self.assertTrue(ledger.reserve(worker, "alice"))
        ledger.userQuota = 2
        self.assertFalse(ledger.reserve(0, "alice"))
        self.assertEqual(ledger.countFor("alice"), 3)
        ledger.release(0, "alice")
        self.assertFalse(ledger.reserve(0, "alice"))
        ledger.release(1, "alice")
        self.assertTrue(ledger.reserve(0, "alice"))
        ledger.userQuota = 0
        ledger.totalQuota = 3
        self.assertTrue(ledger.reserve(0, "bob"))
        self.assertFalse(ledger.reserve(0, "carol"))


class ReleaseTests(SynchronousTestCase):
    def test_unmatchedIgnored(self) -> None:
        """
        A release with nothing counted (for that user on that worker) never
        takes a count below zero: it is ignored and counted.
        """
        ledger = QuotaLedger(userQuota=1)
        self.assertTrue(ledger.reserve(0, "alice"))
        ledger.release(1, "alice")
        ledger.release(0, "bob")
        ledger.release(5, "carol")
        self.assertEqual(ledger.unmatchedReleases, 3)
        self.assertEqual(ledger.countFor("alice"), 1)
        self.assertEqual(ledger.total, 1)
        ledger.release(0, "alice")
        ledger.release(0, "alice")
        self.assertEqual(ledger.unmatchedReleases, 4)
        self.assertEqual((ledger.countFor("alice"), ledger.total), (0, 0))


class WorkerGoneTests(SynchronousTestCase):
    def test_forgetsItsAllocations(self) -> None:
        """
        A dead worker's allocations are forgotten, and their count returned;
        the other workers' stay.
        """
        ledger = QuotaLedger(userQuota=3, totalQuota=4)
        ledger.reserve(0, "alice")
        ledger.reserve(0, "alice")
        ledger.reserve(0, "bob")
        ledger.reserve(1, "alice")
        self.assertFalse(ledger.reserve(1, "carol"))
        self.assertEqual(ledger.workerGone(0), 3)
        self.assertEqual(ledger.countFor("alice"), 1)
        self.assertEqual(ledger.countFor("bob"), 0)
        self.assertEqual(ledger.total, 1)
        self.assertEqual(ledger.byWorker(), {1: 1})
        self.assertTrue(ledger.reserve(1, "carol"))

    def test_unknownWorker(self) -> None:
        """
        A worker that reserved nothing had nothing to forget.
        """
        self.assertEqual(QuotaLedger().workerGone(7), 0)

    def test_releaseAfterGone(self) -> None:
        """
        A release that arrives after its worker was declared gone is
        unmatched.
        """
        ledger = QuotaLedger()
        ledger.reserve(0, "alice")
        ledger.workerGone(0)
        ledger.release(0, "alice")
        self.assertEqual(ledger.unmatchedReleases, 1)
        self.assertEqual(ledger.total, 0)
