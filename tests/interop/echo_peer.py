"""
The peer host's side of the network-namespace tests
(C{tests/test_e2e_netns.py}), and a probe for direct reachability: plain
sockets, no Twisted, no turnrelay.

Usage::

    python echo_peer.py echo HOST PORT
    python echo_peer.py probe udp|tcp HOST PORT [--timeout SECONDS]

C{echo} listens on UDP C{PORT} and C{PORT + 1} (C{turnutils_uclient} binds
channels to both) and on TCP C{PORT}, and sends back whatever it gets.  It
prints a JSON line once it is listening, C{{"listening": [HOST, PORT]}},
and then one per datagram or connection, before answering it:
C{{"proto": "udp", "from": [host, port], "to": port, "size": n, "head":
text}}.  These lines are how a test knows every source address the peer
ever saw.  A datagram that starts with C{poke HOST:PORT ...} (sent by
C{codec_turn.py --poke}) makes it first send a datagram of its own straight
to each address, as an outsider trying to get in would, and log C{{"poked":
[...], "errors": [...]}}.  It runs until killed.

C{probe} sends one datagram (or connects and sends one message) to C{HOST
PORT} and waits for the echo, then prints C{{"reached": true, ...}} or C{{"reached": false, "error":
...}}: the error names the errno, or says C{timeout}.  Over TCP,
C{connected} says whether the connection was made (the echo aside).
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
from typing import Any, Dict, List

PROBE = b"direct probe"


def emit(record: Dict[str, Any]) -> None:
    """
    Print one JSON line at once: the test reads it while this runs.
    """
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def poke(sock: socket.socket, payload: bytes) -> None:
    """
    Send a datagram straight to each C{HOST:PORT} listed after C{poke}.
    """
    words = payload.split(b" ")
    targets: List[str] = []
    errors: List[str] = []
    for word in words[1:]:
        host, separator, port = word.decode("ascii", "replace").rpartition(":")
        if not separator or not port.isdigit():
            break
        targets.append(f"{host}:{port}")
        try:
            sock.sendto(b"unsolicited from the peer", (host, int(port)))
        except OSError as e:
            errors.append(f"{host}:{port}: {errno.errorcode.get(e.errno or 0, str(e))}")
    emit({"poked": targets, "errors": errors})


def echo(host: str, port: int) -> None:
    """
    Echo UDP and TCP, logging every source, until killed.
    """
    selector = selectors.DefaultSelector()
    for udpPort in (port, port + 1):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, udpPort))
        selector.register(udp, selectors.EVENT_READ, "udp")
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen(8)
    selector.register(tcp, selectors.EVENT_READ, "tcp")
    emit({"listening": [host, port]})
    while True:
        for key, _ in selector.select():
            sock: Any = key.fileobj
            if key.data == "udp":
                data, source = sock.recvfrom(65536)
                emit(
                    {
                        "proto": "udp",
                        "from": [source[0], source[1]],
                        "to": sock.getsockname()[1],
                        "size": len(data),
                        "head": data[:48].decode("ascii", "replace"),
                    }
                )
                if data.startswith(b"poke "):
                    poke(sock, data)
                sock.sendto(data, source)
            else:
                connection, source = sock.accept()
                with connection:
                    connection.settimeout(2)
                    emit({"proto": "tcp", "from": [source[0], source[1]], "to": port})
                    try:
                        data = connection.recv(65536)
                        connection.sendall(data)
                    except OSError:
                        pass


def probe(proto: str, host: str, port: int, timeout: float) -> Dict[str, Any]:
    """
    @return: whether C{PROBE} sent to C{host:port} came back.
    """
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    report: Dict[str, Any] = {"reached": False, "connected": False, "error": None}
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(timeout)
        try:
            if proto == "udp":
                sock.sendto(PROBE, (host, port))
                data, _ = sock.recvfrom(65536)
            else:
                sock.connect((host, port))
                report["connected"] = True
                sock.sendall(PROBE)
                data = sock.recv(65536)
        except TimeoutError:
            report["error"] = "timeout"
            return report
        except OSError as e:
            report["error"] = errno.errorcode.get(e.errno or 0, str(e))
            return report
    report["reached"] = data == PROBE
    if data != PROBE:
        report["error"] = f"got {data!r}"
    return report


def main(argv: List[str]) -> int:
    """
    Run the command; C{probe} exits 0 whether or not it reached.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    commands = parser.add_subparsers(dest="command", required=True)
    echoCommand = commands.add_parser("echo")
    echoCommand.add_argument("host")
    echoCommand.add_argument("port", type=int)
    probeCommand = commands.add_parser("probe")
    probeCommand.add_argument("proto", choices=("udp", "tcp"))
    probeCommand.add_argument("host")
    probeCommand.add_argument("port", type=int)
    probeCommand.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "echo":
        echo(args.host, args.port)
        return 0
    emit(probe(args.proto, args.host, args.port, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
