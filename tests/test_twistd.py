"""
The twistd plugin end to end: the real C{twistd} in a child process, found
through the plugin system from this checkout, serving real sockets.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import List

from twisted.trial.unittest import TestCase

from tests._loopback import (
    bindingRequest,
    datagramClient,
    mappedAddress,
    pythonEnvironment,
    runToCompletion,
    spawn,
    streamClient,
)
from turnrelay.config import SETTINGS
from turnrelay.stun.address import TransportAddress


def twistdCommand() -> List[str]:
    """
    @return: the command that runs the twistd of this Python.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


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
        args = twistdCommand() + [
            "--nodaemon",
            "--pidfile=",
            "turnrelay",
            "--listen",
            "udp:0:interface=127.0.0.1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ]
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
        args = twistdCommand() + ["--nodaemon", "--pidfile=", "turnrelay", "--listen", "bogus:1"]
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
