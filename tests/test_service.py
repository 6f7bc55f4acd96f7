"""
Tests for L{turnrelay.service}, the service tree embedders and twistd use.
"""

from __future__ import annotations

import signal

from twisted.application.service import IService, MultiService
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from turnrelay.config import RelayConfig, parseListen
from turnrelay.service import ListenerService, RelayService, makeRelayService
from turnrelay.stun.address import TransportAddress
from turnrelay.testing import FakeUDPReactor
from turnrelay.transports.stream import STUNStreamFactory
from turnrelay.transports.udp import STUNDatagramProtocol

CONFIG = RelayConfig(
    listeners=(
        parseListen("udp:0:interface=127.0.0.1"),
        parseListen("tcp:3478:interface=::1"),
        parseListen("udp:5000:interface=::"),
    ),
    software="embedded",
)


class MakeRelayServiceTests(SynchronousTestCase):
    """
    Tests for L{makeRelayService}.
    """

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.relay = makeRelayService(CONFIG, self.reactor)

    def test_isService(self) -> None:
        """
        The relay is a MultiService holding one listener per configured socket.
        """
        self.assertIsInstance(self.relay, MultiService)
        self.assertTrue(verifyObject(IService, self.relay))
        self.assertEqual(
            [child.listener for child in self.relay if isinstance(child, ListenerService)],
            list(CONFIG.listeners),
        )
        self.assertIs(self.relay.config, CONFIG)
        self.assertEqual(self.relay.server.software, "embedded")

    def test_nothingBeforeStart(self) -> None:
        """
        Building the relay opens no socket.
        """
        self.assertEqual(self.reactor.udpPorts, [])
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.relay.listeningAddresses(), [])

    def test_startListens(self) -> None:
        """
        Starting the relay listens on every configured socket, all sharing one
        controller.
        """
        self.relay.startService()
        self.assertEqual(
            [(p.host, p.portNumber) for p in self.reactor.udpPorts],
            [("127.0.0.1", 40000), ("::", 5000)],
        )
        protocols = [port.protocol for port in self.reactor.udpPorts]
        self.assertTrue(all(isinstance(p, STUNDatagramProtocol) for p in protocols))
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (3478, "::1"))
        self.assertIsInstance(factory, STUNStreamFactory)
        servers = {p.server for p in protocols} | {factory.server}  # type: ignore[attr-defined]
        self.assertEqual(servers, {self.relay.server})

    def test_listeningAddresses(self) -> None:
        """
        listeningAddresses reports the UDP ports actually bound.
        """
        self.relay.startService()
        addresses = self.relay.listeningAddresses()
        self.assertIn(("udp", TransportAddress("127.0.0.1", 40000)), addresses)
        self.assertIn(("udp", TransportAddress("::", 5000)), addresses)

    def test_stopClosesPorts(self) -> None:
        """
        Stopping the relay closes its listening sockets.
        """
        self.relay.startService()
        self.relay.stopService()
        self.assertFalse(any(port.listening for port in self.reactor.udpPorts))
        self.assertEqual(self.relay.listeningAddresses(), [])

    def test_attachToParent(self) -> None:
        """
        An embedder attaches the relay to its own service tree and it starts
        and stops with it.
        """
        application = MultiService()
        self.relay.setServiceParent(application)
        application.startService()
        self.assertTrue(self.relay.running)
        self.assertEqual(len(self.reactor.udpPorts), 2)
        application.stopService()
        self.assertFalse(self.relay.running)

    def test_noGlobalSideEffects(self) -> None:
        """
        Building and starting the relay installs no signal handler and no log observer.
        """
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
        observers = list(globalLogPublisher._observers)
        relay = makeRelayService(CONFIG, FakeUDPReactor())
        relay.startService()
        relay.stopService()
        self.assertEqual(
            {s: signal.getsignal(s) for s in handlers}, handlers, "signal handlers changed"
        )
        self.assertEqual(list(globalLogPublisher._observers), observers)

    def test_relayServiceType(self) -> None:
        """
        makeRelayService returns a L{RelayService}.
        """
        self.assertIsInstance(self.relay, RelayService)
