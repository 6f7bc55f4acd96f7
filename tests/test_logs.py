"""
Tests for L{turnrelay.logs}: turnrelay's own log level, and JSON logs; and
C{log-format} under a real twistd.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from typing import Any, Dict, List

from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._processes import pythonEnvironment, spawn, turnrelayCommand
from tests._timing import PROMPTLY, poll, within
from turnrelay.config import ConfigError, buildConfig
from turnrelay.logs import (
    Logger,
    LogLevels,
    formatJSONLine,
    jsonLogObserver,
    levelName,
    logLevel,
    makeLogObserver,
    printNotice,
    setLogLevel,
)


class LogLevelTests(SynchronousTestCase):
    """
    The level filter applies to turnrelay's events only.
    """

    def setUp(self) -> None:
        self.addCleanup(setLogLevel, "info")
        self.log = Logger("turnrelay.test")

    def test_default(self) -> None:
        """
        Info is logged by default, debug is not.
        """
        with capturedLogs() as events:
            self.log.debug("hidden")
            self.log.info("shown")
        self.assertEqual([e["log_format"] for e in events], ["shown"])
        self.assertEqual(logLevel(), "info")

    def test_change(self) -> None:
        """
        setLogLevel changes what reaches the log.
        """
        setLogLevel("warn")
        with capturedLogs() as events:
            self.log.info("hidden")
            self.log.warn("shown")
        self.assertEqual([e["log_format"] for e in events], ["shown"])
        setLogLevel("debug")
        with capturedLogs() as events:
            self.log.debug("shown")
        self.assertEqual(len(events), 1)

    def test_unknownLevel(self) -> None:
        """
        An unknown level is refused, naming the known ones.
        """
        error = self.assertRaises(ValueError, setLogLevel, "loud")
        self.assertIn("debug", str(error))

    def test_warning(self) -> None:
        """
        "warning" (any case) is the warn level, as other tools name it.
        """
        setLogLevel("WARNING")
        self.assertEqual(logLevel(), "warn")
        self.assertEqual(levelName(" Warning "), "warn")
        self.assertRaises(ValueError, levelName, "loud")

    def test_namespaceFromModule(self) -> None:
        """
        A module-level logger is named after its module.
        """
        self.assertEqual(Logger().namespace, __name__)


class Emitter:
    """
    An object logging through the levels in its C{logLevels}, as a relay's
    objects do.  (Its events' namespace is this module's, which the tests
    set levels for, since levels set for C{turnrelay} apply to turnrelay's
    modules.)
    """

    log = Logger()

    def __init__(self, logLevels: Any) -> None:
        self.logLevels = logLevels


class RelayLevelTests(SynchronousTestCase):
    """
    Each relay's L{LogLevels} apply to its own objects' events only.
    """

    def setUp(self) -> None:
        self.addCleanup(setLogLevel, "info")

    def test_ownLevels(self) -> None:
        """
        An object's events pass its relay's levels: one relay at debug shows
        its debug events, another relay's and the process's stay hidden.
        """
        loud, quiet = LogLevels(), LogLevels()
        loud.setLevel("debug", __name__)
        with capturedLogs() as events:
            Emitter(loud).log.debug("loud relay")
            Emitter(quiet).log.debug("quiet relay")
            Logger("turnrelay.test").debug("the process")
            Emitter(quiet).log.info("quiet relay's info")
        self.assertEqual([e["log_format"] for e in events], ["loud relay", "quiet relay's info"])
        self.assertEqual((loud.level(__name__), quiet.level(__name__)), ("debug", "info"))
        self.assertEqual(logLevel(), "info")

    def test_withoutLevels(self) -> None:
        """
        An object without C{logLevels} (or with L{None}) logs through the
        process's levels, under its class's namespace, as its source.
        """
        emitter = Emitter(None)
        setLogLevel("debug", __name__)
        self.addCleanup(setLogLevel, "info", __name__)
        with capturedLogs() as events:
            emitter.log.debug("shown")
        [event] = events
        self.assertEqual(event["log_namespace"], f"{__name__}.Emitter")
        self.assertIs(event["log_source"], emitter)

    def test_namespaces(self) -> None:
        """
        A relay's level may be set for a part of turnrelay alone.
        """
        levels = LogLevels()
        levels.setLevel("debug", "turnrelay.turn")
        with capturedLogs() as events:
            levels.logger("turnrelay.turn.server").debug("shown")
            levels.logger("turnrelay.transports.udp").debug("hidden")
        self.assertEqual([e["log_format"] for e in events], ["shown"])
        self.assertEqual(levels.level("turnrelay.turn.server"), "debug")
        self.assertRaises(ValueError, levels.setLevel, "loud")


class JSONLogTests(SynchronousTestCase):
    """
    One JSON object per line: time, level, message and the event's fields.
    """

    def event(self, **fields: Any) -> Dict[str, Any]:
        return {
            "log_format": "allocation {relayed} deleted",
            "log_level": LogLevel.warn,
            "log_time": 1767225600.25,
            "log_namespace": "turnrelay.turn.registry",
            "relayed": "198.51.100.1:50000",
            "bytesToPeer": 5,
            **fields,
        }

    def test_oneLine(self) -> None:
        """
        An event is one line of JSON, ending in a newline, with no record
        separator; its time is ISO 8601 in UTC, its level a name, its message
        rendered, its fields kept.
        """
        line = formatJSONLine(self.event())
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertNotIn("\x1e", line)
        self.assertEqual(
            json.loads(line),
            {
                "time": "2026-01-01T00:00:00.250Z",
                "level": "warn",
                "message": "allocation 198.51.100.1:50000 deleted",
                "namespace": "turnrelay.turn.registry",
                "relayed": "198.51.100.1:50000",
                "bytesToPeer": 5,
            },
        )

    def test_multiLineMessage(self) -> None:
        """
        A message of several lines, and a failure's traceback, stay on one
        line (escaped).
        """
        failure = Failure(ZeroDivisionError("boom"))
        line = formatJSONLine(self.event(log_format="one\ntwo", log_failure=failure))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["message"], "one\ntwo")
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_fieldNamesKept(self) -> None:
        """
        A field named like a key of the line gets a field_ prefix; values
        JSON cannot hold are written as text.
        """
        record = json.loads(formatJSONLine(self.event(level=3, message=object, peer={1, 2})))
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["field_level"], 3)
        self.assertEqual(record["field_message"], str(object))
        self.assertEqual(record["peer"], str({1, 2}))

    def test_legacyEvent(self) -> None:
        """
        An event of the legacy log (print() under twistd) has its message
        and none of the legacy bookkeeping.
        """
        event = {
            "log_format": "{log_io}",
            "log_io": "hello",
            "log_level": LogLevel.info,
            "log_time": 0.0,
            "log_namespace": "stdout",
            "message": ("hello",),
            "isError": 0,
            "system": "-",
            "time": 0.0,
        }
        record = json.loads(formatJSONLine(event))
        self.assertEqual(set(record), {"time", "level", "message", "namespace"})
        self.assertEqual(record["message"], "hello")

    def test_observers(self) -> None:
        """
        makeLogObserver writes JSON lines in "json", Twisted's text lines in
        "text"; jsonLogObserver (for --logger) writes JSON lines to standard
        output.
        """
        out = io.StringIO()
        makeLogObserver("json", out)(self.event())
        self.assertEqual(json.loads(out.getvalue())["bytesToPeer"], 5)
        out = io.StringIO()
        makeLogObserver("text", out)(self.event())
        self.assertRegex(
            out.getvalue(), r"^2026-01-01T00:00:00\+0000 \[.*\] allocation .* deleted\n$"
        )
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        jsonLogObserver()(self.event())
        [line] = out.getvalue().splitlines()
        self.assertEqual(json.loads(line)["bytesToPeer"], 5)

    def test_notice(self) -> None:
        """
        A start-up notice is its text in the text format, one JSON line in
        JSON, and never reaches the log publisher.
        """
        out = io.StringIO()
        with capturedLogs() as events:
            printNotice(out, "turnrelay demo:\n  user 'demo'", "text")
            printNotice(out, "turnrelay demo:\n  user 'demo'", "json")
        self.assertEqual(list(events), [])
        text, line = out.getvalue().split("\n  user 'demo'\n")
        self.assertEqual(text, "turnrelay demo:")
        record = json.loads(line)
        self.assertEqual(record["message"], "turnrelay demo:\n  user 'demo'")
        self.assertEqual((record["level"], record["notice"]), ("info", True))
        out = io.StringIO()
        printNotice(out, "turnrelay: cannot start", "json", level="error")
        self.assertEqual(json.loads(out.getvalue())["level"], "error")


class SettingTests(SynchronousTestCase):
    """
    log-format and log-level in the configuration.
    """

    def test_logFormat(self) -> None:
        """
        log-format is text by default, json on request; anything else is
        refused in one line naming the key, the value and the choices.
        """
        self.assertEqual(buildConfig({}).logFormat, "text")
        self.assertEqual(buildConfig({"log-format": "JSON"}).logFormat, "json")
        error = self.assertRaises(ConfigError, buildConfig, {"log-format": "xml"})
        self.assertEqual(
            str(error),
            "log-format: 'xml'; expected text (Twisted's lines) or json (one object a line)",
        )

    def test_logLevelWarning(self) -> None:
        """
        log-level = "warning" is warn.
        """
        self.assertEqual(buildConfig({"log-level": "warning"}).logLevel, "warn")


class TwistdLogFormatTests(TestCase):
    """
    C{log-format = json} under a real twistd: every line it writes is a
    JSON object, its own start-up lines and the demo's notice included.
    """

    timeout = 60

    def lines(self, output: bytes) -> List[Dict[str, Any]]:
        return [json.loads(line) for line in output.decode("utf-8").splitlines()]

    async def test_standardOutput(self) -> None:
        """
        With --nodaemon and no --logfile, standard output is JSON lines.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        args = turnrelayCommand("--log-format", "json", listen=["udp:0:interface=127.0.0.1"])
        twistd = spawn(self, args, env=pythonEnvironment(), path=path)
        await within(
            twistd.waitForOutput(rb"listening for udp on 127\.0\.0\.1:\d+.*\n"),
            PROMPTLY,
            "the listener's log line",
        )
        twistd.signal("TERM")
        await twistd.whenEnded()
        records = self.lines(twistd.output)
        # The demo's notice comes once the listeners are bound.
        [notice] = [record for record in records if record.get("notice")]
        self.assertIn("user 'demo'", notice["message"])
        messages = [record["message"] for record in records]
        self.assertTrue(any(m.startswith("twistd ") for m in messages), messages)
        [listening] = [r for r in records if r["message"].startswith("listening for udp")]
        self.assertEqual(listening["transport"], "udp")
        self.assertEqual(listening["level"], "info")
        self.assertRegex(listening["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertNotIn(b"Traceback", twistd.output + twistd.errors)

    async def test_logFile(self) -> None:
        """
        With --logfile, the bounded log file holds JSON lines.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        logName = os.path.join(path, "relay.log")
        args = turnrelayCommand(
            "--log-format",
            "json",
            "--user",
            "alice:secret",
            listen=["udp:0:interface=127.0.0.1"],
            twistdOptions=[f"--logfile={logName}"],
        )
        twistd = spawn(self, args, env=pythonEnvironment(), path=path)

        def listening() -> bool:
            if not os.path.exists(logName):
                return False
            with open(logName, "rb") as f:
                return b"listening for udp" in f.read()

        await poll(listening, PROMPTLY, "the listener's line in the log file")
        twistd.signal("TERM")
        await twistd.whenEnded()
        with open(logName, "rb") as f:
            records = self.lines(f.read())
        self.assertTrue(any(re.match("listening for udp", r["message"]) for r in records))
