"""
A real browser through the relay: Debian's Chromium, headless, makes WebRTC
calls whose every packet goes through turnrelay.

Each test makes its own network namespace with one veth pair in it (a
private address on a non-loopback interface: Chromium gathers no
candidates on loopback alone), runs C{twistd turnrelay} there on that
address (UDP and TCP on 3478, TLS on 5349, a certificate made for that
address), and drives Chromium there through C{tests/e2e/browser.py}, which
serves C{tests/e2e/webrtc.html} on 127.0.0.1 and runs the page's
functions.  The page's two C{RTCPeerConnection}s may use relay candidates
only (C{iceTransportPolicy: "relay"}), with turnrelay as their only ICE
server.  The browser reports from C{getStats()} which candidate pair each
side selected, what the data channel carried and how many video frames
were decoded; the server's log says which allocations it made, over which
transport, and that the browser deleted them.  Credentials the relay must
refuse, and a certificate the browser must refuse, leave the browser
without a relay candidate.  The calls over each transport run again with
the relay's C{--workers 2}, whose workers make and relay the allocations.

For C{turns:} the browser's own NSS database trusts the test's
self-signed certificate as a CA (C{certutil}, Debian's libnss3-tools):
certificate checks stay on, and two tests show they are.

A class puts a browser behind a firewall that lets only TCP to the relay
out and calls a browser on another host: it connects through turnrelay (a
relay candidate on one side only), and does not without it.  The last runs
Chromium in a namespace of its own, joined by a veth to the relay's, so
that turnrelay's kernel fast path (offload) relays the call's UDP
ChannelData, between the offerer's allocation and the answerer's host
address.

Everything runs inside namespaces the tests create, on their private
addresses and on loopback.  Cleanup kills every process left in a
namespace and deletes it (with its interfaces and firewall rules) even when
the test fails.  Without root (no namespaces) the tests are skipped, saying
why; with root, a missing browser skips them too, except on CI
(C{CI=true}), where it fails them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from twisted.internet.defer import DeferredQueue
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from tests._processes import (
    ChildProcess,
    controlJSON,
    pythonEnvironment,
    spawn,
    turnrelayCommand,
)
from tests._timing import reactor
from turnrelay.auth.credentials import mintRESTCredential
from turnrelay.transports.tls import makeSelfSignedCertificate

HERE = os.path.dirname(os.path.abspath(__file__))
BROWSER_DRIVER = os.path.join(HERE, "e2e", "browser.py")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

REALM = "turnrelay-e2e"
USERNAME = "alice"
PASSWORD = "alice-browser-pw"
REST_SECRET = "rest-secret-for-browser-tests"
TURN_PORT = 3478
TURNS_PORT = 5349

# What the page sends, and what it must see before it reports.
MESSAGES = 12
MIN_FRAMES = 5
# How long the page gives a call (it reports as soon as the call has
# carried what it should, or failed), and how long the driver gives the
# page; the tests' own timeouts are the safety net above both.
PAGE_TIMEOUT_MS = 20000
SCRIPT_TIMEOUT = 90

# Namespace names: this prefix, the pid of the test process that owns them,
# and a random part.
NAMESPACE_PREFIX = "trbrowser-"


def _unavailable(message: str) -> NoReturn:
    """
    Skip, or on CI (C{CI=true}) fail: a silently skipped browser test there
    would hide a broken set-up.
    """
    if os.environ.get("CI") == "true":
        raise AssertionError(message + " (CI=true: not skipping)")
    raise SkipTest(message)


def requireTestbed() -> None:
    """
    Check that this machine can run the browser tests: root (for network
    namespaces), C{ip}, Chromium, chromedriver, Selenium and C{certutil}.

    @raise SkipTest: without root (whatever C{CI} says: such a machine
        cannot run them at all), or when something is missing off CI.
    """
    if not sys.platform.startswith("linux"):
        raise SkipTest("the browser tests need Linux network namespaces")
    if os.geteuid() != 0:
        raise SkipTest(
            "the browser tests create network namespaces, which needs root; "
            "run the suite as root (CI does) to run them"
        )
    for path, package in [
        (shutil.which("ip"), "iproute2"),
        (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None, "chromium"),
        (CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else None, "chromium-driver"),
        (shutil.which("certutil"), "libnss3-tools"),
    ]:
        if path is None:
            _unavailable(
                f"Debian's {package} is not installed; `make test` (tools/install-system-deps)"
                " installs it"
            )
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("selenium is not installed; `make test` installs the test extra with it")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


# Network namespaces -----------------------------------------------------------


class Namespace:
    """
    A network namespace made for one test, with its loopback up.

    @ivar name: its name (C{ip netns}).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, testCase: TestCase) -> Namespace:
        """
        Make a namespace that the test's cleanup kills every process in and
        deletes, even if the test fails.

        @raise SkipTest: (or, on CI, fails) when namespaces cannot be made.
        """
        name = f"{NAMESPACE_PREFIX}{os.getpid()}-{random.getrandbits(32):08x}"
        made = _ip("netns", "add", name)
        if made.returncode != 0:
            _unavailable(f"`ip netns add` failed, so no network namespace: {made.stderr.strip()}")
        namespace = cls(name)
        testCase.addCleanup(namespace.destroy)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def command(self, args: Sequence[str]) -> List[str]:
        """
        @return: the command line that runs C{args} in this namespace.
        """
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str) -> str:
        """
        Run a short command in the namespace and wait for it.

        @return: its standard output.
        @raise AssertionError: if it fails.
        """
        done = subprocess.run(self.command(args), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} in {self.name} failed: {done.stderr}")
        return done.stdout

    def ip(self, *args: str) -> None:
        """
        Run C{ip -n NAMESPACE args}.
        """
        done = _ip("-n", self.name, *args)
        if done.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)} in {self.name} failed: {done.stderr}")

    def addAddress(self, interface: str, cidr: str) -> None:
        """
        Give C{interface} (in this namespace) an address, and bring it up.
        """
        self.ip("addr", "add", cidr, "dev", interface)
        self.ip("link", "set", interface, "up")

    def pids(self) -> List[int]:
        """
        @return: the processes that run in this namespace.
        """
        listed = _ip("netns", "pids", self.name)
        return [int(word) for word in listed.stdout.split()]

    async def destroy(self) -> None:
        """
        Kill every process still in the namespace (Chromium's, whatever
        ended its driver) and wait until they are gone, then delete it: its
        interfaces and firewall rules go with it.
        """
        try:
            await killAll(self.pids)
        finally:
            _ip("netns", "delete", self.name)


async def killAll(pids: Callable[[], List[int]]) -> None:
    """
    SIGKILL the processes C{pids()} lists until it lists none.

    Orphaned Chromium processes are not our children, so nothing tells us
    when they have ended: ask again every 50 ms, for at most 10 s.
    """
    deadline = time.monotonic() + 10
    while True:
        remaining = pids()
        if not remaining:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {remaining} did not end on SIGKILL")
        for pid in remaining:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await deferLater(reactor, 0.05, lambda: None)


async def sweepAbandonedNamespaces() -> None:
    """
    Delete the namespaces of test processes that died without cleaning up
    (killed by a CI time limit, say), and end what still runs in them.
    """
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(re.escape(NAMESPACE_PREFIX) + r"(\d+)-[0-9a-f]+", name)
        if match is None or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        await Namespace(name).destroy()


def vethPair(first: Namespace, firstName: str, second: Namespace, secondName: str) -> None:
    """
    Link two namespaces (or one namespace to itself) with a veth pair.
    """
    first.ip("link", "add", firstName, "type", "veth", "peer", "name", secondName)
    if second is not first:
        first.ip("link", "set", secondName, "netns", second.name)
    second.ip("link", "set", secondName, "up")


# The relay: twistd in a namespace ----------------------------------------------

CREATED = re.compile(
    rb"(?:worker (?P<worker>\d+): )?"
    rb"allocation (?P<relayed>\S+) created for (?P<username>\S+) on "
    rb"(?P<transport>udp|tcp|tls):(?P<client>\S+)->(?P<server>\S+), lifetime"
)


def endedPattern(relayed: str) -> bytes:
    """
    @return: a pattern for the log line of the allocation on C{relayed}
        ending: how, and the packets relayed each way.
    """
    return (
        rb"allocation "
        + re.escape(relayed.encode())
        + rb" (?P<reason>\w+): .*?, (?P<toPeers>\d+) packets \(\d+ bytes\) to peers, "
        rb"(?P<fromPeers>\d+) packets \(\d+ bytes\) from peers"
    )


class RelayProcess:
    """
    C{twistd turnrelay} running in a namespace.

    @ivar process: the twistd process (its output is the server's log).
    @ivar host: the address it listens on and relays from.
    @ivar certificate: the PEM file of the certificate its TLS listener
        presents, made for C{host}.
    """

    def __init__(self, process: ChildProcess, host: str, certificate: str) -> None:
        self.process = process
        self.host = host
        self.certificate = certificate

    @classmethod
    async def start(
        cls,
        testCase: TestCase,
        namespace: Namespace,
        host: str,
        allowPeer: str,
        workdir: str,
        certifiedFor: Optional[str] = None,
        workers: int = 0,
        options: Sequence[str] = (),
    ) -> RelayProcess:
        """
        Start twistd on C{host} (UDP and TCP on 3478, TLS on 5349 with a
        certificate written to C{workdir}), with a static user and a REST
        secret, relaying to C{allowPeer} (private addresses are denied by
        default); it is killed at cleanup.  Returns once every listener is
        up, and every worker serves.

        @param certifiedFor: the address the certificate is for; C{host} by
            default.
        @param workers: run this many worker processes (C{--workers}); 0
            for none, the relay in one process.
        @param options: more of the relay's options.
        """
        certificate = os.path.join(workdir, "relay-cert.pem")
        key = os.path.join(workdir, "relay-key.pem")
        makeSelfSignedCertificate(certificate, key, (certifiedFor or host,))
        args = turnrelayCommand(
            "--relay-ip",
            host,
            "--allow-peer",
            allowPeer,
            "--realm",
            REALM,
            "--user",
            f"{USERNAME}:{PASSWORD}",
            "--static-auth-secret",
            REST_SECRET,
            "--tls-cert",
            certificate,
            "--tls-key",
            key,
            # Refusals of unauthenticated requests are logged one by one at
            # debug level only (at info, a summary once a minute).
            "--log-level",
            "debug",
            *(["--workers", str(workers)] if workers else []),
            *options,
            listen=[
                f"udp:{TURN_PORT}:interface={host}",
                f"tcp:{TURN_PORT}:interface={host}",
                f"tls:{TURNS_PORT}:interface={host}",
            ],
            twistdOptions=["--logfile=-"],
        )
        process = spawn(testCase, namespace.command(args), env=pythonEnvironment(), path=workdir)
        await process.waitForOutput(rb"listening for tls on " + re.escape(host.encode()))
        for index in range(workers):
            await process.waitForOutput(rb"worker %d \(pid \d+\) ready" % index)
        return cls(process, host, certificate)

    def created(self) -> List[Dict[str, str]]:
        """
        @return: the allocations logged as created so far, with the worker
            that made each (C{"worker"}) if the relay has workers.
        """
        return [
            {key: value.decode() for key, value in match.groupdict().items() if value is not None}
            for match in CREATED.finditer(self.process.output)
        ]

    async def ending(self, relayed: str) -> Tuple[str, int, int]:
        """
        Wait until the allocation on C{relayed} ends.

        @return: how it ended, as logged (C{deleted}, C{expired},
            C{closed}...), and the packets it relayed to and from peers.
        """
        match = await self.process.waitForOutput(endedPattern(relayed))
        return match["reason"].decode(), int(match["toPeers"]), int(match["fromPeers"])

    def assertHealthy(self, testCase: TestCase) -> None:
        """
        Assert that the server logged no traceback or unhandled error.
        """
        for sign in [b"Traceback", b"Unhandled", b"CRITICAL", b"#critical]", b"#error]"]:
            testCase.assertNotIn(sign, self.process.output + self.process.errors)

    def refusals(self) -> List[Tuple[str, str, str]]:
        """
        @return: the requests refused as logged, C{(method, transport, code:
            reason)}, except the 401 every client starts with and a 438 for a
            stale nonce.
        """
        found = re.findall(
            rb"(\w+) from \S+(?: on \S+)? over (\w+) refused with (\d+: [\w-]+)",
            self.process.output,
        )
        return [
            (method.decode(), transport.decode(), why.decode())
            for method, transport, why in found
            if not why.endswith((b": no-integrity", b": stale-nonce"))
        ]


# The browser -------------------------------------------------------------------


class BrowserDriver(ChildProcess):
    """
    C{tests/e2e/browser.py}: Chromium running C{webrtc.html}, taking
    commands on its standard input and answering a line for each.

    @ivar replies: C{(kind, value)} per line: C{READY}, C{RESULT},
        C{FAILED}, and C{ENDED} if the driver ended.
    """

    def __init__(self) -> None:
        super().__init__()
        self._partial = b""
        self.replies: DeferredQueue[Tuple[str, Any]] = DeferredQueue()

    def connectionMade(self) -> None:
        # Unlike other children, the driver reads its commands on stdin.
        pass

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            kind, _, value = line.partition(b" ")
            if kind in (b"READY", b"RESULT", b"FAILED"):
                self.replies.put((kind.decode(), json.loads(value)))

    def processEnded(self, reason: Failure) -> None:
        super().processEnded(reason)
        self.replies.put(("ENDED", str(reason.value)))

    async def reply(self, what: str) -> Any:
        """
        Wait for the next reply, which must be a C{RESULT} (or C{READY}).

        @param what: what the reply is to, for the failure message.
        """
        kind, value = await self.replies.get()
        if kind not in ("READY", "RESULT"):
            raise AssertionError(
                f"the browser gave no result for {what}: {kind} {value};"
                f" its errors: {self.errors.decode(errors='replace')[-3000:]}"
            )
        return value

    async def call(self, name: str, *args: Any) -> Dict[str, Any]:
        """
        Run the page's async function C{name(*args)}.

        @return: what it resolved to.
        """
        command = {"call": name, "args": list(args), "timeout": SCRIPT_TIMEOUT}
        self.transport.write(json.dumps(command).encode() + b"\n")  # type: ignore[union-attr]
        result: Dict[str, Any] = await self.reply(name)
        if "pageError" in result:
            raise AssertionError(f"the page's {name} failed: {result['pageError']}")
        return result

    async def quit(self) -> None:
        """
        End the driver's input, so that it quits Chromium and exits, and
        wait for that.
        """
        self.transport.closeStdin()  # type: ignore[union-attr]
        await self.whenEnded()
        if self.exitCode != 0:
            raise AssertionError(f"the browser driver ended badly: {self.errors!r}")


async def startBrowser(
    testCase: TestCase,
    namespace: Namespace,
    workdir: str,
    trust: Optional[str] = None,
    flags: Sequence[str] = (),
) -> BrowserDriver:
    """
    Start Chromium on the page in C{namespace}; killed at cleanup.

    @param workdir: a new directory for its profile, home and logs.
    @param trust: a PEM certificate the browser's profile trusts as a CA.
    @param flags: more Chromium switches.
    """
    os.makedirs(workdir)
    args = [sys.executable, BROWSER_DRIVER]
    if trust is not None:
        args.append(f"--ca-certificate={trust}")
    # With "=": Chromium's switches start with "--" too.
    args.extend(f"--chromium-flag={flag}" for flag in flags)
    args.append(workdir)
    driver = BrowserDriver()
    reactor.spawnProcess(driver, "ip", namespace.command(args), env=pythonEnvironment())
    testCase.addCleanup(driver.stop)
    await driver.reply("starting Chromium")
    return driver


def iceServer(url: str, username: str, credential: str) -> Dict[str, Any]:
    """
    @return: an C{RTCIceServer}.
    """
    return {"urls": url, "username": username, "credential": credential}


def restCredential(ttl: float) -> Tuple[str, str]:
    """
    Mint a TURN REST API credential as a web service would, with
    turnrelay's own helper.

    @param ttl: seconds until it expires; negative for an expired one.
    """
    return mintRESTCredential(REST_SECRET.encode(), "browser", ttl, time.time())


def compact(report: Dict[str, Any]) -> str:
    """
    @return: the page's report without the messages, for failure messages.
    """
    return json.dumps(
        {key: value for key, value in report.items() if key not in ("sent", "echoed", "received")}
    )


class _BrowserTestCase(TestCase):
    """
    A namespace with a veth pair in it, turnrelay on one end's address.
    """

    # A safety net: every wait ends on an event (a line printed, a page
    # function resolving, a process ending), and the page bounds its own.
    timeout = 120
    # The relay's worker processes (--workers); 0 for none.
    workers = 0

    def setUp(self) -> None:
        requireTestbed()
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.subnet = f"10.251.{random.randrange(1, 255)}"
        self.host = f"{self.subnet}.1"
        self.namespace = Namespace.create(self)
        vethPair(self.namespace, "trb0", self.namespace, "trb1")
        self.namespace.addAddress("trb0", f"{self.host}/24")

    async def startRelay(self, certifiedFor: Optional[str] = None) -> RelayProcess:
        """
        Start turnrelay in the namespace, on C{self.host}, relaying within
        its /24.

        @param certifiedFor: the address its certificate is for, if not
            C{self.host}.
        """
        await sweepAbandonedNamespaces()
        self.relay = await RelayProcess.start(
            self,
            self.namespace,
            self.host,
            f"{self.subnet}.0/24",
            self.workdir,
            certifiedFor,
            self.workers,
        )
        return self.relay

    async def browser(self, trusted: bool = True) -> BrowserDriver:
        """
        Start Chromium in the namespace, trusting the relay's certificate
        unless C{trusted} is false.
        """
        return await startBrowser(
            self,
            self.namespace,
            os.path.join(self.workdir, "browser"),
            trust=self.relay.certificate if trusted else None,
        )


class _CallTestCase(_BrowserTestCase):
    """
    Two C{RTCPeerConnection}s limited to relay candidates call each other
    through turnrelay.
    """

    async def _call(self, url: str, username: str, credential: str, protocol: str) -> None:
        """
        Make the call with turnrelay at C{url} as the only ICE server, and
        check what the browser and the server report.

        @param protocol: the transport the browser must use to reach the
            relay (C{udp}, C{tcp} or C{tls}): the candidates'
            C{relayProtocol} and the allocations' five-tuples.
        """
        await self.startRelay()
        browser = await self.browser()
        report = await browser.call(
            "runCall",
            {
                "iceServers": [iceServer(url, username, credential)],
                "messages": MESSAGES,
                "minFrames": MIN_FRAMES,
                "timeoutMs": PAGE_TIMEOUT_MS,
            },
        )
        details = compact(report)
        self.assertTrue(report["connected"], details)

        # Relay candidates on both sides, over the transport of the URL,
        # on turnrelay's relay address.
        relayed = []
        for side in ("offerer", "answerer"):
            pair = report[side]["pair"]
            self.assertIsNotNone(pair, details)
            self.assertEqual(pair["local"]["candidateType"], "relay", details)
            self.assertEqual(pair["remote"]["candidateType"], "relay", details)
            self.assertEqual(pair["local"]["relayProtocol"], protocol, details)
            self.assertEqual(pair["local"]["url"], url, details)
            self.assertEqual(pair["local"]["address"], self.host, details)
            self.assertEqual(report[side]["errors"], [], details)
            relayed.append(f"{pair['local']['address']}:{pair['local']['port']}")
        offererPair, answererPair = report["offerer"]["pair"], report["answerer"]["pair"]
        self.assertEqual(
            (offererPair["remote"]["address"], offererPair["remote"]["port"]),
            (answererPair["local"]["address"], answererPair["local"]["port"]),
        )

        # The data channel carried every message intact, both ways.
        self.assertTrue(report["allEchoed"], details)
        self.assertEqual(report["receivedByAnswerer"], report["sent"])
        self.assertEqual(report["echoed"], report["sent"])
        self.assertEqual(len(report["sent"]), MESSAGES)

        # The video was decoded.
        self.assertTrue(report["framesFlowing"], details)
        self.assertGreaterEqual(report["answerer"]["video"]["framesDecoded"], MIN_FRAMES, details)

        # The server allocated the two relayed addresses, and any other,
        # over the URL's transport and port, for this username; the browser
        # deleted them all when it closed the connections.
        created = {allocation["relayed"]: allocation for allocation in self.relay.created()}
        port = TURNS_PORT if protocol == "tls" else TURN_PORT
        for address in relayed:
            self.assertIn(address, created, self.relay.process.output)
        for allocation in created.values():
            self.assertEqual(allocation["transport"], protocol)
            self.assertEqual(allocation["server"], f"{self.host}:{port}")
            self.assertEqual(allocation["username"], username)
        for address in created:
            reason, toPeers, fromPeers = await self.relay.ending(address)
            self.assertEqual(reason, "deleted")
            if address in relayed:
                self.assertGreater(toPeers, 0)
                self.assertGreater(fromPeers, 0)
        self.assertEqual(self.relay.refusals(), [])
        self.relay.assertHealthy(self)
        await browser.quit()


class RelayedCallTests(_CallTestCase):
    """
    The call through turnrelay over each TURN transport, with static and
    REST credentials.
    """

    async def test_udpStatic(self) -> None:
        """
        Over C{turn:...?transport=udp} with a static user, both sides
        connect through UDP allocations, and the data channel and the video
        arrive intact.
        """
        await self._call(f"turn:{self.host}:{TURN_PORT}?transport=udp", USERNAME, PASSWORD, "udp")

    async def test_tcpStatic(self) -> None:
        """
        Over C{turn:...?transport=tcp} with a static user, both sides
        connect through allocations made on TCP connections.
        """
        await self._call(f"turn:{self.host}:{TURN_PORT}?transport=tcp", USERNAME, PASSWORD, "tcp")

    async def test_tlsStatic(self) -> None:
        """
        Over C{turns:} with a static user, both sides connect through
        allocations made on TLS connections, the browser having verified
        the relay's certificate against the CA its profile trusts.
        """
        await self._call(f"turns:{self.host}:{TURNS_PORT}?transport=tcp", USERNAME, PASSWORD, "tls")

    async def test_udpREST(self) -> None:
        """
        Over UDP, a TURN REST API credential minted by turnrelay's helper
        with the server's shared secret is accepted.
        """
        username, password = restCredential(600)
        await self._call(f"turn:{self.host}:{TURN_PORT}?transport=udp", username, password, "udp")

    async def test_tcpREST(self) -> None:
        """
        Over TCP, a REST credential is accepted.
        """
        username, password = restCredential(600)
        await self._call(f"turn:{self.host}:{TURN_PORT}?transport=tcp", username, password, "tcp")

    async def test_tlsREST(self) -> None:
        """
        Over TLS, a REST credential is accepted.
        """
        username, password = restCredential(600)
        await self._call(f"turns:{self.host}:{TURNS_PORT}?transport=tcp", username, password, "tls")


class WorkersRelayedCallTests(_CallTestCase):
    """
    The call through turnrelay with C{--workers 2} over each TURN transport:
    the workers share the listening sockets, each allocation is made and
    relayed by one of them.
    """

    workers = 2

    async def _workersCall(self, url: str, protocol: str) -> None:
        """
        Make the call with a static user, and check that workers made every
        allocation.
        """
        await self._call(url, USERNAME, PASSWORD, protocol)
        created = self.relay.created()
        self.assertTrue(created)
        for allocation in created:
            self.assertIn(allocation.get("worker"), {"0", "1"}, allocation)

    async def test_udpStatic(self) -> None:
        """
        Over C{turn:...?transport=udp}, both sides connect through UDP
        allocations that workers made, and the call carries its data and
        video.
        """
        await self._workersCall(f"turn:{self.host}:{TURN_PORT}?transport=udp", "udp")

    async def test_tcpStatic(self) -> None:
        """
        Over C{turn:...?transport=tcp}, both sides connect through
        allocations made by workers on TCP connections.
        """
        await self._workersCall(f"turn:{self.host}:{TURN_PORT}?transport=tcp", "tcp")

    async def test_tlsStatic(self) -> None:
        """
        Over C{turns:}, both sides connect through allocations made by
        workers on TLS connections, the browser having verified the
        certificate each worker serves.
        """
        await self._workersCall(f"turns:{self.host}:{TURNS_PORT}?transport=tcp", "tls")


class RefusedTests(_BrowserTestCase):
    """
    A browser with credentials turnrelay must refuse, or that does not trust
    its certificate, gets no relay candidate.
    """

    async def _gather(
        self,
        url: str,
        username: str,
        credential: str,
        trusted: bool = True,
        certifiedFor: Optional[str] = None,
    ) -> Dict[str, Any]:
        await self.startRelay(certifiedFor)
        browser = await self.browser(trusted)
        report = await browser.call(
            "gatherOnly",
            {"iceServers": [iceServer(url, username, credential)], "timeoutMs": PAGE_TIMEOUT_MS},
        )
        await browser.quit()
        self.relay.assertHealthy(self)
        self.assertTrue(report["gatheringComplete"], report)
        self.assertEqual(report["candidates"], [], report)
        self.assertEqual(self.relay.created(), [])
        return report

    def _assertUnauthorized(self, report: Dict[str, Any], url: str) -> None:
        self.assertEqual(
            [(error["errorCode"], error["url"]) for error in report["errors"]],
            [(401, url)],
            report,
        )

    def _assertUnreachable(self, report: Dict[str, Any], url: str) -> None:
        # 701: WebRTC's code for a TURN server that could not be reached;
        # the relay refused nothing.
        self.assertEqual(
            [(error["errorCode"], error["url"]) for error in report["errors"]],
            [(701, url)],
            report,
        )
        self.assertEqual(self.relay.refusals(), [])

    async def test_wrongPassword(self) -> None:
        """
        A wrong password makes ICE gathering fail with a 401
        C{icecandidateerror} and no relay candidate; the server logs the
        refusal.
        """
        url = f"turn:{self.host}:{TURN_PORT}?transport=udp"
        report = await self._gather(url, USERNAME, "not-" + PASSWORD)
        self._assertUnauthorized(report, url)
        self.assertEqual(self.relay.refusals(), [("ALLOCATE", "udp", "401: bad-integrity")])

    async def test_expiredREST(self) -> None:
        """
        A REST credential that expired a minute ago makes ICE gathering
        fail with a 401 C{icecandidateerror}, here over TLS.
        """
        url = f"turns:{self.host}:{TURNS_PORT}?transport=tcp"
        username, password = restCredential(-60)
        report = await self._gather(url, username, password)
        self._assertUnauthorized(report, url)
        self.assertEqual(self.relay.refusals(), [("ALLOCATE", "tls", "401: expired")])

    async def test_untrustedCertificate(self) -> None:
        """
        A browser whose profile does not trust the relay's certificate
        refuses the C{turns:} connection: certificate checks are on.
        """
        url = f"turns:{self.host}:{TURNS_PORT}?transport=tcp"
        report = await self._gather(url, USERNAME, PASSWORD, trusted=False)
        self._assertUnreachable(report, url)

    async def test_certificateForAnotherAddress(self) -> None:
        """
        A browser that trusts the relay's certificate still refuses the
        C{turns:} connection when the certificate is for another address
        than the URL's.
        """
        url = f"turns:{self.host}:{TURNS_PORT}?transport=tcp"
        report = await self._gather(url, USERNAME, PASSWORD, certifiedFor=f"{self.subnet}.99")
        self._assertUnreachable(report, url)


class FirewalledCallTests(TestCase):
    """
    A browser in an office whose firewall lets out only TCP to the relay
    calls a browser on another host, across a router that also runs
    turnrelay::

        office 10.251.N.2 --- 10.251.N.1 relay host 10.252.N.1 --- 10.252.N.2 peer host
        (Chromium, firewall)  (turnrelay, routing)                  (Chromium)

    The office browser may use relay candidates only; the peer host's has
    no ICE server and offers its host address: the call is relayed on one
    side only.
    """

    timeout = 120

    def setUp(self) -> None:
        requireTestbed()
        if shutil.which("iptables") is None:
            _unavailable("Debian's iptables is not installed; `make test` installs it")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        n = random.randrange(1, 255)
        self.relayHost = f"10.251.{n}.1"
        self.officeHost = f"10.251.{n}.2"
        self.peerSubnet = f"10.252.{n}"
        self.peerHost = f"{self.peerSubnet}.2"
        self.office = Namespace.create(self)
        self.relayNamespace = Namespace.create(self)
        self.peer = Namespace.create(self)
        vethPair(self.relayNamespace, "trs0", self.office, "tro0")
        vethPair(self.relayNamespace, "trs1", self.peer, "trp0")
        self.relayNamespace.addAddress("trs0", f"{self.relayHost}/24")
        self.relayNamespace.addAddress("trs1", f"{self.peerSubnet}.1/24")
        self.relayNamespace.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # Default routes, because Chromium offers host candidates only on
        # the interface of the default route.  The relay host has none, so
        # nothing addressed elsewhere leaves the three namespaces.
        self.office.addAddress("tro0", f"{self.officeHost}/24")
        self.office.ip("route", "add", "default", "via", self.relayHost)
        self.peer.addAddress("trp0", f"{self.peerHost}/24")
        self.peer.ip("route", "add", "default", "via", f"{self.peerSubnet}.1")

    def installFirewall(self) -> None:
        """
        Let the office send nothing but TCP to the relay's TURN ports (and
        what answers it), and accept nothing else.
        """
        rules = [
            ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
            ["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-P", "INPUT", "DROP"],
            ["-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"],
            ["-A", "OUTPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ]
        for port in (TURN_PORT, TURNS_PORT):
            rules.append(
                ["-A", "OUTPUT", "-p", "tcp", "-d", self.relayHost, "--dport", str(port)]
                + ["-j", "ACCEPT"]
            )
        rules.append(["-P", "OUTPUT", "DROP"])
        for rule in rules:
            self.office.run("iptables", *rule)

    async def _call(
        self, callerServers: List[Dict[str, Any]], policy: str, timeoutMs: int = PAGE_TIMEOUT_MS
    ) -> Dict[str, Any]:
        """
        Call from the office to the peer host.

        @param callerServers: the office browser's ICE servers.
        @param policy: the office browser's C{iceTransportPolicy}.
        @param timeoutMs: how long each side gives each step.
        @return: C{caller} and C{callee}, the reports of both sides.
        """
        # Both browsers put their addresses in their candidates, rather than
        # mDNS names that neither could resolve.
        flags = ["--disable-features=WebRtcHideLocalIpsWithMdns"]
        caller = await startBrowser(
            self, self.office, os.path.join(self.workdir, "office"), flags=flags
        )
        callee = await startBrowser(
            self, self.peer, os.path.join(self.workdir, "peer"), flags=flags
        )
        common = {"messages": MESSAGES, "minFrames": MIN_FRAMES, "timeoutMs": timeoutMs}
        offer = await caller.call(
            "callerOffer", dict(common, iceServers=callerServers, policy=policy)
        )
        answer = await callee.call(
            "calleeAnswer", dict(common, iceServers=[], policy="all"), offer["sdp"]
        )
        callerReport = await caller.call("callerFinish", answer["sdp"])
        calleeReport = await callee.call("calleeFinish")
        await caller.call("hangUp")
        await callee.call("hangUp")
        await caller.quit()
        await callee.quit()
        return {"caller": callerReport, "callee": calleeReport}

    async def test_relayedThroughFirewall(self) -> None:
        """
        Behind the firewall, the office browser reaches the peer host's
        browser through a TCP allocation: a relay candidate on its side, a
        host candidate on the other, the messages and the video intact.
        """
        self.installFirewall()
        relay = await RelayProcess.start(
            self,
            self.relayNamespace,
            self.relayHost,
            f"{self.peerSubnet}.0/24",
            self.workdir,
        )
        url = f"turn:{self.relayHost}:{TURN_PORT}?transport=tcp"
        reports = await self._call([iceServer(url, USERNAME, PASSWORD)], "relay")
        caller, callee = reports["caller"], reports["callee"]
        details = json.dumps({"caller": compact(caller), "callee": compact(callee)})
        self.assertEqual(caller["outcome"], "connected", details)
        self.assertEqual(callee["outcome"], "connected", details)

        self.assertEqual(caller["pair"]["local"]["candidateType"], "relay", details)
        self.assertEqual(caller["pair"]["local"]["relayProtocol"], "tcp", details)
        self.assertEqual(caller["pair"]["remote"]["candidateType"], "host", details)
        self.assertEqual(caller["pair"]["remote"]["address"], self.peerHost, details)
        self.assertEqual(callee["pair"]["local"]["candidateType"], "host", details)
        self.assertEqual(callee["pair"]["local"]["address"], self.peerHost, details)
        self.assertEqual(callee["pair"]["remote"]["candidateType"], "relay", details)
        self.assertEqual(callee["pair"]["remote"]["address"], self.relayHost, details)

        self.assertTrue(caller["allEchoed"], details)
        self.assertEqual(caller["echoed"], caller["sent"])
        self.assertEqual(callee["received"], caller["sent"])
        self.assertTrue(callee["framesFlowing"], details)

        # The office browser allocated over TCP (one allocation per
        # transport it gathered for before the answer said to bundle), and
        # deleted every allocation when it hung up.
        created = relay.created()
        self.assertEqual(
            {(a["transport"], a["client"].rsplit(":", 1)[0], a["username"]) for a in created},
            {("tcp", self.officeHost, USERNAME)},
            relay.process.output,
        )
        relayed = f"{self.relayHost}:{caller['pair']['local']['port']}"
        self.assertIn(relayed, [a["relayed"] for a in created])
        for allocation in created:
            reason, toPeers, fromPeers = await relay.ending(allocation["relayed"])
            self.assertEqual(reason, "deleted")
            if allocation["relayed"] == relayed:
                self.assertGreater(toPeers, 0)
                self.assertGreater(fromPeers, 0)
        relay.assertHealthy(self)

    async def test_blockedWithoutRelay(self) -> None:
        """
        Behind the same firewall without turnrelay, the call fails: ICE
        finds no path between the two browsers.
        """
        self.installFirewall()
        # Chromium takes about 15 s to give up on ICE.
        reports = await self._call([], "all", timeoutMs=45000)
        details = json.dumps({key: compact(report) for key, report in reports.items()})
        self.assertEqual(reports["caller"]["outcome"], "failed", details)
        self.assertNotEqual(reports["callee"]["outcome"], "connected", details)
        self.assertIsNone(reports["caller"]["pair"], details)

    async def test_directWithoutFirewall(self) -> None:
        """
        Without the firewall, the same two browsers connect directly (host
        candidates on both sides): the firewall is what needs the relay.
        """
        reports = await self._call([], "all")
        caller, callee = reports["caller"], reports["callee"]
        details = json.dumps({"caller": compact(caller), "callee": compact(callee)})
        self.assertEqual(caller["outcome"], "connected", details)
        self.assertEqual(caller["pair"]["local"]["candidateType"], "host", details)
        self.assertEqual(caller["pair"]["remote"]["candidateType"], "host", details)
        self.assertEqual(callee["received"], caller["sent"])


class KernelPathCallTests(TestCase):
    """
    The call through turnrelay's kernel fast path (offload): Chromium runs
    in a client namespace joined by a veth to the relay's, where IP
    forwarding is on, so the relay's address is on a non-loopback
    interface that the eBPF program attaches to::

        client 10.253.N.2 (Chromium) --- 10.253.N.1 relay (turnrelay, forwarding)

    The offerer may use relay candidates only, through turnrelay over UDP;
    the answerer has no ICE server and offers its host address, so the
    offerer's allocation relays to the answerer's host address, back
    through the same veth: ChannelData the kernel path can relay both ways.

    Chromium's UDP sockets leave their checksums to be finished
    (C{CHECKSUM_PARTIAL}), which the kernel path does not handle (see
    C{tests/test_offload_e2e.py}): the client's veth computes them (C{ethtool
    -K DEV tx off}).
    """

    timeout = 120

    def setUp(self) -> None:
        requireTestbed()
        ethtool = shutil.which("ethtool")
        if ethtool is None:
            _unavailable("Debian's ethtool is not installed; `make test` installs it")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        # A Unix socket's path must fit in 108 bytes: the workdir's may not.
        controlDirectory = tempfile.mkdtemp(prefix="trk")
        self.addCleanup(shutil.rmtree, controlDirectory, True)
        self.controlSocket = os.path.join(controlDirectory, "ctl")
        subnet = f"10.253.{random.randrange(1, 255)}"
        self.relayHost = f"{subnet}.1"
        self.clientHost = f"{subnet}.2"
        self.subnet = f"{subnet}.0/24"
        self.client = Namespace.create(self)
        self.relayNamespace = Namespace.create(self)
        vethPair(self.relayNamespace, "trk0", self.client, "trk1")
        self.relayNamespace.addAddress("trk0", f"{self.relayHost}/24")
        self.relayNamespace.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.client.addAddress("trk1", f"{self.clientHost}/24")
        # Chromium offers host candidates only on the default route's
        # interface; nothing addressed elsewhere leaves the two namespaces.
        self.client.ip("route", "add", "default", "via", self.relayHost)
        self.client.run(ethtool, "-K", "trk1", "tx", "off")

    async def _status(self) -> Dict[str, Any]:
        """
        @return: the relay's C{turnrelayctl --json status}.
        """
        status: Dict[str, Any] = await controlJSON(self, self.controlSocket, "status")
        return status

    async def _call(self, username: str, credential: str) -> None:
        """
        Make the call, the offerer through turnrelay over UDP, and check
        that it carried its data and video and that the kernel relayed.
        """
        relay = await RelayProcess.start(
            self,
            self.relayNamespace,
            self.relayHost,
            self.subnet,
            self.workdir,
            options=["--control-socket", self.controlSocket, "--offload", "tc"],
        )
        self.assertIn(
            b"relaying UDP ChannelData in the kernel (tc on trk0), the rest in user space",
            relay.process.output,
        )
        browser = await startBrowser(
            self,
            self.client,
            os.path.join(self.workdir, "browser"),
            flags=["--disable-features=WebRtcHideLocalIpsWithMdns"],
        )
        url = f"turn:{self.relayHost}:{TURN_PORT}?transport=udp"
        report = await browser.call(
            "runCall",
            {
                "iceServers": [iceServer(url, username, credential)],
                "answererDirect": True,
                "messages": MESSAGES,
                "minFrames": MIN_FRAMES,
                "timeoutMs": PAGE_TIMEOUT_MS,
            },
        )
        await browser.quit()
        details = compact(report)
        self.assertTrue(report["connected"], details)

        # A relay candidate on the offerer's side, a host candidate on the
        # answerer's.
        offerer, answerer = report["offerer"]["pair"], report["answerer"]["pair"]
        self.assertIsNotNone(offerer, details)
        self.assertIsNotNone(answerer, details)
        self.assertEqual(offerer["local"]["candidateType"], "relay", details)
        self.assertEqual(offerer["local"]["relayProtocol"], "udp", details)
        self.assertEqual(offerer["local"]["address"], self.relayHost, details)
        self.assertEqual(offerer["remote"]["candidateType"], "host", details)
        self.assertEqual(offerer["remote"]["address"], self.clientHost, details)
        self.assertEqual(answerer["local"]["candidateType"], "host", details)
        self.assertEqual(answerer["remote"]["candidateType"], "relay", details)
        self.assertEqual(
            (answerer["remote"]["address"], answerer["remote"]["port"]),
            (offerer["local"]["address"], offerer["local"]["port"]),
        )

        # The data channel carried every message intact, both ways, and
        # the video was decoded.
        self.assertTrue(report["allEchoed"], details)
        self.assertEqual(report["receivedByAnswerer"], report["sent"])
        self.assertEqual(report["echoed"], report["sent"])
        self.assertEqual(len(report["sent"]), MESSAGES)
        self.assertTrue(report["framesFlowing"], details)
        self.assertGreaterEqual(report["answerer"]["video"]["framesDecoded"], MIN_FRAMES, details)

        # The browser deleted the allocation it used, having relayed both
        # ways; the kernel relayed packets both ways (read back when the
        # allocation ended), and no more than the allocation counts.
        relayed = f"{offerer['local']['address']}:{offerer['local']['port']}"
        reason, toPeers, fromPeers = await relay.ending(relayed)
        self.assertEqual(reason, "deleted")
        status = await self._status()
        figures = status["offload"]
        self.assertEqual(figures["mode"], "tc", status)
        self.assertGreater(figures["packetsToPeer"], 0, status)
        self.assertGreater(figures["packetsFromPeer"], 0, status)
        self.assertLessEqual(figures["packetsToPeer"], toPeers, (status, toPeers))
        self.assertLessEqual(figures["packetsFromPeer"], fromPeers, (status, fromPeers))
        self.assertEqual(relay.refusals(), [])
        relay.assertHealthy(self)

    async def test_udpStatic(self) -> None:
        """
        With a static user, the offerer's UDP allocation relays the call to
        the answerer's host address, the kernel relaying its ChannelData
        both ways, and the data channel and the video arrive intact.
        """
        await self._call(USERNAME, PASSWORD)

    async def test_udpREST(self) -> None:
        """
        With a TURN REST API credential, the same.
        """
        username, password = restCredential(600)
        await self._call(username, password)
