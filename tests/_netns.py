"""
Network namespaces for the end-to-end tests of C{tests/test_e2e_netns.py}:
hosts on a private LAN, firewalls, and a NAT, that exist only while a test
runs.

A L{Network} is a bridge in a namespace of its own (the LAN's switch) and
one namespace per host, each joined to the bridge by a veth pair created
straight into the two namespaces.  Addresses come from a random
C{10.250.X.0/24} and exist only inside these namespaces; the hosts' routes
and firewall rules (C{iptables-restore}, run inside the host's namespace)
are theirs alone.  Nothing is created in, or changed in, the namespace the
tests run in: its interfaces, routes and rules stay as they were.

Cleanup is registered with the test case before the first namespace is
made, and so runs after the cleanups of every process started later: the
processes are killed first, then anything left running inside a namespace,
then each namespace is deleted, which takes its veths, routes and rules
with it.  A namespace that cannot be deleted fails the test.

Creating namespaces needs root (C{CAP_NET_ADMIN} and C{CAP_SYS_ADMIN}).
Where that, C{ip} or C{iptables} is missing, L{requireNetworkNamespaces}
skips the test and says why, except on CI as root (C{CI=true}), where it
fails the test instead: a CI machine that can run these tests must.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from typing import List, Mapping, NoReturn, Optional, Sequence

from twisted.trial.unittest import SkipTest, TestCase

from tests._processes import ChildProcess, runToCompletion, spawn

# Names of everything these tests create start with this, then random hex.
NAME_PREFIX = "trX"
# Each network takes a random /24 of this /16.
ADDRESS_PREFIX = "10.250"
# The LAN is the lower half of the /24; a NAT's inside network the upper.
LAN_PREFIX_LENGTH = 25
# How long one setup command may take.
COMMAND_TIMEOUT = 20


class NetworkCommandError(Exception):
    """
    A command that builds or removes a network failed.
    """


def command(args: Sequence[str], input: Optional[str] = None) -> str:
    """
    Run a setup command to its end.

    @param input: its standard input.
    @return: its standard output.
    @raise NetworkCommandError: it failed; the message has its error output.
    """
    try:
        done = subprocess.run(
            list(args),
            input=input,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkCommandError(f"{' '.join(args)}: {e}") from None
    if done.returncode != 0:
        raise NetworkCommandError(
            f"{' '.join(args)} failed with status {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


def listNamespaces() -> List[str]:
    """
    @return: the names of the named network namespaces (C{ip netns list}).
    """
    return [line.split()[0] for line in command(["ip", "netns", "list"]).splitlines() if line]


def unavailable(testCase: TestCase, reason: str) -> NoReturn:
    """
    Skip the test because this machine cannot build its network, or fail it
    on CI as root, where it must be able to.
    """
    message = f"network namespace tests need root, ip and iptables: {reason}"
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        testCase.fail(message + " (CI=true as root: not skipping)")
    raise SkipTest(message)


def requireNetworkNamespaces(testCase: TestCase) -> None:
    """
    Skip (or on CI as root, fail) unless this process is root and has the
    tools; whether the kernel lets it create a namespace is found by
    L{Network} when it creates its first.
    """
    if os.geteuid() != 0:
        raise SkipTest(
            "network namespace tests need root (CAP_NET_ADMIN) to create namespaces,"
            f" veths and firewall rules; running as uid {os.geteuid()}"
        )
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            unavailable(testCase, f"{tool} is not installed (Debian packages iproute2, iptables)")


class Host:
    """
    A host: a network namespace with one address on the LAN (or behind a
    NAT).

    @ivar name: the host's short name (C{"server"}).
    @ivar namespace: its network namespace's name.
    @ivar address: its IPv4 address.
    """

    def __init__(self, name: str, namespace: str, address: str) -> None:
        self.name = name
        self.namespace = namespace
        self.address = address

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} in {self.namespace}>"

    def inside(self, args: Sequence[str]) -> List[str]:
        """
        @return: the command that runs C{args} in this host's namespace.
        """
        return ["ip", "netns", "exec", self.namespace, *args]

    def ip(self, *args: str) -> str:
        """
        Run C{ip ARGS} on this host.
        """
        return command(["ip", "-n", self.namespace, *args])

    def firewall(self, rules: str) -> None:
        """
        Load C{rules}, in C{iptables-save} syntax, into this host's
        firewall, replacing the tables they name.
        """
        command(self.inside(["iptables-restore"]), input=rules)

    def rules(self) -> str:
        """
        @return: this host's firewall rules (C{iptables-save}).
        """
        return command(self.inside(["iptables-save"]))

    def spawn(
        self,
        testCase: TestCase,
        args: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        path: Optional[str] = None,
    ) -> ChildProcess:
        """
        Start C{args} on this host; it is killed, if still running, at the
        test's cleanup.

        C{ip netns exec} execs C{args} in place, so the process is the
        command itself, and killing it kills the command.
        """
        return spawn(testCase, self.inside(args), env, path)

    async def run(
        self,
        testCase: TestCase,
        args: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        path: Optional[str] = None,
    ) -> ChildProcess:
        """
        Run C{args} on this host to its end (trial's timeout bounds it).
        """
        return await runToCompletion(testCase, self.inside(args), env, path)


class Network:
    """
    A LAN of namespaces, removed at the test's cleanup.

    @ivar tag: the prefix of every namespace's name, unique to this network.
    @ivar prefix: the first three octets of its addresses (C{10.250.X}).
    @ivar cidr: all of its addresses, the LAN and NATs' inside networks.
    @ivar namespaces: the namespaces made so far, in order.
    """

    def __init__(self, testCase: TestCase) -> None:
        requireNetworkNamespaces(testCase)
        self.tag = NAME_PREFIX + secrets.token_hex(3)
        self.prefix = f"{ADDRESS_PREFIX}.{secrets.randbelow(256)}"
        self.cidr = f"{self.prefix}.0/24"
        self.namespaces: List[str] = []
        testCase.addCleanup(self.destroy)
        try:
            self._switch = self._namespace("lan")
        except NetworkCommandError as e:
            unavailable(testCase, f"cannot create a network namespace: {e}")
        self._switch.ip("link", "add", "br0", "type", "bridge")
        self._switch.ip("link", "set", "br0", "up")

    def __repr__(self) -> str:
        return f"<Network {self.tag} {self.cidr}>"

    def address(self, number: int) -> str:
        """
        @return: the address ending in C{number}.
        """
        return f"{self.prefix}.{number}"

    def _namespace(self, name: str, address: str = "") -> Host:
        namespace = f"{self.tag}-{name}"
        try:
            command(["ip", "netns", "add", namespace])
        except NetworkCommandError:
            # Half made (its file created, its mount failed)?  Then remove it.
            try:
                if namespace in listNamespaces():
                    self.namespaces.append(namespace)
            except NetworkCommandError:
                pass
            raise
        self.namespaces.append(namespace)
        host = Host(name, namespace, address)
        host.ip("link", "set", "lo", "up")
        return host

    def addHost(self, name: str, number: int) -> Host:
        """
        Create a host on the LAN, its C{eth0} at the address ending in
        C{number} (1 to 126).
        """
        host = self._namespace(name, self.address(number))
        port = f"v{name}"[:15]
        self._switch.ip(
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.namespace
        )
        self._switch.ip("link", "set", port, "master", "br0", "up")
        host.ip("addr", "add", f"{host.address}/{LAN_PREFIX_LENGTH}", "dev", "eth0")
        host.ip("link", "set", "eth0", "up")
        return host

    def addRouter(self, name: str, number: int, inside: str) -> tuple[Host, Host]:
        """
        Create a router on the LAN (C{eth0}, at the address ending in
        C{number}) with one host behind it on the upper half of the /24
        (the router's C{eth1} at C{.129}, the host's C{eth0} at C{.130},
        its default route through the router).  The router forwards; what
        it filters and translates is for L{Host.firewall} to say.

        @param inside: the name of the host behind it.
        @return: the router and the host behind it.
        """
        router = self.addHost(name, number)
        command(router.inside(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
        host = self._namespace(inside, self.address(130))
        router.ip(
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", host.namespace
        )
        router.ip("addr", "add", f"{self.address(129)}/{LAN_PREFIX_LENGTH}", "dev", "eth1")
        router.ip("link", "set", "eth1", "up")
        host.ip("addr", "add", f"{host.address}/{LAN_PREFIX_LENGTH}", "dev", "eth0")
        host.ip("link", "set", "eth0", "up")
        host.ip("route", "add", "default", "via", self.address(129))
        return router, host

    @property
    def insideCIDR(self) -> str:
        """
        The network behind routers made by L{addRouter}.
        """
        return f"{self.address(128)}/{LAN_PREFIX_LENGTH}"

    def destroy(self) -> None:
        """
        Kill whatever still runs in this network's namespaces (all of it
        started by this test, inside namespaces only it knows), and delete
        the namespaces, with their interfaces, routes and rules.

        @raise AssertionError: a namespace is still there afterwards.
        """
        problems: List[str] = []
        for namespace in reversed(self.namespaces):
            try:
                for pid in command(["ip", "netns", "pids", namespace]).split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    problems.append(f"process {pid} was still running in {namespace}")
            except NetworkCommandError as e:
                problems.append(str(e))
            try:
                command(["ip", "netns", "del", namespace])
            except NetworkCommandError as e:
                problems.append(str(e))
        left = set(self.namespaces) & set(listNamespaces())
        self.namespaces = []
        if left:
            problems.append(f"namespaces left behind: {sorted(left)}")
        if problems:
            raise AssertionError("; ".join(problems))
