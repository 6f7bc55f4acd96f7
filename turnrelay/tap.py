# -*- test-case-name: tests.test_tap -*-
"""
twistd wiring: C{twistd -n turnrelay [options]}.

The options are generated from the settings L{turnrelay.config.RelayConfig}
declares (L{turnrelay.config.SETTINGS}), so every setting has one name on the
command line and in the configuration file, and C{--help} shows its real
default.

When twistd logs to a file (C{--logfile}, or C{twistd.log} when it
daemonizes), its own L{LogFile} would keep every rotated 1 MB file for ever:
L{TwistdRelayService} gives twistd a log observer writing in the same format
to a L{LogFile} rotated at C{log-max-bytes} that keeps C{log-max-files}
rotated files.
"""

from __future__ import annotations

import functools
import io
import os
import platform
import resource
import secrets
import signal
import sys
from ipaddress import ip_address
from typing import Any, Dict, List, NoReturn, Optional, Sequence, TextIO, Union, cast

import attr
from twisted.application.service import IProcess
from twisted.copyright import version as twistedVersion
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.filepath import FilePath
from twisted.python.logfile import LogFile

from turnrelay import __version__
from turnrelay.config import SETTINGS, ConfigError, RelayConfig, buildConfig, loadConfigFile
from turnrelay.logs import Logger, makeLogObserver, printNotice, processLevels
from turnrelay.service import RelayService, makeRelayService
from turnrelay.systemd import notifySystemd
from turnrelay.transports.tls import fingerprint, loadCertificateOptions, makeSelfSignedCertificate
from turnrelay.turn.descriptors import descriptorLimit
from turnrelay.workers.supervisor import WorkerGroup

# The most descriptors twistd raises its soft limit to.
MAX_DESCRIPTORS = 1 << 20

_log = Logger()


class Options(usage.Options):
    """
    The command line of C{twistd turnrelay}.

    @ivar config: the validated L{RelayConfig}, after parsing.
    """

    synopsis = "[options]"
    longdesc = (
        "A TURN relay (RFC 8656) and STUN server (RFC 8489).  Without options it "
        "listens on loopback only (see --listen).  Settings may also come from a "
        "TOML file (--config); the command line overrides the file."
    )
    optParameters: List[List[Any]] = [
        ["config", "c", None, "Read settings from this TOML file (see conf/turnrelay.conf)."]
    ] + [
        [setting.name, None, None, setting.optionHelp()]
        for setting in SETTINGS
        if not (setting.repeatable or setting.flag)
    ]
    optFlags: List[List[Any]] = [
        [setting.name, None, setting.optionHelp()] for setting in SETTINGS if setting.flag
    ]

    def __init__(self) -> None:
        super().__init__()
        self.repeated: Dict[str, List[str]] = {}
        self.config = RelayConfig()

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        """
        Parse the command line.  Under twistd (with a C{parent}), a usage
        error ends the process with one line on standard error and status
        1 rather than twistd's full C{--help} followed by the error.

        @raise usage.UsageError: a bad option, when not under twistd.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            message = str(e)
            # ConfigError (converted by postOptions) says what is expected;
            # getopt's own errors ("option --x not recognized") do not.
            if not isinstance(e.__context__, ConfigError):
                message += "; `twistd turnrelay --help` lists the options"
            exitOnStartupFailure(self, message)

    def opt_version(self) -> NoReturn:
        """
        Display turnrelay's version (and Twisted's and Python's) and exit.
        """
        print(versionLine())
        sys.exit(0)

    def postOptions(self) -> None:
        try:
            self.config = self.loadConfig()
            if self.config.controlSocket is not None:
                # Said here, as one line: twistd shows a traceback for what
                # makeService raises.
                from turnrelay.admin.control import checkSocketPath

                checkSocketPath(self.config.controlSocket)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def loadConfig(self) -> RelayConfig:
        """
        Read the configuration file, if any, and put the command line over
        it: at start, and again on SIGHUP.

        @raise ConfigError: a bad setting.
        """
        values: Dict[str, Any] = {}
        if self["config"] is not None:
            values.update(loadConfigFile(self["config"]))
        for setting in SETTINGS:
            if setting.repeatable:
                if setting.name in self.repeated:
                    values[setting.name] = self.repeated[setting.name]
            elif setting.flag:
                if self[setting.name]:
                    values[setting.name] = True
            elif self[setting.name] is not None:
                values[setting.name] = self[setting.name]
        return buildConfig(values)


def _repeatable(name: str, help: str) -> Any:
    def opt(self: Options, value: str) -> None:
        self.repeated.setdefault(name, []).append(value)

    opt.__doc__ = help
    return opt


for _setting in SETTINGS:
    if _setting.repeatable:
        setattr(
            Options,
            "opt_" + _setting.name.replace("-", "_"),
            _repeatable(_setting.name, _setting.optionHelp()),
        )


def _demoDefaults(config: RelayConfig, out: TextIO) -> RelayConfig:
    """
    On a loopback-only server, make the demo usable at once: a self-signed
    certificate for tls listeners without one, and a made-up user when
    none is configured.  What a user needs is printed to the terminal, not
    the log: logs must hold no secrets.
    """
    if not all(ip_address(listener.interface).is_loopback for listener in config.listeners):
        return config
    config = _withDemoCertificate(config, out)
    if config.users or config.authSecrets:
        return _withDemoPage(config, out, makeSecret=False)
    # Hex digits: never read as a 0x key, never taken for an option when
    # pasted after -w.
    password = secrets.token_hex(12)
    listener = config.listeners[0]
    try_ = (
        f"turnutils_peer -L 127.0.0.1 -p 3480 &  turnutils_uclient -u demo -w {password} "
        f"-p {listener.port} -e 127.0.0.1 -r 3480 {listener.interface}"
    )
    if not config.allowLoopbackPeers:
        # The default policy refuses loopback peers, this demo's included.
        try_ = f"(restart with --allow-loopback-peers to relay to loopback peers)\n  {try_}"
    printNotice(
        out,
        f"turnrelay demo: no users or secrets are configured, so this run accepts\n"
        f"  user 'demo' with password {password!r}   (loopback only; realm {config.realm!r})\n"
        f"  try: {try_}",
        config.logFormat,
    )
    return _withDemoPage(attr.evolve(config, users=(("demo", password),)), out, makeSecret=True)


def _withDemoPage(config: RelayConfig, out: TextIO, makeSecret: bool) -> RelayConfig:
    """
    Print where the demo page is (C{demo-page}, which C{make run} sets),
    and give it a made-up static-auth-secret to mint its credentials with
    when C{makeSecret} (no credentials are configured).  The secret is
    never printed: the page is the only one to use it.
    """
    if config.demoPage is None:
        return config
    host = config.demoPage.interface
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{config.demoPage.port}/"
    if makeSecret:
        config = attr.evolve(config, authSecrets=(secrets.token_urlsafe(24),))
    elif not config.authSecrets:
        url += "  (it needs a static-auth-secret to mint credentials: none is configured)"
    printNotice(
        out,
        f"turnrelay demo: open {url} in a browser on this machine\n"
        f"  for a relay-only WebRTC call through this relay (udp, tcp or turns)",
        config.logFormat,
    )
    return config


def _withDemoCertificate(config: RelayConfig, out: TextIO) -> RelayConfig:
    if config.tlsCert is not None or not any(ls.transport == "tls" for ls in config.listeners):
        return config
    directory = FilePath(config.stateDir).child("tls")
    cert, key = directory.child("demo-cert.pem"), directory.child("demo-key.pem")
    if not (cert.exists() and key.exists()):
        makeSelfSignedCertificate(cert.path, key.path)
    certificate = loadCertificateOptions(cert, key)[1]
    printNotice(
        out,
        f"turnrelay demo: tls listeners use the self-signed certificate {cert.path}\n"
        f"  SHA-256 fingerprint {fingerprint(certificate)}",
        config.logFormat,
    )
    return attr.evolve(config, tlsCert=cert.path, tlsKey=key.path)


def twistdLogFile(options: Options) -> Optional[str]:
    """
    The file twistd will log to, from its own options (C{options.parent}).

    @return: the file's name, or L{None} when twistd logs elsewhere (standard
        output with C{--nodaemon} and no C{--logfile} or C{--logfile=-},
        syslog, a C{--logger}) or when these options are not twistd's.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    if parent.get("logger") or parent.get("syslog"):
        return None
    name: Optional[str] = parent.get("logfile")
    if name == "-":
        return None
    if not name:
        return None if parent.get("nodaemon") else "twistd.log"
    return name


def versionLine() -> str:
    """
    @return: what C{--version} prints: turnrelay's version, then Twisted's
        and Python's.
    """
    python = platform.python_version()
    return f"turnrelay {__version__} (Twisted {twistedVersion}, Python {python})"


def startupErrorMessage(error: BaseException, config: RelayConfig) -> Optional[str]:
    """
    Say, in one line, why the relay could not start and what to do, for
    the failures an operator causes (a bad setting, a socket that cannot be
    opened, a file that cannot be read or written).

    @return: the line, or L{None} for anything else (a bug, which keeps its
        traceback).
    """
    if isinstance(error, (ConfigError, usage.UsageError, CannotListenError, ValueError)):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        path = os.path.abspath(os.fsdecode(error.filename))
        stateDir = os.path.abspath(config.stateDir)
        if path == stateDir or path.startswith(stateDir + os.sep):
            return (
                f"state-dir {config.stateDir}: cannot write {path}: {error.strerror}; make it"
                f" a directory the relay's user can write, or set state-dir to one"
            )
        return f"{path}: {error.strerror}; fix the path, or its permissions for the relay's user"
    return None


def exitOnStartupFailure(options: usage.Options, message: str) -> NoReturn:
    """
    End twistd because the relay cannot start: C{message} (one line) on
    standard error, no traceback, no usage text, exit status 1.

    Daemonizing, twistd's first process waits for its daemon to report on
    the status pipe, and prints what it reads: the message goes there, and
    to the log file.  A pid file the process wrote is removed.
    """
    parent: Any = getattr(options, "parent", None) or {}
    message = " ".join(message.split())
    statusPipe = parent.get("statusPipe")
    if statusPipe is not None:
        _log.critical("cannot start: {reason}", reason=message)
        # twistd reads 100 bytes: "1 " and the message.
        os.write(statusPipe, b"1 " + message.encode("utf-8", "replace")[:98])
        os.close(statusPipe)
        parent["statusPipe"] = None
    else:
        if not twistdLogsToStandardOutput(options):  # type: ignore[arg-type]
            # Also in the log file, once logging has begun (it is dropped
            # before, at no loss: the message is on standard error).
            _log.critical("cannot start: {reason}", reason=message)
        # In the format of the log, as the demo banner is: a pipeline
        # reading JSON lines gets one for this too.
        config = getattr(options, "config", None)
        logFormat = getattr(config, "logFormat", "text")
        printNotice(sys.__stderr__ or sys.stderr, f"turnrelay: {message}", logFormat, "error")
    pidfile = parent.get("pidfile")
    if pidfile:
        try:
            with open(pidfile) as f:
                ours = f.read().strip() == str(os.getpid())
            if ours:
                os.unlink(pidfile)
        except (OSError, ValueError):
            pass
    raise SystemExit(1)


def twistdLogsToStandardOutput(options: Options) -> bool:
    """
    Whether twistd will log to standard output (C{--nodaemon} without a
    C{--logfile}, or C{--logfile=-}), with no C{--logger} or syslog.
    """
    parent = getattr(options, "parent", None)
    if parent is None or parent.get("logger") or parent.get("syslog"):
        return False
    name = parent.get("logfile")
    return name == "-" or (not name and bool(parent.get("nodaemon")))


class TwistdProcess:
    """
    What twistd's relay process does besides relaying, whether it relays
    itself (L{TwistdRelayService}) or runs workers (L{TwistdWorkerGroup}).

    twistd makes the service L{makeService} returns the child of its
    application, then starts logging: to the application's
    L{ILogObserver} component if it has one.  So when made a child of an
    application and given a C{logFileName}, this service gives the
    application an observer writing C{log-format} (text or JSON lines) to a
    L{LogFile} bounded by C{log-max-bytes} and C{log-max-files}; logging to
    standard output in JSON, an observer writing JSON lines there.

    @ivar logFileName: the file twistd would log to, or L{None}.
    @ivar logToStandardOutput: whether twistd would log to standard output.
    @ivar logFile: the bounded log file, once the observer is set up.
    """

    config: RelayConfig
    logFileName: Optional[str] = None
    logFile: Optional[LogFile] = None
    logToStandardOutput = False
    notices = ""
    noticesOutput: Optional[TextIO] = None
    twistdOptions: Optional[Options] = None
    configSource: Optional[Any] = None

    def startService(self) -> None:
        """
        Start listening; then print the demo notices (the made-up user's
        password), which are good only once every listener is bound.  Under
        twistd (L{twistdOptions} set), a failure an operator can fix ends
        the process with one line (see L{startupErrorMessage}).
        """
        try:
            super().startService()  # type: ignore[misc]
        except (CannotListenError, ConfigError, OSError) as e:
            message = startupErrorMessage(e, self.config)
            if self.twistdOptions is None or message is None:
                raise
            exitOnStartupFailure(self.twistdOptions, message)
        if self.notices and self.noticesOutput is not None:
            self.noticesOutput.write(self.notices)
            self.noticesOutput.flush()

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and IProcess(parent, None) is not None:
            observer = self._logObserver()
            if observer is not None:
                parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)  # type: ignore[misc]

    def _logObserver(self) -> Optional[ILogObserver]:
        """
        The observer twistd is to log to, in C{log-format}: to the bounded
        log file, or to standard output in JSON; L{None} to leave twistd's
        own (text on standard output, syslog, a C{--logger}).
        """
        logFormat = self.config.logFormat
        if self.logFileName is not None:
            path = FilePath(self.logFileName)
            self.logFile = LogFile(
                path.basename(),
                path.dirname(),
                rotateLength=self.config.logMaxBytes,
                maxRotatedFiles=self.config.logMaxFiles,
            )
            # A LogFile is a text-accepting file, whatever its stub says.
            logFile: Any = self.logFile
            return makeLogObserver(logFormat, logFile)
        if self.logToStandardOutput and logFormat != "text":
            return makeLogObserver(logFormat, sys.stdout)
        return None


class TwistdRelayService(TwistdProcess, RelayService):
    """
    The relay as twistd runs it, in its own process (C{workers = 1}).
    """


class TwistdWorkerGroup(TwistdProcess, WorkerGroup):
    """
    The control process of C{--workers N} as twistd runs it.
    """


def makeService(
    options: Options, reactor: Optional[Any] = None, out: TextIO = sys.stdout
) -> Union[TwistdRelayService, TwistdWorkerGroup]:
    """
    Build the relay twistd runs.

    Under twistd (C{options.parent} set), what stops the relay from being
    built ends the process with one line (see L{exitOnStartupFailure}).

    @param reactor: for tests; twistd's global reactor by default.
    @param out: where the demo credential is printed, once the relay has
        started listening.
    @raise usage.UsageError: a bad setting, not under twistd.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    # The demo notices wait in a buffer: a password is worth printing only
    # once the listeners are bound (TwistdRelayService.startService).
    notices = io.StringIO()
    try:
        config = _demoDefaults(options.config, notices)
        relay: Union[TwistdRelayService, TwistdWorkerGroup]
        if config.workers > 1:
            relay = TwistdWorkerGroup(config, reactor)
        else:
            # Under twistd the relay is the process: its levels are the
            # process's, those of start-up and systemd notification too.
            relay = cast(
                TwistdRelayService,
                makeRelayService(config, reactor, TwistdRelayService, logLevels=processLevels),
            )
    except (ConfigError, ValueError, OSError) as e:
        message = startupErrorMessage(e, options.config)
        if message is None:
            raise
        if getattr(options, "parent", None) is not None:
            exitOnStartupFailure(options, message)
        if isinstance(e, OSError):
            raise
        raise usage.UsageError(message) from None
    relay.notices, relay.noticesOutput = notices.getvalue(), out
    if getattr(options, "parent", None) is not None:
        relay.twistdOptions = options
    relay.logFileName = twistdLogFile(options)
    relay.configSource = functools.partial(reloadedConfig, relay, options)
    relay.logToStandardOutput = twistdLogsToStandardOutput(options)
    # twistd may own signals and process limits; the library may not.  Only
    # once the reactor runs, so that building the service has no side effect.
    reactor.addSystemEventTrigger("before", "startup", raiseDescriptorLimit, relay)
    reactor.addSystemEventTrigger("after", "startup", _handleSignals, reactor, relay, options)
    # READY=1 and the watchdog, under systemd's Type=notify: the services,
    # and so the listeners, were started before the reactor runs.
    if isinstance(relay, WorkerGroup):
        # Ready once every worker serves.
        reactor.addSystemEventTrigger(
            "during",
            "startup",
            lambda: relay.whenAllReady().addCallback(lambda _: notifySystemd(reactor, relay)),
        )
    else:
        reactor.addSystemEventTrigger("during", "startup", notifySystemd, reactor, relay)
    return relay


def raiseDescriptorLimit(relay: Any) -> None:
    """
    Raise the process's soft limit on open descriptors to its hard limit
    (capped at L{MAX_DESCRIPTORS}), as servers that hold a socket per client
    do, and size the relay's descriptor budget to it.  A shell's soft limit
    (often 1024) would otherwise cap the relay at a few hundred clients
    while the system allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as e:
            _log.warn(
                "could not raise the descriptor limit from {soft}: {error}", soft=soft, error=e
            )
        else:
            _log.info("descriptor limit raised from {soft} to {limit}", soft=soft, limit=wanted)
    # Workers inherit the raised limit; a relay in this process sizes its
    # budget to it.
    descriptors = getattr(getattr(relay, "server", None), "descriptors", None)
    if descriptors is not None:
        descriptors.limit = descriptorLimit()


def reloadedConfig(relay: TwistdProcess, options: Options) -> RelayConfig:
    """
    The configuration a reload puts in force (SIGHUP, and the control
    socket's C{reload} through L{RelayService.configSource}): the file and
    the command line read again, keeping the demo user and demo certificate
    a loopback-only start made up.

    @raise ConfigError: a bad setting.
    """
    config = options.loadConfig()
    if not (config.users or config.authSecrets):
        # Keep the demo user (and the demo page's secret) a loopback-only
        # start made up.
        config = attr.evolve(config, users=relay.config.users, authSecrets=relay.config.authSecrets)
    if config.tlsCert is None:
        config = attr.evolve(config, tlsCert=relay.config.tlsCert, tlsKey=relay.config.tlsKey)
    return config


def _handleSignals(reactor: Any, relay: Any, options: Options) -> None:
    """
    SIGHUP: re-read the configuration file and the TLS certificate, and put
    what can change in force.  SIGUSR2: drain, then exit.  (SIGTERM is
    twistd's: the relay stops, logging every allocation's usage.)  SIGUSR1,
    as under twistd's own log file: rotate the log file.
    """

    def reload() -> None:
        _log.info("SIGHUP: reloading the configuration and the TLS certificate")
        try:
            config = reloadedConfig(relay, options)
        except ConfigError as e:
            _log.error("configuration not reloaded, nothing changed: {reason}", reason=str(e))
            return
        relay.reloadConfig(config)

    def drain() -> None:
        _log.info("SIGUSR2: draining, then exiting")
        relay.drain().addCallback(lambda _: reactor.stop())

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    logFile = getattr(relay, "logFile", None)
    if logFile is not None:
        signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(logFile.rotate))
    signal.signal(signal.SIGUSR2, lambda signum, frame: reactor.callFromThread(drain))
