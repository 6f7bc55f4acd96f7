"""
turnrelay end to end behind a firewall and a NAT, in network namespaces the
tests create and remove (see L{tests._netns}): the real C{twistd turnrelay}
on a server host, an echo peer on a peer host, and clients on two hosts
that cannot reach the peer by themselves.

Each test builds this network, on a random C{10.250.X.0/24} that exists
only inside its namespaces::

    server   .2   twistd turnrelay: udp and tcp 3478, tls 5349, udp 3479-3480
    peer     .3   echo_peer.py: udp 5000-5001, tcp 5000
    client   .4   firewall: no UDP at all, TCP only to the server's 3478 and 5349
    nat      .5   MASQUERADE --random-fully; forwards in only what answers
                  traffic from inside; the box itself takes nothing new
    natclient .130  behind nat (.129 on the inside)

all on one bridge (the LAN's switch) except the NAT's inside network.  The
peer has a route to the NAT's inside network through the NAT, as a host on
the same LAN could, so that it can try to get in.

The clients are coturn's C{turnutils_uclient} (independent of turnrelay)
and C{tests/interop/codec_turn.py}, a TURN client on turnrelay's own codec
whose report says where every answer came from.  The peer logs the source
of everything it receives: that is how the tests know that the peer only
ever sees the relayed address.

Without root, C{ip} or C{iptables}, or where the kernel refuses to create a
namespace, the tests are skipped with a message that says which; on CI
(C{CI=true}) as root they fail instead.  Each test removes its namespaces,
and with them every interface, route and firewall rule it made, and stops
every process it started, whether it passes or not.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import TestCase

from tests._netns import Host, Network
from tests._processes import (
    ChildProcess,
    pythonEnvironment,
    requireTool,
    turnrelayCommand,
    uclientCounters,
)
from turnrelay.transports.tls import makeSelfSignedCertificate

HERE = os.path.dirname(os.path.abspath(__file__))
CODEC_CLIENT = os.path.join(HERE, "interop", "codec_turn.py")
ECHO_PEER = os.path.join(HERE, "interop", "echo_peer.py")

TURN_PORT = 3478
TLS_PORT = 5349
# More UDP listeners, to see how the NAT maps one socket to several servers.
MORE_UDP_PORTS = (3479, 3480)
PEER_PORT = 5000
USERNAME = "alice"
PASSWORD = "alice-netns-pw"
REALM = "netns.test"
ROUND_TRIPS = 5
PROTOS = ("udp", "tcp")
# turnutils_uclient sends this many messages of this size, one every 5 ms.
MESSAGES = 10
MESSAGE_SIZE = 120

# The firewalled client's rules: out, only TCP to the TURN server's TCP and
# TLS ports (and what answers it); in, only what answers.
CLIENT_FIREWALL = """\
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A OUTPUT -p tcp -d {server} --dport {turnPort} -j ACCEPT
-A OUTPUT -p tcp -d {server} --dport {tlsPort} -j ACCEPT
-A OUTPUT -p tcp -j DROP
-A OUTPUT -p udp -j DROP
COMMIT
"""

# The NAT: address- and port-dependent mapping (a random port for each new
# destination), and nothing in from outside that does not answer what went
# out (address- and port-dependent filtering).
NAT_FIREWALL = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o eth0 -j MASQUERADE --random-fully
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD {forward} [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i eth1 -o eth0 -j ACCEPT
-A FORWARD -i eth0 -o eth1 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
COMMIT
"""


def jsonLines(output: bytes) -> List[Dict[str, Any]]:
    """
    @return: each line of C{output} that is a JSON object, decoded.
    """
    return [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]


class Site:
    """
    The network of the module docstring, with the relay and the echo peer
    running.

    @ivar network: the namespaces.
    @ivar server: the relay's host.
    @ivar peer: the echo peer's host.
    @ivar client: the firewalled client's host.
    @ivar nat: the NAT.
    @ivar natClient: the host behind the NAT.
    @ivar certificate: the relay's self-signed certificate, for its IP
        address (the clients trust it).
    @ivar twistd: the relay's process.
    @ivar echo: the echo peer's process.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.testCase = testCase
        self.network = Network(testCase)
        self.server = self.network.addHost("server", 2)
        self.peer = self.network.addHost("peer", 3)
        self.client = self.network.addHost("client", 4)
        self.nat, self.natClient = self.network.addRouter("nat", 5, "natclient")
        self.peer.ip("route", "add", self.network.insideCIDR, "via", self.nat.address)
        self.client.firewall(
            CLIENT_FIREWALL.format(server=self.server.address, turnPort=TURN_PORT, tlsPort=TLS_PORT)
        )
        self.filterNAT(True)
        directory = os.path.abspath(testCase.mktemp())
        self.directory = directory
        self.certificate = os.path.join(directory, "cert.pem")
        self.key = os.path.join(directory, "key.pem")
        makeSelfSignedCertificate(self.certificate, self.key, (self.server.address,))
        self.twistd: ChildProcess
        self.echo: ChildProcess

    def filterNAT(self, filtering: bool) -> None:
        """
        Have the NAT drop what comes in unasked (or, for a control, forward
        it).
        """
        self.nat.firewall(NAT_FIREWALL.format(forward="DROP" if filtering else "ACCEPT"))

    @property
    def peerAddress(self) -> Tuple[str, int]:
        """
        Where the echo peer listens for UDP.
        """
        return (self.peer.address, PEER_PORT)

    async def start(self) -> Site:
        """
        Start the relay and the echo peer, and wait until both listen.
        """
        server = self.server.address
        listen = [
            f"udp:{TURN_PORT}:interface={server}",
            f"tcp:{TURN_PORT}:interface={server}",
            f"tls:{TLS_PORT}:interface={server}",
            *(f"udp:{port}:interface={server}" for port in MORE_UDP_PORTS),
        ]
        args = turnrelayCommand(
            "--relay-ip",
            server,
            "--allow-peer",
            self.network.cidr,
            "--user",
            f"{USERNAME}:{PASSWORD}",
            "--realm",
            REALM,
            "--tls-cert",
            self.certificate,
            "--tls-key",
            self.key,
            listen=listen,
        )
        self.twistd = self.server.spawn(
            self.testCase, args, env=pythonEnvironment(), path=self.directory
        )
        self.echo = self.peer.spawn(
            self.testCase, [sys.executable, ECHO_PEER, "echo", self.peer.address, str(PEER_PORT)]
        )
        for value in listen:
            transport, port, _ = value.split(":", 2)
            await self.twistd.waitForOutput(
                rf"listening for {transport} on {re.escape(server)}:{port}\b".encode()
            )
        await self.echo.waitForOutput(rb'"listening"')
        return self

    # Clients ---------------------------------------------------------------

    async def codecClient(self, host: Host, transport: str, *options: str) -> Dict[str, Any]:
        """
        Run C{codec_turn.py} on C{host} against the relay, relaying to the
        echo peer.

        @return: its report.
        """
        port = TLS_PORT if transport == "tls" else TURN_PORT
        args = [
            sys.executable,
            CODEC_CLIENT,
            "--transport",
            transport,
            "--server",
            self.server.address,
            "--port",
            str(port),
            "--username",
            USERNAME,
            "--password",
            PASSWORD,
            "--ca",
            self.certificate,
            "--peer",
            "{}:{}".format(*self.peerAddress),
            "--round-trips",
            str(ROUND_TRIPS),
            *options,
        ]
        child = await host.run(self.testCase, args, env=pythonEnvironment())
        reports = jsonLines(child.output)
        self.testCase.assertEqual(len(reports), 1, (child.output, child.errors))
        report = reports[0]
        self.testCase.assertEqual(child.exitCode, 0 if report["ok"] else 1, child.errors)
        return report

    async def uclient(self, host: Host, *options: str) -> ChildProcess:
        """
        Run coturn's C{turnutils_uclient} on C{host} against the relay,
        relaying C{MESSAGES} to the echo peer, to its end.
        """
        uclient = requireTool(self.testCase, "turnutils_uclient")
        args = [
            uclient,
            "-c",
            "-m",
            "1",
            "-n",
            str(MESSAGES),
            "-l",
            str(MESSAGE_SIZE),
            "-z",
            "5",
            "-u",
            USERNAME,
            "-w",
            PASSWORD,
            "-e",
            self.peer.address,
            "-r",
            str(PEER_PORT),
            *options,
            self.server.address,
        ]
        return await host.run(self.testCase, args)

    async def probe(self, host: Host, proto: str, address: Tuple[str, int]) -> Dict[str, Any]:
        """
        Try to reach C{address} from C{host} directly, without the relay.

        @return: the probe's report: C{reached}, and the C{error} if not.
        """
        args = [sys.executable, ECHO_PEER, "probe", proto, address[0], str(address[1])]
        child = await host.run(self.testCase, args)
        [report] = jsonLines(child.output)
        return report

    # What the relay and the peer saw ----------------------------------------

    def assertServerHealthy(self) -> None:
        """
        Fail the test if the relay has logged an error or a traceback, or
        has ended.
        """
        output = self.twistd.output + self.twistd.errors
        for sign in [b"Traceback", b"Unhandled", b"CRITICAL", b"#error]", b"#critical]"]:
            self.testCase.assertNotIn(sign, output)
        self.testCase.assertIsNone(self.twistd.endReason, output)

    async def peerSaw(self, atLeast: int) -> List[Dict[str, Any]]:
        """
        Wait until the echo peer has logged C{atLeast} datagrams and
        connections: it logs each before it answers, but its output may
        reach this process after the answer has reached a client.

        @return: every datagram and connection it logged so far.
        """
        await self.echo.waitForOutput(b'(?s)(?:"from".*?){%d}' % (atLeast,))
        return [line for line in jsonLines(self.echo.output) if "from" in line]

    def allocationsFor(self) -> List[Tuple[str, str]]:
        """
        @return: C{(relayed address, client address)} of each allocation the
            relay has logged as created.
        """
        return re.findall(
            r"allocation (\S+) created for \S+ on \w+:(\S+?)->",
            self.twistd.output.decode(errors="replace"),
        )


class FirewalledClientTests(TestCase):
    """
    A client whose firewall lets out only TCP to the TURN server's TCP and
    TLS ports reaches the peer through the relay, over TCP or TLS only.
    """

    timeout = 30

    async def test_directBlocked(self) -> None:
        """
        The client cannot reach the peer directly, over UDP or TCP, while a
        host without that firewall can, and the client can reach the
        server's TCP port.
        """
        site = await Site(self).start()
        fromClient = [await site.probe(site.client, proto, site.peerAddress) for proto in PROTOS]
        # The firewall drops on the way out: sendto fails with EPERM; a TCP
        # SYN is dropped, again and again, until the probe gives up.
        self.assertEqual(
            [(report["reached"], report["error"]) for report in fromClient],
            [(False, "EPERM"), (False, "timeout")],
        )
        # The control: the peer answers both from a host on the same LAN.
        fromServer = [await site.probe(site.server, proto, site.peerAddress) for proto in PROTOS]
        self.assertEqual([report["reached"] for report in fromServer], [True, True], fromServer)
        toServer = await site.probe(site.client, "tcp", (site.server.address, TURN_PORT))
        # The relay does not echo a probe, but the connection is made.
        self.assertTrue(toServer["connected"], toServer)
        seen = {line["from"][0] for line in await site.peerSaw(len(PROTOS))}
        self.assertEqual(seen, {site.server.address})

    async def test_udpFails(self) -> None:
        """
        TURN over UDP from the client fails, for coturn's client and ours,
        and the relay never hears of it, while it answers UDP from a host
        on the same LAN.
        """
        site = await Site(self).start()
        report = await site.codecClient(site.client, "udp")
        self.assertEqual(
            (report["ok"], report["stage"], report["errno"], report["relayed"]),
            (False, "binding", "EPERM", None),
            report,
        )
        uclient = await site.uclient(site.client)
        self.assertNotEqual(uclient.exitCode, 0, (uclient.output, uclient.errors))
        self.assertIsNone(uclientCounters(uclient.output), uclient.output)
        self.assertEqual(site.allocationsFor(), [])
        self.assertEqual(jsonLines(site.echo.output), [{"listening": list(site.peerAddress)}])
        # The control: a Binding over UDP from the peer's host is answered.
        control = await site.codecClient(
            site.peer, "udp", "--binding-only", "--bind", site.peer.address
        )
        self.assertEqual(control["bindings"], [control["local"]], control)
        site.assertServerHealthy()

    async def _relaysOver(self, transport: str) -> None:
        """
        Our client relays round trips over C{transport} through a channel
        and a Send indication, and the peer sees only the relayed address.
        """
        site = await Site(self).start()
        report = await site.codecClient(site.client, transport)
        self.assertTrue(report["ok"], report)
        self.assertEqual(report["roundTrips"], ROUND_TRIPS)
        self.assertTrue(report["deleted"], report)
        self.assertEqual(report["strays"], [])
        relayed = tuple(report["relayed"])
        self.assertEqual(relayed[0], site.server.address)
        # No NAT on the way: the relay sees the client's own address.
        self.assertEqual(report["mapped"], report["local"])
        self.assertEqual(report["local"][0], site.client.address)
        self.assertEqual(report["dataIndicationFrom"], list(site.peerAddress))
        self.assertEqual(
            site.allocationsFor(), [("{}:{}".format(*relayed), "{}:{}".format(*report["local"]))]
        )
        seen = await site.peerSaw(ROUND_TRIPS + 1)
        self.assertEqual(len(seen), ROUND_TRIPS + 1, seen)
        self.assertEqual({tuple(line["from"]) for line in seen}, {relayed})
        site.assertServerHealthy()

    async def test_tcpRelays(self) -> None:
        """
        TURN over TCP from the client relays to the peer, which sees only
        the relayed address.
        """
        await self._relaysOver("tcp")

    async def test_tlsRelays(self) -> None:
        """
        TURN over TLS from the client, the server's certificate verified,
        relays to the peer, which sees only the relayed address.
        """
        await self._relaysOver("tls")

    async def test_uclientOverTCPAndTLS(self) -> None:
        """
        coturn's client relays every message to the peer and back over TCP
        and over TLS (verifying the certificate), and the peer sees only the
        relay's address.
        """
        site = await Site(self).start()
        for options in [("-t", "-p", str(TURN_PORT)), ("-S", "-E", site.certificate, "-t")]:
            uclient = await site.uclient(site.client, *options)
            self.assertEqual(uclient.exitCode, 0, (options, uclient.output))
            self.assertEqual(
                uclientCounters(uclient.output),
                {"sent": MESSAGES, "received": MESSAGES, "lost": 0, "sendDropped": 0},
                (options, uclient.output),
            )
        seen = await site.peerSaw(2 * MESSAGES)
        self.assertEqual({line["from"][0] for line in seen}, {site.server.address})
        # turnutils_uclient makes a probe allocation before the one it uses.
        self.assertEqual(len(site.allocationsFor()), 4, site.twistd.output)
        site.assertServerHealthy()


class NATClientTests(TestCase):
    """
    A client behind a NAT with address- and port-dependent mapping and
    filtering relays over UDP, while the peer cannot get in by itself.
    """

    timeout = 30

    async def test_mappedAddressIsTheNATs(self) -> None:
        """
        TURN over UDP through the NAT relays to the peer, XOR-MAPPED-ADDRESS
        is the NAT's outside address, and the peer sees only the relayed
        address.
        """
        site = await Site(self).start()
        report = await site.codecClient(site.natClient, "udp", "--bind", site.natClient.address)
        self.assertTrue(report["ok"], report)
        self.assertEqual(report["roundTrips"], ROUND_TRIPS)
        self.assertEqual(report["local"][0], site.natClient.address)
        self.assertEqual(report["mapped"][0], site.nat.address)
        relayed = tuple(report["relayed"])
        self.assertEqual(relayed[0], site.server.address)
        self.assertEqual(
            site.allocationsFor(), [("{}:{}".format(*relayed), "{}:{}".format(*report["mapped"]))]
        )
        seen = await site.peerSaw(ROUND_TRIPS + 1)
        self.assertEqual({tuple(line["from"]) for line in seen}, {relayed})
        site.assertServerHealthy()

    async def test_mappingDependsOnDestination(self) -> None:
        """
        One socket behind the NAT is mapped to the NAT's outside address on
        a port that changes with the server port it sends to.
        """
        site = await Site(self).start()
        alsoBind = [option for port in MORE_UDP_PORTS for option in ("--also-bind", str(port))]
        report = await site.codecClient(site.natClient, "udp", "--binding-only", *alsoBind)
        self.assertTrue(report["ok"], report)
        self.assertEqual(len(report["bindings"]), 1 + len(MORE_UDP_PORTS), report)
        self.assertEqual({host for host, _ in report["bindings"]}, {site.nat.address})
        # --random-fully: a fresh random port per destination.  Three equal
        # ones would mean an endpoint-independent mapping (or a 1 in 4e9
        # coincidence).
        self.assertGreater(len({port for _, port in report["bindings"]}), 1, report)

    async def test_unsolicitedDropped(self) -> None:
        """
        Datagrams the peer sends straight to the client's mapped address
        and to its private address do not get in, while its answers through
        the relay do; with the NAT's filter opened, they would.
        """
        site = await Site(self).start()
        options = ("--bind", site.natClient.address, "--poke", "mapped", "--poke", "local")
        report = await site.codecClient(site.natClient, "udp", *options)
        self.assertTrue(report["ok"], report)
        self.assertEqual(report["strays"], [])
        await site.echo.waitForOutput(b'"poked"')
        [poked] = [line for line in jsonLines(site.echo.output) if "poked" in line]
        self.assertEqual(
            poked,
            {
                "poked": ["{}:{}".format(*report["mapped"]), "{}:{}".format(*report["local"])],
                "errors": [],
            },
        )

        # The control: with the filter open, the peer's datagram to the
        # private address is forwarded (the mapped address still leads
        # nowhere: the NAT maps only for the server).
        site.filterNAT(False)
        report = await site.codecClient(site.natClient, "udp", *options)
        self.assertTrue(report["ok"], report)
        self.assertEqual(report["strays"], [list(site.peerAddress)])
        site.assertServerHealthy()

    async def test_uclientThroughNAT(self) -> None:
        """
        coturn's client behind the NAT relays every message over UDP to the
        peer and back, and the peer sees only the relay's address.
        """
        site = await Site(self).start()
        uclient = await site.uclient(site.natClient)
        self.assertEqual(uclient.exitCode, 0, uclient.output)
        self.assertEqual(
            uclientCounters(uclient.output),
            {"sent": MESSAGES, "received": MESSAGES, "lost": 0, "sendDropped": 0},
            uclient.output,
        )
        seen = await site.peerSaw(MESSAGES)
        self.assertEqual({line["from"][0] for line in seen}, {site.server.address})
        clients = {client.rpartition(":")[0] for _, client in site.allocationsFor()}
        self.assertEqual(clients, {site.nat.address})
        site.assertServerHealthy()
