# -*- test-case-name: tests.test_admin_manhole -*-
"""
The SSH admin console ("manhole"): a Python prompt inside the running relay,
for its operator.  One concept, the SSH side of the console (credentials,
the session, the terminal), which is why the module is long; what the
console offers is L{turnrelay.admin.console}'s.

It is off unless C{manhole} is set (C{--manhole tcp:2222:interface=127.0.0.1})
and, unless C{manhole-allow-remote} says otherwise, listens on loopback only
(L{turnrelay.config.buildConfig} refuses the rest).  Who may log in:

  - the public keys of an OpenSSH C{authorized_keys} file
    (C{manhole-authorized-keys}), read again at each login, so that adding
    or removing a key needs no restart.  Lines with options (C{from=},
    C{restrict}, ...) are ignored with a warning: the console could not
    honour them;
  - optionally, the C{user:password} lines of a password file
    (C{manhole-passwords}), also read at each login and compared in
    constant time.

Its ed25519 host key is made at the first start, in
C{<state-dir>/manhole/ssh_host_ed25519_key} (mode 0600), and kept.  Logins
are logged (user, client address, method, key fingerprint) at info,
connections that fail to log in at warn; keys and passwords never are.

The namespace is L{turnrelay.admin.console.AdminConsole}'s: C{help()} lists
it.  SSH cannot run a command in the console (C{ssh host 'stats()'}); a
script is piped into C{ssh -tt} instead, and the session ends, with exit
status 0, when its input does.

Conch's stock L{TerminalSession} logs a traceback when the client's
terminal is resized, raises on end of input (the SSH connection is then
dropped with another traceback), fails to open a shell without a
pseudo-terminal, and mixes input sent before the shell request into its
output; L{ConsoleSession} handles all four.  In conch's prompt, C{exit()}
raises C{SystemExit} into the reactor; in L{ConsoleManhole} it ends the
session.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
import struct
from hashlib import sha256
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import IService
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.insults.insults import modes as terminalModes
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.conch.manhole_ssh import ConchFactory, TerminalSession, TerminalUser
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import BadKeyError, FingerprintFormats, Key
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from turnrelay.admin.console import AdminConsole
from turnrelay.config import ConfigError, ListenerConfig, RelayConfig
from turnrelay.listening import ListeningService
from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress

HOST_KEY_NAME = "ssh_host_ed25519_key"

BANNER = b"turnrelay admin console: help() lists what is here; Ctrl-D ends the session."

NO_COMMANDS = (
    b"The turnrelay admin console runs no commands; pipe them in instead:\r\n"
    b"  echo 'print(stats())' | ssh -tt -p PORT USER@HOST\r\n"
)

# What starts an authorized_keys line that has no options: a key type.
_KEY_TYPE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)$")

log = Logger()


def keyFingerprint(key: Key) -> str:
    """
    @return: C{key}'s fingerprint as OpenSSH writes it (C{SHA256:...}).
    """
    digest = key.fingerprint(FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + digest.rstrip("=")


def _printable(text: bytes, limit: int = 64) -> str:
    """
    Client-chosen bytes (a username), safe to log.
    """
    decoded = text[:limit].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in decoded)


# Who may log in --------------------------------------------------------------


def _readCredentials(path: FilePath[str], what: str) -> Optional[bytes]:
    """
    Read a file of console credentials, which is read again at each login.

    @param what: what it is, for the warning when it cannot be read.
    @return: its content, or L{None} (nobody logs in with it then).
    """
    try:
        return path.getContent()
    except OSError as e:
        log.warn(
            "admin console: cannot read {what} {path}: {reason}",
            what=what,
            path=path.path,
            reason=e.strerror,
        )
        return None


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The keys of an OpenSSH C{authorized_keys} file, read again at every
    look-up, for any username.

    A line that is not a key, or that has options the console cannot
    honour, is ignored with a warning naming the file and the line number
    (never its content).  A file that cannot be read authorizes no key.

    @ivar path: the file.
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = FilePath(path)

    def getAuthorizedKeys(self, avatarId: bytes) -> List[Key]:
        """
        @param avatarId: the username logging in; every key in the file is
            valid for every username.
        @return: the keys in the file now.
        """
        content = _readCredentials(self.path, "authorized keys")
        if content is None:
            return []
        keys = []
        for number, line in enumerate(content.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith(b"#"):
                continue
            if not _KEY_TYPE.match(fields[0].decode("ascii", "replace")):
                self._skip(number, "it has options, which the admin console cannot honour")
                continue
            try:
                keys.append(Key.fromString(b" ".join(fields[:2])))
            except (BadKeyError, ValueError, struct.error, IndexError):
                self._skip(number, "it is not a public key the admin console understands")
        return keys

    def _skip(self, number: int, why: str) -> None:
        self.log.warn(
            "admin console: {path} line {line} ignored: {why}",
            path=self.path.path,
            line=number,
            why=why,
        )


@implementer(ICredentialsChecker)
class PasswordFile:
    """
    Checks usernames and passwords against a file of C{user:password}
    lines (C{#} starts a comment), read again at every login.

    Passwords are compared in constant time, and an unknown user costs the
    same as a wrong password.  The file holds passwords in the clear: keep it
    mode 0600, and prefer keys.

    @ivar path: the file.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = FilePath(path)

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        """
        @return: a L{Deferred} firing with the username, or failing with
            L{UnauthorizedLogin}.
        """
        username, password = credentials.username, credentials.password
        stored = self._passwords().get(username)
        matches = hmac.compare_digest(
            sha256(password).digest(), sha256(stored if stored is not None else b"\0").digest()
        )
        if stored is not None and matches:
            return succeed(username)
        return fail(UnauthorizedLogin("wrong username or password"))

    def _passwords(self) -> Dict[bytes, bytes]:
        content = _readCredentials(self.path, "the password file")
        if content is None:
            return {}
        passwords = {}
        for number, line in enumerate(content.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            username, colon, password = line.partition(b":")
            if not (colon and username and password):
                self.log.warn(
                    "admin console: {path} line {line} ignored: it is not user:password",
                    path=self.path.path,
                    line=number,
                )
                continue
            passwords[username] = password
        return passwords


def loadHostKey(directory: FilePath[str]) -> Key:
    """
    The console's SSH host key: read from C{directory}, or made there (an
    ed25519 key, mode 0600, with its C{.pub} beside it) if there is none
    yet.

    @raise ValueError: the key file exists but holds no usable key.
    """
    keyFile = directory.child(HOST_KEY_NAME)
    if not keyFile.exists():
        os.makedirs(directory.path, mode=0o700, exist_ok=True)
        key = Key(Ed25519PrivateKey.generate())
        try:
            fd = os.open(keyFile.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # Another process made it first: use theirs.
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(key.toString("openssh"))
            directory.child(HOST_KEY_NAME + ".pub").setContent(
                key.public().toString("openssh", comment="turnrelay admin console") + b"\n"
            )
            log.info(
                "admin console: made the SSH host key {path}, {fingerprint}",
                path=keyFile.path,
                fingerprint=keyFingerprint(key),
            )
            return key
    try:
        key = Key.fromString(keyFile.getContent())
        if key.isPublic():
            raise ValueError("it is a public key")
    except (OSError, BadKeyError, ValueError) as e:
        raise ValueError(
            f"manhole: the SSH host key {keyFile.path} cannot be used ({e}); "
            "remove it to have a new one made"
        ) from None
    if stat.S_IMODE(os.stat(keyFile.path).st_mode) & 0o077:
        log.warn(
            "admin console: the SSH host key {path} is readable by others; chmod 600 it",
            path=keyFile.path,
        )
    return key


# The terminal ------------------------------------------------------------------


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
    # Conch's own events (each attempt, at debug) obey turnrelay's level.
    _log = Logger()

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
    (each channel opened, each request) obey turnrelay's log level.
    """

    _log = Logger()


class ConsoleServerTransport(SSHServerTransport):
    """
    The server side of one SSH connection, known to its factory while it
    is open.

    Conch's own events about it go through turnrelay's log level, so its
    per-connection debug events (key exchange, ciphers) stay out of the
    log unless asked for.
    """

    _log = Logger()
    factory: ConsoleSSHFactory

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

    def __init__(self, portal: Portal, hostKey: Key, reactor: Any) -> None:
        super().__init__(portal)
        self.reactor = reactor
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


@implementer(IService)
class ManholeService(ListeningService):
    """
    Keeps the admin console listening while the service runs.

    @ivar listener: where to listen.
    @ivar portal: who may log in, and to what.
    @ivar hostKey: the SSH host key, once started.
    @ivar factory: the SSH server factory, once started.
    """

    name = "manhole"
    log = Logger()

    def __init__(
        self, reactor: Any, listener: ListenerConfig, portal: Portal, stateDir: str
    ) -> None:
        """
        @param reactor: to listen (C{IReactorTCP}) and keep time with.
        @param stateDir: where the host key is kept, in C{manhole/}.
        """
        self._reactor = reactor
        self.listener = listener
        self.portal = portal
        self._keyDirectory = FilePath(stateDir).child("manhole")
        self.hostKey: Optional[Key] = None
        self.factory: Optional[ConsoleSSHFactory] = None

    def listen(self) -> IListeningPort:
        # The host key is made here, not when the service is built: twistd
        # starts services after dropping privileges, so the key belongs to
        # the user that reads it.
        self.hostKey = loadHostKey(self._keyDirectory)
        self.factory = ConsoleSSHFactory(self.portal, self.hostKey, self._reactor)
        port: IListeningPort = self._reactor.listenTCP(
            self.listener.port, self.factory, interface=self.listener.interface
        )
        return port

    def startService(self) -> None:
        super().startService()
        assert self.hostKey is not None
        self.log.info(
            "admin console listening on {address} (ssh), host key {fingerprint}",
            address=self.address,
            fingerprint=keyFingerprint(self.hostKey),
        )

    def closeConnections(self) -> List[Deferred[Any]]:
        return [] if self.factory is None else [self.factory.closeAll()]


def makePortal(relay: Any, config: RelayConfig, reactor: Any) -> Portal:
    """
    The console's portal: the realm of console sessions on C{relay}, and
    a checker for each kind of credential configured.
    """
    realm = ConsoleRealm(AdminConsole(relay, reactor), reactor)
    checkers: List[ICredentialsChecker] = []
    if config.manholeAuthorizedKeys is not None:
        checkers.append(SSHPublicKeyChecker(AuthorizedKeysFile(config.manholeAuthorizedKeys)))
    if config.manholePasswords is not None:
        checkers.append(PasswordFile(config.manholePasswords))
    return Portal(realm, checkers)


def makeManholeService(relay: Any, config: RelayConfig, reactor: Any) -> ManholeService:
    """
    Build the SSH admin console of C{relay}, as C{config} says.

    @param relay: the L{turnrelay.service.RelayService}.
    @param config: a validated configuration with C{manhole} set.
    @param reactor: to listen and keep time with.
    @return: a service to attach to the relay (it is named C{"manhole"}).
    @raise ConfigError: C{manhole} is not set.
    """
    if config.manhole is None:
        raise ConfigError("manhole: not configured")
    for path in (config.manholeAuthorizedKeys, config.manholePasswords):
        if path is not None and not os.path.exists(path):
            log.warn(
                "admin console: {path} does not exist (yet): nobody logs in with it until it does",
                path=path,
            )
    passwords = config.manholePasswords
    if passwords is not None and os.path.exists(passwords):
        if stat.S_IMODE(os.stat(passwords).st_mode) & 0o077:
            log.warn(
                "admin console: the password file {path} is readable by others; chmod 600 it",
                path=passwords,
            )
    return ManholeService(
        reactor, config.manhole, makePortal(relay, config, reactor), config.stateDir
    )
