"""
C{turnrelayctl} (L{turnrelay.ctl}): its command line, where it looks for
the socket, what it prints; and the real console script against a real
twistd relay with a control socket.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from typing import Any, Dict, Tuple

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._assertions import TURNTestCase
from tests._processes import (
    ChildProcess,
    controlScript,
    pythonEnvironment,
    runToCompletion,
    spawn,
    turnrelayCommand,
)
from tests._session import REALM, USERS
from tests._sockets import udpTURNClient
from tests._timing import PROMPTLY, within
from turnrelay import ctl
from turnrelay.admin import control
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress


class CommandLineTests(SynchronousTestCase):
    """
    The command line, mapped onto the control socket's commands.
    """

    def request(self, *argv: str) -> Tuple[Any, Dict[str, Any]]:
        return ctl.request(ctl.parser().parse_args(list(argv)))

    def test_commands(self) -> None:
        """
        Each subcommand sends its AMP command with the arguments given, and
        leaves out those not given.
        """
        self.assertEqual(self.request("status"), (control.Status, {}))
        self.assertEqual(self.request("allocations"), (control.Allocations, {}))
        self.assertEqual(
            self.request("allocations", "--user", "alice", "--address", "192.0.2.1"),
            (control.Allocations, {"user": "alice", "address": "192.0.2.1"}),
        )
        self.assertEqual(self.request("kill", "alice"), (control.Kill, {"target": "alice"}))
        self.assertEqual(self.request("drain"), (control.Drain, {}))
        self.assertEqual(self.request("drain", "--timeout", "5"), (control.Drain, {"timeout": 5.0}))
        self.assertEqual(self.request("reload"), (control.Reload, {}))
        self.assertEqual(self.request("reload-tls"), (control.ReloadTLS, {}))
        self.assertEqual(
            self.request("mint", "carol", "--ttl", "60"),
            (control.Mint, {"userID": "carol", "ttl": 60.0}),
        )
        self.assertEqual(self.request("loglevel"), (control.LogLevel, {}))
        self.assertEqual(self.request("loglevel", "debug"), (control.LogLevel, {"level": "debug"}))

    def test_badSeconds(self) -> None:
        """
        A negative or non-numeric number of seconds is a command-line error
        (status 2).
        """
        for argv in (["drain", "--timeout", "-1"], ["mint", "carol", "--ttl", "soon"]):
            error = self.assertRaises(SystemExit, ctl.parser().parse_args, argv)
            self.assertEqual(error.code, 2)

    def test_socketPath(self) -> None:
        """
        --socket wins, then the control-socket of --config's file, then
        $TURNRELAY_CONTROL_SOCKET, then the default.
        """
        parse = ctl.parser().parse_args
        environ = {ctl.ENVIRONMENT_SOCKET: "/run/from-env.sock"}
        self.assertEqual(
            ctl.socketPath(parse(["--socket", "/a.sock", "status"]), environ), "/a.sock"
        )
        config = self.mktemp()
        with open(config, "w") as f:
            f.write('control-socket = "/from/config.sock"\n')
        self.assertEqual(
            ctl.socketPath(parse(["--config", config, "status"]), environ), "/from/config.sock"
        )
        self.assertEqual(ctl.socketPath(parse(["status"]), environ), "/run/from-env.sock")
        self.assertEqual(ctl.socketPath(parse(["status"]), {}), ctl.DEFAULT_SOCKET)

    def test_configWithoutSocket(self) -> None:
        """
        A configuration file that sets no control socket is an error saying
        what to set.
        """
        config = self.mktemp()
        with open(config, "w") as f:
            f.write('realm = "example.org"\n')
        error = self.assertRaises(
            ctl.CommandFailed,
            ctl.socketPath,
            ctl.parser().parse_args(["--config", config, "status"]),
            {},
        )
        self.assertIn("sets no control-socket", str(error))

    def test_noEscapes(self) -> None:
        """
        Control characters (a username can hold them) are shown as \\xNN;
        newlines and tabs stay.
        """
        self.assertEqual(ctl.printable("a\x1b[31mb\x07\tc\nd\x9b"), "a\\x1b[31mb\\x07\tc\nd\\x9b")
        answer = {"text": "user \x1b]0;owned\x07", "data": json.dumps({"user": "\x1b"})}
        self.assertNotIn("\x1b", ctl.render(answer, asJSON=False))
        self.assertNotIn("\x1b", ctl.render(answer, asJSON=True))
        self.assertEqual(json.loads(ctl.render(answer, asJSON=True)), {"user": "\x1b"})


class EndToEndTests(TURNTestCase, TestCase):
    """
    The real C{turnrelayctl} script against a real twistd relay.
    """

    timeout = 120

    async def startRelay(self) -> Tuple[ChildProcess, str, TransportAddress]:
        """
        Start twistd with a UDP listener and a control socket in a new
        directory.

        @return: the process, its control socket, its UDP address.
        """
        # Not under trial's temporary directory: a Unix socket's path must
        # fit in 108 bytes.
        directory = tempfile.mkdtemp(prefix="turnrelay-ctl-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "control.sock")
        users = [f"--user={name}:{password}" for name, password in USERS.items()]
        args = turnrelayCommand(
            "--realm",
            REALM,
            *users,
            "--static-auth-secret",
            "a-long-enough-secret",
            "--control-socket",
            path,
            listen=["udp:0:interface=127.0.0.1"],
        )
        twistd = spawn(self, args, env=pythonEnvironment(), path=directory)
        line = await within(
            twistd.waitForOutput(rb"listening for udp on 127\.0\.0\.1:(\d+)"), PROMPTLY, "udp"
        )
        await within(
            twistd.waitForOutput(rb"control socket listening on"), PROMPTLY, "control socket"
        )
        return twistd, path, TransportAddress("127.0.0.1", int(line.group(1)))

    async def ctl(self, path: str, *argv: str) -> Tuple[int, str, str]:
        """
        Run C{turnrelayctl --socket PATH ARGV}.

        @return: its exit status, standard output and standard error.
        """
        child = await within(
            runToCompletion(self, [controlScript(), "--socket", path, *argv]),
            PROMPTLY,
            f"turnrelayctl {' '.join(argv)}",
        )
        exitCode = child.exitCode
        assert exitCode is not None, child.endStatus
        return exitCode, child.output.decode("utf-8"), child.errors.decode("utf-8")

    def assertFails(self, result: Tuple[int, str, str], *words: str) -> None:
        """
        A failure: status 1, nothing on standard output, one line on
        standard error that holds C{words}.
        """
        status, out, err = result
        self.assertEqual((status, out), (1, ""), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("turnrelayctl: "), err)
        for word in words:
            self.assertIn(word, err)

    def setUp(self) -> None:
        if not os.path.exists(controlScript()):
            self.fail(
                f"{controlScript()} is missing: reinstall turnrelay "
                "(pip install --config-settings editable_mode=compat -e .)"
            )

    async def test_everyCommand(self) -> None:
        """
        Each subcommand answers in plain text (or JSON) with status 0 on a
        running relay, and with one line on standard error and status 1
        when it fails; the socket is mode 0600 and gone once twistd stops.
        """
        twistd, path, server = await self.startRelay()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

        session = udpTURNClient(self, server, username="alice", password=USERS["alice"])
        allocated = self.assertSuccess(await within(session.allocate(), PROMPTLY, "Allocate"))
        relayed = str(allocated.get(A.XOR_RELAYED_ADDRESS))

        status, out, err = await self.ctl(path, "status")
        self.assertEqual(status, 0, err)
        self.assertIn("allocations", out)
        self.assertNotIn("\x1b", out)
        status, out, err = await self.ctl(path, "--json", "status")
        self.assertEqual((status, json.loads(out)["allocations"]), (0, 1), err)

        status, out, err = await self.ctl(path, "allocations", "--user", "alice")
        self.assertEqual(status, 0, err)
        self.assertIn(relayed, out)
        status, out, err = await self.ctl(path, "--json", "allocations", "--address", relayed)
        self.assertEqual(status, 0, err)
        [record] = json.loads(out)
        self.assertEqual((record["user"], record["relayed"]), ("alice", [relayed]))
        status, out, err = await self.ctl(path, "--json", "allocations", "--user", "bob")
        self.assertEqual((status, json.loads(out)), (0, []), err)

        status, out, err = await self.ctl(path, "--json", "mint", "carol", "--ttl", "120")
        self.assertEqual(status, 0, err)
        credential = json.loads(out)
        self.assertTrue(credential["username"].endswith(":carol"))
        self.assertEqual(credential["realm"], REALM)

        status, out, err = await self.ctl(path, "loglevel", "debug")
        self.assertEqual((status, out), (0, "log level: debug (was info)\n"), err)
        self.assertFails(await self.ctl(path, "loglevel", "loud"), "not one of")

        status, out, err = await self.ctl(path, "reload")
        self.assertEqual(status, 0, err)
        self.assertIn("configuration reloaded", out)
        self.assertFails(await self.ctl(path, "reload-tls"), "no tls listener")

        status, out, err = await self.ctl(path, "kill", relayed)
        self.assertEqual(status, 0, err)
        self.assertIn("killed 1 allocation", out)
        self.assertFails(await self.ctl(path, "kill", relayed), "nothing killed")

        status, out, err = await self.ctl(path, "--json", "drain")
        self.assertEqual((status, json.loads(out)["draining"]), (0, True), err)

        # A second relay on the same socket does not start, and says why.
        second = await within(
            runToCompletion(
                self,
                turnrelayCommand("--control-socket", path, listen=["udp:0:interface=127.0.0.1"]),
                pythonEnvironment(),
                os.path.dirname(path),
            ),
            PROMPTLY,
            "a second twistd",
        )
        self.assertNotIn(second.exitCode, (0, None))
        self.assertIn(b"is in use by a running relay", second.output + second.errors)
        self.assertNotIn(b"Traceback", second.output + second.errors)

        twistd.signal("TERM")
        await within(twistd.whenEnded(), PROMPTLY, "twistd to stop")
        self.assertFalse(os.path.exists(path))
        self.assertFails(await self.ctl(path, "status"), "no control socket at", path)
        for sign in [b"Traceback", b"Unhandled", b"CRITICAL"]:
            self.assertNotIn(sign, twistd.output + twistd.errors)
        # Who did it is in the log; the credential's password is not.
        self.assertIn(f"control socket: kill (uid {os.getuid()})".encode(), twistd.output)
        self.assertNotIn(credential["password"].encode(), twistd.output)

    async def test_staleSocket(self) -> None:
        """
        A socket file nobody answers on is reported as such, with status 1.
        """
        directory = tempfile.mkdtemp(prefix="turnrelay-ctl-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "control.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        self.assertFails(await self.ctl(path, "status"), "no relay answers on", path)
