# -*- test-case-name: tests.test_admin_control -*-
"""
The control socket: the running relay's scriptable side door, which
C{turnrelayctl} (L{turnrelay.ctl}) talks to.

A Unix socket (the C{control-socket} setting) created with mode 0600: the
file's permissions decide who may use it (the relay's user, and root), so
it needs no secret of its own.  The protocol is AMP
(L{twisted.protocols.amp}): one typed command per operation, each answered
with the text the admin console would show (C{text}) and the same answer as
JSON (C{data}), or with a L{ControlError} naming what went wrong.

The commands act through the admin console's helpers
(L{turnrelay.admin.console.AdminConsole}) and the relay's public API, so the
console, the control command and embedders see one behaviour.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from turnrelay.admin.console import (
    AdminConsole,
    ConsoleFailure,
    credentialText,
    revocationText,
)
from turnrelay.config import ConfigError, RelayConfig
from turnrelay.listening import ListeningService
from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress
from turnrelay.transports.tls import fingerprint

# AMP carries at most 65,535 bytes in one value; longer text is cut into
# numbered keys (text, text.2, text.3, ...).
_CHUNK = 0xFFFF

# The longest path a Unix socket may have (sun_path holds 108 bytes with
# the terminating NUL on Linux; fewer elsewhere).
_MAX_PATH = 103 if sys.platform == "darwin" else 107


class LongText(amp.Argument):
    """
    Text of any length (an AMP value holds at most 64 kB): the allocations
    of a busy relay, as JSON, exceed that.  Sent as the key itself and then
    C{key.2}, C{key.3}, ... as needed.
    """

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        encoded = objects[str(name, "ascii")].encode("utf-8")
        chunks = [encoded[i : i + _CHUNK] for i in range(0, len(encoded), _CHUNK)] or [b""]
        strings[name] = chunks[0]
        for number, chunk in enumerate(chunks[1:], start=2):
            strings[name + b".%d" % (number,)] = chunk

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        chunks = [strings[name]]
        number = 2
        while name + b".%d" % (number,) in strings:
            chunks.append(strings[name + b".%d" % (number,)])
            number += 1
        objects[str(name, "ascii")] = b"".join(chunks).decode("utf-8")


class ControlError(Exception):
    """
    A control command failed; its message says what went wrong and, where
    it can, how to fix it.
    """


_ERRORS: Dict[Any, bytes] = {ControlError: b"CONTROL_ERROR"}
_ANSWER: List[Tuple[bytes, amp.Argument]] = [(b"text", LongText()), (b"data", LongText())]


class Status(amp.Command):
    """
    The relay's live figures (L{turnrelay.service.RelayService.stats}).
    """

    arguments = []
    response = _ANSWER
    errors = _ERRORS


class Allocations(amp.Command):
    """
    The live allocations, optionally only a user's or those with an address.
    """

    arguments = [
        (b"user", amp.Unicode(optional=True)),
        (b"address", amp.Unicode(optional=True)),
    ]
    response = _ANSWER
    errors = _ERRORS


class Kill(amp.Command):
    """
    End the allocation with a relayed address, or all of a user's.
    """

    arguments = [(b"target", amp.Unicode())]
    response = _ANSWER
    errors = _ERRORS


class Drain(amp.Command):
    """
    Take no new allocations; end those left after C{timeout} seconds.
    """

    arguments = [(b"timeout", amp.Float(optional=True))]
    response = _ANSWER
    errors = _ERRORS


class Reload(amp.Command):
    """
    Re-read the configuration (file and command line) as SIGHUP does.
    """

    arguments = []
    response = _ANSWER
    errors = _ERRORS


class ReloadTLS(amp.Command):
    """
    Re-read the TLS certificate files.
    """

    arguments = []
    response = _ANSWER
    errors = _ERRORS


class Mint(amp.Command):
    """
    Mint a TURN REST API credential.
    """

    arguments = [(b"userID", amp.Unicode()), (b"ttl", amp.Float(optional=True))]
    response = _ANSWER
    errors = _ERRORS


class Revoke(amp.Command):
    """
    Revoke a user on every node of the fleet (C{redis}).
    """

    arguments = [(b"username", amp.Unicode())]
    response = _ANSWER
    errors = _ERRORS


class Unrevoke(amp.Command):
    """
    Take a fleet-wide revocation back.
    """

    arguments = [(b"username", amp.Unicode())]
    response = _ANSWER
    errors = _ERRORS


class LogLevel(amp.Command):
    """
    Show the relay's log level, or set it.
    """

    arguments = [(b"level", amp.Unicode(optional=True))]
    response = _ANSWER
    errors = _ERRORS


def _jsonable(value: Any) -> Any:
    """
    C{value} with every dict key made text: tuple keys such as
    C{("udp", "ipv4")} become C{"udp/ipv4"}.
    """
    if isinstance(value, dict):
        return {
            "/".join(map(str, key)) if isinstance(key, tuple) else str(key): _jsonable(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, TransportAddress):
        return str(value)
    return value


def _peerUID(transport: Any) -> Optional[int]:
    """
    The user id of the process at the other end of a Unix socket (Linux's
    C{SO_PEERCRED}), for the log; L{None} where it cannot be known.
    """
    sock = getattr(transport, "socket", None)
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    uid: int = struct.unpack("3i", credentials)[1]
    return uid


def answerWith(text: str, data: Any) -> Dict[str, str]:
    """
    A command's answer: the console's C{text} and the same as JSON C{data};
    a L{ConsoleFailure} is raised as a L{ControlError}.
    """
    if isinstance(text, ConsoleFailure):
        raise ControlError(str(text).replace("\n", "; "))
    return {"text": str(text), "data": json.dumps(_jsonable(data), sort_keys=True)}


class ControlConnection(amp.AMP):
    """
    One connection to the control socket, whatever answers its commands:
    it logs them with the caller's user id, and is known to its factory
    while open.
    """

    log = Logger()

    def __init__(
        self,
        relay: Any,
        console: Any,
        connections: Optional[List[ControlConnection]] = None,
    ) -> None:
        """
        @param relay: the relay to act on.
        @param console: the console whose helpers answer.
        @param connections: the open connections, this one among them while
            it is open.
        """
        super().__init__()
        self._relay = relay
        self.logLevels = relay.logLevels
        self._console = console
        self._connections = [] if connections is None else connections
        self.closed: Deferred[None] = Deferred()
        self.peerUID: Optional[int] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._connections.append(self)
        self.peerUID = _peerUID(self.transport)

    def _logCommand(self, command: str, **fields: Any) -> None:
        self.log.info(
            "control socket: {command} (uid {uid})", command=command, uid=self.peerUID, **fields
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self in self._connections:
            self._connections.remove(self)
        self.closed.callback(None)


class ControlProtocol(ControlConnection):
    """
    One connection to the control socket: answers the commands above for
    one relay.
    """

    _console: AdminConsole

    @Status.responder
    def status(self) -> Dict[str, str]:
        """
        L{Status}: the console's C{stats()} and L{RelayService.stats}.
        """
        return answerWith(self._console.stats(), self._relay.stats())

    @Allocations.responder
    def allocations(
        self, user: Optional[str] = None, address: Optional[str] = None
    ) -> Dict[str, str]:
        """
        L{Allocations}: the console's C{allocations()}, and a record per
        allocation.
        """
        console = self._console
        chosen = console.selectAllocations(user, address)
        records = [console.allocationRecord(allocation) for allocation in chosen]
        return answerWith(console.allocations(user, address), records)

    @Kill.responder
    def kill(self, target: str) -> Dict[str, str]:
        """
        L{Kill}: the console's C{kill()}, and how many allocations ended.
        """
        self._logCommand("kill", target=target)
        before = len(self._console.registry)
        text = self._console.kill(target)
        killed = before - len(self._console.registry)
        return answerWith(text, {"killed": killed})

    @Drain.responder
    def drain(self, timeout: Optional[float] = None) -> Dict[str, str]:
        """
        L{Drain}: the console's C{drain()}; the relay keeps running.
        """
        self._logCommand("drain")
        text = self._console.drain(timeout)
        return answerWith(text, {"draining": True, "allocationsLeft": len(self._console.registry)})

    @Reload.responder
    def reload(self) -> Dict[str, str]:
        """
        L{Reload}: the configuration from L{RelayService.configSource} put
        in force with L{RelayService.reloadConfig}.
        """
        self._logCommand("reload")
        source: Optional[Callable[[], RelayConfig]] = getattr(self._relay, "configSource", None)
        if source is None:
            raise ControlError(
                "this relay has no configuration to re-read (only twistd's relays do); "
                "nothing changed"
            )
        try:
            config = source()
        except ConfigError as e:
            raise ControlError(f"configuration not reloaded, nothing changed: {e}") from None
        needRestart = self._relay.reloadConfig(config)
        text = "configuration reloaded; needing a restart to apply: " + (
            ", ".join(needRestart) or "nothing"
        )
        return answerWith(text, {"reloaded": True, "needRestart": needRestart})

    @ReloadTLS.responder
    def reloadTLS(self) -> Dict[str, str]:
        """
        L{ReloadTLS}: the console's C{reloadTLS()}.
        """
        self._logCommand("reload-tls")
        text = self._console.reloadTLS()
        data: Dict[str, Any] = {"reloaded": True}
        options = self._relay.tlsOptions
        if not isinstance(text, ConsoleFailure) and options is not None:
            data["subject"] = options.certificate.subject.rfc4514_string()
            data["sha256"] = fingerprint(options.certificate)
        return answerWith(text, data)

    @Mint.responder
    def mint(self, userID: str, ttl: Optional[float] = None) -> Dict[str, str]:
        """
        L{Mint}: the console's C{mint()}, with the credential as data.
        """
        try:
            record = self._console.mintRecord(userID, 86400 if ttl is None else ttl)
        except ValueError as e:
            raise ControlError(f"cannot mint a credential: {e}") from None
        return answerWith(credentialText(record), record)

    @Revoke.responder
    def revoke(self, username: str) -> Deferred[Dict[str, str]]:
        """
        L{Revoke}: the console's C{revoke()}, and what it did.
        """
        self._logCommand("revoke", username=username)
        return self._revocation(username, True)

    @Unrevoke.responder
    def unrevoke(self, username: str) -> Deferred[Dict[str, str]]:
        """
        L{Unrevoke}: the console's C{unrevoke()}, and what it did.
        """
        self._logCommand("unrevoke", username=username)
        return self._revocation(username, False)

    def _revocation(self, username: str, revoke: bool) -> Deferred[Dict[str, str]]:
        def answer(record: Dict[str, Any]) -> Dict[str, str]:
            return answerWith(revocationText(record), record)

        def failed(failure: Failure) -> Failure:
            verb = "revoked" if revoke else "unrevoked"
            return Failure(ControlError(f"{username!r} not {verb}: {failure.getErrorMessage()}"))

        return self._console.revocationRecord(username, revoke).addCallbacks(answer, failed)

    @LogLevel.responder
    def loglevel(self, level: Optional[str] = None) -> Dict[str, str]:
        """
        L{LogLevel}: the console's C{loglevel()}.
        """
        was = self.logLevels.level()
        text = self._console.loglevel(level)
        return answerWith(text, {"level": self.logLevels.level(), "was": was})


class ControlFactory(Factory):
    """
    Makes a L{ControlProtocol} per connection, and remembers the open ones
    so that stopping the service closes them.

    @ivar connections: the open connections.
    """

    noisy = False

    def __init__(self, relay: Any, clock: Any) -> None:
        self._relay = relay
        self._console = AdminConsole(relay, clock)
        self.connections: List[ControlConnection] = []

    def buildProtocol(self, addr: Any) -> ControlConnection:
        protocol = ControlProtocol(self._relay, self._console, self.connections)
        protocol.factory = self
        return protocol


class ControlService(ListeningService):
    """
    Listens on the control socket while running; the socket file is
    removed when it stops.

    @ivar path: the socket's file name.
    """

    log = Logger()

    def __init__(self, reactor: Any, path: str, factory: ControlFactory) -> None:
        self._reactor = reactor
        self.path = path
        self._factory = factory

    def listen(self) -> IListeningPort:
        # A relay that did not stop cleanly left its socket file.
        if checkSocketPath(self.path):
            self.log.info("control socket: removing the stale socket file {path}", path=self.path)
            os.unlink(self.path)
        port: IListeningPort = self._reactor.listenUNIX(
            self.path, self._factory, mode=0o600, wantPID=False
        )
        # listenUNIX binds before it changes the mode: make sure of it.
        os.chmod(self.path, 0o600)
        return port

    def startService(self) -> None:
        super().startService()
        self.log.info("control socket listening on {path}", path=self.path)

    @property
    def address(self) -> Optional[TransportAddress]:
        """
        Always L{None}: a Unix socket has no IP address to keep from peers.
        """
        return None

    def closeConnections(self) -> List[Deferred[Any]]:
        closing: List[Deferred[Any]] = []
        for protocol in list(self._factory.connections):
            closing.append(protocol.closed)
            protocol.transport.loseConnection()  # type: ignore[union-attr]
        return closing


def checkSocketPath(path: str) -> bool:
    """
    Whether a control socket can be made at C{path}, changing nothing.

    @return: whether a stale socket file (nobody answers on it) is there,
        to remove first.
    @raise ConfigError: C{path} is another kind of file, its directory is
        missing, or a running process answers on it.
    """
    if len(os.fsencode(path)) > _MAX_PATH:
        raise ConfigError(
            f"control-socket: {path} is longer than the {_MAX_PATH} bytes a Unix socket's "
            "path may have; choose a shorter path"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(
            f"control-socket: the directory {directory} does not exist; create it "
            "(writable by the relay's user only) or choose another path"
        )
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise ConfigError(
            f"control-socket: {path} exists and is not a socket; remove it or choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConfigError(f"control-socket: cannot use {path}: {e.strerror}") from None
    else:
        raise ConfigError(
            f"control-socket: {path} is in use by a running relay; stop it or choose another path"
        )
    finally:
        probe.close()
    return True


def makeControlService(relay: Any, config: RelayConfig, reactor: Any) -> ControlService:
    """
    Build the control socket of C{relay}, as C{config} says.

    @param relay: the L{turnrelay.service.RelayService}.
    @param config: a validated configuration with C{control-socket} set.
    @param reactor: to listen (an C{IReactorUNIX}) and keep time with.
    @return: a service to attach to the relay (it is named C{"control"}).
    @raise ConfigError: C{control-socket} is not set, or no socket can be
        made there (see L{checkSocketPath}).
    """
    if config.controlSocket is None:
        raise ConfigError("control-socket: not configured")
    # Said now, as one line, rather than as a traceback when twistd starts.
    checkSocketPath(config.controlSocket)
    service = ControlService(reactor, config.controlSocket, relay.controlFactory(reactor))
    service.setName("control")
    return service
