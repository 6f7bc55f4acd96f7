# -*- test-case-name: tests.test_admin_manhole -*-
"""
The admin console's SSH session: conch's prompt, terminal session, realm
and server, adapted (see L{turnrelay.admin.manhole}).

Conch's C{manhole}, C{manhole_ssh}, C{ssh.userauth} and C{ssh.factory}
import C{twisted.internet.reactor}, which installs the default reactor; the
classes here subclass theirs, so this private module is imported only when
a console starts (L{turnrelay.admin.manhole.ManholeService.listen}), never
when turnrelay is imported: an embedder picks its reactor after importing
turnrelay.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable, List, Optional, Set, Tuple, Union

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.insults.insults import modes as terminalModes
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.conch.manhole_ssh import ConchFactory, TerminalSession, TerminalUser
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from zope.interface import implementer

from turnrelay.admin.console import AdminConsole, ConsoleText
from turnrelay.admin.manhole import BANNER, NO_COMMANDS, _printable, keyFingerprint
from turnrelay.logs import Logger, LogLevels
from turnrelay.stun.address import TransportAddress


class _Leave:
    """
    C{exit} and C{quit} in the console: they end the session.  Python's
    own raise C{SystemExit} into the relay's reactor, and close the relay
    process's standard input first.
    """

    def __init__(self, manhole: ConsoleManhole) -> None:
        self._manhole = manhole

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D to end the session."

    def __call__(self, code: Any = None) -> None:
        self._manhole.leaving = True


def _refuse(name: str) -> Callable[..., None]:
    """
    A stand-in for a built-in that would read the relay process's own
    standard input, and so stop the relay until someone typed there.
    """

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{name}() would read the relay's own input and stop the relay")

    refuse.__name__ = name
    return refuse


class ConsoleInterpreter(ManholeInterpreter):
    """
    Conch's interpreter, with C{SystemExit} ending the session instead of
    escaping into the reactor.
    """

    handler: ConsoleManhole

    def runcode(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().runcode(*args, **kwargs)
        except SystemExit:
            self.handler.leaving = True

    def displayhook(self, obj: Any) -> None:
        # The helpers of a control process (--workers) answer when every
        # worker has: their text is shown as it is, as the others' is.
        if isinstance(obj, Deferred) and isinstance(getattr(obj, "result", None), ConsoleText):
            obj = obj.result
        super().displayhook(obj)

    def _cbDisplayDeferred(self, result: Any, k: int, obj: Any) -> Any:
        if not isinstance(result, ConsoleText):
            return super()._cbDisplayDeferred(result, k, obj)
        self.write(repr(result), True)
        del self._pendingDeferreds[id(obj)]
        return result


class ConsoleManhole(ColoredManhole):
    """
    Conch's coloured Python prompt, behaving as a guest in the operator's
    terminal and in the relay: it neither clears the screen on login, on
    resize nor on logout; it runs what is left when the input ends; and
    C{exit()}, C{quit()} and C{SystemExit} end the session, not the relay.

    @ivar leaving: whether the session ends after the current line.
    """

    leaving = False
    _sized = False

    def connectionMade(self) -> None:
        super().connectionMade()
        namespace = self.namespace if self.namespace is not None else {}
        namespace["exit"] = namespace["quit"] = _Leave(self)
        for name in ("input", "breakpoint"):
            namespace[name] = _refuse(name)
        self.namespace = namespace
        self.interpreter = ConsoleInterpreter(self, namespace)

    def initializeScreen(self) -> None:
        self.terminal.write(BANNER)
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)
        if self.leaving:
            self.handle_QUIT()

    def terminalSize(self, width: int, height: int) -> None:
        """
        Note the terminal's size and, when it changes, draw the input line
        again, as a shell does (conch's prompt erases the whole display).
        """
        resized = self._sized and (width, height) != (self.width, self.height)
        self.width, self.height, self._sized = width, height, True
        if resized:
            self.terminal.eraseLine()
            self.terminal.write(b"\r" + self.ps[self.pn] + b"".join(self.lineBuffer))
            behind = len(self.lineBuffer) - self.lineBufferIndex
            if behind:
                self.terminal.cursorBackward(behind)

    def handle_QUIT(self) -> None:
        """
        End the session, leaving the terminal in the mode it was found in
        (conch's prompt resets the terminal, which clears it).
        """
        self.terminal.resetModes([terminalModes.IRM])
        self.terminal.nextLine()
        self.terminal.transport.loseConnection()

    def endOfInput(self) -> None:
        """
        The client sent its last byte: run a last line that has no newline,
        close a block still open (as an empty line would), and end the
        session.
        """
        if self.lineBuffer:
            self.handle_RETURN()
        if self.interpreter.buffer:
            self.handle_RETURN()
        self.handle_QUIT()


class _TerminalInput:
    """
    The transport of the SSH channel's process protocol: what the client
    types goes to the terminal.  Closing is the channel's business
    (L{ConsoleSession.closed}).
    """

    def __init__(self, terminal: ServerProtocol) -> None:
        self._terminal = terminal

    def write(self, data: bytes) -> None:
        self._terminal.dataReceived(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        pass


class _ChannelOutput:
    """
    The terminal's transport: what the console writes goes down the SSH
    channel; closing it ends the session.
    """

    def __init__(self, session: ConsoleSession, process: Any) -> None:
        self._session = session
        self._process = process

    def write(self, data: bytes) -> None:
        if not self._session.ended:
            self._process.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._session.endShell(0)

    def getPeer(self) -> Any:
        return self._process.getPeer()

    def getHost(self) -> Any:
        return self._process.getHost()


class ConsoleSession(TerminalSession):
    """
    One SSH session of the console: a shell that is the Python prompt.

    Unlike conch's L{TerminalSession}, it follows terminal resizes, ends
    cleanly (exit status 0, buffered output flushed) at the end of the
    client's input or on Ctrl-D, opens without a pseudo-terminal (80x24),
    and answers a command request with how to pipe a script instead.

    @ivar width: the terminal's columns.
    @ivar height: the terminal's rows.
    @ivar ended: whether the session has ended or is ending.
    """

    width = 80
    height = 24

    def __init__(
        self,
        original: Componentized,
        clock: IReactorTime,
        terminalFactory: Callable[[], ServerProtocol],
    ) -> None:
        """
        @param original: the avatar's components.
        @param clock: to end a refused command once it has been answered.
        @param terminalFactory: makes the terminal the prompt runs in.
        """
        super().__init__(original)
        self._clock = clock
        self._terminalFactory = terminalFactory
        self._terminal: Optional[ServerProtocol] = None
        self._process: Any = None
        self.ended = False

    def getPty(self, term: bytes, windowSize: Tuple[int, ...], modes: Any) -> None:
        """
        Note the terminal's size; C{ssh -tt} without a terminal of its own
        says 0x0, which means the default.
        """
        self.windowChanged(windowSize)

    def openShell(self, proto: Any) -> None:
        """
        Start the prompt on the channel.

        Input that came before the shell request waits in the channel's
        C{buf}, which is also where the channel keeps output the client's
        window cannot take yet: conch would send the console's first
        output into the console as input.  It is taken out first, and
        typed in once the console is ready.
        """
        channel = proto.session
        early, channel.buf = channel.buf, b""
        terminal = self._terminalFactory()
        self._terminal, self._process = terminal, proto
        terminal.makeConnection(_ChannelOutput(self, proto))
        proto.makeConnection(_TerminalInput(terminal))
        if terminal.terminalProtocol is not None:
            terminal.terminalProtocol.terminalSize(self.width, self.height)
        if early:
            terminal.dataReceived(early)

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        """
        Say that commands cannot run here and how to run a script, then end
        with exit status 1 (once the request has been answered).
        """
        self._process = proto
        proto.write(NO_COMMANDS)
        self._clock.callLater(0, self.endShell, 1)

    def windowChanged(self, newWindowSize: Tuple[int, ...]) -> None:
        """
        The client's terminal was resized: tell the prompt.

        @param newWindowSize: C{(rows, columns, xpixels, ypixels)}.
        """
        rows, columns = newWindowSize[:2]
        self.height, self.width = rows or ConsoleSession.height, columns or ConsoleSession.width
        terminal = self._terminal
        if terminal is not None and terminal.terminalProtocol is not None:
            terminal.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        """
        The client will send nothing more: finish what it sent, and end.
        (A refused command ends by itself, with its own exit status.)
        """
        terminal = self._terminal
        manhole = terminal.terminalProtocol if terminal is not None else None
        if isinstance(manhole, ConsoleManhole):
            manhole.endOfInput()

    def endShell(self, status: int) -> None:
        """
        Send the exit status and close the channel once its buffered output
        is sent.  Idempotent.
        """
        if self.ended or self._process is None:
            return
        self.ended = True
        channel = self._process.session
        channel.conn.sendRequest(channel, b"exit-status", struct.pack(">L", status))
        channel.loseConnection()

    def closed(self) -> None:
        """
        The channel is closed: tell the terminal.
        """
        self.ended = True
        terminal, self._terminal = self._terminal, None
        if terminal is not None:
            terminal.connectionLost(Failure(ConnectionDone("the admin console session ended")))


@implementer(IRealm)
class ConsoleRealm:
    """
    Gives every SSH user who logs in a console session on one relay.
    """

    log = Logger()

    def __init__(self, console: AdminConsole, clock: IReactorTime) -> None:
        self.console = console
        self.logLevels = console.logLevels
        self._clock = clock

    def terminal(self) -> ServerProtocol:
        """
        A new terminal running the prompt, with a fresh namespace.
        """
        return ServerProtocol(ConsoleManhole, self.console.namespace())

    def requestAvatar(
        self, avatarId: Union[bytes, Tuple[()]], mind: Any, *interfaces: Any
    ) -> Tuple[Any, Any, Callable[[], None]]:
        """
        @return: an SSH user whose sessions are L{ConsoleSession}s.  It may
            open no other channel (no port forwarding).
        """
        if IConchUser not in interfaces:
            raise NotImplementedError("the admin console serves SSH users only")
        components = Componentized()
        user = TerminalUser(components, avatarId)
        session = ConsoleSession(components, self._clock, self.terminal)
        components.setComponent(IConchUser, user)
        components.setComponent(ISession, session)
        name = _printable(avatarId) if isinstance(avatarId, bytes) else "anonymous"

        def logout() -> None:
            self.log.info("admin console: {user} logged out", user=name)

        return IConchUser, user, logout


# SSH ---------------------------------------------------------------------------


class ConsoleUserAuth(SSHUserAuthServer):
    """
    SSH authentication that logs who logged in from where (info) and the
    connections that failed to (warn), on the relay's clock.
    """

    loginTimeout = 120
    attemptsBeforeDisconnect = 10
    log = Logger()
    # Conch's own events (each attempt, at debug) obey the relay's level.
    _log = Logger()

    @property
    def logLevels(self) -> Optional[LogLevels]:
        return _logLevelsOf(self.transport)

    def serviceStarted(self) -> None:
        transport: Any = self.transport
        self.clock = transport.factory.reactor
        self._keyFingerprint: Optional[str] = None
        super().serviceStarted()

    def auth_publickey(self, packet: bytes) -> Any:
        try:
            self._keyFingerprint = keyFingerprint(Key.fromString(getNS(packet[1:], 2)[1]))
        except (BadKeyError, ValueError, struct.error, IndexError):
            self._keyFingerprint = None
        return super().auth_publickey(packet)

    def serviceStopped(self) -> None:
        super().serviceStopped()
        transport: Any = self.transport
        peer = transport.transport.getPeer()
        client = str(TransportAddress(peer.host, peer.port))
        user = _printable(self.user or b"")
        method = (self.method or b"").decode("ascii", "replace")
        if getattr(transport, "avatar", None) is not None and method == "publickey":
            self.log.info(
                "admin console: {user} logged in from {client} by publickey, key {fingerprint}",
                user=user,
                client=client,
                method=method,
                fingerprint=self._keyFingerprint,
            )
        elif getattr(transport, "avatar", None) is not None:
            self.log.info(
                "admin console: {user} logged in from {client} by {method}",
                user=user,
                client=client,
                method=method,
            )
        elif self.loginAttempts:
            self.log.warn(
                "admin console: login refused to {user} from {client}: "
                "{attempts} failed attempts, the last by {method}",
                user=user,
                client=client,
                attempts=self.loginAttempts,
                method=method,
            )


class ConsoleConnection(SSHConnection):
    """
    The channels of one console connection; conch's events about them
    (each channel opened, each request) obey the relay's log level.
    """

    _log = Logger()

    @property
    def logLevels(self) -> Optional[LogLevels]:
        return _logLevelsOf(self.transport)


def _logLevelsOf(transport: Any) -> Optional[LogLevels]:
    # An SSH service's relay, through its connection's factory.
    return getattr(getattr(transport, "factory", None), "logLevels", None)


class ConsoleServerTransport(SSHServerTransport):
    """
    The server side of one SSH connection, known to its factory while it
    is open.

    Conch's own events about it go through the relay's log level, so its
    per-connection debug events (key exchange, ciphers) stay out of the
    log unless asked for.
    """

    _log = Logger()
    factory: ConsoleSSHFactory

    @property
    def logLevels(self) -> Optional[LogLevels]:
        return _logLevelsOf(self)

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.connectionClosed(self)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """
        The client disconnected with a reason.  Conch logs every one as an
        error, a plain logout included; here only the unusual ones are
        worth a line.
        """
        if reasonCode == DISCONNECT_BY_APPLICATION:
            return
        self._log.info(
            "admin console: the client disconnected: {description} (code {code})",
            description=_printable(description, 200),
            code=reasonCode,
        )


class ConsoleSSHFactory(ConchFactory):
    """
    The console's SSH server: one host key, L{ConsoleUserAuth}, and a
    record of the open connections so that stopping can close them.

    @ivar reactor: the clock authentication times out and delays with.
    @ivar connections: the open connections.
    """

    protocol = ConsoleServerTransport
    noisy = False
    _log = Logger()

    def __init__(
        self, portal: Portal, hostKey: Key, reactor: Any, logLevels: Optional[LogLevels] = None
    ) -> None:
        """
        @param logLevels: the relay's log levels, which its connections'
            events (conch's among them) go through.
        """
        super().__init__(portal)
        self.reactor = reactor
        self.logLevels = logLevels
        # New dictionaries: ConchFactory's class attributes are shared.  (It
        # annotates them as holding bytes; SSHFactory reads Keys from them.)
        self.publicKeys = {hostKey.sshType(): hostKey.public()}
        self.privateKeys = {hostKey.sshType(): hostKey}  # type: ignore[dict-item]
        self.services = dict(SSHFactory.services)
        self.services[b"ssh-userauth"] = ConsoleUserAuth
        self.services[b"ssh-connection"] = ConsoleConnection
        self.connections: Set[ConsoleServerTransport] = set()
        self._closeWaiters: List[Deferred[None]] = []

    def connectionClosed(self, connection: ConsoleServerTransport) -> None:
        """
        Forget a connection that is gone.
        """
        self.connections.discard(connection)
        if not self.connections:
            waiters, self._closeWaiters = self._closeWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def closeAll(self) -> Deferred[None]:
        """
        Disconnect every open connection.

        @return: a L{Deferred} that fires when they are all closed.
        """
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closeWaiters.append(waiter)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.loseConnection()
        return waiter
