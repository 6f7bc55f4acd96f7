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

import resource
import secrets
import signal
import sys
from ipaddress import ip_address
from typing import Any, Dict, List, Optional, TextIO

import attr
from twisted.application.service import IProcess
from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.filepath import FilePath
from twisted.python.logfile import LogFile

from turnrelay.config import SETTINGS, ConfigError, RelayConfig, buildConfig, loadConfigFile
from turnrelay.logs import Logger
from turnrelay.service import RelayService, makeRelayService
from turnrelay.transports.tls import fingerprint, loadCertificateOptions, makeSelfSignedCertificate
from turnrelay.turn.descriptors import descriptorLimit

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

    def postOptions(self) -> None:
        try:
            self.config = self.loadConfig()
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
        return config
    password = secrets.token_urlsafe(12)
    listener = config.listeners[0]
    try_ = (
        f"turnutils_peer -L 127.0.0.1 -p 3480 &  turnutils_uclient -u demo -w {password} "
        f"-p {listener.port} -e 127.0.0.1 -r 3480 {listener.interface}"
    )
    if not config.allowLoopbackPeers:
        # The default policy refuses loopback peers, this demo's included.
        try_ = f"(restart with --allow-loopback-peers to relay to loopback peers)\n  {try_}"
    print(
        f"turnrelay demo: no users or secrets are configured, so this run accepts\n"
        f"  user 'demo' with password {password!r}   (loopback only; realm {config.realm!r})\n"
        f"  try: {try_}",
        file=out,
        flush=True,
    )
    return attr.evolve(config, users=(("demo", password),))


def _withDemoCertificate(config: RelayConfig, out: TextIO) -> RelayConfig:
    if config.tlsCert is not None or not any(ls.transport == "tls" for ls in config.listeners):
        return config
    directory = FilePath(config.stateDir).child("tls")
    cert, key = directory.child("demo-cert.pem"), directory.child("demo-key.pem")
    if not (cert.exists() and key.exists()):
        makeSelfSignedCertificate(cert.path, key.path)
    certificate = loadCertificateOptions(cert, key)[1]
    print(
        f"turnrelay demo: tls listeners use the self-signed certificate {cert.path}\n"
        f"  SHA-256 fingerprint {fingerprint(certificate)}",
        file=out,
        flush=True,
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


class TwistdRelayService(RelayService):
    """
    The relay as twistd runs it.

    twistd makes the service L{makeService} returns the child of its
    application, then starts logging: to the application's
    L{ILogObserver} component if it has one.  So when made a child of an
    application and given a C{logFileName}, this service gives the
    application an observer writing twistd's text format to a L{LogFile}
    bounded by C{log-max-bytes} and C{log-max-files}.

    @ivar logFileName: the file twistd would log to, or L{None}.
    @ivar logFile: the bounded log file, once the observer is set up.
    """

    logFileName: Optional[str] = None
    logFile: Optional[LogFile] = None

    def setServiceParent(self, parent: Any) -> None:
        if (
            self.logFileName is not None
            and isinstance(parent, Componentized)
            and IProcess(parent, None) is not None
        ):
            path = FilePath(self.logFileName)
            self.logFile = LogFile(
                path.basename(),
                path.dirname(),
                rotateLength=self.config.logMaxBytes,
                maxRotatedFiles=self.config.logMaxFiles,
            )
            # A LogFile is a text-accepting file, whatever its stub says.
            logFile: Any = self.logFile
            parent.setComponent(ILogObserver, textFileLogObserver(logFile))
        super().setServiceParent(parent)


def makeService(
    options: Options, reactor: Optional[Any] = None, out: TextIO = sys.stdout
) -> RelayService:
    """
    Build the relay twistd runs.

    @param reactor: for tests; twistd's global reactor by default.
    @param out: where the demo credential is printed.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    config = _demoDefaults(options.config, out)
    try:
        relay = makeRelayService(config, reactor, TwistdRelayService)
    except (ConfigError, ValueError) as e:
        raise usage.UsageError(str(e)) from None
    assert isinstance(relay, TwistdRelayService)
    relay.logFileName = twistdLogFile(options)
    # twistd may own signals and process limits; the library may not.  Only
    # once the reactor runs, so that building the service has no side effect.
    reactor.addSystemEventTrigger("before", "startup", raiseDescriptorLimit, relay)
    reactor.addSystemEventTrigger("after", "startup", _handleSignals, reactor, relay, options)
    return relay


def raiseDescriptorLimit(relay: RelayService) -> None:
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
    descriptors = relay.server.descriptors
    if descriptors is not None:
        descriptors.limit = descriptorLimit()


def _handleSignals(reactor: Any, relay: RelayService, options: Options) -> None:
    """
    SIGHUP: re-read the configuration file and the TLS certificate, and put
    what can change in force.  SIGUSR2: drain, then exit.  (SIGTERM is
    twistd's: the relay stops, logging every allocation's usage.)  SIGUSR1,
    as under twistd's own log file: rotate the log file.
    """

    def reload() -> None:
        _log.info("SIGHUP: reloading the configuration and the TLS certificate")
        try:
            config = options.loadConfig()
        except ConfigError as e:
            _log.error("configuration not reloaded, nothing changed: {reason}", reason=str(e))
            return
        if not (config.users or config.authSecrets):
            # Keep the demo user a loopback-only start made up.
            config = attr.evolve(config, users=relay.config.users)
        if config.tlsCert is None:
            config = attr.evolve(config, tlsCert=relay.config.tlsCert, tlsKey=relay.config.tlsKey)
        relay.reloadConfig(config)

    def drain() -> None:
        _log.info("SIGUSR2: draining, then exiting")
        relay.drain().addCallback(lambda _: reactor.stop())

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    logFile = getattr(relay, "logFile", None)
    if logFile is not None:
        signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(logFile.rotate))
    signal.signal(signal.SIGUSR2, lambda signum, frame: reactor.callFromThread(drain))
