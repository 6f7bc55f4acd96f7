# -*- test-case-name: tests.test_workers -*-
"""
The control process of C{--workers N}: it makes every listening socket,
starts the workers and restarts one that dies, and holds what is global.

Steering.  For each listener it makes one socket per worker in one
C{SO_REUSEPORT} group, with a program that picks the socket by a hash of the
client's address and port (L{turnrelay.workers.steering}), and keeps its own
copy of each: the group never changes, so a client's packets always reach
the same socket, and a restarted worker inherits the socket its predecessor
had, with the clients steered to it.  TCP connections stay with the worker
that accepted them.

Global state.  Per-user and total quotas are kept here (a L{QuotaLedger}),
asked by every worker's Allocate; a worker that dies has its allocations
counted as ended.  Drain, reload, TLS reload and the log level fan out to
every worker; the admin console, metrics, control socket, credentials
endpoint and demo page live here and see every worker.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

import turnrelay
from turnrelay.config import ConfigError, RelayConfig
from turnrelay.listening import ListenFailure
from turnrelay.logs import Logger, LogLevels, processLevels
from turnrelay.service import attachSideDoors, makeRelayService, mintFromConfig
from turnrelay.stun.address import TransportAddress
from turnrelay.workers.ledger import QuotaLedger
from turnrelay.workers.protocol import (
    CHANNEL_FD,
    Ready,
    Reconfigure,
    Release,
    Reserve,
    WorkerSpec,
)
from turnrelay.workers.steering import reuseportSockets
from turnrelay.workers.worker import relayPortSlice, workerConfig

# A worker that dies this soon after it started is failing at start-up:
# wait before the next attempt, longer each time, up to RESTART_DELAY_MAX.
QUICK_DEATH = 5.0
RESTART_DELAY_MAX = 10.0
# How long a stopping worker has to end its allocations before SIGKILL.
STOP_TIMEOUT = 10.0
# Seconds between looks at the allocations left while draining.
DRAIN_POLL_INTERVAL = 0.5


class ControlChannel(amp.AMP):
    """
    The control process's end of one worker's channel.
    """

    def __init__(self, group: WorkerGroup, worker: Worker) -> None:
        super().__init__()
        self._group = group
        self._worker = worker

    @Ready.responder
    def ready(self, pid: int) -> Dict[str, Any]:
        self._group.workerReady(self._worker)
        return {}

    @Reserve.responder
    def reserve(self, username: str) -> Dict[str, bool]:
        return {"granted": self._group.ledger.reserve(self._worker.index, username)}

    @Release.responder
    def release(self, username: str) -> Dict[str, Any]:
        self._group.ledger.release(self._worker.index, username)
        return {}


class Worker(ProcessProtocol):
    """
    One worker process, from its start to its end: a restart is a new
    L{Worker} with the same index.

    @ivar index: its number.
    @ivar channel: the control process's end of its channel, once open.
    @ivar ready: whether its listeners serve.
    @ivar startedAt: when it was started.
    """

    def __init__(self, group: WorkerGroup, index: int, startedAt: float) -> None:
        self._group = group
        self.index = index
        self.startedAt = startedAt
        self.channel: Optional[ControlChannel] = None
        self.ready = False
        self.ended: Deferred[None] = Deferred()
        self._lines = {1: b"", 2: b""}

    @property
    def pid(self) -> Optional[int]:
        return None if self.transport is None else self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        # Whole lines only: the worker's log is JSON lines (standard
        # output) or text before its logging started (standard error).
        lines = (self._lines.get(childFD, b"") + data).split(b"\n")
        self._lines[childFD] = lines.pop()
        for line in lines:
            if line.strip():
                self._group.workerLogged(self, line, fromStandardError=childFD == 2)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except Exception:
            pass  # it has exited already

    def processEnded(self, reason: Failure) -> None:
        self._group.workerEnded(self, reason)
        self.ended.callback(None)


class WorkerGroup(MultiService):
    """
    The control process: the relay as its admin services see it, made of
    C{config.workers} worker processes.

    @ivar config: the configuration in force.
    @ivar ledger: the quotas of all workers.
    @ivar workers: the current worker of each index.
    @ivar restarts: how many times a worker was restarted, by index.
    @ivar lost: allocations ended by their worker's death, by index.
    @ivar draining: whether new allocations are turned away.
    """

    log = Logger()

    def __init__(
        self,
        config: RelayConfig,
        reactor: Any,
        logLevels: LogLevels = processLevels,
        command: Sequence[str] = (sys.executable, "-m", "turnrelay.workers.worker"),
    ) -> None:
        """
        @param command: how to start a worker.
        """
        super().__init__()
        self.config = config
        self.logLevels = logLevels
        self._reactor = reactor
        self._command = list(command)
        self.ledger = QuotaLedger(config.userQuota, config.totalQuota)
        self.workers: List[Optional[Worker]] = [None] * config.workers
        self.restarts = [0] * config.workers
        self.lost = [0] * config.workers
        self._delays = [0.0] * config.workers
        self._restartTimers: Dict[int, IDelayedCall] = {}
        self._sockets: List[List[socket.socket]] = []
        self._stopping = False
        self._whenAllReady: List[Deferred[None]] = []
        self.draining = False
        self._drainArguments: Dict[str, float] = {}
        self.startedAt = reactor.seconds()
        self.configSource: Optional[Callable[[], RelayConfig]] = None
        # Built and thrown away: what would stop a worker from starting
        # (an unreadable certificate, a bad setting) stops this process
        # first, with one line.
        makeRelayService(workerConfig(config), reactor, logLevels=LogLevels())
        attachSideDoors(self, config, reactor)

    # Starting and stopping -------------------------------------------------------

    def startService(self) -> None:
        self._openSockets()
        super().startService()
        for index in range(len(self.workers)):
            self._start(index)
        self.log.info(
            "started {count} workers (turnrelay {version})",
            count=len(self.workers),
            version=turnrelay.__version__,
        )

    def _openSockets(self) -> None:
        count = len(self.workers)
        for listener in self.config.listeners:
            transport = "udp" if listener.transport == "udp" else "tcp"
            try:
                group = reuseportSockets(transport, listener.interface, listener.port, count)
            except OSError as e:
                self._closeSockets()
                error = CannotListenError(listener.interface, listener.port, e)
                raise ListenFailure(error, f"the {listener.transport} listener", "listen") from None
            self._sockets.append(group)

    def _closeSockets(self) -> None:
        for group in self._sockets:
            for sock in group:
                sock.close()
        self._sockets = []

    def _start(self, index: int) -> None:
        self._restartTimers.pop(index, None)
        inherited: Dict[int, int] = {}
        childFDs: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for listenerIndex, group in enumerate(self._sockets):
            fd = CHANNEL_FD + 1 + listenerIndex
            childFDs[fd] = group[index].fileno()
            inherited[listenerIndex] = fd
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        childFDs[CHANNEL_FD] = theirs.fileno()
        worker = Worker(self, index, self._reactor.seconds())
        spec = WorkerSpec(
            index,
            len(self.workers),
            workerConfig(self.config),
            inherited,
            relayPortSlice(self.config, index, len(self.workers)),
        )
        try:
            self._reactor.spawnProcess(
                worker,
                self._command[0],
                self._command,
                env=_workerEnvironment(),
                childFDs=childFDs,
            )
        finally:
            theirs.close()
        channel = ControlChannel(self, worker)
        worker.channel = channel
        self._reactor.adoptStreamConnection(
            ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: channel)
        )
        ours.close()
        self.workers[index] = worker
        worker.transport.writeToChild(0, pickle.dumps(spec))  # type: ignore[union-attr]
        worker.transport.closeChildFD(0)  # type: ignore[union-attr]

    def stopService(self) -> Deferred[Any]:
        self._stopping = True
        for timer in self._restartTimers.values():
            timer.cancel()
        self._restartTimers.clear()
        ending = []
        for worker in self.workers:
            if worker is not None:
                worker.signal("TERM")
                ending.append(worker.ended)
        killer = self._reactor.callLater(STOP_TIMEOUT, self._killAll)

        def stopped(_: Any) -> Any:
            if killer.active():
                killer.cancel()
            self._closeSockets()
            return MultiService.stopService(self)

        return DeferredList(ending).addCallback(stopped)

    def _killAll(self) -> None:
        for worker in self.workers:
            if worker is not None:
                self.log.warn(
                    "worker {worker} did not stop within {timeout} s: killed",
                    worker=worker.index,
                    timeout=STOP_TIMEOUT,
                )
                worker.signal("KILL")

    # What workers say ----------------------------------------------------------------

    def workerReady(self, worker: Worker) -> None:
        worker.ready = True
        self._delays[worker.index] = 0.0
        self.log.info("worker {worker} (pid {pid}) ready", worker=worker.index, pid=worker.pid)
        if self.draining:
            self.call(_drainCommand(), worker, **self._drainArguments)
        if self.allReady():
            waiting, self._whenAllReady = self._whenAllReady, []
            for waiter in waiting:
                waiter.callback(None)

    def workerEnded(self, worker: Worker, reason: Failure) -> None:
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        ended = self.ledger.workerGone(worker.index)
        if self._stopping:
            self.log.info("worker {worker} stopped", worker=worker.index)
            return
        lived = self._reactor.seconds() - worker.startedAt
        delay = self._delays[worker.index]
        if lived < QUICK_DEATH:
            self._delays[worker.index] = min(max(0.5, delay * 2), RESTART_DELAY_MAX)
        self.restarts[worker.index] += 1
        self.lost[worker.index] += ended
        self.log.error(
            "worker {worker} (pid {pid}) {how} after {lived:.1f} s: its {ended} allocations "
            "ended; restarting it{when}",
            worker=worker.index,
            pid=worker.pid,
            how=_describeExit(reason),
            lived=lived,
            ended=ended,
            when=f" in {delay:g} s" if delay else "",
        )
        self._restartTimers[worker.index] = self._reactor.callLater(
            delay, self._start, worker.index
        )

    def workerLogged(self, worker: Worker, line: bytes, fromStandardError: bool) -> None:
        """
        Put a line of a worker's log in this process's log, naming the
        worker: a JSON line as the event it was, anything else (a crash
        before its logging started) as an error.
        """
        text = line.decode("utf-8", "replace")
        event: Optional[Dict[str, Any]] = None
        if not fromStandardError:
            try:
                event = json.loads(text)
            except ValueError:
                pass
        if not isinstance(event, dict):
            self.log.error("worker {worker}: {line}", worker=worker.index, line=text)
            return
        fields = {k: v for k, v in event.items() if k not in _WORKER_LINE_KEYS}
        try:
            level = LogLevel.levelWithName(str(event.get("level")))
        except Exception:
            level = LogLevel.info
        globalLogPublisher(
            {
                **fields,
                "log_namespace": str(event.get("namespace", "turnrelay.workers.worker")),
                "log_level": level,
                "log_format": "worker {worker}: {worker_message}",
                "log_time": self._reactor.seconds(),
                "worker": worker.index,
                "worker_message": str(event.get("message", "")),
                **({"traceback": event["traceback"]} if "traceback" in event else {}),
            }
        )

    # The relay, as the admin services see it -----------------------------------------

    def allReady(self) -> bool:
        return all(worker is not None and worker.ready for worker in self.workers)

    def whenAllReady(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once every worker serves.
        """
        if self.allReady():
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._whenAllReady.append(waiter)
        return waiter

    def whyNotReady(self) -> Optional[str]:
        if not self.running:
            return "not running"
        if self.draining:
            return "draining"
        waiting = [str(i) for i, worker in enumerate(self.workers) if not (worker and worker.ready)]
        if waiting:
            return f"worker {', '.join(waiting)} not ready"
        return None

    def adminConsole(self, clock: Any) -> Any:
        from turnrelay.workers.admin import GroupConsole

        return GroupConsole(self, clock)

    def controlFactory(self, clock: Any) -> Any:
        from turnrelay.workers.admin import GroupControlFactory

        return GroupControlFactory(self, clock)

    def metricsPage(self) -> Any:
        from turnrelay.workers.admin import GroupMetricsPage

        return GroupMetricsPage(self)

    def listeningAddresses(self) -> List[Tuple[str, TransportAddress]]:
        addresses = []
        for listener, group in zip(self.config.listeners, self._sockets, strict=True):
            host, port = group[0].getsockname()[:2]
            addresses.append((listener.transport, TransportAddress(host, port)))
        return addresses

    def mintCredential(self, userID: str, ttl: float = 86400.0) -> Tuple[str, str]:
        return mintFromConfig(self.config, userID, ttl, self._reactor.seconds())

    def call(
        self, command: Any, worker: Optional[Worker] = None, **arguments: Any
    ) -> Deferred[List[Tuple[int, Any]]]:
        """
        Send a command to every worker that serves (or to one).

        @return: a L{Deferred} firing with C{(index, answer)} for each
            worker asked, the answer a L{Failure} where the command failed.
        """
        asked = [worker] if worker is not None else [w for w in self.workers if w and w.ready]
        calls = []
        for each in asked:
            assert each.channel is not None
            calls.append(each.channel.callRemote(command, **arguments))
        indexes = [each.index for each in asked]

        def gathered(results: List[Tuple[bool, Any]]) -> List[Tuple[int, Any]]:
            return [(index, answer) for index, (_, answer) in zip(indexes, results, strict=True)]

        return DeferredList(calls, consumeErrors=True).addCallback(gathered)

    def drain(self, timeout: Optional[float] = None) -> Deferred[None]:
        """
        Drain every worker (see L{RelayService.drain
        <turnrelay.service.RelayService.drain>}); a worker restarted
        meanwhile drains as soon as it serves.

        @return: a L{Deferred} that fires when no worker has an allocation
            left.
        """
        self.draining = True
        arguments = {} if timeout is None else {"timeout": timeout}
        self._drainArguments = arguments
        self.call(_drainCommand(), None, **arguments)
        done: Deferred[None] = Deferred()

        def check() -> None:
            if self.ledger.total == 0:
                poll.stop()
                done.callback(None)

        poll = LoopingCall(check)
        poll.clock = self._reactor
        poll.start(DRAIN_POLL_INTERVAL, now=False)
        return done

    def reloadConfig(self, config: RelayConfig) -> Deferred[List[str]]:
        """
        Put a changed configuration in force in every worker, and in the
        quotas held here.

        @return: a L{Deferred} firing with the settings that need a restart.
        """
        if config.workers != self.config.workers:
            config = attr.evolve(config, workers=self.config.workers)
            changedWorkers = True
        else:
            changedWorkers = False
        self.config = config
        self.ledger.userQuota = config.userQuota
        self.ledger.totalQuota = config.totalQuota
        self.logLevels.setLevel(config.logLevel)
        calls = []
        for worker in self.workers:
            if worker is not None and worker.ready:
                assert worker.channel is not None
                calls.append(worker.channel.callRemote(Reconfigure, config=workerConfig(config)))

        def gathered(results: List[Tuple[bool, Any]]) -> List[str]:
            needRestart = {"workers"} if changedWorkers else set()
            for ok, answer in results:
                if ok:
                    needRestart.update(answer["needRestart"])
            return sorted(needRestart)

        return DeferredList(calls, consumeErrors=True).addCallback(gathered)


# The keys of a worker's JSON log line that are not its event's own fields.
_WORKER_LINE_KEYS = frozenset({"time", "level", "message", "namespace", "traceback"})


def _drainCommand() -> Any:
    from turnrelay.admin.control import Drain

    return Drain


def _describeExit(reason: Failure) -> str:
    value = reason.value
    signalled = getattr(value, "signal", None)
    if signalled:
        try:
            return f"was killed by {signal.Signals(signalled).name}"
        except ValueError:
            return f"was killed by signal {signalled}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


def _workerEnvironment() -> Dict[str, str]:
    # The worker imports turnrelay from where this process did, installed
    # or not.
    environment = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(turnrelay.__file__)))
    paths = [here] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


__all__ = ["ConfigError", "WorkerGroup"]
