"""
aioice's TURN client over a stream, TCP or TLS over TCP (or over UDP, for
comparison), as an independent check of turnrelay: run as a script, with
asyncio and no Twisted.

Usage::

    python aioice_stream.py --transport udp|tcp|tls [--cafile PEM]
        --username NAME --password PASSWORD [--round-trips N] [--hold]
        HOST PORT

It opens a UDP socket on 127.0.0.1 as the peer and allocates a relayed
address on the TURN server at C{HOST PORT} with aioice's
C{create_turn_endpoint}, over the given transport.  For C{tls} it verifies
the server's certificate against C{--cafile} (and the address C{HOST}, which
aioice gives as the server name) and offers the ALPN label C{stun.turn}
(RFC 7443).

With C{--hold} it then prints one JSON line, C{{"event": "allocated", ...}}
with the addresses below, and waits for a line (or end of input) on its
standard input, so that a test can look at the server while the allocation
is live.

Then, C{N} times, it sends a datagram from the relayed address to the peer
(aioice binds a channel first), checks that the peer got it intact from the
relayed address, has the peer answer, and checks that the answer comes back
intact and from the peer.  Closing the transport makes aioice delete the
allocation (a Refresh with LIFETIME 0).

The last line it prints is a JSON object: C{ok}, C{transport}, C{relayed},
C{mapped} (XOR-RELAYED-ADDRESS and XOR-MAPPED-ADDRESS as C{[host, port]}),
C{local} (the client socket's own address, when aioice lets us see it),
C{tls} (the negotiated version and ALPN label), C{peer}, C{roundTrips},
C{deleted}, C{error}, C{errorCode} (the STUN error of a refused request) and
C{log} (what aioice logged).  Exit status: 0 on success, 2 when the server
refused the allocation, 1 for any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
from typing import Any, Dict, List, Optional, Tuple

from aioice import stun
from aioice.turn import TurnTransport, create_turn_endpoint

Address = Tuple[str, int]

PEER_HOST = "127.0.0.1"
# Payload sizes: tiny, not a multiple of 4 (ChannelData on a stream is
# padded), typical, near a full MTU.
PAYLOAD_SIZES = (1, 3, 161, 1202)
# Every wait but --hold's is bounded by this many seconds.
STEP_TIMEOUT = 5.0
# --hold waits at most this long for its line; the test kills us sooner.
HOLD_TIMEOUT = 60.0
ALPN_STUN_TURN = "stun.turn"


class _Failure(Exception):
    """
    The run failed; the message says where.
    """


class _Queue(asyncio.DatagramProtocol):
    """
    Queues every datagram received with its source; records errors and the
    end of the transport.
    """

    def __init__(self) -> None:
        self.received: asyncio.Queue[Tuple[bytes, Address]] = asyncio.Queue()
        self.errors: List[str] = []
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Optional[Any] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    async def next(self, what: str) -> Tuple[bytes, Address]:
        try:
            return await asyncio.wait_for(self.received.get(), STEP_TIMEOUT)
        except TimeoutError:
            raise _Failure(f"nothing received {what} within {STEP_TIMEOUT} s") from None


class _LogRecorder(logging.Handler):
    """
    Keeps what aioice's TURN client logs.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tlsContext(cafile: Optional[str]) -> ssl.SSLContext:
    """
    A client context that trusts only C{cafile} and checks the server's name.
    """
    if cafile is None:
        raise _Failure("--transport tls needs --cafile")
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols([ALPN_STUN_TURN])
    return context


def _innerTransport(transport: TurnTransport) -> Any:
    """
    The socket transport under aioice's TURN transport (aioice keeps its
    protocol in a private attribute), or L{None} if aioice has changed.
    """
    protocol = getattr(transport, "_TurnTransport__inner_protocol", None)
    return getattr(protocol, "transport", None)


def _reply(payload: bytes) -> bytes:
    """
    What the peer answers: recognisably its own, with the whole payload.
    """
    return b"reply:" + payload[::-1]


async def _roundTrip(
    index: int,
    transport: TurnTransport,
    client: _Queue,
    peer: _Queue,
    peerAddress: Address,
    relayed: Address,
) -> None:
    """
    Relay one datagram to the peer and its answer back.
    """
    payload = b"%d:" % index + os.urandom(PAYLOAD_SIZES[index % len(PAYLOAD_SIZES)])
    transport.sendto(payload, peerAddress)
    data, source = await peer.next(f"by the peer in round trip {index}")
    if data != payload:
        raise _Failure(f"round trip {index}: the peer got {data!r}, sent {payload!r}")
    if source != relayed:
        raise _Failure(f"round trip {index}: the peer got it from {source}, not {relayed}")
    assert peer.transport is not None
    peer.transport.sendto(_reply(payload), source)
    data, source = await client.next(f"through the relay in round trip {index}")
    if data != _reply(payload):
        raise _Failure(f"round trip {index}: got {data!r} back, expected {_reply(payload)!r}")
    if source != peerAddress:
        raise _Failure(f"round trip {index}: the answer came from {source}, not {peerAddress}")


async def _waitForLine() -> None:
    """
    Wait for a line, or the end, on standard input.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        await asyncio.wait_for(reader.readline(), HOLD_TIMEOUT)
    finally:
        transport.close()


async def run(args: argparse.Namespace, result: Dict[str, Any]) -> None:
    """
    Allocate, relay and delete, filling C{result} as it goes.

    @raise _Failure: a check failed.
    @raise stun.TransactionError: a request was refused or went unanswered.
    """
    context = _tlsContext(args.cafile) if args.transport == "tls" else None
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(_Queue, local_addr=(PEER_HOST, 0))
    assert peer.transport is not None
    try:
        peerAddress: Address = peer.transport.get_extra_info("sockname")[:2]
        result["peer"] = list(peerAddress)
        transport, client = await asyncio.wait_for(
            create_turn_endpoint(
                _Queue,
                server_addr=(args.host, args.port),
                username=args.username,
                password=args.password,
                ssl=context,
                transport="udp" if args.transport == "udp" else "tcp",
            ),
            STEP_TIMEOUT,
        )
        try:
            host, port = transport.get_extra_info("sockname")
            relayed: Address = (host, port)
            result["relayed"] = list(relayed)
            result["mapped"] = list(transport.get_extra_info("related_address"))
            inner = _innerTransport(transport)
            if inner is not None:
                result["local"] = list(inner.get_extra_info("sockname")[:2])
                sslObject = inner.get_extra_info("ssl_object")
                if sslObject is not None:
                    result["tls"] = {
                        "version": sslObject.version(),
                        "alpn": sslObject.selected_alpn_protocol(),
                    }
            if args.hold:
                event = {key: result[key] for key in ("relayed", "mapped", "local", "tls")}
                print(json.dumps({"event": "allocated", **event}), flush=True)
                await _waitForLine()
            for index in range(args.round_trips):
                await _roundTrip(index, transport, client, peer, peerAddress, relayed)
                result["roundTrips"] = index + 1
            if client.errors:
                raise _Failure(f"aioice reported errors: {client.errors}")
        finally:
            transport.close()
            await asyncio.wait_for(client.lost, STEP_TIMEOUT)
    finally:
        peer.transport.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), required=True)
    parser.add_argument("--cafile", default=None)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--round-trips", type=int, default=5)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)

    recorder = _LogRecorder()
    aioiceLog = logging.getLogger("aioice.turn")
    aioiceLog.setLevel(logging.INFO)
    aioiceLog.addHandler(recorder)
    result: Dict[str, Any] = {
        "ok": False,
        "transport": args.transport,
        "relayed": None,
        "mapped": None,
        "local": None,
        "tls": None,
        "peer": None,
        "roundTrips": 0,
        "deleted": False,
        "error": None,
        "errorCode": None,
        "log": recorder.messages,
    }
    status = 1
    try:
        asyncio.run(run(args, result))
    except stun.TransactionFailed as e:
        result["error"] = str(e)
        result["errorCode"] = e.response.error_code
        status = 2 if result["relayed"] is None else 1
    except (TimeoutError, stun.TransactionError, _Failure, OSError) as e:
        # ssl.SSLError (a refused certificate) is an OSError.
        result["error"] = f"{type(e).__name__}: {e}"
    else:
        status = 0
    result["deleted"] = any(m.startswith("TURN allocation deleted") for m in recorder.messages)
    if status == 0 and not result["deleted"]:
        result["error"] = "aioice did not report the allocation deleted"
        status = 1
    result["ok"] = status == 0
    print(json.dumps(result), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
