"""
Allocate with quotas shared with other relays (L{TURNServer.sharedQuota},
the workers of one control process): asked before the allocation is made,
answered later, and every grant released exactly once.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tests._assertions import TURNTestCase
from tests._logs import LogRecorder, isRefused
from tests._relays import RELAY_IP6, FakeRelay
from tests._session import TURNClient
from turnrelay.interfaces import IAllocationQuota
from turnrelay.stun import attributes as A
from turnrelay.stun.address import FAMILY_IPV6
from turnrelay.stun.message import Method, STUNMessage, decodeMessage
from turnrelay.transports.stream import StreamLimits, STUNStreamProtocol
from turnrelay.turn.registry import AllocationObserver

UDP = (A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP)
TCP = (A.REQUESTED_TRANSPORT, A.TRANSPORT_TCP)


@implementer(IAllocationQuota)
class FakeQuota:
    """
    A shared quota whose answers the test gives.

    @ivar asked: C{(username, Deferred)} for each reservation asked, not yet
        answered, oldest first.
    @ivar released: the usernames released, oldest first.
    """

    def __init__(self) -> None:
        self.asked: List[Tuple[str, Deferred[bool]]] = []
        self.released: List[str] = []

    def reserve(self, username: str) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.asked.append((username, d))
        return d

    def release(self, username: str) -> None:
        self.released.append(username)

    def grant(self, granted: bool = True) -> None:
        """
        Answer the oldest reservation asked.
        """
        _, d = self.asked.pop(0)
        d.callback(granted)


class SharedQuotaTestCase(TURNTestCase):
    """
    A fake relay with a L{FakeQuota}, and a client that knows its nonce.
    """

    def setUp(self) -> None:
        self.relay = self.makeRelay()
        self.server = self.relay.server
        self.quota = FakeQuota()
        self.server.sharedQuota = self.quota
        self.client = self.newClient()

    def makeRelay(self) -> FakeRelay:
        return FakeRelay()

    def newClient(self, username: str = "alice", transport: str = "udp") -> TURNClient:
        client = self.relay.client(username, transport=transport)
        client.challenge()
        return client

    def sendAllocate(
        self, client: TURNClient, *attributes: Tuple[int, Any], tid: Optional[bytes] = None
    ) -> bytes:
        """
        Send an Allocate that is not answered at once.

        @return: the request sent.
        """
        data = client.build(Method.ALLOCATE, list(attributes or [UDP]), tid)
        self.assertIsNone(client.send(data))
        return data

    def answer(self, client: TURNClient) -> STUNMessage:
        """
        @return: the one answer the client got since, integrity checked.
        """
        sent = client.link.popSent()
        self.assertIsNotNone(sent, "no answer")
        assert sent is not None
        self.assertEqual(client.link.sent, [], "more than one answer")
        return client.checkIntegrity(decodeMessage(sent))

    def allocated(self, client: TURNClient) -> STUNMessage:
        """
        Allocate, have the quota grant it.

        @return: the success response.
        """
        self.sendAllocate(client)
        self.quota.grant()
        return self.assertSuccess(self.answer(client))


class GrantTests(SharedQuotaTestCase):
    def test_askedBeforeAllocating(self) -> None:
        """
        An Allocate that passes the relay's own checks asks the shared quota
        and is not answered until it does: no relay socket, no allocation.
        """
        self.sendAllocate(self.client)
        self.assertEqual([username for username, _ in self.quota.asked], ["alice"])
        self.assertEqual(self.client.link.sent, [])
        self.assertEqual(len(self.server.registry), 0)
        self.assertEqual(self.relay.reactor.udpPorts, [])
        self.assertEqual(self.server.allocator.pendingAllocates, 1)

    def test_granted(self) -> None:
        """
        Once granted, the allocation is made and the success response sent
        with integrity, counted, and kept for retransmissions.
        """
        self.sendAllocate(self.client)
        self.quota.grant()
        response = self.assertSuccess(self.answer(self.client))
        self.assertIsNotNone(response.messageIntegrity)
        self.assertEqual(response.get(A.SOFTWARE), self.server.software)
        self.assertEqual(len(self.server.registry), 1)
        allocation = self.client.link.allocation
        self.assertEqual(response.get(A.XOR_RELAYED_ADDRESS), allocation.relayedAddress)
        self.assertTrue(allocation.allocateResponse)
        self.assertEqual(self.server.requests["ALLOCATE", "success"], 1)
        self.assertEqual(self.server.allocator.pendingAllocates, 0)
        self.assertEqual(self.quota.released, [])

    def test_fingerprint(self) -> None:
        """
        The later answer has a FINGERPRINT when the request had one, as an
        answer at once does.
        """
        data = self.client.build(Method.ALLOCATE, [UDP], fingerprint=True)
        self.assertIsNone(self.client.send(data))
        self.quota.grant()
        self.assertIsNotNone(self.answer(self.client).fingerprint)

    def test_refused(self) -> None:
        """
        Refused by the shared quota: 486, logged as other refusals are,
        and nothing made or released.
        """
        events = LogRecorder(self)
        self.sendAllocate(self.client)
        self.quota.grant(False)
        self.assertErrorCode(self.answer(self.client), 486)
        self.assertEqual(len(self.server.registry), 0)
        self.assertEqual(self.relay.reactor.udpPorts, [])
        self.assertEqual(self.quota.released, [])
        [refused] = events.matching(isRefused)
        self.assertEqual(refused["code"], 486)
        self.assertEqual(self.server.requests["ALLOCATE", "486"], 1)
        # The 5-tuple is free for another try.
        self.allocated(self.client)

    def test_failed(self) -> None:
        """
        A shared quota that cannot answer: 508, the failure logged, nothing
        made or released.
        """
        self.sendAllocate(self.client)
        _, d = self.quota.asked.pop()
        d.errback(RuntimeError("the control process is gone"))
        self.assertErrorCode(self.answer(self.client), 508)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.server.registry), 0)
        self.assertEqual(self.quota.released, [])
        self.assertEqual(self.server.allocator.pendingAllocates, 0)

    def test_reserveRaises(self) -> None:
        """
        A shared quota whose C{reserve} raises is one that failed.
        """

        def reserve(username: str) -> Deferred[bool]:
            raise RuntimeError("bug")

        self.quota.reserve = reserve  # type: ignore[method-assign]
        self.assertErrorCode(self.client.allocate(), 508)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_answeredAtOnce(self) -> None:
        """
        A shared quota that answers at once has the Allocate answered at
        once.
        """
        self.quota.reserve = lambda username: succeed(True)  # type: ignore[method-assign]
        self.assertSuccess(self.client.allocate())
        self.assertEqual(self.server.allocator.pendingAllocates, 0)

    def test_localChecksFirst(self) -> None:
        """
        The relay's own checks come first: a request they refuse is
        answered at once, without asking the shared quota.
        """
        response = self.client.request(Method.ALLOCATE, [])
        self.assertErrorCode(response, 400)
        response = self.client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, 99)])
        self.assertErrorCode(response, 442)
        self.assertEqual(self.quota.asked, [])

    def test_localQuotaFirst(self) -> None:
        """
        The relay's own quota is checked before the shared one is asked.
        """
        self.relay = FakeRelay(user_quota=1)
        self.server = self.relay.server
        self.server.sharedQuota = self.quota
        self.allocated(self.newClient())
        self.assertErrorCode(self.newClient().allocate(), 486)
        self.assertEqual(self.quota.asked, [])

    def test_withoutSharedQuota(self) -> None:
        """
        Without a shared quota, Allocate is answered at once, as ever.
        """
        self.server.sharedQuota = None
        self.assertSuccess(self.client.allocate())
        self.assertEqual(self.quota.asked, [])


class RetransmissionTests(SharedQuotaTestCase):
    def test_droppedWhilePending(self) -> None:
        """
        A retransmission of the waiting Allocate is dropped; once the
        allocation is made, a retransmission gets the answer sent.
        """
        data = self.sendAllocate(self.client, tid=b"retransmit!!")
        self.assertIsNone(self.client.send(data))
        self.assertEqual(len(self.quota.asked), 1)
        self.quota.grant()
        sent = self.client.link.popSent()
        self.assertIsNotNone(sent)
        self.assertEqual(self.client.link.sent, [])
        self.server.stunReceived(data, self.client.link)
        self.assertEqual(self.client.link.popSent(), sent)
        self.assertEqual(len(self.server.registry), 1)
        self.assertEqual(len(self.relay.reactor.udpPorts), 1)

    def test_otherTransactionWhilePending(self) -> None:
        """
        Another Allocate on the 5-tuple while one waits gets 437, as it
        would once the allocation is made.
        """
        self.sendAllocate(self.client)
        self.assertErrorCode(self.client.allocate(), 437)
        self.assertEqual(len(self.quota.asked), 1)
        self.quota.grant()
        self.assertSuccess(self.answer(self.client))
        self.assertEqual(len(self.server.registry), 1)


class ReleaseTests(SharedQuotaTestCase):
    def test_expiry(self) -> None:
        """
        An allocation that expires releases its grant, once.
        """
        self.allocated(self.client)
        self.relay.reactor.advance(599)
        self.assertEqual(self.quota.released, [])
        self.relay.reactor.advance(1)
        self.assertEqual(self.quota.released, ["alice"])
        self.relay.reactor.advance(3600)
        self.assertEqual(self.quota.released, ["alice"])

    def test_delete(self) -> None:
        """
        Refresh with LIFETIME 0 releases the grant, once.
        """
        self.allocated(self.client)
        self.assertSuccess(self.client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        self.assertEqual(self.quota.released, ["alice"])
        self.assertErrorCode(self.client.request(Method.REFRESH, [(A.LIFETIME, 0)]), 437)
        self.relay.reactor.advance(600)
        self.assertEqual(self.quota.released, ["alice"])

    def test_stop(self) -> None:
        """
        Stopping the relay releases the grants of its allocations.
        """
        self.allocated(self.client)
        self.allocated(self.newClient("bob"))
        self.successResultOf(self.server.stop())
        self.assertEqual(sorted(self.quota.released), ["alice", "bob"])

    def test_endedByTheApplication(self) -> None:
        """
        An allocation the application (or the console) ends releases its
        grant.
        """
        self.allocated(self.client)
        self.assertEqual(self.server.registry.endAllocations(username="alice"), 1)
        self.assertEqual(self.quota.released, ["alice"])

    def test_linkClosed(self) -> None:
        """
        An allocation that ends with its client's connection releases its
        grant.
        """
        client = self.newClient(transport="tcp")
        self.allocated(client)
        self.server.linkClosed(client.link, "closed with its connection")
        self.assertEqual(self.quota.released, ["alice"])

    def test_stopWhilePending(self) -> None:
        """
        A grant that comes after the relay stopped is released at once, and
        nothing is made or answered.
        """
        self.sendAllocate(self.client)
        self.successResultOf(self.server.stop())
        self.quota.grant()
        self.assertEqual(self.quota.released, ["alice"])
        self.assertEqual(len(self.server.registry), 0)
        self.assertEqual(self.client.link.sent, [])

    def test_refusalAfterGrantWhilePending(self) -> None:
        """
        A refusal after the relay stopped releases nothing (nothing was
        granted).
        """
        self.sendAllocate(self.client)
        self.successResultOf(self.server.stop())
        self.quota.grant(False)
        self.assertEqual(self.quota.released, [])
        self.assertEqual(self.client.link.sent, [])

    def test_drainingMeanwhile(self) -> None:
        """
        A relay that began draining while the quota was asked turns the
        Allocate away, and releases the grant.
        """
        self.sendAllocate(self.client)
        self.server.draining = True
        self.quota.grant()
        self.assertErrorCode(self.answer(self.client), 403)
        self.assertEqual(self.quota.released, ["alice"])
        self.assertEqual(len(self.server.registry), 0)

    def test_expiredReservationToken(self) -> None:
        """
        A RESERVATION-TOKEN that expired while the quota was asked: 508, and
        the grant released.
        """
        response = self.allocated_with((A.EVEN_PORT, True))
        token = response.get(A.RESERVATION_TOKEN)
        other = self.newClient()
        self.sendAllocate(other, UDP, (A.RESERVATION_TOKEN, token))
        self.relay.reactor.advance(31)
        self.quota.grant()
        self.assertErrorCode(self.answer(other), 508)
        self.assertEqual(self.quota.released, ["alice"])

    def allocated_with(self, *attributes: Tuple[int, Any]) -> STUNMessage:
        self.sendAllocate(self.client, UDP, *attributes)
        self.quota.grant()
        return self.assertSuccess(self.answer(self.client))

    def test_endedAsItWasMade(self) -> None:
        """
        An allocation an observer ends as soon as it is created releases
        its grant, once.
        """

        class Ender(AllocationObserver):
            def allocationCreated(self, allocation: Any) -> None:
                registry.remove(allocation, "ended by the application")

        registry = self.server.registry
        registry.addObserver(Ender())
        self.sendAllocate(self.client)
        self.quota.grant()
        self.assertEqual(self.quota.released, ["alice"])
        self.assertEqual(len(registry), 0)
        self.relay.reactor.advance(600)
        self.assertEqual(self.quota.released, ["alice"])


class NoRelayPortTests(SharedQuotaTestCase):
    def makeRelay(self) -> FakeRelay:
        return FakeRelay(min_port=50000, max_port=50000)

    def test_noRelayPortAfterGrant(self) -> None:
        """
        When the last relay port went while the quota was asked, the
        Allocate gets 508 and its grant is released at once.
        """
        other = self.newClient("bob")
        self.sendAllocate(self.client)
        self.sendAllocate(other)
        self.quota.grant()
        self.quota.grant()
        self.assertSuccess(self.answer(self.client))
        self.assertErrorCode(self.answer(other), 508)
        self.assertEqual(self.quota.released, ["bob"])
        self.assertEqual(len(self.server.registry), 1)


class DualStackTests(SharedQuotaTestCase):
    def makeRelay(self) -> FakeRelay:
        return FakeRelay(relay_ip6=RELAY_IP6)

    def test_countsOnce(self) -> None:
        """
        A dual allocation is one allocation: one reservation, released once
        when it ends, not when one family goes.
        """
        self.sendAllocate(self.client, UDP, (A.ADDITIONAL_ADDRESS_FAMILY, FAMILY_IPV6))
        self.assertEqual(len(self.quota.asked), 1)
        self.quota.grant()
        response = self.assertSuccess(self.answer(self.client))
        self.assertEqual(len(response.getAll(A.XOR_RELAYED_ADDRESS)), 2)
        self.assertSuccess(
            self.client.request(
                Method.REFRESH, [(A.REQUESTED_ADDRESS_FAMILY, FAMILY_IPV6), (A.LIFETIME, 0)]
            )
        )
        self.assertEqual(self.quota.released, [])
        self.assertSuccess(self.client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        self.assertEqual(self.quota.released, ["alice"])


class TCPAllocationTests(SharedQuotaTestCase):
    def test_granted(self) -> None:
        """
        A TCP allocation (RFC 6062) waits for the shared quota too.
        """
        client = self.newClient(transport="tcp")
        self.sendAllocate(client, TCP)
        self.assertEqual(self.relay.reactor.tcpPorts, [])
        self.quota.grant()
        self.assertSuccess(self.answer(client))
        self.assertEqual(client.link.allocation.transport, A.TRANSPORT_TCP)
        self.assertEqual(len(self.relay.reactor.tcpPorts), 1)

    def test_connectionClosedWhilePending(self) -> None:
        """
        When the client's connection closes while the quota is asked, no
        allocation is made and the grant is released.
        """
        reactor = self.relay.reactor
        protocol = STUNStreamProtocol(self.server, "tcp", StreamLimits(reactor))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "192.0.2.1", 3478),
            peerAddress=IPv4Address("TCP", "192.0.2.50", 41234),
        )
        protocol.makeConnection(transport)
        # The nonce is bound to the client's host: the one learned serves.
        protocol.dataReceived(self.client.build(Method.ALLOCATE, [TCP]))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.quota.asked), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.server.allocator.pendingAllocates, 0)
        self.quota.grant()
        self.assertEqual(self.quota.released, ["alice"])
        self.assertEqual(len(self.server.registry), 0)
        self.assertEqual(reactor.tcpPorts, [])
        self.assertEqual(transport.value(), b"")
