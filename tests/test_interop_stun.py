"""
Independent STUN clients, run as child processes, against an in-process
relay on the loopback interfaces: coturn's C{turnutils_stunclient} (C, UDP
only) and a small client on aioice's codec (C{tests/interop/aioice_binding.py}).
"""

from __future__ import annotations

import os
import re
import sys

from twisted.trial.unittest import TestCase

from tests._processes import requireTool, runToCompletion
from tests._relays import startRelay
from turnrelay.stun.address import TransportAddress

HERE = os.path.dirname(os.path.abspath(__file__))
AIOICE_CLIENT = os.path.join(HERE, "interop", "aioice_binding.py")


class CoturnStunclientTests(TestCase):
    """
    coturn's C{turnutils_stunclient} sends Binding requests over UDP.
    """

    # The client waits forever for an answer that does not come; the test's
    # timeout ends the wait and the cleanup kills it.
    timeout = 30

    async def _stunclient(self, listen: str, host: str) -> None:
        stunclient = requireTool(self, "turnutils_stunclient")
        relay = startRelay(self, listen=[listen])
        port = relay.address("udp").port
        child = await runToCompletion(self, [stunclient, "-p", str(port), host])
        self.assertEqual(child.exitCode, 0, (child.output, child.errors))
        # coturn prints an IPv6 address without brackets: ::1:PORT.
        match = re.search(rb"UDP reflexive addr: (\S+):(\d+)\s", child.output)
        self.assertIsNotNone(match, child.output)
        assert match is not None
        self.assertEqual(match.group(1).decode("ascii"), host)
        self.assertNotEqual(int(match.group(2)), 0)

    async def test_ipv4(self) -> None:
        """
        coturn's client gets its reflexive address, 127.0.0.1 and a port,
        and exits with status 0.
        """
        await self._stunclient("udp:0:interface=127.0.0.1", "127.0.0.1")

    async def test_ipv6(self) -> None:
        """
        coturn's client on ::1 gets the reflexive address ::1 and a port.
        """
        await self._stunclient("udp:0:interface=::1", "::1")

    async def test_dualStack(self) -> None:
        """
        coturn's IPv4 client of a listener on :: gets its plain IPv4
        reflexive address.
        """
        await self._stunclient("udp:0:interface=::", "127.0.0.1")


class AioiceBindingTests(TestCase):
    """
    aioice's STUN codec builds the request and parses the response.
    """

    timeout = 30

    async def _binding(self, transport: str, listen: str, host: str, *options: str) -> None:
        relay = startRelay(self, listen=[listen])
        port = relay.address(transport).port
        args = [sys.executable, AIOICE_CLIENT, *options, "--transport", transport, host, str(port)]
        child = await runToCompletion(self, args)
        self.assertEqual(child.exitCode, 0, (child.output, child.errors))
        lines = child.output.decode("ascii").splitlines()
        self.assertEqual(len(lines), 2, child.output)
        mapped, local = (TransportAddress(a, int(p)) for a, p in (line.split() for line in lines))
        self.assertEqual(mapped, local)
        self.assertEqual(mapped.host, host)

    async def test_udpIPv4(self) -> None:
        """
        Over UDP on 127.0.0.1, aioice parses a response carrying its own
        address and port.
        """
        await self._binding("udp", "udp:0:interface=127.0.0.1", "127.0.0.1")

    async def test_udpIPv6(self) -> None:
        """
        Over UDP on ::1, aioice parses a response carrying its own address
        and port.
        """
        await self._binding("udp", "udp:0:interface=::1", "::1")

    async def test_tcpIPv4(self) -> None:
        """
        Over TCP on 127.0.0.1, aioice parses a response carrying its own
        address and port.
        """
        await self._binding("tcp", "tcp:0:interface=127.0.0.1", "127.0.0.1")

    async def test_tcpIPv6(self) -> None:
        """
        Over TCP on ::1, aioice parses a response carrying its own address
        and port.
        """
        await self._binding("tcp", "tcp:0:interface=::1", "::1")

    async def test_udpDualStack(self) -> None:
        """
        aioice's IPv4 client of a UDP listener on :: gets its plain IPv4
        address.
        """
        await self._binding("udp", "udp:0:interface=::", "127.0.0.1")

    async def test_fingerprint(self) -> None:
        """
        aioice's FINGERPRINT is accepted, and the response's FINGERPRINT
        passes aioice's check, over UDP and TCP.
        """
        await self._binding("udp", "udp:0:interface=127.0.0.1", "127.0.0.1", "--fingerprint")
        await self._binding("tcp", "tcp:0:interface=::1", "::1", "--fingerprint")
