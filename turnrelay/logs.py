# -*- test-case-name: tests.test_logs -*-
"""
turnrelay's own log level.

turnrelay logs through Twisted's global log publisher, like any Twisted
library, but filters its own events first, so that its debug events (one per
dropped datagram or refused request) cost nothing and show nowhere unless
asked for.  This installs no observer: embedders' logging is untouched, and
only the C{turnrelay} namespace is affected.
"""

from __future__ import annotations

import sys
from typing import Optional, Union

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger

LEVELS = ("debug", "info", "warn", "error", "critical")

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def Logger(namespace: Optional[str] = None) -> _TwistedLogger:
    """
    A L{twisted.logger.Logger} whose events pass turnrelay's level filter.

    Use it like Twisted's: as a class attribute (the namespace is the
    class's) or at module level (the namespace is the module's).
    """
    if namespace is None:
        namespace = sys._getframe(1).f_globals["__name__"]
    return _TwistedLogger(namespace, observer=_observer)


def setLogLevel(level: Union[str, LogLevel], namespace: str = "turnrelay") -> None:
    """
    Set the lowest level of turnrelay events that reach the log.

    @param level: a L{LogLevel} or one of L{LEVELS}.
    @param namespace: C{"turnrelay"}, or a module or class within it.
    @raise ValueError: an unknown level.
    """
    if isinstance(level, str):
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}; expected one of {', '.join(LEVELS)}")
        level = LogLevel.levelWithName(level)
    _levels.setLogLevelForNamespace(namespace, level)


def logLevel(namespace: str = "turnrelay") -> str:
    """
    @return: the name of the level in force for C{namespace}.
    """
    return _levels.logLevelForNamespace(namespace).name


def jsonLogObserver() -> ILogObserver:
    """
    A log observer writing one JSON object per event to standard output, for
    log pipelines: C{twistd --logger turnrelay.logs.jsonLogObserver turnrelay}.
    Each event keeps its structured fields (an allocation's end carries its
    username, duration and the packets and bytes relayed each way).
    """
    return jsonFileLogObserver(sys.stdout)
