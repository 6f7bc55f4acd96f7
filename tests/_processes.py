"""
Child processes of the tests: collecting their output, waiting for a line
or their end, killing what still runs at cleanup; the twistd of this
Python; and the independent clients some tests drive (coturn's
C{turnutils_peer} and C{turnutils_uclient}, and aioice's TURN client in the
scripts of C{tests/interop/}).

Each helper that starts a process registers its own cleanup with the test
case, and that cleanup waits until the process has ended, so trial never
finds a dirty reactor.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import sys
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import turnrelay
from tests._sockets import HOST
from tests._timing import reactor
from turnrelay.stun.address import TransportAddress

# The checkout (or installation) turnrelay is imported from: a child Python
# process given this on PYTHONPATH finds turnrelay and its twistd plugin.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(turnrelay.__file__)))

# The independent clients' scripts, run by a child Python (see
# L{aioiceTURNArgs} and L{aioiceStreamArgs}).
INTEROP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interop")
AIOICE_TURN = os.path.join(INTEROP, "aioice_turn.py")
AIOICE_STREAM = os.path.join(INTEROP, "aioice_stream.py")


# Child processes -------------------------------------------------------------


class ChildProcess(ProcessProtocol):
    """
    A child process whose output is collected.

    @ivar output: everything written to its standard output so far (to its
        terminal, for one in a pseudo-terminal).
    @ivar errors: everything written to its standard error so far.
    @ivar endReason: why it ended (L{ProcessDone} or L{ProcessTerminated}),
        or L{None} while it runs.
    """

    def __init__(self, input: Optional[bytes] = b"") -> None:
        """
        @param input: all the child reads, after which it sees the end of
            its input; L{None} to keep its input open (see L{finishInput}).
        """
        self._input = input
        self.output = b""
        self.errors = b""
        self.endReason: Optional[Failure] = None
        self._endWaiters: List[Deferred[None]] = []
        self._outputWaiters: List[Tuple[re.Pattern[bytes], int, Deferred[re.Match[bytes]]]] = []

    def connectionMade(self) -> None:
        if self._input is not None:
            self.finishInput(self._input)

    def finishInput(self, data: bytes = b"") -> None:
        """
        Write C{data} to the child's input, and end its input.
        """
        if self.endReason is None:
            if data:
                self.transport.write(data)  # type: ignore[union-attr]
            self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.output += data
        waiting = []
        for pattern, start, waiter in self._outputWaiters:
            match = pattern.search(self.output, start)
            if match is None:
                waiting.append((pattern, start, waiter))
            else:
                waiter.callback(match)
        self._outputWaiters = waiting

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.endReason = reason
        outputWaiters, self._outputWaiters = self._outputWaiters, []
        for pattern, _, waiter in outputWaiters:
            waiter.errback(self._endedBefore(pattern))
        endWaiters, self._endWaiters = self._endWaiters, []
        for endWaiter in endWaiters:
            endWaiter.callback(None)

    def _endedBefore(self, pattern: re.Pattern[bytes]) -> AssertionError:
        return AssertionError(
            f"the process ended ({self.endReason and self.endReason.value}) before printing"
            f" {pattern.pattern!r}; output: {self.output!r}; errors: {self.errors!r}"
        )

    def waitForOutput(self, pattern: bytes, start: int = 0) -> Deferred[re.Match[bytes]]:
        """
        @param pattern: a regular expression.
        @param start: where in L{output} to look from.
        @return: a L{Deferred} that fires with the first match of C{pattern}
            in the standard output, or fails if the process ends first.
        """
        compiled = re.compile(pattern)
        match = compiled.search(self.output, start)
        if match is not None:
            return succeed(match)
        if self.endReason is not None:
            return fail(self._endedBefore(compiled))
        waiter: Deferred[re.Match[bytes]] = Deferred()
        self._outputWaiters.append((compiled, start, waiter))
        return waiter

    def whenEnded(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the process has ended (see
            L{endReason} for how).
        """
        if self.endReason is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._endWaiters.append(waiter)
        return waiter

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"TERM"}, C{"KILL"}) unless the process has ended.
        """
        if self.endReason is None:
            try:
                self.transport.signalProcess(name)  # type: ignore[union-attr]
            except ProcessExitedAlready:
                pass

    def stop(self) -> Deferred[None]:
        """
        Kill the process if it still runs, and wait for it to end.

        For cleanup, when the test is over: whatever still waits for output
        or the end belongs to a test that timed out, which trial has already
        failed, so those waits are abandoned rather than resumed.
        """
        self._outputWaiters = []
        self._endWaiters = []
        self.signal("KILL")
        return self.whenEnded()

    @property
    def exitCode(self) -> Optional[int]:
        """
        The exit status once ended; L{None} while running or if a signal
        ended it.
        """
        return self.endStatus[0]

    @property
    def endStatus(self) -> Tuple[Optional[int], Optional[int]]:
        """
        C{(exit status, signal number)} once ended, one of them L{None};
        C{(None, None)} while running.
        """
        if self.endReason is None:
            return None, None
        ended = self.endReason.value
        assert isinstance(ended, (ProcessDone, ProcessTerminated))
        return ended.exitCode, ended.signal


def spawn(
    testCase: SynchronousTestCase,
    args: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    path: Optional[str] = None,
    input: Optional[bytes] = b"",
    usePTY: bool = False,
) -> ChildProcess:
    """
    Start C{args}; the process is killed, if still running, at cleanup.

    @param env: its environment; ours by default.
    @param path: its working directory.
    @param input: all it reads (see L{ChildProcess}).
    @param usePTY: run it in a pseudo-terminal.
    """
    child = ChildProcess(input)
    reactor.spawnProcess(
        child,
        args[0],
        list(args),
        env=dict(os.environ if env is None else env),
        path=path,
        usePTY=usePTY,
    )
    testCase.addCleanup(child.stop)
    return child


async def runToCompletion(
    testCase: SynchronousTestCase,
    args: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    path: Optional[str] = None,
) -> ChildProcess:
    """
    Run C{args} until it exits (trial's timeout bounds the wait).

    @return: the ended process, with its output and exit code.
    """
    child = spawn(testCase, args, env, path)
    await child.whenEnded()
    return child


def describe(child: ChildProcess) -> str:
    """
    What a child printed, for failure messages.
    """
    return (
        f"exit {child.endStatus}\n--- stdout:\n{child.output.decode('utf-8', 'replace')}"
        f"\n--- stderr:\n{child.errors.decode('utf-8', 'replace')}"
    )


def finalReport(testCase: SynchronousTestCase, child: ChildProcess) -> Dict[str, Any]:
    """
    @return: the JSON object on the last line a script printed.
    """
    lines = child.output.decode("utf-8", "replace").splitlines()
    try:
        report: Dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        testCase.fail(f"the script printed no report\n{describe(child)}")
    return report


def pythonEnvironment() -> dict[str, str]:
    """
    @return: our environment with L{SOURCE_ROOT} first on C{PYTHONPATH}, so
        that a child Python finds this turnrelay and its twistd plugin.
    """
    env = dict(os.environ)
    paths = [SOURCE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def twistdCommand() -> List[str]:
    """
    @return: the command that runs the twistd of this Python.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def turnrelayCommand(
    *options: str, listen: Sequence[str] = (), twistdOptions: Sequence[str] = ()
) -> List[str]:
    """
    @param options: the relay's options.
    @param listen: a C{--listen} option each.
    @param twistdOptions: twistd's own options (C{--logfile}).
    @return: the command that runs a relay under twistd in the foreground,
        without a pid file.
    """
    args = twistdCommand() + ["--nodaemon", "--pidfile=", *twistdOptions, "turnrelay"]
    for value in listen:
        args += ["--listen", value]
    return args + list(options)


# External tools --------------------------------------------------------------


def requireTool(testCase: SynchronousTestCase, name: str) -> str:
    """
    Find an external test client on C{PATH}.

    Without it the test is skipped, except on CI (C{CI=true}), where a
    silently skipped interoperability test would hide a broken setup.

    @return: the tool's path.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    _missing(
        testCase,
        f"{name} is not installed; `make test` installs the tools the tests drive",
    )


def requireModule(testCase: SynchronousTestCase, name: str) -> None:
    """
    Check that the Python module C{name} can be imported by a child Python.

    Without it the test is skipped, except on CI (C{CI=true}).
    """
    if importlib.util.find_spec(name) is None:
        _missing(testCase, f"{name} is not installed; `make test` installs the test extra with it")


def _missing(testCase: SynchronousTestCase, message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        testCase.fail(message + " (CI=true: not skipping)")
    raise SkipTest(message)


# coturn's echo peer ----------------------------------------------------------


def freePortPair(host: str = HOST) -> int:
    """
    Find a UDP port that is free, with the port after it free too
    (C{turnutils_peer} binds both).

    The ports are released before returning; another process could take
    them in between, which L{startEchoPeer} detects.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((host, 0))
            port: int = first.getsockname()[1]
            if port >= 0xFFFF:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
        return port


async def startEchoPeer(testCase: SynchronousTestCase) -> Tuple[TransportAddress, ChildProcess]:
    """
    Start coturn's UDP echo server, C{turnutils_peer}, on 127.0.0.1; it is
    killed at cleanup.

    It listens on a port and the one after it (for RTCP), and says so with
    one line each in verbose mode: the wait is for those two lines.  A port
    that is taken makes it print the C{errno} of the failed bind (and keep
    running, deaf), which fails the test at once.

    @return: its address (the first port) and its process.
    """
    tool = requireTool(testCase, "turnutils_peer")
    port = freePortPair()
    peer = spawn(testCase, [tool, "-v", "-L", HOST, "-p", str(port)])
    match = await peer.waitForOutput(rb"(?s)errno=\d+|(?:_socket:\d+:end.*?){2}")
    if b"errno" in match.group(0):
        testCase.fail(f"turnutils_peer could not bind {HOST}:{port}: {peer.output!r}")
    return TransportAddress(HOST, port), peer


def uclientArgs(
    testCase: SynchronousTestCase,
    server: TransportAddress,
    peer: TransportAddress,
    *options: str,
    clients: int = 1,
    messages: int = 10,
    size: int = 200,
) -> List[str]:
    """
    The command line of C{turnutils_uclient} relaying to C{peer} through the
    relay at C{server}, sending one message every 5 ms.

    @param options: its other options (C{-t}, C{-S}, C{-c}, credentials).
    @param clients: how many clients it runs at once (C{-m}), each from a
        socket of its own.
    @param messages: how many messages each client sends (C{-n}).
    @param size: their size in bytes (C{-l}).
    """
    return [
        requireTool(testCase, "turnutils_uclient"),
        *options,
        "-m",
        str(clients),
        "-n",
        str(messages),
        "-l",
        str(size),
        "-z",
        "5",
        "-p",
        str(server.port),
        "-e",
        peer.host,
        "-r",
        str(peer.port),
        server.host,
    ]


def assertRelayedAll(testCase: SynchronousTestCase, child: ChildProcess, total: int) -> None:
    """
    Assert that C{turnutils_uclient} exited well, having sent C{total}
    messages and received them all back, none lost or dropped.
    """
    testCase.assertEqual(child.exitCode, 0, describe(child))
    testCase.assertEqual(
        uclientCounters(child.output),
        {"sent": total, "received": total, "lost": 0, "sendDropped": 0},
        describe(child),
    )


def uclientCounters(output: bytes) -> Optional[Dict[str, int]]:
    """
    Read the final counters C{turnutils_uclient} prints::

        start_mclient: tot_send_msgs=10, tot_recv_msgs=10
        Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)

    @return: C{sent}, C{received}, C{lost} and C{sendDropped}, or L{None}
        if the client did not print them (it gave up before relaying).
    """
    totals = re.search(rb"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", output, re.MULTILINE)
    lost = re.search(rb"Total lost packets (\d+) .*total send dropped (\d+)", output)
    if totals is None or lost is None:
        return None
    return {
        "sent": int(totals.group(1)),
        "received": int(totals.group(2)),
        "lost": int(lost.group(1)),
        "sendDropped": int(lost.group(2)),
    }


# aioice ----------------------------------------------------------------------


def aioiceTURNArgs(
    testCase: SynchronousTestCase,
    server: TransportAddress,
    username: str,
    password: str,
    *options: str,
) -> List[str]:
    """
    The command line of C{tests/interop/aioice_turn.py} (aioice's TURN
    client over UDP) against the relay at C{server}.

    @param options: the script's other options (C{--round-trips}).
    """
    requireModule(testCase, "aioice")
    return [
        sys.executable,
        AIOICE_TURN,
        "--username",
        username,
        "--password",
        password,
        *options,
        server.host,
        str(server.port),
    ]


def aioiceStreamArgs(
    testCase: SynchronousTestCase,
    server: TransportAddress,
    transport: str,
    cafile: Optional[str],
    username: str,
    password: str,
    *options: str,
) -> List[str]:
    """
    The command line of C{tests/interop/aioice_stream.py} (aioice's TURN
    client over C{transport}) against the relay at C{server}.

    @param cafile: the PEM certificate it trusts, for C{tls}.
    @param options: the script's other options (C{--round-trips}, C{--hold}).
    """
    requireModule(testCase, "aioice")
    return [
        sys.executable,
        AIOICE_STREAM,
        "--transport",
        transport,
        *(["--cafile", cafile] if cafile is not None else []),
        "--username",
        username,
        "--password",
        password,
        *options,
        server.host,
        str(server.port),
    ]


def controlScript() -> str:
    """
    @return: the installed C{turnrelayctl} console script of this Python.
    """
    return os.path.join(os.path.dirname(sys.executable), "turnrelayctl")


async def controlJSON(testCase: SynchronousTestCase, socketPath: str, *argv: str) -> Any:
    """
    Run C{turnrelayctl --socket PATH --json ARGV}, assert that it succeeded,
    and return what it answered.
    """
    child = await runToCompletion(
        testCase, [controlScript(), "--socket", socketPath, "--json", *argv]
    )
    testCase.assertEqual(child.exitCode, 0, describe(child))
    return json.loads(child.output)
