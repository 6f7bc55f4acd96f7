"""
A STUN Binding client built on aioice's codec, as an independent check of
turnrelay's: run as a script, with plain sockets and no Twisted.

Usage::

    python aioice_binding.py [--fingerprint] --transport udp|tcp HOST PORT

On success it prints two lines, each as C{HOST PORT}: the XOR-MAPPED-ADDRESS
of the response, then the client socket's own address.  Any failure (no
answer within the timeout, a response aioice cannot parse, the wrong
transaction ID or class, a missing attribute) exits with status 1 and a
message on standard error.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import List, Optional, Tuple

from aioice import stun

TIMEOUT = 5.0


def _exchangeUDP(family: int, server: Tuple[str, int], request: bytes) -> Tuple[bytes, Tuple]:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(server)
        sock.send(request)
        # A connected socket only receives from the server it sent to.
        return sock.recv(65535), sock.getsockname()


def _receiveExactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _exchangeTCP(family: int, server: Tuple[str, int], request: bytes) -> Tuple[bytes, Tuple]:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(server)
        # Over TCP, STUN messages simply follow each other on the stream:
        # read the header, then as many bytes as it says.
        sock.sendall(request)
        header = _receiveExactly(sock, stun.HEADER_LENGTH)
        length = int.from_bytes(header[2:4], "big")
        return header + _receiveExactly(sock, length), sock.getsockname()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("udp", "tcp"), required=True)
    parser.add_argument("--fingerprint", action="store_true", help="send and expect FINGERPRINT")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)

    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if args.fingerprint:
        request.add_fingerprint()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    exchange = _exchangeUDP if args.transport == "udp" else _exchangeTCP
    try:
        data, local = exchange(family, (args.host, args.port), bytes(request))
        # parse_message also checks a FINGERPRINT, if there is one.
        response = stun.parse_message(data)
    except (OSError, ValueError) as e:
        print(f"aioice_binding: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    problems = []
    if response.transaction_id != request.transaction_id:
        problems.append(
            f"transaction ID {response.transaction_id.hex()}, sent {request.transaction_id.hex()}"
        )
    if response.message_method != stun.Method.BINDING:
        problems.append(f"method {response.message_method!r}")
    if response.message_class != stun.Class.RESPONSE:
        problems.append(f"class {response.message_class!r}")
    if "XOR-MAPPED-ADDRESS" not in response.attributes:
        problems.append("no XOR-MAPPED-ADDRESS")
    if args.fingerprint and "FINGERPRINT" not in response.attributes:
        problems.append("no FINGERPRINT")
    if problems:
        print(f"aioice_binding: {response!r}: {'; '.join(problems)}", file=sys.stderr)
        return 1

    mappedHost, mappedPort = response.attributes["XOR-MAPPED-ADDRESS"]
    print(mappedHost, mappedPort)
    print(local[0], local[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
