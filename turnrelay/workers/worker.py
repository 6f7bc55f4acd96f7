# -*- test-case-name: tests.test_workers -*-
"""
A worker process: C{python -m turnrelay.workers.worker}, started by its
control process (L{turnrelay.workers.supervisor}) and by nothing else.

It reads its L{WorkerSpec} from standard input, serves the listening sockets
it inherited with a relay of its own (UDP, TCP and TLS sharing one
allocation registry, as a single-process relay does), asks the control
process before every allocation (L{Reserve}), answers its commands on the
socket pair at descriptor L{CHANNEL_FD}, and writes its log to standard
output as JSON lines, which the control process puts in its own log.  It
exits when the control process goes away.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from typing import Any, Dict, List, Optional, Tuple

import attr
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import FileLogObserver, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from turnrelay.admin.console import AdminConsole
from turnrelay.admin.control import ControlProtocol
from turnrelay.admin.metrics import makeMetricsRegistry
from turnrelay.config import RelayConfig
from turnrelay.interfaces import IAllocationQuota
from turnrelay.logs import Logger, formatJSONLine, processLevels
from turnrelay.service import RelayService, makeRelayService
from turnrelay.workers.protocol import (
    CHANNEL_FD,
    Metrics,
    Ready,
    Reconfigure,
    Release,
    Reserve,
    WorkerSpec,
)


def relayPortSlice(config: RelayConfig, index: int, count: int) -> Tuple[int, int]:
    """
    The first and last relay port worker C{index} of C{count} binds: the
    I{index}-th of C{count} equal slices of C{min-port}-C{max-port}, so
    that no two workers ever bind the same relay port, UDP or RFC 6062 TCP.
    """
    ports = config.maxPort - config.minPort + 1
    low = config.minPort + ports * index // count
    high = config.minPort + ports * (index + 1) // count - 1
    return low, high


def workerConfig(config: RelayConfig) -> RelayConfig:
    """
    A worker's configuration: the relay's, without the services the
    control process holds for all workers.
    """
    return attr.evolve(
        config,
        workers=1,
        manhole=None,
        metrics=None,
        credentialsEndpoint=None,
        demoPage=None,
        controlSocket=None,
    )


@implementer(IAllocationQuota)
class SharedQuota:
    """
    The quotas of all workers, held by the control process and asked over
    the worker's channel.
    """

    def __init__(self, channel: WorkerChannel) -> None:
        self._channel = channel

    def reserve(self, username: str) -> Deferred[bool]:
        asked = self._channel.callRemote(Reserve, username=username)
        return asked.addCallback(lambda answer: bool(answer["granted"]))

    def release(self, username: str) -> None:
        self._channel.callRemote(Release, username=username)


class WorkerChannel(ControlProtocol):
    """
    The worker's end of its channel: the control socket's commands,
    answered for this worker's relay, and the worker's own.
    """

    def __init__(self, relay: RelayService, index: int, count: int, reactor: Any) -> None:
        super().__init__(relay, AdminConsole(relay, reactor))
        self._index = index
        self._count = count
        self._reactor = reactor
        self._metrics = makeMetricsRegistry(relay)

    def _logCommand(self, command: str, **fields: Any) -> None:
        # The control process logs the command once, for every worker.
        pass

    @Reconfigure.responder
    def reconfigure(self, config: RelayConfig) -> Dict[str, List[str]]:
        return {"needRestart": self._relay.reloadConfig(config)}

    @Metrics.responder
    def metrics(self) -> Dict[str, str]:
        from prometheus_client import generate_latest

        return {"text": generate_latest(self._metrics).decode("utf-8")}

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        super().connectionLost(reason)
        # The control process is gone: no one is left to steer clients
        # here, keep the quotas or restart us.
        if self._reactor.running:
            self._reactor.stop()


def run(spec: WorkerSpec, reactor: Any) -> None:
    """
    Build and start the worker's relay and its channel, on a reactor that
    is about to run.
    """
    relay = makeRelayService(
        spec.config,
        reactor,
        logLevels=processLevels,
        inherited=spec.listeners,
        relayPorts=spec.relayPorts,
    )
    channel = WorkerChannel(relay, spec.index, spec.count, reactor)
    relay.server.sharedQuota = SharedQuota(channel)
    log = Logger("turnrelay.workers.worker")

    def started() -> None:
        relay.startService()
        reactor.adoptStreamConnection(
            CHANNEL_FD, socket.AF_UNIX, Factory.forProtocol(lambda: channel)
        )
        channel.callRemote(Ready, pid=os.getpid())
        log.info(
            "worker {worker} serving, relay ports {low}-{high}",
            worker=spec.index,
            low=spec.relayPorts[0],
            high=spec.relayPorts[1],
        )

    def stopping() -> Optional[Deferred[Any]]:
        return relay.stopService()

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)


def main() -> None:
    """
    The worker process: read the spec, log JSON lines to standard output,
    relay until told to stop (SIGTERM) or until the control process is gone.
    """
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    _dieWithParent()
    processLevels.setLevel(spec.config.logLevel)
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, formatJSONLine)], redirectStandardIO=False
    )
    from twisted.internet import reactor as globalReactor

    reactor: Any = globalReactor
    run(spec, reactor)
    # The control process decides when a worker stops (SIGTERM from it, or
    # its channel closing): Ctrl-C in a terminal reaches every process of
    # the group, and the control process must see its workers stop as
    # asked, not die.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda number, frame: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)


def _dieWithParent() -> None:
    # Linux: should the control process be killed outright, the kernel
    # ends its workers too (the channel's closing would, a moment later).
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    main()
