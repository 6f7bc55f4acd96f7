"""
A minimal RFC 6062 (TURN TCP allocations) client, as an independent check
of turnrelay's: run as a script, with blocking sockets and no Twisted.

It encodes and decodes STUN itself (RFC 8489 section 5 and 14, IPv4 only,
long-term credentials with MESSAGE-INTEGRITY over MD5 keys) rather than with
C{turnrelay.stun}, so that a mistake shared by turnrelay's encoder and
decoder cannot hide here.  It checks the MESSAGE-INTEGRITY of every
authenticated response.

Usage::

    python rfc6062_client.py --username NAME --password PASSWORD
        [--connect HOST:PORT]... [--accept-from HOST --greeting TEXT
        [--hold] [--await-peer-close]] HOST PORT

Over one TCP control connection to the server at C{HOST PORT} it allocates
a TCP relayed address (REQUESTED-TRANSPORT 6) and prints one JSON line,
C{{"event": "allocated", "relayed": [...], "mapped": [...]}}.  Then:

  - for each C{--connect} peer, in order, it sends Connect (RFC 6062
    section 4.3) and records the answer: on success it opens a data
    connection, sends ConnectionBind with the CONNECTION-ID and sends
    payloads of several sizes that it expects echoed back unchanged; the
    data connection stays open until the end (so that a second Connect to
    the same peer meets the first connection);
  - with C{--accept-from}, it creates a permission for that host (with
    C{--hold}, only after printing C{{"event": "holding", ...}} and reading
    a line from its standard input), prints C{{"event": "permitted",
    "relayed": [...]}}, waits for the ConnectionAttempt indication (section
    4.4) that a peer connecting to the relayed address causes, binds that
    connection on a new data connection, expects the peer's C{--greeting}
    first, then sends payloads it expects echoed; with
    C{--await-peer-close} it then prints C{{"event": "echoed", ...}} and
    waits for the server to close the data connection, as it must when the
    peer closes its side (section 5.5);
  - finally it deletes the allocation (Refresh with LIFETIME 0).

The last line it prints is a JSON object: C{ok}, C{relayed}, C{mapped},
C{connects} (per C{--connect}: C{peer}, C{code} (L{None} on success, else
the error code), C{seconds} the answer took, C{connectionID}, C{echoed}
bytes), C{accepted} (C{peer}, C{connectionID}, C{greeting}, C{echoed},
C{sentSHA256} of everything sent to the peer, C{closedByPeer}),
C{challenges} (401 and 438 answers met, by method), C{deleted}, C{error}
and C{errorCode} (when a request other than Connect was refused).  Exit
status 0 on success, 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

Address = Tuple[str, int]

# Every socket operation is bounded by this many seconds,
TIMEOUT = 5.0
# except the wait for a peer to connect to the relayed address.
ACCEPT_TIMEOUT = 20.0
MAGIC_COOKIE = 0x2112A442

# Methods (RFC 8656 section 18, RFC 6062 section 6.1).
ALLOCATE = 0x003
REFRESH = 0x004
CREATE_PERMISSION = 0x008
CONNECT = 0x00A
CONNECTION_BIND = 0x00B
CONNECTION_ATTEMPT = 0x00C
METHOD_NAMES = {
    ALLOCATE: "Allocate",
    REFRESH: "Refresh",
    CREATE_PERMISSION: "CreatePermission",
    CONNECT: "Connect",
    CONNECTION_BIND: "ConnectionBind",
    CONNECTION_ATTEMPT: "ConnectionAttempt",
}

# Classes.
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3

# Attributes (RFC 8489 section 18.3, RFC 8656 section 18, RFC 6062 section 6.2).
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
CONNECTION_ID = 0x002A

PROTOCOL_TCP = 6

# Echoed payload sizes: one byte, not a multiple of 4, and larger than a
# socket buffer's worth, so that the relay's flow control is exercised.
PAYLOAD_SIZES = (1, 1203, 300_000)


class _Failure(Exception):
    """
    The run failed; the message says where.
    """


class STUNError(Exception):
    """
    The server answered a request with an error response.

    @ivar code: the ERROR-CODE.
    """

    def __init__(self, method: int, code: int, reason: str) -> None:
        super().__init__(f"{METHOD_NAMES.get(method, method)} failed: {code} {reason}")
        self.code = code


# The codec ---------------------------------------------------------------------


def _messageType(method: int, messageClass: int) -> int:
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((messageClass & 1) << 4)
        | ((messageClass & 2) << 7)
    )


def _splitType(value: int) -> Tuple[int, int]:
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    messageClass = ((value >> 4) & 1) | ((value >> 7) & 2)
    return method, messageClass


def _pad(value: bytes) -> bytes:
    return value + b"\0" * (-len(value) % 4)


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + _pad(value)


def encodeXORAddress(address: Address, transactionID: bytes) -> bytes:
    """
    An IPv4 XOR-*-ADDRESS value (RFC 8489 section 14.2).
    """
    host = int(ipaddress.IPv4Address(address[0]))
    return struct.pack("!BBHI", 0, 0x01, address[1] ^ (MAGIC_COOKIE >> 16), host ^ MAGIC_COOKIE)


def decodeXORAddress(value: bytes) -> Address:
    """
    The address in an IPv4 XOR-*-ADDRESS value.
    """
    _, family, port, host = struct.unpack("!BBHI", value[:8])
    if family != 0x01:
        raise _Failure(f"address family {family} is not IPv4")
    return str(ipaddress.IPv4Address(host ^ MAGIC_COOKIE)), port ^ (MAGIC_COOKIE >> 16)


class Message:
    """
    A decoded STUN message.

    @ivar raw: the bytes it was decoded from (for integrity checks).
    """

    def __init__(
        self,
        method: int,
        messageClass: int,
        transactionID: bytes,
        attributes: List[Tuple[int, bytes, int]],
        raw: bytes,
    ) -> None:
        """
        @param attributes: C{(type, value, offset of the attribute)}.
        """
        self.method = method
        self.messageClass = messageClass
        self.transactionID = transactionID
        self.attributes = attributes
        self.raw = raw

    def get(self, kind: int) -> Optional[bytes]:
        for attributeType, value, _ in self.attributes:
            if attributeType == kind:
                return value
        return None

    def errorCode(self) -> Tuple[int, str]:
        value = self.get(ERROR_CODE)
        if value is None:
            raise _Failure(f"an error response without ERROR-CODE: {self.raw.hex()}")
        return (value[2] & 0x07) * 100 + value[3], value[4:].decode("utf-8", "replace")

    def integrityValid(self, key: bytes) -> bool:
        """
        Whether MESSAGE-INTEGRITY is present and right for C{key} (RFC 8489
        section 14.5: the HMAC covers the message up to the attribute, with
        the length field counting up to its end).
        """
        for attributeType, value, offset in self.attributes:
            if attributeType == MESSAGE_INTEGRITY:
                header = self.raw[:2] + struct.pack("!H", offset + 24 - 20) + self.raw[4:20]
                expected = hmac.new(key, header + self.raw[20:offset], hashlib.sha1).digest()
                return hmac.compare_digest(expected, value)
        return False


def encode(
    method: int,
    messageClass: int,
    transactionID: bytes,
    attributes: List[Tuple[int, bytes]],
    key: Optional[bytes] = None,
) -> bytes:
    """
    Encode a message; with C{key}, end it with MESSAGE-INTEGRITY.
    """
    body = b"".join(_attribute(kind, value) for kind, value in attributes)
    header = struct.pack("!HHI", _messageType(method, messageClass), 0, MAGIC_COOKIE)
    header += transactionID
    if key is None:
        return header[:2] + struct.pack("!H", len(body)) + header[4:] + body
    header = header[:2] + struct.pack("!H", len(body) + 24) + header[4:]
    mac = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + _attribute(MESSAGE_INTEGRITY, mac)


def decode(raw: bytes) -> Message:
    """
    Decode one whole STUN message.
    """
    kind, length, cookie = struct.unpack("!HHI", raw[:8])
    if kind & 0xC000 or cookie != MAGIC_COOKIE or length + 20 != len(raw):
        raise _Failure(f"not a STUN message: {raw[:64].hex()}")
    method, messageClass = _splitType(kind)
    attributes = []
    offset = 20
    while offset < len(raw):
        attributeType, size = struct.unpack("!HH", raw[offset : offset + 4])
        attributes.append((attributeType, raw[offset + 4 : offset + 4 + size], offset))
        offset += 4 + size + (-size % 4)
    return Message(method, messageClass, raw[8:20], attributes, raw)


# Connections ---------------------------------------------------------------------


class Stream:
    """
    A TCP connection to the server that carries STUN messages (and, once
    bound, a peer's raw bytes).
    """

    def __init__(self, server: Address) -> None:
        self.sock = socket.create_connection(server, timeout=TIMEOUT)
        self.buffer = b""

    def receiveExactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise _Failure(f"the server closed the connection ({len(self.buffer)} bytes left)")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def receiveMessage(self) -> Message:
        header = self.receiveExactly(20)
        (length,) = struct.unpack("!H", header[2:4])
        return decode(header + self.receiveExactly(length))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closedByServer(self) -> bool:
        """
        Wait at most L{ACCEPT_TIMEOUT} seconds for the server to close the
        connection.

        @return: whether it did, with nothing more received before.
        """
        self.sock.settimeout(ACCEPT_TIMEOUT)
        try:
            return not self.buffer and not self.sock.recv(65536)
        except ConnectionResetError:
            return not self.buffer
        finally:
            self.sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()


class Client:
    """
    One TURN client: its credentials and its control connection.

    @ivar indications: indications received while waiting for responses.
    @ivar challenges: the 401 and 438 answers met, as C{"Method code"}.
    """

    def __init__(self, server: Address, username: str, password: str) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.realm: Optional[bytes] = None
        self.nonce: Optional[bytes] = None
        self.control = Stream(server)
        self.indications: List[Message] = []
        self.challenges: List[str] = []

    def key(self) -> bytes:
        assert self.realm is not None
        text = b"%s:%s:%s" % (self.username.encode(), self.realm, self.password.encode())
        return hashlib.md5(text).digest()

    def request(
        self,
        method: int,
        attributes: List[Tuple[int, Any]],
        stream: Optional[Stream] = None,
    ) -> Message:
        """
        Send an authenticated request and return its success response,
        answering a 401 or 438 challenge once.

        @param attributes: C{(type, value)}, where an address value (a
            tuple) is XOR-encoded with the request's transaction ID.
        @param stream: the connection to use; the control connection by
            default.
        @raise STUNError: the server refused.
        """
        stream = stream or self.control
        for attempt in range(2):
            transactionID = os.urandom(12)
            encoded = [
                (
                    kind,
                    encodeXORAddress(value, transactionID) if isinstance(value, tuple) else value,
                )
                for kind, value in attributes
            ]
            key = None
            if self.nonce is not None:
                assert self.realm is not None
                encoded += [
                    (USERNAME, self.username.encode()),
                    (REALM, self.realm),
                    (NONCE, self.nonce),
                ]
                key = self.key()
            stream.send(encode(method, REQUEST, transactionID, encoded, key))
            response = self._response(stream, transactionID)
            if response.messageClass == SUCCESS:
                if key is None or not response.integrityValid(key):
                    raise _Failure(f"{METHOD_NAMES[method]} success without valid integrity")
                return response
            code, reason = response.errorCode()
            if attempt == 0 and code in (401, 438) and response.get(NONCE) is not None:
                self.challenges.append(f"{METHOD_NAMES[method]} {code}")
                self.nonce = response.get(NONCE)
                self.realm = response.get(REALM) or self.realm
                continue
            if key is not None and code not in (401, 438) and not response.integrityValid(key):
                raise _Failure(f"{METHOD_NAMES[method]} error {code} without valid integrity")
            raise STUNError(method, code, reason)
        raise AssertionError("unreachable")

    def _response(self, stream: Stream, transactionID: bytes) -> Message:
        while True:
            message = stream.receiveMessage()
            if message.messageClass == INDICATION:
                self.indications.append(message)
            elif message.transactionID == transactionID:
                return message

    def waitForIndication(self, method: int) -> Message:
        """
        The next indication of C{method} on the control connection, waiting
        at most L{ACCEPT_TIMEOUT} seconds for each message.
        """
        self.control.sock.settimeout(ACCEPT_TIMEOUT)
        try:
            while True:
                for message in self.indications:
                    if message.method == method:
                        self.indications.remove(message)
                        return message
                message = self.control.receiveMessage()
                if message.messageClass == INDICATION:
                    self.indications.append(message)
        finally:
            self.control.sock.settimeout(TIMEOUT)

    def bind(self, connectionID: bytes) -> Stream:
        """
        Open a data connection and bind it to a peer connection (RFC 6062
        section 4.3), with the nonce of the control connection.
        """
        data = Stream(self.server)
        try:
            self.request(CONNECTION_BIND, [(CONNECTION_ID, connectionID)], data)
        except BaseException:
            data.close()
            raise
        return data


def _echo(data: Stream, what: str) -> Tuple[int, bytes]:
    """
    Send payloads over a bound data connection; expect each echoed.

    @return: the bytes echoed, and everything sent.
    """
    sent = b""
    for size in PAYLOAD_SIZES:
        payload = os.urandom(size)
        data.send(payload)
        sent += payload
        echoed = data.receiveExactly(size)
        if echoed != payload:
            raise _Failure(f"{what}: {size} bytes came back altered")
    return len(sent), sent


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _progress(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def run(args: argparse.Namespace, result: Dict[str, Any]) -> None:
    """
    Allocate, connect, accept and delete, filling C{result} as it goes.
    """
    client = Client((args.host, args.port), args.username, args.password)
    dataStreams: List[Stream] = []
    result["challenges"] = client.challenges
    try:
        response = client.request(ALLOCATE, [(REQUESTED_TRANSPORT, bytes([PROTOCOL_TCP, 0, 0, 0]))])
        relayed = response.get(XOR_RELAYED_ADDRESS)
        mapped = response.get(XOR_MAPPED_ADDRESS)
        if relayed is None or mapped is None:
            raise _Failure("the Allocate response lacks XOR-RELAYED- or XOR-MAPPED-ADDRESS")
        result["relayed"] = list(decodeXORAddress(relayed))
        result["mapped"] = list(decodeXORAddress(mapped))
        _progress("allocated", relayed=result["relayed"], mapped=result["mapped"])

        for text in args.connect:
            peer = _address(text)
            outcome: Dict[str, Any] = {"peer": list(peer), "code": None, "echoed": 0}
            result["connects"].append(outcome)
            started = time.monotonic()
            try:
                response = client.request(CONNECT, [(XOR_PEER_ADDRESS, peer)])
            except STUNError as e:
                outcome["code"] = e.code
                continue
            finally:
                outcome["seconds"] = round(time.monotonic() - started, 3)
            connectionID = response.get(CONNECTION_ID)
            if connectionID is None:
                raise _Failure(f"the Connect response for {text} has no CONNECTION-ID")
            outcome["connectionID"] = connectionID.hex()
            data = client.bind(connectionID)
            dataStreams.append(data)
            outcome["echoed"], _ = _echo(data, f"through the connection with {text}")

        if args.accept_from is not None:
            if args.hold:
                _progress("holding", relayed=result["relayed"])
                sys.stdin.readline()
            client.request(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, (args.accept_from, 0))])
            _progress("permitted", relayed=result["relayed"])
            attempt = client.waitForIndication(CONNECTION_ATTEMPT)
            peerAddress = attempt.get(XOR_PEER_ADDRESS)
            connectionID = attempt.get(CONNECTION_ID)
            if peerAddress is None or connectionID is None:
                raise _Failure("ConnectionAttempt without XOR-PEER-ADDRESS or CONNECTION-ID")
            accepted: Dict[str, Any] = {
                "peer": list(decodeXORAddress(peerAddress)),
                "connectionID": connectionID.hex(),
            }
            result["accepted"] = accepted
            data = client.bind(connectionID)
            dataStreams.append(data)
            greeting = args.greeting.encode()
            accepted["greeting"] = data.receiveExactly(len(greeting)) == greeting
            accepted["echoed"], sent = _echo(data, "through the accepted connection")
            accepted["sentSHA256"] = hashlib.sha256(sent).hexdigest()
            if args.await_peer_close:
                _progress("echoed", relayed=result["relayed"])
                accepted["closedByPeer"] = data.closedByServer()

        response = client.request(REFRESH, [(LIFETIME, struct.pack("!I", 0))])
        result["deleted"] = response.get(LIFETIME) == struct.pack("!I", 0)
    finally:
        for data in dataStreams:
            data.close()
        client.control.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--connect", action="append", default=[], metavar="HOST:PORT")
    parser.add_argument("--accept-from", default=None, metavar="HOST")
    parser.add_argument("--greeting", default="")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--await-peer-close", action="store_true")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    result: Dict[str, Any] = {
        "ok": False,
        "relayed": None,
        "mapped": None,
        "connects": [],
        "accepted": None,
        "challenges": [],
        "deleted": False,
        "error": None,
        "errorCode": None,
    }
    try:
        run(args, result)
    except (_Failure, STUNError, OSError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        if isinstance(e, STUNError):
            result["errorCode"] = e.code
    else:
        result["ok"] = bool(result["deleted"])
        if not result["ok"]:
            result["error"] = "the Refresh deleting the allocation was not answered LIFETIME 0"
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
