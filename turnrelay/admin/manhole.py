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
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import IService
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.ssh.keys import BadKeyError, FingerprintFormats, Key
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger as _TwistedLogger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from turnrelay.config import ConfigError, ListenerConfig, RelayConfig
from turnrelay.listening import ListeningService
from turnrelay.logs import Logger, LogLevels

if TYPE_CHECKING:
    from turnrelay.admin import _sshsession

HOST_KEY_NAME = "ssh_host_ed25519_key"

BANNER = b"turnrelay admin console: help() lists what is here; Ctrl-D ends the session."

NO_COMMANDS = (
    b"The turnrelay admin console runs no commands; pipe them in instead:\r\n"
    b"  echo 'print(stats())' | ssh -tt -p PORT USER@HOST\r\n"
)

# What starts an authorized_keys line that has no options: a key type.
_KEY_TYPE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)$")


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


def _readCredentials(path: FilePath[str], what: str, log: _TwistedLogger) -> Optional[bytes]:
    """
    Read a file of console credentials, which is read again at each login.

    @param what: what it is, for the warning when it cannot be read.
    @param log: where that warning goes.
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

    def __init__(self, path: str, logLevels: Optional[LogLevels] = None) -> None:
        """
        @param logLevels: the relay's log levels.
        """
        self.path = FilePath(path)
        self.logLevels = logLevels

    def getAuthorizedKeys(self, avatarId: bytes) -> List[Key]:
        """
        @param avatarId: the username logging in; every key in the file is
            valid for every username.
        @return: the keys in the file now.
        """
        content = _readCredentials(self.path, "authorized keys", self.log)
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

    def __init__(self, path: str, logLevels: Optional[LogLevels] = None) -> None:
        """
        @param logLevels: the relay's log levels.
        """
        self.path = FilePath(path)
        self.logLevels = logLevels

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
        content = _readCredentials(self.path, "the password file", self.log)
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


def loadHostKey(directory: FilePath[str], log: _TwistedLogger) -> Key:
    """
    The console's SSH host key: read from C{directory}, or made there (an
    ed25519 key, mode 0600, with its C{.pub} beside it) if there is none
    yet.

    @param log: where making it, and a key file others can read, are told.
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


# The console's SSH session classes subclass conch classes whose modules
# install the default reactor when imported: they live in a private module,
# imported when a console starts, so that importing turnrelay installs none.
_SESSION_NAMES = frozenset(
    {
        "ConsoleInterpreter",
        "ConsoleManhole",
        "ConsoleSession",
        "ConsoleRealm",
        "ConsoleUserAuth",
        "ConsoleConnection",
        "ConsoleServerTransport",
        "ConsoleSSHFactory",
    }
)


def __getattr__(name: str) -> Any:
    # PEP 562: the session classes, loaded on first use.
    if name in _SESSION_NAMES:
        from turnrelay.admin import _sshsession

        return getattr(_sshsession, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        self.factory: Optional[_sshsession.ConsoleSSHFactory] = None

    def listen(self) -> IListeningPort:
        # The host key is made here, not when the service is built: twistd
        # starts services after dropping privileges, so the key belongs to
        # the user that reads it.
        from turnrelay.admin._sshsession import ConsoleSSHFactory

        self.hostKey = loadHostKey(self._keyDirectory, self.log)
        self.factory = ConsoleSSHFactory(self.portal, self.hostKey, self._reactor, self.logLevels)
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
    from turnrelay.admin._sshsession import ConsoleRealm

    realm = ConsoleRealm(relay.adminConsole(reactor), reactor)
    checkers: List[ICredentialsChecker] = []
    if config.manholeAuthorizedKeys is not None:
        keys = AuthorizedKeysFile(config.manholeAuthorizedKeys, relay.logLevels)
        checkers.append(SSHPublicKeyChecker(keys))
    if config.manholePasswords is not None:
        checkers.append(PasswordFile(config.manholePasswords, relay.logLevels))
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
    log = relay.logLevels.logger(__name__)
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
