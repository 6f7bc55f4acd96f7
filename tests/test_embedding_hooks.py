"""
The extension points for applications that embed the relay: their own
credential store, allocation observers, a peer filter, and ending a user's
or a call's allocations; and that importing turnrelay installs no reactor.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests._assertions import TURNTestCase
from tests._relays import CLIENT_HOST, LISTENER, PEER_A, PEER_B, fakeConfig
from tests._session import TURNClient
from turnrelay.auth.credentials import IClientCredentialStore, StaticCredentials
from turnrelay.interfaces import IAllocationObserver
from turnrelay.logs import logLevel
from turnrelay.service import RelayService, makeRelayService
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import Method
from turnrelay.testing import FakeClientLink, FakeUDPReactor
from turnrelay.turn.allocation import Allocation

REALM = "example.org"


@implementer(IClientCredentialStore)
class ApplicationUsers:
    """
    An application's user database that lets C{bob} in over TCP only, and
    records who asked.
    """

    def __init__(self) -> None:
        self._static = StaticCredentials(REALM, {"bob": "bob's password"})
        self.asked: List[Tuple[str, TransportAddress, Optional[str]]] = []

    def keysFor(self, username: str, realm: str, algorithm: int) -> List[bytes]:
        return []

    def keysForClient(
        self,
        username: str,
        realm: str,
        algorithm: int,
        clientAddress: TransportAddress,
        transport: Optional[str],
    ) -> List[bytes]:
        self.asked.append((username, clientAddress, transport))
        if transport != "tcp":
            return []
        return self._static.keysFor(username, realm, algorithm)

    def usernameForHash(self, userhash: bytes, realm: str) -> Optional[str]:
        return None


@implementer(IAllocationObserver)
class Recorder:
    """
    Records every lifecycle event.
    """

    def __init__(self) -> None:
        self.events: List[Tuple[Any, ...]] = []

    def allocationCreated(self, allocation: Any) -> None:
        self.events.append(("created", allocation.username))

    def allocationRefreshed(self, allocation: Any, lifetime: float) -> None:
        self.events.append(("refreshed", allocation.username, lifetime))

    def allocationPermissionAdded(self, allocation: Any, host: str) -> None:
        self.events.append(("permission", allocation.username, host))

    def allocationEnded(self, allocation: Any, reason: str, usage: Dict[str, Any]) -> None:
        self.events.append(("ended", allocation.username, reason, usage["packetsToPeer"]))


class HooksTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.store = ApplicationUsers()
        self.recorder = Recorder()
        self.refused: List[Tuple[Allocation, TransportAddress]] = []
        self.config = fakeConfig(realm=REALM)
        self.relay: RelayService = makeRelayService(
            self.config,
            self.reactor,
            credentials=self.store,
            observers=[self.recorder],
            peerFilter=self.peerFilter,
        )
        self.server = self.relay.server
        self._port = 41000

    def peerFilter(self, allocation: Allocation, peer: TransportAddress) -> Optional[str]:
        if peer.host == PEER_B.host:
            self.refused.append((allocation, peer))
            return "not in this call"
        return None

    def client(
        self, username: str = "alice", password: Optional[str] = None, transport: str = "udp"
    ) -> TURNClient:
        self._port += 1
        link = FakeClientLink(
            TransportAddress(CLIENT_HOST, self._port), LISTENER, transportProtocol=transport
        )
        if password is None:
            from tests._relays import USERS

            password = USERS[username]
        return TURNClient(self.server, link, username, password)


class CredentialStoreTests(HooksTestCase):
    """
    The application's credential store is asked with the client's address
    and transport, first, and survives a configuration reload.
    """

    def test_interface(self) -> None:
        """
        The test's store provides L{IClientCredentialStore}.
        """
        self.assertTrue(verifyObject(IClientCredentialStore, self.store))

    def test_seesClientAndTransport(self) -> None:
        """
        The store sees the client's address and transport and decides: bob
        gets in over TCP, not over UDP.
        """
        self.assertErrorCode(self.client("bob", "bob's password").allocate(), 401)
        tcp = self.client("bob", "bob's password", transport="tcp")
        self.assertSuccess(tcp.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP)]))
        self.assertIn(("bob", tcp.link.clientAddress, "tcp"), self.store.asked)

    def test_configuredUsersStillWork(self) -> None:
        """
        The configured users are still accepted beside the store.
        """
        self.assertSuccess(self.client("alice").allocate())

    def test_survivesReload(self) -> None:
        """
        reloadConfig replaces the configured stores but keeps the
        application's.
        """
        self.relay.reloadConfig(fakeConfig(realm=REALM, software="reloaded"))
        tcp = self.client("bob", "bob's password", transport="tcp")
        self.assertSuccess(tcp.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP)]))


class ObserverTests(HooksTestCase):
    """
    Observers hear of every allocation's life, whatever the log level.
    """

    def test_interface(self) -> None:
        """
        The recorder provides L{IAllocationObserver}.
        """
        self.assertTrue(verifyObject(IAllocationObserver, self.recorder))

    def test_lifecycle(self) -> None:
        """
        Created, refreshed, permission added and ended (with usage) are
        delivered, with the log level at error.
        """
        self.relay.reloadConfig(fakeConfig(realm=REALM, log_level="error"))
        self.addCleanup(self.relay.reloadConfig, self.config)
        client = self.client()
        self.assertSuccess(client.allocate())
        self.assertSuccess(client.request(Method.REFRESH, [(A.LIFETIME, 1200)]))
        self.assertSuccess(client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)]))
        client.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER_A), (A.DATA, b"hello"))
        self.assertSuccess(client.request(Method.REFRESH, [(A.LIFETIME, 0)]))
        self.assertEqual(
            self.recorder.events,
            [
                ("created", "alice"),
                ("refreshed", "alice", 1200),
                ("permission", "alice", PEER_A.host),
                ("ended", "alice", "deleted", 1),
            ],
        )

    def test_failingObserver(self) -> None:
        """
        An observer that raises is logged and the relay and later observers
        go on.
        """

        @implementer(IAllocationObserver)
        class Broken(Recorder):
            def allocationCreated(self, allocation: Any) -> None:
                raise RuntimeError("observer bug")

        registry = self.server.registry
        registry.removeObserver(self.recorder)
        registry.addObserver(Broken())
        registry.addObserver(self.recorder)
        self.assertSuccess(self.client().allocate())
        self.assertEqual(self.recorder.events, [("created", "alice")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PeerFilterTests(HooksTestCase):
    """
    The application's peer filter refuses peers after the built-in policy.
    """

    def setUp(self) -> None:
        super().setUp()
        self.alice = self.client()
        self.assertSuccess(self.alice.allocate())

    def test_createPermission(self) -> None:
        """
        A peer the filter refuses gets 403, and no permission of the request
        is installed; others pass.
        """
        response = self.alice.request(
            Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A), (A.XOR_PEER_ADDRESS, PEER_B)]
        )
        self.assertErrorCode(response, 403)
        self.assertEqual(self.alice.link.allocation.permissions, {})
        self.assertEqual(self.refused[0][1], PEER_B)
        self.assertSuccess(
            self.alice.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        )

    def test_channelBind(self) -> None:
        """
        ChannelBind to a refused peer gets 403.
        """
        response = self.alice.request(
            Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, 0x4000), (A.XOR_PEER_ADDRESS, PEER_B)]
        )
        self.assertErrorCode(response, 403)

    def test_policyFirst(self) -> None:
        """
        A peer the built-in policy denies never reaches the filter.
        """
        denied = TransportAddress("203.0.113.5", 5000)
        response = self.alice.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, denied)])
        self.assertErrorCode(response, 403)
        self.assertEqual(self.refused, [])

    def test_sendIndication(self) -> None:
        """
        A Send indication to a peer the filter refuses (after its
        permission was installed) is dropped.
        """
        self.assertSuccess(
            self.alice.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        )
        allocation = self.alice.link.allocation
        self.server.peerFilter = lambda allocation, peer: "call over"
        self.alice.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER_A), (A.DATA, b"x"))
        self.assertEqual((allocation.packetsToPeer, allocation.droppedInvalid), (0, 1))
        self.server.peerFilter = None
        self.alice.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER_A), (A.DATA, b"x"))
        self.assertEqual(allocation.packetsToPeer, 1)

    def test_failingFilter(self) -> None:
        """
        A filter that raises is logged and refuses: 403 for requests, a drop
        for Send indications.
        """
        self.assertSuccess(
            self.alice.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        )

        def broken(allocation: Allocation, peer: TransportAddress) -> Optional[str]:
            raise RuntimeError("filter bug")

        self.server.peerFilter = broken
        response = self.alice.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, PEER_A)])
        self.assertErrorCode(response, 403)
        self.alice.indication(Method.SEND, (A.XOR_PEER_ADDRESS, PEER_A), (A.DATA, b"x"))
        self.assertEqual(self.alice.link.allocation.packetsToPeer, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_connect(self) -> None:
        """
        Connect (RFC 6062) to a peer the filter refuses gets 403, and no
        connection is attempted.
        """
        tcp = self.client(transport="tcp")
        self.assertSuccess(tcp.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_TCP)]))
        self.assertErrorCode(tcp.request(Method.CONNECT, [(A.XOR_PEER_ADDRESS, PEER_B)]), 403)
        self.assertEqual(self.reactor.tcpClients, [])


class EndAllocationsTests(HooksTestCase):
    """
    The application ends a user's or a call's allocations.
    """

    def test_byUser(self) -> None:
        """
        endAllocations(username=) ends that user's allocations only, tells
        observers, and returns the count.
        """
        first, second, other = self.client(), self.client(), self.client("bob", "x")
        self.assertSuccess(first.allocate())
        self.assertSuccess(second.allocate())
        self.assertEqual(self.relay.endAllocations(username="alice"), 2)
        self.assertEqual(len(self.server.registry), 0)
        self.assertIsNone(first.link.allocation)
        ended = [event for event in self.recorder.events if event[0] == "ended"]
        self.assertEqual(len(ended), 2)
        self.assertEqual(ended[0][2], "ended by the application")
        self.assertEqual(self.relay.endAllocations(username=other.username), 0)

    def test_byPredicate(self) -> None:
        """
        A predicate picks a call's allocations (here, by client port).
        """
        first, second = self.client(), self.client()
        self.assertSuccess(first.allocate())
        self.assertSuccess(second.allocate())
        port = first.link.clientAddress.port
        ended = self.relay.endAllocations(
            predicate=lambda allocation: allocation.fiveTuple.clientAddress.port == port,
            reason="call 7 hung up",
        )
        self.assertEqual(ended, 1)
        self.assertIsNone(first.link.allocation)
        self.assertIsNotNone(second.link.allocation)
        self.assertEqual(self.recorder.events[-1], ("ended", "alice", "call 7 hung up", 0))

    def test_needsACondition(self) -> None:
        """
        Without a username or a predicate it refuses to end everything.
        """
        self.assertRaises(ValueError, self.relay.endAllocations)


class LogLevelTests(HooksTestCase):
    """
    Each relay has its own log level: two relays in one process, one of
    them at debug, log as each was set.
    """

    def test_perRelay(self) -> None:
        """
        A debug level set on one relay (as the console's C{loglevel()}
        does) shows that relay's debug events, not the other's, and leaves
        the process's level alone.
        """
        other = makeRelayService(fakeConfig(realm=REALM), self.reactor)
        self.relay.logLevels.setLevel("debug")
        link = FakeClientLink(TransportAddress(CLIENT_HOST, 40000), LISTENER)
        with capturedLogs() as events:
            for relay in (self.relay, other):
                relay.server.stunReceived(b"\x00\x01\x00\x00", link)
        [event] = [e for e in events if e["log_level"] == LogLevel.debug]
        self.assertIs(event["log_source"], self.server)
        self.assertEqual((other.logLevels.level(), logLevel()), ("info", "info"))

    def test_configured(self) -> None:
        """
        Each relay starts at its configuration's log-level.
        """
        other = makeRelayService(fakeConfig(realm=REALM, log_level="error"), self.reactor)
        self.assertEqual((self.relay.logLevels.level(), other.logLevels.level()), ("info", "error"))
        self.assertEqual(logLevel(), "info")


class NoReactorTests(SynchronousTestCase):
    """
    Importing turnrelay installs no reactor.
    """

    def test_importsInstallNoReactor(self) -> None:
        """
        Importing every turnrelay module in a fresh interpreter leaves
        C{twisted.internet.reactor} out of C{sys.modules}; the one exception
        is the console's private SSH session module (conch's classes it
        subclasses import the reactor), which nothing imports until a
        console starts.
        """
        script = (
            "import pkgutil, sys, importlib, turnrelay\n"
            "modules = pkgutil.walk_packages(turnrelay.__path__, 'turnrelay.')\n"
            "names = sorted(m.name for m in modules)\n"
            f"names.remove({SSH_SESSION!r})\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "    if 'twisted.internet.reactor' in sys.modules:\n"
            "        print('installed by', name); break\n"
            f"print('loaded' if {SSH_SESSION!r} in sys.modules else 'lazy')\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        self.assertEqual(result.stdout, "lazy\n")


SSH_SESSION = "turnrelay.admin._sshsession"
