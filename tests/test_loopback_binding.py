"""
STUN Binding through real sockets on the loopback interfaces: an in-process
relay on the global reactor, and clients in the same process.

"No answer" is asserted without waiting for a silence: the bad input goes
first, a good request after it on the same socket, and the first thing that
comes back must be the good request's response.
"""

from __future__ import annotations

from typing import List

from twisted.trial.unittest import TestCase

from tests._relays import startRelay
from tests._sockets import (
    bindingRequest,
    bindingSuccess,
    datagramClient,
    mappedAddress,
    streamClient,
)
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import encodeChannelData
from turnrelay.stun.message import MessageClass, Method, STUNMessage


def _unanswerable() -> List[bytes]:
    """
    @return: datagrams a STUN server must drop: junk, broken STUN, and
        well-formed messages that are not requests it serves.
    """
    _, plain = bindingRequest()
    _, withFingerprint = bindingRequest(fingerprint=True)
    badCookie = plain[:4] + b"\x21\x12\xa4\x43" + plain[8:]
    longerThanSent = plain[:2] + b"\x00\x08" + plain[4:]
    badFingerprint = withFingerprint[:-1] + bytes([withFingerprint[-1] ^ 0xFF])
    indication = STUNMessage(Method.BINDING, MessageClass.INDICATION, bytes(12)).encode()
    response = STUNMessage(Method.BINDING, MessageClass.SUCCESS_RESPONSE, bytes(12)).encode()
    return [
        b"",
        b"\xff" * 20,
        b"this is not a STUN message at all",
        plain[:19],
        withFingerprint[:24],
        longerThanSent,
        badCookie,
        badFingerprint,
        indication,
        response,
        encodeChannelData(0x4000, b"no channel is bound"),
    ]


class UDPBindingTests(TestCase):
    """
    Binding over UDP.
    """

    timeout = 10

    async def _roundTrip(self, listen: str, clientInterface: str, serverHost: str) -> None:
        relay = startRelay(self, listen=[listen])
        server = relay.address("udp")._replace(host=serverHost)
        client = datagramClient(self, clientInterface)
        transactionID, request = bindingRequest()
        client.send(request, server)
        datagram, source = await client.received.get()
        self.assertEqual(mappedAddress(self, datagram, transactionID), client.address)
        self.assertEqual(TransportAddress(*source[:2]), server)

    async def test_ipv4(self) -> None:
        """
        A client on 127.0.0.1 learns its own address and port, from the
        address it sent to.
        """
        await self._roundTrip("udp:0:interface=127.0.0.1", "127.0.0.1", "127.0.0.1")

    async def test_ipv6(self) -> None:
        """
        A client on ::1 learns its own address and port, from the address it
        sent to.
        """
        await self._roundTrip("udp:0:interface=::1", "::1", "::1")

    async def test_dualStackIPv4Client(self) -> None:
        """
        A listener on :: reports an IPv4 client as its plain IPv4 address,
        not the IPv4-mapped IPv6 spelling the socket gives.
        """
        await self._roundTrip("udp:0:interface=::", "127.0.0.1", "127.0.0.1")

    async def test_dualStackIPv6Client(self) -> None:
        """
        A listener on :: answers an IPv6 client with its IPv6 address.
        """
        await self._roundTrip("udp:0:interface=::", "::1", "::1")

    async def test_fingerprint(self) -> None:
        """
        A request with FINGERPRINT gets a response with a valid FINGERPRINT,
        and a request without gets a response without.
        """
        relay = startRelay(self, listen=["udp:0:interface=127.0.0.1"])
        server = relay.address("udp")
        client = datagramClient(self, "127.0.0.1")
        transactionID, request = bindingRequest(fingerprint=True)
        client.send(request, server)
        response = bindingSuccess(self, await client.receive(), transactionID)
        self.assertIsNotNone(response.fingerprint)
        transactionID, request = bindingRequest()
        client.send(request, server)
        response = bindingSuccess(self, await client.receive(), transactionID)
        self.assertIsNone(response.fingerprint)

    async def test_unanswerableDatagramsDropped(self) -> None:
        """
        Junk, truncated or corrupt STUN, non-requests and ChannelData for no
        channel get no answer, and the listener answers the next request.
        """
        relay = startRelay(self, listen=["udp:0:interface=127.0.0.1"])
        server = relay.address("udp")
        client = datagramClient(self, "127.0.0.1")
        for datagram in _unanswerable():
            client.send(datagram, server)
        transactionID, request = bindingRequest()
        client.send(request, server)
        self.assertEqual(mappedAddress(self, await client.receive(), transactionID), client.address)

    async def test_otherClientUnaffected(self) -> None:
        """
        Junk from one client does not keep the listener from answering
        another.
        """
        relay = startRelay(self, listen=["udp:0:interface=::1"])
        server = relay.address("udp")
        attacker = datagramClient(self, "::1")
        client = datagramClient(self, "::1")
        for datagram in _unanswerable():
            attacker.send(datagram, server)
        transactionID, request = bindingRequest()
        attacker.send(request, server)
        # Once the attacker's own request is answered, its junk was handled.
        mappedAddress(self, await attacker.receive(), transactionID)
        transactionID, request = bindingRequest()
        client.send(request, server)
        self.assertEqual(mappedAddress(self, await client.receive(), transactionID), client.address)


class TCPBindingTests(TestCase):
    """
    Binding over TCP, where STUN messages follow each other on the stream.
    """

    timeout = 10

    async def _roundTrip(self, listen: str, serverHost: str) -> None:
        relay = startRelay(self, listen=[listen])
        server = relay.address("tcp")._replace(host=serverHost)
        client = await streamClient(self, server)
        transactionID, request = bindingRequest()
        client.send(request)
        frame = await client.frames.get()
        self.assertEqual(mappedAddress(self, frame, transactionID), client.address)

    async def test_ipv4(self) -> None:
        """
        A client connected to 127.0.0.1 learns its own address and port.
        """
        await self._roundTrip("tcp:0:interface=127.0.0.1", "127.0.0.1")

    async def test_ipv6(self) -> None:
        """
        A client connected to ::1 learns its own address and port.
        """
        await self._roundTrip("tcp:0:interface=::1", "::1")

    async def test_dualStackIPv4Client(self) -> None:
        """
        A listener on :: reports an IPv4 client as its plain IPv4 address.
        """
        await self._roundTrip("tcp:0:interface=::", "127.0.0.1")

    async def test_fingerprint(self) -> None:
        """
        A request with FINGERPRINT gets a response with a valid FINGERPRINT.
        """
        relay = startRelay(self, listen=["tcp:0:interface=127.0.0.1"])
        client = await streamClient(self, relay.address("tcp"))
        transactionID, request = bindingRequest(fingerprint=True)
        client.send(request)
        response = bindingSuccess(self, await client.frames.get(), transactionID)
        self.assertIsNotNone(response.fingerprint)

    async def test_backToBack(self) -> None:
        """
        Several requests in one write are each answered, in order.
        """
        relay = startRelay(self, listen=["tcp:0:interface=127.0.0.1"])
        client = await streamClient(self, relay.address("tcp"))
        requests = [bindingRequest(fingerprint=bool(i % 2)) for i in range(3)]
        client.send(b"".join(request for _, request in requests))
        for transactionID, _ in requests:
            frame = await client.frames.get()
            self.assertEqual(mappedAddress(self, frame, transactionID), client.address)

    async def test_undecodableMessageDropped(self) -> None:
        """
        A message that frames as STUN but does not decode is dropped without
        closing the connection, which answers the next request.
        """
        relay = startRelay(self, listen=["tcp:0:interface=127.0.0.1"])
        client = await streamClient(self, relay.address("tcp"))
        _, bad = bindingRequest(fingerprint=True)
        bad = bad[:-1] + bytes([bad[-1] ^ 0xFF])
        transactionID, request = bindingRequest()
        client.send(bad + request)
        frame = await client.frames.get()
        self.assertEqual(mappedAddress(self, frame, transactionID), client.address)

    async def _closesOnlyThatConnection(self, junk: bytes) -> None:
        relay = startRelay(self, listen=["tcp:0:interface=127.0.0.1"])
        server = relay.address("tcp")
        survivor = await streamClient(self, server)
        victim = await streamClient(self, server)
        victim.send(junk)
        await victim.whenClosed()
        self.assertEqual(victim.frames.pending, [])
        transactionID, request = bindingRequest()
        survivor.send(request)
        frame = await survivor.frames.get()
        self.assertEqual(mappedAddress(self, frame, transactionID), survivor.address)

    async def test_junkClosesOnlyThatConnection(self) -> None:
        """
        Bytes that are neither STUN nor ChannelData close their connection,
        unanswered, and another client's connection keeps working.
        """
        await self._closesOnlyThatConnection(b"\x80hello, relay\r\n")

    async def test_missingCookieClosesOnlyThatConnection(self) -> None:
        """
        A STUN header without the magic cookie closes its connection,
        unanswered, and another client's connection keeps working.
        """
        _, request = bindingRequest()
        await self._closesOnlyThatConnection(request[:4] + b"\x00\x00\x00\x00" + request[8:])
