# -*- test-case-name: tests.test_systemd -*-
"""
Readiness, for systemd and for C{/healthz}.

A relay is ready when it runs, every listener it was configured with is
bound and it is not draining.  Under systemd's C{Type=notify} (the unit in
C{conf/turnrelay.service}), L{SystemdNotifier} sends C{READY=1} once the
listeners are bound, C{WATCHDOG=1} every half C{WatchdogSec=} while the
reactor turns, C{STOPPING=1} when stopping, and a C{STATUS=} line
systemctl shows (updated at the next ping when a drain begins).  It speaks
through C{sdnotify} (a small, dependency-free implementation of
C{sd_notify(3)}), not a socket client of our own.  Without
C{NOTIFY_SOCKET} in the environment it does nothing.

Only L{turnrelay.tap} starts it: a library embedding the relay owns its
process's notifications.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import sdnotify  # type: ignore[import-untyped]
from twisted.internet.task import LoopingCall

from turnrelay.logs import Logger

_log = Logger()


def whyNotReady(relay: Any) -> Optional[str]:
    """
    Whether a relay serves new clients.

    @param relay: a L{turnrelay.service.RelayService}.
    @return: L{None} when it is ready; else why not, in a few words:
        C{"not running"}, C{"draining"}, or the listener that is not bound.
    """
    reason: Optional[str] = relay.whyNotReady()
    return reason


class SystemdNotifier:
    """
    Tells systemd how the relay is doing, through C{NOTIFY_SOCKET}.

    @ivar watchdogInterval: seconds between C{WATCHDOG=1} pings (half
        C{WATCHDOG_USEC}), or L{None} when systemd watches nothing.
    """

    def __init__(self, reactor: Any, relay: Any) -> None:
        """
        Read C{NOTIFY_SOCKET}, C{WATCHDOG_USEC} and C{WATCHDOG_PID} from the
        environment (C{sdnotify} reads C{NOTIFY_SOCKET} itself).

        @param reactor: schedules the watchdog pings.
        @param relay: the L{turnrelay.service.RelayService} to report on.
        """
        environ = os.environ
        self._reactor = reactor
        self._relay = relay
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdogInterval: Optional[float] = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdogInterval = int(usec) / 2e6
        self._watchdog: Optional[LoopingCall] = None
        self._reason: Optional[str] = None

    def notify(self, state: str) -> None:
        """
        Send one notification (C{"READY=1"}, C{"STATUS=..."}); nothing
        without C{NOTIFY_SOCKET}.
        """
        if self._notifier is not None:
            self._notifier.notify(state)

    def started(self) -> None:
        """
        The reactor runs and the services are started: say C{READY=1} if
        every listener is bound (else say why not, and systemd's start
        timeout fails the unit), and start the watchdog pings.
        """
        if not self.enabled:
            return
        self._reason = reason = whyNotReady(self._relay)
        if reason is None:
            self.notify(f"READY=1\n{self._status(reason)}\nMAINPID={os.getpid()}")
            _log.info("told systemd the relay is ready")
        else:
            self.notify(self._status(reason))
        if self.watchdogInterval is not None and self._watchdog is None:
            self._watchdog = LoopingCall(self._ping)
            self._watchdog.clock = self._reactor
            self._watchdog.start(self.watchdogInterval, now=True)

    def _status(self, reason: Optional[str]) -> str:
        if reason is not None:
            return f"STATUS=not ready: {reason}"
        addresses = ", ".join(
            f"{transport} {address}" for transport, address in self._relay.listeningAddresses()
        )
        return f"STATUS=serving on {addresses}"

    def _ping(self) -> None:
        """
        C{WATCHDOG=1}; and a new C{STATUS=} when readiness changed (a drain
        began), which C{systemctl status} shows.
        """
        self.notify("WATCHDOG=1")
        reason = whyNotReady(self._relay)
        if reason != self._reason:
            self._reason = reason
            self.notify(self._status(reason))

    def stopping(self, status: str = "stopping") -> None:
        """
        Say C{STOPPING=1} (draining, or shutting down); the watchdog pings
        go on until the reactor stops.
        """
        self.notify(f"STOPPING=1\nSTATUS={status}")

    def stop(self) -> None:
        """
        Stop the watchdog pings.
        """
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None


def notifySystemd(reactor: Any, relay: Any) -> SystemdNotifier:
    """
    Start telling systemd about C{relay}: ready now (call it once the
    reactor runs), stopping at shutdown.

    @return: the notifier, for the drain to say C{STOPPING=1}.
    """
    notifier = SystemdNotifier(reactor, relay)
    if notifier.enabled:
        notifier.started()
        reactor.addSystemEventTrigger("before", "shutdown", notifier.stopping)
        reactor.addSystemEventTrigger("before", "shutdown", notifier.stop)
    return notifier
