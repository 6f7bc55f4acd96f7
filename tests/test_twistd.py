"""
The twistd plugin end to end: the real C{twistd} in a child process, found
through the plugin system from this checkout, serving real sockets.
"""

from __future__ import annotations

import os
import re
import signal

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests._processes import (
    ChildProcess,
    pythonEnvironment,
    runToCompletion,
    spawn,
    turnrelayCommand,
    twistdCommand,
)
from tests._sockets import bindingRequest, datagramClient, mappedAddress, streamClient
from tests._timing import reactor
from turnrelay.config import SETTINGS
from turnrelay.stun.address import TransportAddress


class TwistdTests(TestCase):
    """
    C{twistd turnrelay}.
    """

    # A safety net: every wait below ends as soon as what it waits for
    # happens, and cleanup kills a twistd still running.
    timeout = 60

    def _workingDirectory(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    async def test_serves(self) -> None:
        """
        twistd runs the plugin, logs the port of each listener, answers
        Binding over UDP and TCP, and exits cleanly on SIGTERM.
        """
        args = turnrelayCommand(listen=["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"])
        twistd = spawn(self, args, env=pythonEnvironment(), path=self._workingDirectory())
        udpLine = await twistd.waitForOutput(rb"listening for udp on 127\.0\.0\.1:(\d+)")
        tcpLine = await twistd.waitForOutput(rb"listening for tcp on 127\.0\.0\.1:(\d+)")
        udpServer = TransportAddress("127.0.0.1", int(udpLine.group(1)))
        tcpServer = TransportAddress("127.0.0.1", int(tcpLine.group(1)))

        udpClient = datagramClient(self, "127.0.0.1")
        transactionID, request = bindingRequest()
        udpClient.send(request, udpServer)
        mapped = mappedAddress(self, await udpClient.receive(), transactionID)
        self.assertEqual(mapped, udpClient.address)

        tcpClient = await streamClient(self, tcpServer)
        transactionID, request = bindingRequest()
        tcpClient.send(request)
        mapped = mappedAddress(self, await tcpClient.frames.get(), transactionID)
        self.assertEqual(mapped, tcpClient.address)
        await tcpClient.close()

        twistd.signal("TERM")
        await twistd.whenEnded()
        # After shutting down, twistd ends itself with the signal that
        # stopped it (twisted.application.app._exitWithSignal), as a Unix
        # program should: that, not status 0, is its clean exit.
        self.assertEqual(twistd.endStatus, (None, signal.SIGTERM), (twistd.output, twistd.errors))
        self.assertIn(b"Main loop terminated.", twistd.output)
        self.assertIn(b"Server Shut Down.", twistd.output)
        for sign in [b"Traceback", b"Unhandled", b"CRITICAL"]:
            self.assertNotIn(sign, twistd.output + twistd.errors)

    async def test_badListen(self) -> None:
        """
        A bad --listen value stops twistd with a non-zero status and a
        message that names the value and the syntax expected.
        """
        args = turnrelayCommand(listen=["bogus:1"])
        twistd = await runToCompletion(
            self, args, env=pythonEnvironment(), path=self._workingDirectory()
        )
        self.assertNotIn(twistd.exitCode, (0, None))
        output = twistd.output + twistd.errors
        self.assertIn(b"bogus:1", output)
        self.assertIn(b"expected", output)
        self.assertIn(b"TRANSPORT:PORT", output)
        self.assertNotIn(b"Traceback", output)

    async def test_help(self) -> None:
        """
        C{twistd turnrelay --help} lists every setting of the settings table.
        """
        args = twistdCommand() + ["turnrelay", "--help"]
        twistd = await runToCompletion(
            self, args, env=pythonEnvironment(), path=self._workingDirectory()
        )
        self.assertEqual(twistd.exitCode, 0, (twistd.output, twistd.errors))
        for setting in SETTINGS:
            # "--name=VALUE" for an option with a value, "--name" for a flag.
            option = re.compile(rb"--" + re.escape(setting.name.encode("ascii")) + rb"[=\s]")
            self.assertIsNotNone(option.search(twistd.output), (setting.name, twistd.output))

    async def test_logFileBounded(self) -> None:
        """
        With --logfile, twistd's log keeps its text format but is rotated at
        --log-max-bytes with at most --log-max-files rotated files kept,
        however much is logged.
        """
        path = os.path.abspath(self._workingDirectory())
        logName = os.path.join(path, "relay.log")
        args = turnrelayCommand(
            "--log-level",
            "debug",
            "--log-max-bytes",
            "10000",
            "--log-max-files",
            "2",
            listen=["udp:0:interface=127.0.0.1"],
            twistdOptions=["--logfile", logName],
        )
        twistd = spawn(self, args, env=pythonEnvironment(), path=path)
        line = await waitForFile(twistd, logName, rb"listening for udp on 127\.0\.0\.1:(\d+)")
        server = TransportAddress("127.0.0.1", int(line.group(1)))
        client = datagramClient(self, "127.0.0.1")
        # Each junk datagram is a debug line of about 150 bytes; a Binding
        # round trip after each batch says the batch has been read.
        for _ in range(10):
            for _ in range(50):
                client.send(b"\xff" * 100, server)
            transactionID, request = bindingRequest()
            client.send(request, server)
            mappedAddress(self, await client.receive(), transactionID)
        twistd.signal("TERM")
        await twistd.whenEnded()
        names = sorted(name for name in os.listdir(path) if name.startswith("relay.log"))
        self.assertEqual(names, ["relay.log", "relay.log.1", "relay.log.2"])
        for name in names:
            self.assertLessEqual(os.path.getsize(os.path.join(path, name)), 10000 + 500)
        with open(logName, "rb") as f:
            last = f.read()
        self.assertIn(b"Server Shut Down.", last)
        # twistd's text format: time, [namespace#level], message.
        self.assertRegex(
            last, rb"(?m)^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} \[[\w.]+#debug\] dropped a 100-byte"
        )
        # The log went to the file, not to standard output.
        self.assertNotIn(b"listening for", twistd.output)


async def waitForFile(twistd: ChildProcess, name: str, pattern: bytes) -> re.Match[bytes]:
    """
    Wait until the file C{name} holds a match of C{pattern}, polling it;
    fail if C{twistd} ends first.  The test's timeout bounds the wait.
    """
    compiled = re.compile(pattern)
    while True:
        try:
            with open(name, "rb") as f:
                match = compiled.search(f.read())
        except FileNotFoundError:
            match = None
        if match is not None:
            return match
        if twistd.endReason is not None:
            raise AssertionError(f"twistd ended: {twistd.output!r} {twistd.errors!r}")
        await deferLater(reactor, 0.05, lambda: None)
