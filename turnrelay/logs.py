# -*- test-case-name: tests.test_logs -*-
"""
turnrelay's log levels, one set per relay.

turnrelay logs through Twisted's global log publisher, like any Twisted
library, but filters its own events first, so that its debug events (one per
dropped datagram or refused request) cost nothing and show nowhere unless
asked for.  Each relay filters with its own L{LogLevels}, so that two relays
in one process, or a relay and its application, are set apart.  This
installs no observer: embedders' logging is untouched.

It also holds the two formats twistd's log is written in (C{log-format}):
Twisted's text lines, or one JSON object per line for log pipelines
(L{formatJSONLine}); L{turnrelay.tap} installs the observer.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any, Optional, Union

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger

LEVELS = ("debug", "info", "warn", "error", "critical")

# Other spellings of the levels, as other tools name them.
LEVEL_ALIASES = {"warning": "warn", "fatal": "critical", "err": "error"}

LOG_FORMATS = ("text", "json")

# The keys every JSON line has; an event field of the same name is written
# with a "field_" prefix instead.
_JSON_KEYS = ("time", "level", "message", "namespace", "traceback")
# What events of the legacy log (twisted.python.log, print()) carry besides.
_LEGACY_KEYS = ("format", "message", "isError", "system", "time", "failure", "why")


class LogLevels:
    """
    The level filter of one relay's log events, and the observer they pass
    through on their way to Twisted's global log publisher.

    Each relay built by L{makeRelayService
    <turnrelay.service.makeRelayService>} has its own, so that two relays in
    one process (or a relay and the application embedding it) are set apart:
    turning one relay's log to debug leaves the other's at its level.  Under
    twistd the relay is the process, and uses L{processLevels}.

    Objects log through their relay's levels by having a C{logLevels}
    attribute beside a L{Logger} class attribute.

    @ivar observer: where the relay's loggers send their events.
    """

    def __init__(self, publisher: ILogObserver = globalLogPublisher) -> None:
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
        self.observer: ILogObserver = FilteringLogObserver(publisher, [self._predicate])

    def setLevel(self, level: Union[str, LogLevel], namespace: str = "turnrelay") -> None:
        """
        Set the lowest level of events that pass.

        @param level: a L{LogLevel}, one of L{LEVELS} or an alias of one
            (L{LEVEL_ALIASES}: C{"warning"} is C{"warn"}).
        @param namespace: C{"turnrelay"}, or a module or class within it.
        @raise ValueError: an unknown level.
        """
        if isinstance(level, str):
            level = LogLevel.levelWithName(levelName(level))
        self._predicate.setLogLevelForNamespace(namespace, level)

    def level(self, namespace: str = "turnrelay") -> str:
        """
        @return: the name of the level in force for C{namespace}.
        """
        return self._predicate.logLevelForNamespace(namespace).name

    def logger(self, namespace: str, source: object = None) -> _TwistedLogger:
        """
        A logger sending through these levels, for code outside a class.
        """
        return _TwistedLogger(namespace, source, observer=self.observer)


processLevels = LogLevels()
"""
The levels of everything not part of a relay (twistd's start-up, systemd
notification), and of the relay twistd runs.
"""


class Logger(_TwistedLogger):
    """
    A L{twisted.logger.Logger} whose events pass a relay's level filter.

    Use it like Twisted's, as a class attribute: an instance's events pass
    through the L{LogLevels} in its C{logLevels} attribute, or
    L{processLevels} if it has none.  At module level it logs through
    L{processLevels}.
    """

    def __init__(
        self,
        namespace: Optional[str] = None,
        source: object = None,
        observer: Optional[ILogObserver] = None,
    ) -> None:
        if namespace is None:
            namespace = sys._getframe(1).f_globals["__name__"]
        super().__init__(namespace, source, observer or processLevels.observer)

    def __get__(self, instance: object, owner: Optional[type] = None) -> _TwistedLogger:
        assert owner is not None
        levels = getattr(instance, "logLevels", None)
        return _TwistedLogger(
            f"{owner.__module__}.{owner.__name__}",
            owner if instance is None else instance,
            observer=self.observer if levels is None else levels.observer,
        )


def setLogLevel(level: Union[str, LogLevel], namespace: str = "turnrelay") -> None:
    """
    Set a level in L{processLevels}: see L{LogLevels.setLevel}.
    """
    processLevels.setLevel(level, namespace)


def logLevel(namespace: str = "turnrelay") -> str:
    """
    @return: the level L{processLevels} has for C{namespace}.
    """
    return processLevels.level(namespace)


def levelName(text: str) -> str:
    """
    The level C{text} names, in any case, aliases included.

    @return: one of L{LEVELS}.
    @raise ValueError: an unknown level, naming the known ones.
    """
    name = text.strip().lower()
    name = LEVEL_ALIASES.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"log level {text!r}; expected one of {', '.join(LEVELS)}")
    return name


def formatJSONLine(event: LogEvent) -> str:
    """
    One event as one line of JSON, for log pipelines: C{time} (ISO 8601,
    UTC), C{level} (one of L{LEVELS}), C{message} (rendered), C{namespace},
    C{traceback} for a failure, then the event's own structured fields (an
    allocation's end carries its username, duration and the packets and
    bytes relayed each way).  Values JSON cannot hold are written as text.

    @return: the line, newline included; no record separator.
    """
    record: dict[str, Any] = {
        "time": _isoTime(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", "info"),
        "message": formatEvent(event),
        "namespace": event.get("log_namespace", "-"),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    legacy = "isError" in event
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            # Twisted's own bookkeeping, and the legacy log's copies of it.
            continue
        record["field_" + key if key in _JSON_KEYS else key] = value
    return json.dumps(record, default=str, ensure_ascii=False) + "\n"


def _isoTime(when: Optional[float]) -> str:
    if when is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def makeLogObserver(logFormat: str, output: IO[Any]) -> ILogObserver:
    """
    The observer writing twistd's log in C{log-format}.

    @param logFormat: one of L{LOG_FORMATS}: C{"text"} (Twisted's lines) or
        C{"json"} (L{formatJSONLine}).
    @param output: a text file: standard output, or a bounded
        L{LogFile<twisted.python.logfile.LogFile>}.
    """
    if logFormat == "json":
        return FileLogObserver(output, formatJSONLine)
    return textFileLogObserver(output)


def printNotice(output: IO[Any], text: str, logFormat: str, level: str = "info") -> None:
    """
    Show the operator something at start-up (the demo's credential, a
    start-up error) on C{output}, in the format of the log that shares it:
    as it is in text, or as one JSON line (C{notice} C{true}) in JSON, so
    that a pipeline reading standard output still gets one JSON object per
    line.  It is never sent to the log publisher: it may hold the demo's
    password, and logs hold no secrets.

    @param level: the JSON line's level, one of L{LEVELS}.
    """
    if logFormat == "json":
        event = {
            "log_time": _now(),
            "log_level": LogLevel.levelWithName(levelName(level)),
            "log_namespace": "turnrelay.notice",
            "log_format": "{log_text}",
            "log_text": text,
            "notice": True,
        }
        line = formatJSONLine(event)
    else:
        line = text if text.endswith("\n") else text + "\n"
    output.write(line)
    output.flush()


def _now() -> float:
    # Start-up notices are printed before any reactor runs.
    return datetime.datetime.now(datetime.UTC).timestamp()


def jsonLogObserver() -> ILogObserver:
    """
    A log observer writing L{formatJSONLine}'s lines to standard output:
    C{twistd --logger turnrelay.logs.jsonLogObserver turnrelay}.  The
    C{log-format = "json"} setting does the same without C{--logger}.
    """
    return makeLogObserver("json", sys.stdout)
