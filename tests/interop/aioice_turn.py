"""
A TURN client built on aioice's (C{aioice.turn}), as an independent check
of turnrelay's relaying: run as a script, with asyncio and no Twisted.

Usage::

    python aioice_turn.py --username NAME --password PASSWORD
        [--round-trips N] [--refresh-lifetime SECONDS] [--rebind-channel]
        HOST PORT

It opens a UDP socket on 127.0.0.1 as the peer, allocates a relayed address
on the TURN server at C{HOST PORT} over UDP with aioice's
C{create_turn_endpoint}, and then, C{N} times, sends a datagram from the
relayed address to the peer (aioice creates the permission by binding a
channel before the first one), checks that the peer got it intact from the
relayed address, has the peer answer to the relayed address, and checks
that the answer comes back through the relay intact and from the peer.

C{--refresh-lifetime} then refreshes the allocation through aioice's own
request machinery (aioice refreshes by itself only after 5/6 of the
lifetime, too late for a test).  C{--rebind-channel} makes aioice refresh
its channel binding before every datagram but the first.  Closing the
transport at the end makes aioice delete the allocation (a Refresh with
LIFETIME 0).

It prints one JSON object on a line: C{ok}, C{relayed} and C{mapped} (the
XOR-RELAYED-ADDRESS and XOR-MAPPED-ADDRESS as C{[host, port]}), C{peer},
C{roundTrips} (how many completed), C{refreshedLifetime}, C{deleted},
C{error}, C{errorCode} (the STUN error of a refused request) and C{log}
(what aioice logged).  Exit status: 0 on success, 2 when the server refused
the allocation (the error code says why), 1 for any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from aioice import stun
from aioice.turn import TurnClientUdpProtocol, TurnTransport, create_turn_endpoint

Address = Tuple[str, int]

PEER_HOST = "127.0.0.1"
# Payload sizes: tiny, not a multiple of 4, typical, near a full MTU.
PAYLOAD_SIZES = (1, 3, 160, 1200)
# Every wait in the script is bounded by this many seconds.
STEP_TIMEOUT = 5.0


class _Failure(Exception):
    """
    The run failed; the message says where.
    """


class _Queue(asyncio.DatagramProtocol):
    """
    Queues every datagram received, with its source; records errors and
    the end of the transport.
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
    Keeps what aioice's TURN client logs: allocation, channel bindings,
    refreshes and the deletion.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _reply(payload: bytes) -> bytes:
    """
    What the peer answers: recognisably its own, and still carrying the
    whole payload.
    """
    return b"reply:" + payload[::-1]


def _clientProtocol(transport: TurnTransport) -> TurnClientUdpProtocol:
    """
    The aioice protocol behind a TURN transport, to send a Refresh through
    aioice's own request machinery.  aioice keeps it in a private attribute.
    """
    protocol = getattr(transport, "_TurnTransport__inner_protocol", None)
    if not isinstance(protocol, TurnClientUdpProtocol):
        raise _Failure("cannot find aioice's TURN protocol: has aioice changed?")
    return protocol


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


async def _refresh(transport: TurnTransport, lifetime: int) -> int:
    """
    Refresh the allocation, asking for C{lifetime} seconds.

    @return: the lifetime the server granted.
    """
    request = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
    request.attributes["LIFETIME"] = lifetime
    response, _ = await asyncio.wait_for(
        _clientProtocol(transport).request_with_retry(request), STEP_TIMEOUT
    )
    if "LIFETIME" not in response.attributes:
        raise _Failure(f"the Refresh response has no LIFETIME: {response!r}")
    granted: int = response.attributes["LIFETIME"]
    return granted


async def run(args: argparse.Namespace, result: Dict[str, Any]) -> None:
    """
    Allocate, relay, refresh and delete, filling C{result} as it goes.

    @raise _Failure: a check failed.
    @raise stun.TransactionError: a request was refused or went unanswered.
    """
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
                channel_refresh_time=0 if args.rebind_channel else 500,
            ),
            STEP_TIMEOUT,
        )
        try:
            host, port = transport.get_extra_info("sockname")
            relayed: Address = (host, port)
            result["relayed"] = list(relayed)
            result["mapped"] = list(transport.get_extra_info("related_address"))
            for index in range(args.round_trips):
                await _roundTrip(index, transport, client, peer, peerAddress, relayed)
                result["roundTrips"] = index + 1
            if args.refresh_lifetime is not None:
                result["refreshedLifetime"] = await _refresh(transport, args.refresh_lifetime)
            if client.errors:
                raise _Failure(f"aioice reported errors: {client.errors}")
        finally:
            transport.close()
            await asyncio.wait_for(client.lost, STEP_TIMEOUT)
    finally:
        peer.transport.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--round-trips", type=int, default=5)
    parser.add_argument("--refresh-lifetime", type=int, default=None)
    parser.add_argument("--rebind-channel", action="store_true")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)

    recorder = _LogRecorder()
    aioiceLog = logging.getLogger("aioice.turn")
    aioiceLog.setLevel(logging.INFO)
    aioiceLog.addHandler(recorder)
    result: Dict[str, Any] = {
        "ok": False,
        "relayed": None,
        "mapped": None,
        "peer": None,
        "roundTrips": 0,
        "refreshedLifetime": None,
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
