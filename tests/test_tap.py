"""
Tests for L{turnrelay.tap} and the twistd plugin.
"""

from __future__ import annotations

import resource
import signal
from typing import Sequence, cast

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from turnrelay import tap
from turnrelay.config import SETTINGS, ListenerConfig, RelayConfig
from turnrelay.logs import logLevel, setLogLevel
from turnrelay.offload.kernelpath import KernelPathService
from turnrelay.service import ListenerService, RelayService, makeRelayService
from turnrelay.testing import FakeUDPReactor


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{tap.Options}.
    """

    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        """
        Without options the configuration is the safe default.
        """
        self.assertEqual(self.parse().config, RelayConfig())

    def test_listenRepeatable(self) -> None:
        """
        --listen may be given several times, in order.
        """
        config = self.parse("--listen", "udp:1", "--listen", "tcp:2:interface=::").config
        self.assertEqual(
            config.listeners,
            (ListenerConfig("udp", 1, "127.0.0.1"), ListenerConfig("tcp", 2, "::")),
        )

    def test_software(self) -> None:
        """
        --software sets the SOFTWARE attribute.
        """
        self.assertEqual(self.parse("--software", "relay").config.software, "relay")

    def test_badListen(self) -> None:
        """
        A bad --listen value is a usage error naming the value and the syntax.
        """
        error = self.assertRaises(UsageError, self.parse, "--listen", "udp:x")
        self.assertIn("'udp:x'", str(error))
        self.assertIn("expected", str(error))

    def test_helpListsEverySetting(self) -> None:
        """
        --help documents every setting.
        """
        usage = tap.Options().getUsage()
        for setting in SETTINGS:
            self.assertIn("--" + setting.name, usage)

    def test_helpFromDeclarations(self) -> None:
        """
        Each option's --help text is its setting's, with the value's name and
        the real default; flags take no value.
        """
        options = tap.Options()
        for setting in SETTINGS:
            self.assertEqual(options.docs[setting.name], setting.optionHelp())
            self.assertEqual(setting.name in options.longOpt, setting.flag, setting.name)
        usage = " ".join(options.getUsage().split())
        self.assertIn("tls:5349:interface=127.0.0.1]", usage)

    def writeFile(self, content: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(content)
        return path

    def test_configFile(self) -> None:
        """
        --config reads settings from a TOML file.
        """
        path = self.writeFile('listen = ["udp:7"]\nsoftware = "from file"\n')
        config = self.parse("--config", path).config
        self.assertEqual(config.listeners, (ListenerConfig("udp", 7, "127.0.0.1"),))
        self.assertEqual(config.software, "from file")

    def test_commandLineOverridesFile(self) -> None:
        """
        An option on the command line wins over the same setting in the file.
        """
        path = self.writeFile('listen = ["udp:7"]\nsoftware = "from file"\n')
        config = self.parse("--config", path, "--software", "cli", "--listen", "tcp:8").config
        self.assertEqual(config.listeners, (ListenerConfig("tcp", 8, "127.0.0.1"),))
        self.assertEqual(config.software, "cli")

    def test_badConfigFile(self) -> None:
        """
        A bad configuration file is a usage error naming the file.
        """
        path = self.writeFile('listen = ["bogus:1"]\n')
        error = self.assertRaises(UsageError, self.parse, "--config", path)
        self.assertIn("'bogus:1'", str(error))


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{tap.makeService} and plugin discovery.
    """

    def test_serviceTree(self) -> None:
        """
        makeService builds a relay with one listener service per --listen,
        and its kernel path.
        """
        options = tap.Options()
        options.parseOptions(["--listen", "udp:0", "--listen", "tcp:0:interface=::1"])
        reactor = FakeUDPReactor()
        service = tap.makeService(options, reactor=reactor)
        assert isinstance(service, RelayService)
        children = list(service)
        self.assertEqual(
            [type(child) for child in children],
            [KernelPathService, ListenerService, ListenerService],
        )
        service.startService()
        self.assertEqual(len(reactor.udpPorts), 1)
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual(reactor.tcpServers[0][3], "::1")
        service.stopService()

    def test_pluginDiscovered(self) -> None:
        """
        twistd finds the turnrelay plugin, pointing at turnrelay.tap.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("turnrelay", makers)
        maker = makers["turnrelay"]
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)


class SignalTests(SynchronousTestCase):
    """
    twistd's signals: SIGHUP reloads, SIGUSR2 drains and exits.
    """

    def setUp(self) -> None:
        for signum in (signal.SIGHUP, signal.SIGUSR2):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        self.configFile = self.mktemp()
        with open(self.configFile, "w") as f:
            f.write('listen = ["udp:0"]\nuser = ["alice:first-password"]\n')
        self.options = tap.Options()
        self.options.parseOptions(["--config", self.configFile])
        self.reactor = FakeUDPReactor()
        self.reactor.callFromThread = lambda f, *a, **kw: f(*a, **kw)  # type: ignore[attr-defined]
        self.relay = cast(RelayService, tap.makeService(self.options, reactor=self.reactor))

    def started(self) -> None:
        [(trigger, args, kwargs)] = self.reactor.triggers["after"]["startup"]
        trigger(*args, **kwargs)

    def deliver(self, signum: int) -> None:
        handler = signal.getsignal(signum)
        assert callable(handler)
        handler(signum, None)

    def test_noHandlersBeforeStart(self) -> None:
        """
        Building the service installs no signal handler.
        """
        before = [signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR2)]
        tap.makeService(self.options, reactor=FakeUDPReactor())
        after = [signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR2)]
        self.assertEqual(after, before)

    def test_sighupReloadsConfigFile(self) -> None:
        """
        SIGHUP re-reads the configuration file and puts it in force.
        """
        self.started()
        with open(self.configFile, "w") as f:
            f.write('listen = ["udp:0"]\nuser = ["bob:second-password"]\nlog-level = "warn"\n')
        self.deliver(signal.SIGHUP)
        self.assertEqual([name for name, _ in self.relay.config.users], ["bob"])
        self.assertEqual(self.relay.config.logLevel, "warn")
        self.assertEqual(logLevel(), "warn")
        setLogLevel("info")

    def test_sighupKeepsOldOnError(self) -> None:
        """
        A broken configuration file on SIGHUP changes nothing.
        """
        self.started()
        with open(self.configFile, "w") as f:
            f.write("listen = [\n")
        self.deliver(signal.SIGHUP)
        self.assertEqual([name for name, _ in self.relay.config.users], ["alice"])

    def test_sigusr2Drains(self) -> None:
        """
        SIGUSR2 drains the relay and stops the reactor once it is drained.
        """
        self.started()
        self.deliver(signal.SIGUSR2)
        self.assertTrue(self.relay.server.draining)
        self.assertTrue(self.reactor.hasStopped)


class LogFileTests(SynchronousTestCase):
    """
    Under twistd with a log file, the file's disk use is bounded by
    log-max-bytes and log-max-files.
    """

    def twistdOptions(self, *argv: str, relay: Sequence[str] = ()) -> tap.Options:
        """
        Parse a twistd command line, C{twistd ARGV turnrelay --listen udp:0
        RELAY}.

        @return: turnrelay's options, their C{parent} twistd's.
        """
        from twisted.scripts.twistd import ServerOptions

        options = ServerOptions()
        options.parseOptions([*argv, "turnrelay", "--listen", "udp:0", *relay])
        subOptions = options.subOptions
        assert isinstance(subOptions, tap.Options)
        return subOptions

    def test_whichFile(self) -> None:
        """
        The file is twistd's --logfile, or twistd.log for a daemon; none
        when twistd logs to standard output, to syslog or to a --logger.
        """
        self.assertEqual(tap.twistdLogFile(self.twistdOptions("--logfile", "x.log")), "x.log")
        self.assertEqual(tap.twistdLogFile(self.twistdOptions()), "twistd.log")
        for argv in (
            ["--nodaemon"],
            ["--nodaemon", "--logfile", "-"],
            ["--syslog"],
            ["--logfile", "x.log", "--logger", "turnrelay.logs.jsonLogObserver"],
        ):
            self.assertIsNone(tap.twistdLogFile(self.twistdOptions(*argv)), argv)
        self.assertIsNone(tap.twistdLogFile(tap.Options()))

    def test_boundedObserver(self) -> None:
        """
        Made a child of twistd's application, the relay gives it a text log
        observer writing to a file rotated at log-max-bytes, keeping
        log-max-files rotated files.
        """
        from twisted.application.service import Application
        from twisted.logger import ILogObserver, LogLevel

        path = FilePath(self.mktemp())
        path.makedirs()
        logName = path.child("relay.log").path
        options = self.twistdOptions(
            "--logfile", logName, relay=["--log-max-bytes", "10000", "--log-max-files", "2"]
        )
        relay = tap.makeService(options, reactor=FakeUDPReactor())
        assert isinstance(relay, tap.TwistdRelayService)
        application = Application("turnrelay")
        relay.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        logFile = relay.logFile
        assert logFile is not None
        self.addCleanup(logFile.close)
        self.assertEqual((logFile.rotateLength, logFile.maxRotatedFiles), (10000, 2))
        for n in range(500):
            observer(
                {
                    "log_format": "line {n} of a log that must not grow for ever",
                    "n": n,
                    "log_level": LogLevel.info,
                    "log_namespace": "test",
                    "log_time": 0.0,
                }
            )
        names = sorted(child.basename() for child in path.children())
        self.assertEqual(names, ["relay.log", "relay.log.1", "relay.log.2"])
        self.assertIn(b"line 499 of a log", path.child("relay.log").getContent())
        for child in path.children():
            self.assertLessEqual(child.getsize(), 10000 + 200)

    def test_sigusr1Rotates(self) -> None:
        """
        SIGUSR1 rotates the bounded log file, as it does twistd's own.
        """
        from twisted.application.service import Application

        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        path = FilePath(self.mktemp())
        path.makedirs()
        reactor = FakeUDPReactor()
        reactor.callFromThread = lambda f, *a, **kw: f(*a, **kw)  # type: ignore[attr-defined]
        options = self.twistdOptions("--logfile", path.child("relay.log").path)
        relay = tap.makeService(options, reactor=reactor)
        relay.setServiceParent(Application("turnrelay"))
        assert isinstance(relay, tap.TwistdRelayService) and relay.logFile is not None
        self.addCleanup(relay.logFile.close)
        relay.logFile.write("before\n")
        [(trigger, args, kwargs)] = reactor.triggers["after"]["startup"]
        trigger(*args, **kwargs)
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        handler(signal.SIGUSR1, None)
        self.assertEqual(path.child("relay.log.1").getContent(), b"before\n")

    def test_notUnderTwistdApplication(self) -> None:
        """
        Attached to any other parent (an embedder's service), the relay sets
        up no log file.
        """
        from twisted.application.service import MultiService

        options = self.twistdOptions("--logfile", self.mktemp())
        relay = tap.makeService(options, reactor=FakeUDPReactor())
        relay.setServiceParent(MultiService())
        self.assertIsNone(getattr(relay, "logFile", None))


class DescriptorLimitTests(SynchronousTestCase):
    """
    twistd raises the descriptor limit the relay's budget is sized to.
    """

    def test_raisedToHardLimit(self) -> None:
        """
        The soft limit is raised to the hard one (capped), and the relay's
        descriptor budget follows it.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = tap.MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else hard
        wanted = min(wanted, tap.MAX_DESCRIPTORS)
        if wanted <= 256:
            raise SkipTest(f"the hard descriptor limit ({hard}) leaves nothing to raise")
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        config = RelayConfig(listeners=(ListenerConfig("udp", 0, "127.0.0.1"),))
        relay = makeRelayService(config, FakeUDPReactor())
        tap.raiseDescriptorLimit(relay)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], wanted)
        assert relay.server.descriptors is not None
        self.assertEqual(relay.server.descriptors.limit, wanted)
