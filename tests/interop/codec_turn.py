"""
A small TURN client on turnrelay's own codec (C{turnrelay.stun}) and
blocking sockets, for the network-namespace tests (C{tests/test_e2e_netns.py}):
it runs as a script inside a namespace, where the test's Twisted reactor is
not.

It shares turnrelay's encoder and decoder, so it is not an independent
check of the wire format: C{turnutils_uclient} and aioice are that.  What it
adds is a report precise enough to judge a network: the mapped and relayed
addresses, where each answer came from, and every datagram that reached the
client's socket from anywhere but the server.

Usage::

    python codec_turn.py --transport udp|tcp|tls --server HOST --port PORT
        [--username NAME --password PASSWORD] [--ca PEM]
        [--peer HOST:PORT] [--round-trips N] [--poke HOST:PORT ...]
        [--binding-only] [--also-bind PORT ...] [--bind ADDRESS]

It sends a Binding request (over UDP: also one to each C{--also-bind} port
of the server, from the same socket, to see how a NAT maps it), then
unless C{--binding-only} allocates a relayed address, creates a
permission for the peer, relays one Send indication round trip (the echo
comes back in a Data indication), binds channel 0x4000 to the peer, relays
C{N} ChannelData round trips through the echo peer (C{echo_peer.py}), and
deletes the allocation.  Over TLS the server's certificate is verified against
C{--ca}, hostname (here an IP address) included.

C{--poke HOST:PORT} asks the echo peer, in the first payload, to send a
datagram straight to each of those addresses before it echoes: C{mapped}
stands for the client's XOR-MAPPED-ADDRESS and C{local} for its socket's
own address (give C{--bind}, the address to bind to, for that).  Whatever
arrives that way is reported in C{strays}.

It prints one JSON object: C{ok}, C{stage} (where it stopped), C{local},
C{mapped}, C{bindings} (the XOR-MAPPED-ADDRESS of each Binding), C{relayed},
C{roundTrips}, C{dataIndicationFrom}, C{deleted}, C{strays}
(C{[host, port]} of each datagram from elsewhere than the server),
C{error}, C{errno} and C{errorCode}.  Exit status 0 on success, 1 otherwise.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import ssl
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.channeldata import (
    CHANNEL_NUMBER_MAX_RFC5766,
    StreamFramer,
    decodeChannelData,
    encodeChannelData,
)
from turnrelay.stun.credentials import longTermKey
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage

CHANNEL = 0x4000
# Every wait for an answer ends after this many seconds.
STEP_TIMEOUT = 5.0
# UDP requests and round trips are sent again after this long, doubling.
RETRANSMISSION_TIMEOUT = 0.25


class Failed(Exception):
    """
    A step did not go as it must; the message says how.
    """


class ServerLink:
    """
    The client's socket to the server: UDP datagrams, or STUN and
    ChannelData frames on a TCP or TLS stream.

    @ivar strays: the sources of datagrams from anywhere but the server.
    """

    def __init__(
        self, transport: str, server: Tuple[str, int], ca: Optional[str], bind: str
    ) -> None:
        self.transport = transport
        self.server = server
        self.strays: List[List[Any]] = []
        self._framer = StreamFramer()
        self._frames: List[bytes] = []
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((bind, 0))
            return
        sock = socket.create_connection(server, timeout=STEP_TIMEOUT, source_address=(bind, 0))
        if transport == "tls":
            context = ssl.create_default_context(cafile=ca)
            sock = context.wrap_socket(sock, server_hostname=server[0])
        self.sock = sock

    @property
    def local(self) -> List[Any]:
        """
        The socket's own address.
        """
        host, port = self.sock.getsockname()[:2]
        return [host, port]

    def send(self, data: bytes, to: Optional[Tuple[str, int]] = None) -> None:
        """
        Send a frame to the server (over UDP, to C{to} if given).
        """
        if self.transport == "udp":
            self.sock.sendto(data, to or self.server)
        else:
            self.sock.sendall(data)

    def receive(self, deadline: float) -> Optional[bytes]:
        """
        @return: the next frame from the server, or L{None} at C{deadline}.
        """
        while True:
            if self._frames:
                return self._frames.pop(0)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                if self.transport == "udp":
                    data, source = self.sock.recvfrom(65536)
                    if source[0] != self.server[0]:
                        self.strays.append([source[0], source[1]])
                        continue
                    self._frames.append(data)
                else:
                    data = self.sock.recv(65536)
                    if not data:
                        raise Failed("the server closed the connection")
                    self._frames.extend(self._framer.feed(data))
            except TimeoutError:
                return None


class Client:
    """
    Requests with long-term credentials, and the data that comes back.
    """

    def __init__(self, link: ServerLink, username: str, password: str) -> None:
        self.link = link
        self.username = username
        self.password = password
        self.realm = ""
        self.nonce = ""
        self.data: List[Tuple[Optional[int], bytes, Optional[TransportAddress]]] = []

    def transact(self, request: STUNMessage, key: Optional[bytes] = None, to: Any = None) -> Any:
        """
        Send C{request} (again and again over UDP) until its response comes.

        @return: the response.
        @raise Failed: no response within L{STEP_TIMEOUT}.
        """
        encoded = request.encode(key=key)
        deadline = time.monotonic() + STEP_TIMEOUT
        interval = RETRANSMISSION_TIMEOUT
        while time.monotonic() < deadline:
            self.link.send(encoded, to)
            wait = min(deadline, time.monotonic() + interval)
            if self.link.transport != "udp":
                wait = deadline
            interval *= 2
            while True:
                frame = self.link.receive(wait)
                if frame is None:
                    break
                response = self._take(frame)
                if response is not None and response.transactionID == request.transactionID:
                    return response
        name = Method(request.method).name
        raise Failed(f"no answer to {name} within {STEP_TIMEOUT} s")

    def _take(self, frame: bytes) -> Optional[STUNMessage]:
        if frame[0] >= 0x40:
            number, payload = decodeChannelData(frame, CHANNEL_NUMBER_MAX_RFC5766)
            self.data.append((number, payload, None))
            return None
        message = decodeMessage(frame)
        if message.messageClass == MessageClass.INDICATION:
            self.data.append((None, message.get(A.DATA, b""), message.get(A.XOR_PEER_ADDRESS)))
            return None
        return message

    def request(self, method: int, attributes: List[Tuple[int, Any]]) -> STUNMessage:
        """
        Send an authenticated request, learning the realm and nonce from a
        401 (or a fresh nonce from a 438) first.

        @raise Failed: the request was refused, or its response's integrity
            does not check.
        """
        for _ in range(3):
            request = STUNMessage(method, MessageClass.REQUEST, os.urandom(12), list(attributes))
            key = None
            if self.nonce:
                request.add(A.USERNAME, self.username)
                request.add(A.REALM, self.realm)
                request.add(A.NONCE, self.nonce)
                key = longTermKey(self.username, self.realm, self.password)
            response = self.transact(request, key)
            code = errorCode(response)
            if code in (401, 438) and (code == 438 or not self.nonce):
                self.realm = response.get(A.REALM, self.realm)
                self.nonce = response.get(A.NONCE, "")
                continue
            if code is not None:
                raise Refused(Method(method).name, code)
            if key is None or not response.verifyMessageIntegrity(key):
                raise Failed(f"{Method(method).name} response without valid integrity")
            return response
        raise Failed(f"{Method(method).name}: challenged again and again")

    def awaitData(self, channel: Optional[int], payload: bytes, deadline: float) -> Any:
        """
        @return: the peer address of the Data indication (or L{None} for
            ChannelData) that brought C{payload} back, or C{False} if
            nothing did by C{deadline}.
        """
        while True:
            for index, (number, data, peer) in enumerate(self.data):
                if number == channel and data == payload:
                    del self.data[index]
                    return peer
            frame = self.link.receive(deadline)
            if frame is None:
                return False
            self._take(frame)


class Refused(Failed):
    """
    The server answered a request with an error.
    """

    def __init__(self, method: str, code: int) -> None:
        super().__init__(f"{method} refused with {code}")
        self.code = code


def errorCode(response: STUNMessage) -> Optional[int]:
    """
    @return: the response's error code, or L{None} for a success.
    """
    if response.messageClass != MessageClass.ERROR_RESPONSE:
        return None
    error = response.get(A.ERROR_CODE)
    return 0 if error is None else int(error.code)


def hostPort(text: str) -> Tuple[str, int]:
    """
    Parse C{HOST:PORT}.
    """
    host, _, port = text.rpartition(":")
    return host, int(port)


def binding(client: Client, to: Tuple[str, int]) -> List[Any]:
    """
    @return: the XOR-MAPPED-ADDRESS the server at C{to} reports.
    """
    request = STUNMessage(Method.BINDING, MessageClass.REQUEST, os.urandom(12))
    response = client.transact(request, to=to)
    mapped = response.get(A.XOR_MAPPED_ADDRESS)
    if mapped is None:
        raise Failed("Binding response without XOR-MAPPED-ADDRESS")
    return [mapped.host, mapped.port]


def roundTrip(client: Client, payload: bytes, send: Any, channel: Optional[int]) -> Any:
    """
    Send C{payload} (over UDP, again after a silence) until it comes back.

    @return: what L{Client.awaitData} says of the echo.
    """
    deadline = time.monotonic() + STEP_TIMEOUT
    interval = RETRANSMISSION_TIMEOUT * 2
    while time.monotonic() < deadline:
        send()
        wait = deadline if client.link.transport != "udp" else time.monotonic() + interval
        interval *= 2
        echo = client.awaitData(channel, payload, min(deadline, wait))
        if echo is not False:
            return echo
    raise Failed(f"{payload[:40]!r} did not come back within {STEP_TIMEOUT} s")


def run(args: argparse.Namespace, result: Dict[str, Any]) -> None:
    """
    Do what the command line asks, filling C{result} as it goes.
    """
    server = (args.server, args.port)
    result["stage"] = "connect"
    link = ServerLink(args.transport, server, args.ca, args.bind)
    result["strays"] = link.strays
    result["local"] = link.local
    client = Client(link, args.username, args.password)
    result["stage"] = "binding"
    result["bindings"] = [binding(client, server)]
    result["mapped"] = result["bindings"][0]
    if args.transport == "udp":
        for port in args.also_bind:
            result["bindings"].append(binding(client, (args.server, port)))
    if args.binding_only:
        result["stage"] = "done"
        return

    result["stage"] = "allocate"
    allocation = client.request(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP)])
    relayed = allocation.get(A.XOR_RELAYED_ADDRESS)
    mapped = allocation.get(A.XOR_MAPPED_ADDRESS)
    result["relayed"] = [relayed.host, relayed.port]
    result["mapped"] = [mapped.host, mapped.port]

    peerHost, peerPort = hostPort(args.peer)
    peer = TransportAddress(peerHost, peerPort)
    tag = os.urandom(4).hex()
    # Data from a peer comes back in Data indications until a channel is
    # bound to it, in ChannelData after: the Send indication goes first.
    result["stage"] = "create-permission"
    client.request(Method.CREATE_PERMISSION, [(A.XOR_PEER_ADDRESS, peer)])
    result["stage"] = "send-indication"
    payload = f"{tag} send indication".encode()
    indication = STUNMessage(
        Method.SEND,
        MessageClass.INDICATION,
        os.urandom(12),
        [(A.XOR_PEER_ADDRESS, peer), (A.DATA, payload)],
    ).encode()
    source = roundTrip(client, payload, lambda: link.send(indication), None)
    result["dataIndicationFrom"] = [source.host, source.port]

    result["stage"] = "channel-bind"
    client.request(Method.CHANNEL_BIND, [(A.CHANNEL_NUMBER, CHANNEL), (A.XOR_PEER_ADDRESS, peer)])
    pad = args.transport != "udp"
    for index in range(args.round_trips):
        result["stage"] = f"round-trip-{index}"
        payload = f"{tag} round trip {index}".encode()
        if index == 0 and args.poke:
            named = {"mapped": f"{mapped.host}:{mapped.port}", "local": "{}:{}".format(*link.local)}
            targets = [named.get(target, target) for target in args.poke]
            payload = ("poke " + " ".join(targets) + " ").encode() + payload
        frame = encodeChannelData(CHANNEL, payload, pad=pad)
        roundTrip(client, payload, lambda frame=frame: link.send(frame), CHANNEL)
        result["roundTrips"] = index + 1

    result["stage"] = "delete"
    client.request(Method.REFRESH, [(A.LIFETIME, 0)])
    result["deleted"] = True
    result["stage"] = "done"


def main(argv: List[str]) -> int:
    """
    Run, print the JSON report, and return the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--username", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--ca")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--peer")
    parser.add_argument("--round-trips", type=int, default=5)
    parser.add_argument("--poke", action="append", default=[])
    parser.add_argument("--binding-only", action="store_true")
    parser.add_argument("--also-bind", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    result: Dict[str, Any] = {
        "ok": False,
        "transport": args.transport,
        "stage": "start",
        "local": None,
        "mapped": None,
        "bindings": [],
        "relayed": None,
        "roundTrips": 0,
        "dataIndicationFrom": None,
        "deleted": False,
        "strays": [],
        "error": None,
        "errno": None,
        "errorCode": None,
    }
    try:
        run(args, result)
        result["ok"] = True
    except Refused as e:
        result["error"] = str(e)
        result["errorCode"] = e.code
    except Failed as e:
        result["error"] = str(e)
    except OSError as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["errno"] = errno.errorcode.get(e.errno or 0)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
