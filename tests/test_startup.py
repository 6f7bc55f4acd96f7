"""
Start-up failures of C{twistd turnrelay}, through the real twistd: each
ends with one line on standard error saying what is wrong and how to fix
it, exit status 1, no traceback, no usage text, and no demo banner (whose
password would never have been live).
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import signal
import socket
import sys
import tempfile
from typing import List, Optional, Sequence

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

import turnrelay
from tests._processes import (
    ChildProcess,
    pythonEnvironment,
    runToCompletion,
    spawn,
    turnrelayCommand,
    twistdCommand,
)
from tests._timing import PROMPTLY, within
from turnrelay.config import RelayConfig
from turnrelay.listening import ListenFailure, ListeningService
from turnrelay.tap import startupErrorMessage
from turnrelay.transports.tls import makeSelfSignedCertificate

# An address of TEST-NET-1 (RFC 5737), which no host of the tests has.
ABSENT_ADDRESS = "192.0.2.1"


def _readInt(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def unprivileged(testCase: SynchronousTestCase) -> List[str]:
    """
    The prefix that runs a command without root's privileges: none when
    the tests do not run as root, C{setpriv} as C{nobody} when they do.

    @raise SkipTest: running as root without C{setpriv} or a C{nobody} user.
    """
    if os.getuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise SkipTest("running as root without setpriv (util-linux): cannot drop privileges")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise SkipTest("running as root and there is no user 'nobody' to run as") from None
    return [
        setpriv,
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "--inh-caps=-all",
    ]


def _killDaemon(pidfile: str) -> None:
    # Only if a test failed: a daemon that started after all.
    pid = _readInt(pidfile)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class StartupFailureTests(TestCase):
    """
    What C{twistd turnrelay} says when it cannot start.
    """

    timeout = 60

    def _workingDirectory(self) -> str:
        # Outside the checkout, world-readable: some runs are as nobody.
        path = tempfile.mkdtemp(prefix="turnrelay-startup-")
        os.chmod(path, 0o755)
        self.addCleanup(shutil.rmtree, path, True)
        return path

    async def _fails(
        self,
        args: Sequence[str],
        prefix: Sequence[str] = (),
        path: Optional[str] = None,
    ) -> str:
        """
        Run twistd to its end, check that it failed as a start-up failure
        should, and return its one line.
        """
        child = await within(
            runToCompletion(
                self,
                [*prefix, *args],
                env=pythonEnvironment(),
                path=path or self._workingDirectory(),
            ),
            PROMPTLY * 3,
            "twistd to exit",
        )
        everything = child.output + child.errors
        self.assertEqual(child.exitCode, 1, (child.output, child.errors))
        for sign in [b"Traceback", b"Usage:", b"--help  ", b"turnrelay demo"]:
            self.assertNotIn(sign, everything)
        lines = child.errors.decode("utf-8", "replace").splitlines()
        self.assertEqual(len(lines), 1, child.errors)
        [line] = lines
        self.assertTrue(line.startswith("turnrelay: "), line)
        return line

    async def test_portInUse(self) -> None:
        """
        A port another socket holds: one line naming the address and saying
        to stop what holds it or choose another port; no demo banner.
        """
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        line = await self._fails(turnrelayCommand(listen=[f"udp:{port}:interface=127.0.0.1"]))
        self.assertIn(f"127.0.0.1:{port}", line)
        self.assertIn("in use", line)
        self.assertIn("choose another port in listen", line)

    async def test_jsonLogFormat(self) -> None:
        """
        With log-format json, the one line is a JSON object at level error,
        as every other line of the log is.
        """
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        args = turnrelayCommand("--log-format", "json", listen=[f"udp:{port}:interface=127.0.0.1"])
        child = await within(
            runToCompletion(self, args, env=pythonEnvironment(), path=self._workingDirectory()),
            PROMPTLY * 3,
            "twistd to exit",
        )
        self.assertEqual(child.exitCode, 1, (child.output, child.errors))
        [line] = child.errors.decode("utf-8").splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "error")
        self.assertIn(f"127.0.0.1:{port}", record["message"])
        self.assertTrue(record["message"].startswith("turnrelay: "), record)

    async def test_missingCertificate(self) -> None:
        """
        A tls listener whose certificate file does not exist: one line
        naming the file.
        """
        path = self._workingDirectory()
        missing = os.path.join(path, "missing.pem")
        line = await self._fails(
            turnrelayCommand(
                "--tls-cert",
                missing,
                "--tls-key",
                missing,
                listen=["tls:0:interface=127.0.0.1"],
            ),
            path=path,
        )
        self.assertIn(missing, line)
        self.assertIn("No such file", line)
        self.assertIn("existing PEM file", line)

    async def test_unreadableKey(self) -> None:
        """
        A private key the relay's user may not read (the unit's User=, not
        root): one line naming the key and saying to make it readable.
        """
        prefix = unprivileged(self)
        path = self._workingDirectory()
        cert, key = os.path.join(path, "cert.pem"), os.path.join(path, "key.pem")
        makeSelfSignedCertificate(cert, key)
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600 if prefix else 0o000)
        line = await self._fails(
            turnrelayCommand(
                "--tls-cert", cert, "--tls-key", key, listen=["tls:0:interface=127.0.0.1"]
            ),
            prefix=prefix,
            path=path,
        )
        self.assertIn(key, line)
        self.assertIn("Permission denied", line)
        self.assertIn("make it readable by the user the relay runs as", line)

    async def test_absentInterface(self) -> None:
        """
        An interface address the host does not have: one line naming it and
        saying to choose one of the host's addresses.
        """
        if _readInt("/proc/sys/net/ipv4/ip_nonlocal_bind") == 1:
            raise SkipTest("net.ipv4.ip_nonlocal_bind=1: this host binds any address")
        line = await self._fails(turnrelayCommand(listen=[f"udp:0:interface={ABSENT_ADDRESS}"]))
        self.assertIn(f"this host has no address {ABSENT_ADDRESS}", line)
        self.assertIn("choose one of its addresses", line)

    async def test_privilegedPort(self) -> None:
        """
        Port 443 without root or CAP_NET_BIND_SERVICE: one line naming the
        capability and the alternative.
        """
        prefix = unprivileged(self)
        start = _readInt("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        if start is not None and start <= 443:
            raise SkipTest(f"net.ipv4.ip_unprivileged_port_start={start}: anyone may bind 443")
        line = await self._fails(
            turnrelayCommand(listen=["tcp:443:interface=127.0.0.1"]), prefix=prefix
        )
        self.assertIn("127.0.0.1:443", line)
        self.assertIn("CAP_NET_BIND_SERVICE", line)
        self.assertIn("choose a port from 1024 up", line)

    async def test_unwritableStateDirectory(self) -> None:
        """
        A state directory that cannot be made (here, under a regular file,
        which stops root too): one line naming state-dir.
        """
        path = self._workingDirectory()
        aFile = os.path.join(path, "file")
        with open(aFile, "w"):
            pass
        stateDir = os.path.join(aFile, "state")
        line = await self._fails(
            turnrelayCommand("--state-dir", stateDir, listen=["tls:0:interface=127.0.0.1"]),
            path=path,
        )
        self.assertIn(f"state-dir {stateDir}", line)
        self.assertIn("set state-dir to one", line)

    async def test_readOnlyStateDirectory(self) -> None:
        """
        A state directory the relay's user may not create (inside a
        directory only root writes, run as another user): one line naming
        state-dir and the reason.
        """
        prefix = unprivileged(self)
        path = self._workingDirectory()
        if not prefix:
            os.chmod(path, 0o555)
            self.addCleanup(os.chmod, path, 0o755)
        stateDir = os.path.join(path, "state")
        line = await self._fails(
            turnrelayCommand("--state-dir", stateDir, listen=["tls:0:interface=127.0.0.1"]),
            prefix=prefix,
            path=path,
        )
        self.assertIn(f"state-dir {stateDir}: cannot write {stateDir}: Permission denied", line)

    async def test_consoleStateDirectory(self) -> None:
        """
        The admin console's host key, made as the console starts, in a state
        directory that cannot be made: the same one line.
        """
        path = self._workingDirectory()
        aFile = os.path.join(path, "file")
        with open(aFile, "w"):
            pass
        stateDir = os.path.join(aFile, "state")
        line = await self._fails(
            turnrelayCommand(
                "--state-dir",
                stateDir,
                "--manhole",
                "tcp:0:interface=127.0.0.1",
                "--manhole-passwords",
                os.path.join(path, "passwords"),
                listen=["udp:0:interface=127.0.0.1"],
            ),
            path=path,
        )
        self.assertIn(f"state-dir {stateDir}", line)

    async def test_daemonized(self) -> None:
        """
        Daemonized, twistd's first process prints the reason and exits 1,
        the log file has it whole, and the pid file is removed.
        """
        path = self._workingDirectory()
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        pidfile, logfile = os.path.join(path, "twistd.pid"), os.path.join(path, "twistd.log")
        self.addCleanup(_killDaemon, pidfile)
        args = twistdCommand() + [
            f"--pidfile={pidfile}",
            f"--logfile={logfile}",
            "turnrelay",
            "--listen",
            f"udp:{port}:interface=127.0.0.1",
        ]
        child = await within(
            runToCompletion(self, args, env=pythonEnvironment(), path=path),
            PROMPTLY * 3,
            "twistd to exit",
        )
        self.assertEqual(child.exitCode, 1, (child.output, child.errors))
        self.assertIn(b"the udp listener cannot listen on", child.errors)
        self.assertNotIn(b"Traceback", child.errors)
        self.assertFalse(os.path.exists(pidfile))
        with open(logfile) as f:
            log = f.read()
        self.assertIn(f"127.0.0.1:{port}: the port is in use", log)
        self.assertNotIn("Traceback", log)

    async def test_unknownOption(self) -> None:
        """
        An unknown option: one line pointing to --help, not the help itself.
        """
        line = await self._fails(turnrelayCommand("--no-such-option"))
        self.assertIn("--no-such-option", line)
        self.assertIn("`twistd turnrelay --help` lists the options", line)

    async def test_badSetting(self) -> None:
        """
        A bad setting's value: the setting's own one-line error.
        """
        line = await self._fails(turnrelayCommand("--max-port", "not-a-port"))
        self.assertIn("max-port", line)


class StartupTests(TestCase):
    """
    What C{twistd turnrelay} prints when it starts.
    """

    timeout = 60

    async def test_bannerAfterListening(self) -> None:
        """
        The loopback demo's banner (a made-up password) is printed only once
        the listeners are bound.
        """
        path = self.mktemp()
        os.makedirs(path)
        twistd = spawn(
            self,
            turnrelayCommand(listen=["udp:0:interface=127.0.0.1"]),
            env=pythonEnvironment(),
            path=path,
        )
        await within(twistd.waitForOutput(rb"turnrelay demo: "), PROMPTLY, "the banner")
        listening = twistd.output.find(b"listening for udp on 127.0.0.1:")
        self.assertNotEqual(listening, -1, twistd.output)
        self.assertLess(listening, twistd.output.find(b"turnrelay demo: "))
        await self._stop(twistd)

    async def _stop(self, twistd: ChildProcess) -> None:
        twistd.signal("TERM")
        await within(twistd.whenEnded(), PROMPTLY, "twistd to exit")

    async def test_version(self) -> None:
        """
        C{twistd turnrelay --version} prints turnrelay's version.
        """
        child = await runToCompletion(
            self, twistdCommand() + ["turnrelay", "--version"], env=pythonEnvironment()
        )
        self.assertEqual(child.exitCode, 0, child.errors)
        self.assertTrue(
            child.output.startswith(f"turnrelay {turnrelay.__version__} ".encode()),
            child.output,
        )

    async def test_controlCommandVersion(self) -> None:
        """
        C{turnrelayctl --version} prints turnrelay's version.
        """
        child = await runToCompletion(
            self, [sys.executable, "-m", "turnrelay.ctl", "--version"], env=pythonEnvironment()
        )
        self.assertEqual(child.exitCode, 0, child.errors)
        self.assertEqual(
            child.output, f"turnrelayctl (turnrelay) {turnrelay.__version__}\n".encode()
        )


class StartupErrorMessageTests(SynchronousTestCase):
    """
    L{startupErrorMessage}.
    """

    def test_bug(self) -> None:
        """
        An error that is not the operator's (a bug) gets no one-line
        message, so that it keeps its traceback.
        """
        self.assertIsNone(startupErrorMessage(KeyError("x"), RelayConfig()))
        self.assertIsNone(startupErrorMessage(OSError("no file name"), RelayConfig()))

    def test_otherFile(self) -> None:
        """
        An error on a file outside state-dir names the file and the reason.
        """
        error = PermissionError(13, "Permission denied", "/etc/x")
        self.assertEqual(
            startupErrorMessage(error, RelayConfig(stateDir="/var/lib/turnrelay")),
            "/etc/x: Permission denied; fix the path, or its permissions for the relay's user",
        )


class _Refused(ListeningService):
    """
    A service whose socket cannot be opened, for L{ListenFailure}.
    """

    def __init__(self, error: OSError, port: int = 3478, interface: str = "127.0.0.1") -> None:
        self.error, self.portNumber, self.interface = error, port, interface
        self.listener = RelayConfig().listeners[0]

    def listen(self) -> IListeningPort:
        raise CannotListenError(self.interface, self.portNumber, self.error)


class ListenFailureTests(SynchronousTestCase):
    """
    L{ListeningService.startService} says which socket failed, why, and
    what to do.
    """

    def fail_(self, service: ListeningService) -> str:
        error = self.assertRaises(ListenFailure, service.startService)
        self.assertIsInstance(error, CannotListenError)
        self.assertFalse(service.running)
        return str(error)

    def test_inUse(self) -> None:
        """
        A port in use: stop what holds it, or choose another port.
        """
        message = self.fail_(_Refused(OSError(errno.EADDRINUSE, "Address already in use")))
        self.assertTrue(message.startswith("the udp listener cannot listen on 127.0.0.1:3478: "))
        self.assertIn("choose another port in listen", message)

    def test_privileged(self) -> None:
        """
        A port below 1024, refused: the capability, or a higher port.
        """
        message = self.fail_(_Refused(OSError(errno.EACCES, "Permission denied"), 443))
        self.assertIn("CAP_NET_BIND_SERVICE", message)

    def test_absentAddress(self) -> None:
        """
        An address the host lacks: choose one it has; IPv6 in brackets.
        """
        error = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        message = self.fail_(_Refused(error, interface="2001:db8::1"))
        self.assertIn("[2001:db8::1]:3478", message)
        self.assertIn("this host has no address 2001:db8::1", message)

    def test_named(self) -> None:
        """
        A named service (an admin endpoint) is called by its name, and its
        setting is named after it.
        """
        service = _Refused(OSError(errno.EADDRINUSE, "Address already in use"))
        service.name = "credentials"
        message = self.fail_(service)
        self.assertTrue(message.startswith("credentials cannot listen"), message)
        self.assertIn("in credentials-endpoint", message)

    def test_otherReason(self) -> None:
        """
        Another reason is given as the OS says it.
        """
        message = self.fail_(_Refused(OSError(errno.ENOBUFS, "No buffer space available")))
        self.assertIn("No buffer space available", message)
