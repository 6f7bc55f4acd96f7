# -*- test-case-name: tests.test_workers_admin -*-
"""
One admin console, one control socket and one metrics endpoint for all the
workers of a control process.

Each operation asks every worker that serves with the control socket's own
command (L{turnrelay.admin.control}), which the worker answers as a relay
of its own would, and puts the answers together: the allocations of all,
the kills of all, the figures added up, with a line per worker.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from turnrelay.admin import control
from turnrelay.admin.console import (
    HELPERS,
    AdminConsole,
    ConsoleFailure,
    ConsoleText,
    allocationsText,
    credentialText,
    statsText,
)
from turnrelay.admin.control import ControlConnection, ControlError, ControlFactory, answerWith
from turnrelay.logs import Logger, levelName
from turnrelay.workers.protocol import Metrics

if TYPE_CHECKING:
    from turnrelay.workers.supervisor import WorkerGroup

Answers = List[Tuple[int, Any]]


def _data(answer: Dict[str, str]) -> Any:
    return json.loads(answer["data"])


def _why(failure: Failure) -> str:
    if failure.check(ControlError):
        return str(failure.value)
    return failure.getErrorMessage()


def addUp(total: Any, more: Any) -> Any:
    """
    Two workers' figures added: numbers summed, flags or'ed, mappings
    added key by key; anything else is the first's.
    """
    if isinstance(total, bool) and isinstance(more, bool):
        return total or more
    if isinstance(total, (int, float)) and isinstance(more, (int, float)):
        return total + more
    if isinstance(total, dict) and isinstance(more, dict):
        merged = dict(total)
        for key, value in more.items():
            merged[key] = addUp(merged[key], value) if key in merged else value
        return merged
    return total if total is not None else more


class GroupConsole(AdminConsole):
    """
    The admin console of a control process: L{AdminConsole}'s helpers,
    each asked of every worker; they answer with a L{Deferred}, which the
    console shows when it fires.

    Each helper has a twin, C{...Answer}, firing with the text and the
    same answer as data, for the control socket.
    """

    log = Logger()

    def __init__(self, group: WorkerGroup, clock: Any) -> None:
        self.relay = self.group = group
        self.logLevels = group.logLevels
        self._clock = clock

    def namespace(self) -> Dict[str, Any]:
        names: Dict[str, Any] = {"group": self.group, "config": self.group.config, "console": self}
        for name in HELPERS:
            names[name] = getattr(self, name)
        return names

    def _ask(self, command: Any, **arguments: Any) -> Deferred[Answers]:
        return self.group.call(command, None, **arguments)

    # Allocations -------------------------------------------------------------------

    def allocationsAnswer(
        self, user: Optional[str] = None, address: Any = None
    ) -> Deferred[Tuple[ConsoleText, Any]]:
        arguments = {
            key: str(value)
            for key, value in (("user", user), ("address", address))
            if value is not None
        }

        def gathered(answers: Answers) -> Tuple[ConsoleText, Any]:
            records = []
            for index, answer in answers:
                if isinstance(answer, Failure):
                    continue
                for record in _data(answer):
                    records.append({**record, "worker": index})
            records.sort(key=lambda record: -record["age"])
            total = self.group.ledger.total
            return allocationsText(records, max(total, len(records)), user, address), records

        return self._ask(control.Allocations, **arguments).addCallback(gathered)

    def allocations(self, user: Optional[str] = None, address: Any = None) -> Any:
        """
        A table of the live allocations of every worker, optionally
        filtered (see L{AdminConsole.allocations}).
        """
        return self.allocationsAnswer(user, address).addCallback(lambda answer: answer[0])

    def killAnswer(self, target: Any) -> Deferred[Tuple[ConsoleText, Any]]:
        def gathered(answers: Answers) -> Tuple[ConsoleText, Any]:
            killed, lines, why = 0, [], []
            for index, answer in answers:
                if isinstance(answer, Failure):
                    why.append(_why(answer))
                    continue
                killed += _data(answer)["killed"]
                lines += [f"  worker {index}:{line}" for line in answer["text"].split("\n")[1:]]
            if not killed and why:
                return ConsoleFailure(why[0]), {"killed": 0}
            head = f"killed {killed} allocation{'s' if killed != 1 else ''}:"
            return ConsoleText("\n".join([head, *lines])), {"killed": killed}

        return self._ask(control.Kill, target=str(target)).addCallback(gathered)

    def kill(self, target: Any) -> Any:
        """
        End the allocations of a relayed or client address, or of a user,
        in every worker (see L{AdminConsole.kill}).
        """
        return self.killAnswer(target).addCallback(lambda answer: answer[0])

    # The relay -----------------------------------------------------------------------

    def statsAnswer(self) -> Deferred[Tuple[ConsoleText, Any]]:
        group = self.group

        def gathered(answers: Answers) -> Tuple[ConsoleText, Any]:
            total: Dict[str, Any] = {}
            workers: List[Dict[str, Any]] = []
            for index, worker in enumerate(group.workers):
                workers.append(
                    {
                        "worker": index,
                        "pid": None if worker is None else worker.pid,
                        "ready": bool(worker and worker.ready),
                        "restarts": group.restarts[index],
                        "allocations": group.ledger.byWorker().get(index, 0),
                    }
                )
            for index, answer in answers:
                if not isinstance(answer, Failure):
                    figures = _data(answer)
                    workers[index]["allocations"] = figures.get("allocations", 0)
                    # Each worker's own limit and reserve: not to be added.
                    workers[index]["descriptors"] = figures.pop("descriptors", None)
                    total = addUp(total, figures)
            total["uptime"] = round(self._clock.seconds() - group.startedAt, 3)
            total["draining"] = group.draining
            lines = [
                f"worker {w['worker']}: pid {w['pid']}, "
                f"{'serving' if w['ready'] else 'not serving'}, "
                f"{w['allocations']} allocations, {w['restarts']} restarts, "
                f"{(w.get('descriptors') or {}).get('open', '?')} descriptors open"
                for w in workers
            ]
            text = ConsoleText("\n".join([*lines, statsText(total)]))
            return text, {**total, "workers": workers}

        return self._ask(control.Status).addCallback(gathered)

    def stats(self) -> Any:
        """
        The live figures of every worker, added up, and a line per worker.
        """
        return self.statsAnswer().addCallback(lambda answer: answer[0])

    def drain(self, timeout: Optional[float] = None) -> Any:
        """
        Take no new allocations in any worker, and let the live ones run
        out (see L{AdminConsole.drain}).
        """
        self.group.drain(timeout)
        left = self.group.ledger.total
        return succeed(
            ConsoleText(
                f"draining {len(self.group.workers)} workers: new allocations are refused; "
                f"{left} allocation{'s are' if left != 1 else ' is'} left"
            )
        )

    def reloadTLSAnswer(self) -> Deferred[Tuple[ConsoleText, Any]]:
        def gathered(answers: Answers) -> Tuple[ConsoleText, Any]:
            failures = [_why(a) for _, a in answers if isinstance(a, Failure)]
            if failures or not answers:
                return ConsoleFailure(failures[0] if failures else "no worker serves"), {}
            text = answers[0][1]["text"]
            return ConsoleText(f"{text} (in {len(answers)} workers)"), _data(answers[0][1])

        return self._ask(control.ReloadTLS).addCallback(gathered)

    def reloadTLS(self) -> Any:
        """
        Read the TLS certificate files again in every worker.
        """
        return self.reloadTLSAnswer().addCallback(lambda answer: answer[0])

    def loglevel(self, level: Any = None) -> Any:
        """
        Show the log level, or set it here and in every worker.
        """
        text = AdminConsole.loglevel(self, level)
        if level is not None and not isinstance(text, ConsoleFailure):
            self._ask(control.LogLevel, level=levelName(str(getattr(level, "name", level))))
        return succeed(text)

    def mint(self, userID: str, ttl: float = 86400) -> Any:
        """
        Mint a TURN REST API credential (shown here, never logged).
        """
        return succeed(AdminConsole.mint(self, userID, ttl))


class GroupControlProtocol(ControlConnection):
    """
    The control socket of a control process: every command asked of every
    worker, the answers put together by L{GroupConsole}.
    """

    _console: GroupConsole

    @control.Status.responder
    def status(self) -> Deferred[Dict[str, str]]:
        return self._console.statsAnswer().addCallback(lambda answer: answerWith(*answer))

    @control.Allocations.responder
    def allocations(
        self, user: Optional[str] = None, address: Optional[str] = None
    ) -> Deferred[Dict[str, str]]:
        answered = self._console.allocationsAnswer(user, address)
        return answered.addCallback(lambda answer: answerWith(*answer))

    @control.Kill.responder
    def kill(self, target: str) -> Deferred[Dict[str, str]]:
        self._logCommand("kill", target=target)
        return self._console.killAnswer(target).addCallback(lambda answer: answerWith(*answer))

    @control.Drain.responder
    def drain(self, timeout: Optional[float] = None) -> Deferred[Dict[str, str]]:
        self._logCommand("drain")
        text = self._console.drain(timeout)
        left = self._console.group.ledger.total
        return text.addCallback(
            lambda text: answerWith(text, {"draining": True, "allocationsLeft": left})
        )

    @control.Reload.responder
    def reload(self) -> Deferred[Dict[str, str]]:
        self._logCommand("reload")
        group = self._console.group
        if group.configSource is None:
            raise ControlError("this relay has no configuration to re-read; nothing changed")
        try:
            config = group.configSource()
        except Exception as e:
            raise ControlError(f"configuration not reloaded, nothing changed: {e}") from None

        def reloaded(needRestart: List[str]) -> Dict[str, str]:
            text = "configuration reloaded; needing a restart to apply: " + (
                ", ".join(needRestart) or "nothing"
            )
            return answerWith(text, {"reloaded": True, "needRestart": needRestart})

        return group.reloadConfig(config).addCallback(reloaded)

    @control.ReloadTLS.responder
    def reloadTLS(self) -> Deferred[Dict[str, str]]:
        self._logCommand("reload-tls")
        return self._console.reloadTLSAnswer().addCallback(lambda answer: answerWith(*answer))

    @control.Mint.responder
    def mint(self, userID: str, ttl: Optional[float] = None) -> Dict[str, str]:
        try:
            record = self._console.mintRecord(userID, 86400 if ttl is None else ttl)
        except ValueError as e:
            raise ControlError(f"cannot mint a credential: {e}") from None
        return answerWith(credentialText(record), record)

    @control.LogLevel.responder
    def loglevel(self, level: Optional[str] = None) -> Deferred[Dict[str, str]]:
        was = self.logLevels.level()
        answered = self._console.loglevel(level)
        return answered.addCallback(
            lambda text: answerWith(text, {"level": self.logLevels.level(), "was": was})
        )


class GroupControlFactory(ControlFactory):
    """
    Makes a L{GroupControlProtocol} per connection to the control socket.
    """

    def __init__(self, group: WorkerGroup, clock: Any) -> None:
        self._relay = group
        self._console = GroupConsole(group, clock)
        self.connections: List[ControlConnection] = []

    def buildProtocol(self, addr: Any) -> ControlConnection:
        protocol = GroupControlProtocol(self._relay, self._console, self.connections)
        protocol.factory = self
        return protocol


# Metrics ---------------------------------------------------------------------------

# Families whose workers' values are not added up: the earliest time, the
# lowest limit, whether all are ready.
_LOWEST = (
    "_timestamp_seconds",
    "start_time_seconds",
    "turnrelay_ready",
    "_max_fds",
    "_info",
    "_active",
)


class Families(Collector):
    """
    Metric families put together beforehand, for one scrape.
    """

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def addUpMetrics(expositions: Iterable[str], extra: Iterable[Metric] = ()) -> List[Metric]:
    """
    The metric families of several processes as one relay's: each sample
    added up over the processes by name and labels, but for times, limits
    and readiness (the lowest) and info (the first).

    @param expositions: each process's metrics in Prometheus's text format.
    @param extra: families of this process, added in the same way.
    """
    families: Dict[str, Metric] = {}
    samples: Dict[str, Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]] = {}
    parsed: List[Metric] = []
    for text in expositions:
        parsed.extend(text_string_to_metric_families(text))
    parsed.extend(extra)
    for family in parsed:
        if family.name not in families:
            families[family.name] = Metric(family.name, family.documentation, family.type)
            samples[family.name] = {}
        values = samples[family.name]
        lowest = family.type == "info" or any(family.name.endswith(end) for end in _LOWEST)
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in values:
                values[key] = sample.value
            elif family.type == "info":
                pass
            elif lowest:
                values[key] = min(values[key], sample.value)
            else:
                values[key] += sample.value
    for name, family in families.items():
        for (sampleName, labels), value in samples[name].items():
            family.add_sample(sampleName, dict(labels), value)
    return list(families.values())


def _groupFamilies(group: WorkerGroup) -> List[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    workers = GaugeMetricFamily(
        "turnrelay_workers_serving", "Worker processes serving now.", labels=[]
    )
    workers.add_metric([], sum(1 for w in group.workers if w is not None and w.ready))
    restarts = CounterMetricFamily(
        "turnrelay_worker_restarts",
        "Times each worker was restarted after it died.",
        labels=["worker"],
    )
    allocations = GaugeMetricFamily(
        "turnrelay_worker_allocations",
        "Live allocations of each worker (as the quotas count them).",
        labels=["worker"],
    )
    lost = CounterMetricFamily(
        "turnrelay_worker_allocations_lost",
        "Allocations ended because their worker died (its own counters died with it).",
        labels=["worker"],
    )
    byWorker = group.ledger.byWorker()
    for index in range(len(group.workers)):
        restarts.add_metric([str(index)], group.restarts[index])
        allocations.add_metric([str(index)], byWorker.get(index, 0))
        lost.add_metric([str(index)], group.lost[index])
    return [workers, restarts, allocations, lost]


class GroupMetricsPage(Resource):
    """
    C{/metrics} of a control process: every worker's metrics added up, the
    control process's own, and a few per worker.
    """

    isLeaf = True

    def __init__(self, group: WorkerGroup) -> None:
        super().__init__()
        self._group = group
        self._process = CollectorRegistry()
        ProcessCollector(registry=self._process)

    def render_GET(self, request: Request) -> Any:
        def gathered(answers: Answers) -> None:
            texts = [a["text"] for _, a in answers if not isinstance(a, Failure)]
            own = list(self._process.collect())
            registry = CollectorRegistry()
            registry.register(Families(addUpMetrics(texts, own) + _groupFamilies(self._group)))
            encode, contentType = choose_encoder(
                (request.getHeader(b"accept") or b"").decode("latin-1")
            )
            request.setHeader(b"content-type", contentType.encode("ascii"))
            request.setHeader(b"cache-control", b"no-store")
            request.write(encode(registry))
            request.finish()

        self._group.call(Metrics, None).addCallback(gathered)
        return NOT_DONE_YET
