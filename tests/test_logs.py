"""
Tests for L{turnrelay.logs}: turnrelay's own log level, and JSON logs.
"""

from __future__ import annotations

import io
import json
import sys

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.logs import Logger, jsonLogObserver, logLevel, setLogLevel


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

    def test_namespaceFromModule(self) -> None:
        """
        A module-level logger is named after its module.
        """
        self.assertEqual(Logger().namespace, __name__)


class JSONLogTests(SynchronousTestCase):
    """
    twistd --logger turnrelay.logs.jsonLogObserver
    """

    def test_oneObjectPerEvent(self) -> None:
        """
        Each event is one JSON object on standard output, with its fields.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = jsonLogObserver()
        observer({"log_format": "allocation {relayed} deleted", "relayed": "x", "bytesToPeer": 5})
        [line] = out.getvalue().strip("\x1e\n").splitlines()
        event = json.loads(line.strip("\x1e"))
        self.assertEqual(event["bytesToPeer"], 5)
