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

import json
import os
import secrets
import shutil
import signal
import subprocess
from typing import Dict, List, Mapping, NoReturn, Optional, Sequence

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


class RelayNamespaces:
    """
    A mixin for test cases that put a relay between a client and a peer:
    three namespaces made for the test (C{relay}, C{client}, C{peer}), a
    veth pair from the client to the relay (C{cv}-C{rc}) and one from the
    relay to the peer (C{rc}-C{pv}), random private IPv4 and IPv6
    addresses, and forwarding on in the relay's namespace.

    @ivar addresses: by family (C{"4"}, C{"6"}): C{client}, C{server} (the
        relay's client side), C{relay} (its peer side), C{peer}, and
        C{peers} (the peer side's network).
    """

    addresses: Dict[str, Dict[str, str]]

    def makeNamespaces(self, testCase: TestCase) -> None:
        """
        Make them; their removal is registered now, so it runs after every
        cleanup registered later.

        @raise SkipTest: namespaces cannot be made here.
        """
        self.tag = NAME_PREFIX + secrets.token_hex(3)
        self.namespaces: List[str] = []
        testCase.addCleanup(self._removeNamespaces)
        try:
            for name in ("relay", "client", "peer"):
                self._namespace(name)
        except NetworkCommandError as e:
            raise SkipTest(f"cannot create network namespaces: {e}") from None
        x = secrets.randbelow(200) + 20
        y = secrets.randbelow(256)
        # Four hex digits without a leading zero: written as the kernel
        # writes it back.
        z = f"{secrets.randbelow(0xF000) + 0x1000:x}"
        self.addresses = {
            "4": {
                "client": f"10.{x}.{y}.2",
                "server": f"10.{x}.{y}.1",
                "relay": f"10.{x + 1}.{y}.1",
                "peer": f"10.{x + 1}.{y}.2",
                "peers": f"10.{x + 1}.{y}.0/24",
            },
            "6": {
                "client": f"fd00:{z}:1::2",
                "server": f"fd00:{z}:1::1",
                "relay": f"fd00:{z}:2::1",
                "peer": f"fd00:{z}:2::2",
                "peers": f"fd00:{z}:2::/64",
            },
        }
        self._link("client", "cv", "rc", "server")
        self._link("peer", "pv", "rp", "relay")
        # bpf_fib_lookup routes as a router does: only where forwarding is on.
        command(self._in("relay", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))
        command(self._in("relay", ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]))

    def _name(self, short: str) -> str:
        return f"{self.tag}-{short}"

    def _in(self, short: str, args: List[str]) -> List[str]:
        return ["ip", "netns", "exec", self._name(short), *args]

    def _namespace(self, short: str) -> None:
        command(["ip", "netns", "add", self._name(short)])
        self.namespaces.append(self._name(short))
        command(["ip", "-n", self._name(short), "link", "set", "lo", "up"])

    def _link(self, host: str, hostDevice: str, relayDevice: str, relayName: str) -> None:
        relay, other = self._name("relay"), self._name(host)
        command(
            ["ip", "-n", relay, "link", "add", relayDevice, "type", "veth"]
            + ["peer", "name", hostDevice, "netns", other]
        )
        for family, names in self.addresses.items():
            prefix = "24" if family == "4" else "64"
            for namespace, device, address in [
                (relay, relayDevice, names[relayName]),
                (other, hostDevice, names[host]),
            ]:
                command(
                    ["ip", "-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", device]
                    + (["nodad"] if family == "6" else [])
                )
        command(["ip", "-n", relay, "link", "set", relayDevice, "up"])
        command(["ip", "-n", other, "link", "set", hostDevice, "up"])

    def _link_info(self, short: str, device: str) -> Dict[str, object]:
        [info] = json.loads(command(["ip", "-n", self._name(short), "-j", "link", "show", device]))
        return dict(info)

    def _mac(self, short: str, device: str) -> bytes:
        return bytes.fromhex(str(self._link_info(short, device)["address"]).replace(":", ""))

    def _removeNamespaces(self) -> None:
        """
        Remove the namespaces; a process still running in one is killed
        and reported: the test should have stopped it.
        """
        problems = []
        for namespace in reversed(self.namespaces):
            try:
                for pid in command(["ip", "netns", "pids", namespace]).split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    problems.append(f"process {pid} was still running in {namespace}")
                command(["ip", "netns", "del", namespace])
            except NetworkCommandError as e:
                problems.append(str(e))
        left = set(self.namespaces) & set(listNamespaces())
        if left:
            problems.append(f"namespaces left behind: {sorted(left)}")
        if problems:
            raise AssertionError("; ".join(problems))
