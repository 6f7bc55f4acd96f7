# -*- test-case-name: tests.test_ctl -*-
"""
C{turnrelayctl}: control a running relay from scripts, through its control
socket (L{turnrelay.admin.control}).

    turnrelayctl [--socket PATH | --config FILE] [--json] COMMAND [...]

Each command prints its answer as plain text (or, with C{--json}, as one
JSON document) on standard output and exits 0; a failure prints one line on
standard error and exits 1 (2 for a bad command line).  The output never
holds terminal escapes: control characters a client put in a username are
shown as C{\\xNN}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple, Type

from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from turnrelay import __version__
from turnrelay.admin import control

DEFAULT_SOCKET = "/var/lib/turnrelay/control.sock"
"""
Where C{turnrelayctl} looks for the control socket when neither
C{--socket}, C{--config} nor C{TURNRELAY_CONTROL_SOCKET} says: the example
configuration's C{control-socket}.
"""

ENVIRONMENT_SOCKET = "TURNRELAY_CONTROL_SOCKET"

# Every control character but newline and tab.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class CommandFailed(Exception):
    """
    The command did not do what was asked; the message says why, on one
    line.
    """


def parser() -> argparse.ArgumentParser:
    """
    @return: C{turnrelayctl}'s command line.
    """
    top = argparse.ArgumentParser(
        prog="turnrelayctl",
        description="Control a running turnrelay through its control socket "
        "(the control-socket setting).",
    )
    where = top.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the control socket (default: ${ENVIRONMENT_SOCKET}, else {DEFAULT_SOCKET})",
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        help="read the control socket's path from the relay's configuration file",
    )
    top.add_argument(
        "--version", action="version", version=f"turnrelayctl (turnrelay) {__version__}"
    )
    top.add_argument("--json", action="store_true", help="answer in JSON")
    top.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="give up after this long (default: 30)",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="the relay's live figures")
    allocations = commands.add_parser("allocations", help="the live allocations")
    allocations.add_argument("--user", help="only this username's allocations")
    allocations.add_argument(
        "--address", help="only those with this client, relayed or peer address (ip or ip:port)"
    )
    kill = commands.add_parser("kill", help="end allocations now")
    kill.add_argument(
        "target",
        help="a relayed address (ip:port), a client address (ip:port, or ip for all of a "
        "host's) or a username (all of its), tried in that order",
    )
    drain = commands.add_parser("drain", help="take no new allocations; let the live ones end")
    drain.add_argument(
        "--timeout",
        dest="drainTimeout",
        type=_seconds,
        metavar="SECONDS",
        help="end those left after this long (default: drain-timeout; 0: never)",
    )
    commands.add_parser("reload", help="re-read the configuration, as SIGHUP does")
    commands.add_parser("reload-tls", help="re-read the TLS certificate files")
    mint = commands.add_parser("mint", help="mint a TURN REST API credential")
    mint.add_argument("userID", metavar="USERID", help="who it is for")
    mint.add_argument("--ttl", type=_seconds, help="seconds it stays valid (default: 86400)")
    revoke = commands.add_parser(
        "revoke", help="refuse a user on every node of the fleet and end its allocations"
    )
    revoke.add_argument(
        "username",
        metavar="USER",
        help="a username, or a REST user id (refusing every REST username with it)",
    )
    unrevoke = commands.add_parser("unrevoke", help="let a revoked user in again")
    unrevoke.add_argument("username", metavar="USER", help="as given to revoke")
    loglevel = commands.add_parser("loglevel", help="show or set the log level")
    loglevel.add_argument("level", nargs="?", metavar="LEVEL", help="debug, info, warn, ...")
    return top


def _seconds(text: str) -> float:
    """
    A number of seconds, 0 or more, for argparse.
    """
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def request(arguments: argparse.Namespace) -> Tuple[Type[amp.Command], Dict[str, Any]]:
    """
    The AMP command and its arguments that a parsed command line asks for.
    """
    name = arguments.command
    if name == "status":
        return control.Status, {}
    if name == "allocations":
        return control.Allocations, _present(user=arguments.user, address=arguments.address)
    if name == "kill":
        return control.Kill, {"target": arguments.target}
    if name == "drain":
        return control.Drain, _present(timeout=arguments.drainTimeout)
    if name == "reload":
        return control.Reload, {}
    if name == "reload-tls":
        return control.ReloadTLS, {}
    if name == "mint":
        return control.Mint, _present(userID=arguments.userID, ttl=arguments.ttl)
    if name == "revoke":
        return control.Revoke, {"username": arguments.username}
    if name == "unrevoke":
        return control.Unrevoke, {"username": arguments.username}
    assert name == "loglevel", name
    return control.LogLevel, _present(level=arguments.level)


def _present(**arguments: Any) -> Dict[str, Any]:
    return {key: value for key, value in arguments.items() if value is not None}


def socketPath(arguments: argparse.Namespace, environ: Dict[str, str]) -> str:
    """
    The control socket to use: C{--socket}, else the C{control-socket} of
    C{--config}'s file, else C{$TURNRELAY_CONTROL_SOCKET}, else
    L{DEFAULT_SOCKET}.

    @raise CommandFailed: the configuration file does not load or sets no
        control socket.
    """
    if arguments.socket:
        return str(arguments.socket)
    if arguments.config:
        from turnrelay.config import ConfigError, loadConfigFile

        try:
            values = loadConfigFile(arguments.config)
        except ConfigError as e:
            raise CommandFailed(str(e)) from None
        path = values.get("control-socket")
        if not path:
            raise CommandFailed(
                f"{arguments.config} sets no control-socket; set one and restart the relay, "
                "or pass --socket"
            )
        return str(path)
    return environ.get(ENVIRONMENT_SOCKET) or DEFAULT_SOCKET


def printable(text: str) -> str:
    """
    C{text} without terminal escapes: control characters other than newline
    and tab become C{\\xNN}.
    """
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def render(answer: Dict[str, str], asJSON: bool) -> str:
    """
    What to print of a command's answer.
    """
    if asJSON:
        return json.dumps(json.loads(answer["data"]), indent=2, sort_keys=True)
    return printable(answer["text"])


async def call(
    reactor: Any, path: str, command: Type[amp.Command], arguments: Dict[str, Any], timeout: float
) -> Dict[str, str]:
    """
    Send one command to the control socket at C{path}.

    @return: the answer: C{text} and C{data} (JSON).
    @raise CommandFailed: no relay answers there, or the command failed.
    """
    endpoint = UNIXClientEndpoint(reactor, path, timeout=timeout)
    try:
        protocol = await endpoint.connect(Factory.forProtocol(amp.AMP))
    except ConnectionRefusedError:
        raise CommandFailed(
            f"no relay answers on {path}: is turnrelay running with control-socket = {path}?"
        ) from None
    except ConnectError as e:
        raise CommandFailed(_connectFailure(path, e)) from None
    try:
        answering = protocol.callRemote(command, **arguments)
        answering.addTimeout(timeout, reactor)
        answer: Dict[str, str] = await answering
    except control.ControlError as e:
        raise CommandFailed(printable(str(e))) from None
    except amp.RemoteAmpError as e:
        raise CommandFailed(f"the relay could not answer: {printable(str(e))}") from None
    except Exception as e:
        raise CommandFailed(f"no answer from {path}: {e.__class__.__name__} {e}") from None
    finally:
        protocol.transport.loseConnection()
    return answer


def _connectFailure(path: str, error: ConnectError) -> str:
    if not os.path.exists(path):
        return (
            f"no control socket at {path}: is turnrelay running with control-socket = {path}? "
            "(--socket or --config says where)"
        )
    if not os.access(path, os.W_OK):
        return f"permission denied on {path}: run turnrelayctl as the relay's user or root"
    return f"cannot connect to {path}: {error.osError or error}"


async def run(
    reactor: Any, argv: Sequence[str], out: TextIO, err: TextIO, environ: Dict[str, str]
) -> int:
    """
    Run one command line.

    @return: the exit status: 0 done, 1 failed (one line on C{err}).
    """
    arguments = parser().parse_args(list(argv))
    try:
        path = socketPath(arguments, environ)
        command, commandArguments = request(arguments)
        answer = await call(reactor, path, command, commandArguments, arguments.timeout)
    except CommandFailed as e:
        err.write(f"turnrelayctl: {e}\n")
        err.flush()
        return 1
    out.write(render(answer, arguments.json) + "\n")
    out.flush()
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    """
    The C{turnrelayctl} console script.
    """
    from twisted.internet.task import react

    args = sys.argv[1:] if argv is None else argv

    async def _main(reactor: Any) -> None:
        status = await run(reactor, args, sys.stdout, sys.stderr, dict(os.environ))
        if status:
            raise SystemExit(status)

    react(_main)


if __name__ == "__main__":
    main()
