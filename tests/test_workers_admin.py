"""
The pieces of C{--workers} that need no process: each worker's share of the
relay ports, and how the workers' figures and metrics are put together.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from tests.test_admin_metrics import parseScrape, value
from turnrelay.config import buildConfig
from turnrelay.workers.admin import Families, addUp, addUpMetrics
from turnrelay.workers.worker import relayPortSlice, workerConfig


class WorkerConfigTests(SynchronousTestCase):
    """
    L{relayPortSlice} cuts the relay port range into one slice per worker;
    L{workerConfig} leaves the control process's services out.
    """

    def test_slices(self) -> None:
        """
        The slices cover the range, in order, without overlap, for any
        number of workers the range can take.
        """
        config = buildConfig({"min-port": 40000, "max-port": 40010})
        for count in (1, 2, 3, 7, 11):
            slices = [relayPortSlice(config, i, count) for i in range(count)]
            ports = [p for low, high in slices for p in range(low, high + 1)]
            self.assertEqual(ports, list(range(40000, 40011)), count)

    def test_noSideDoors(self) -> None:
        """
        A worker serves no console, metrics, control socket, credentials
        endpoint or demo page: the control process does, for all.
        """
        config = buildConfig(
            {
                "workers": 2,
                "metrics": "tcp:9100:interface=127.0.0.1",
                "control-socket": "/run/turnrelay.sock",
            }
        )
        cut = workerConfig(config)
        self.assertEqual((cut.workers, cut.metrics, cut.controlSocket), (1, None, None))
        self.assertEqual(cut.listeners, config.listeners)


class AddUpTests(SynchronousTestCase):
    """
    The workers' figures, added up.
    """

    def test_figures(self) -> None:
        """
        Numbers add, flags or, mappings add key by key.
        """
        self.assertEqual(
            addUp(
                {"allocations": 2, "draining": False, "requests": {"ALLOCATE/success": 2}},
                {"allocations": 3, "draining": True, "requests": {"REFRESH/success": 1}},
            ),
            {
                "allocations": 5,
                "draining": True,
                "requests": {"ALLOCATE/success": 2, "REFRESH/success": 1},
            },
        )

    def test_metrics(self) -> None:
        """
        Counters and gauges add up over the workers; start times and
        readiness take the lowest; build info stays one.
        """
        worker = """\
# HELP turnrelay_allocations Live allocations.
# TYPE turnrelay_allocations gauge
turnrelay_allocations{transport="udp",family="ipv4"} %d
# HELP turnrelay_relayed_packets_total Packets.
# TYPE turnrelay_relayed_packets_total counter
turnrelay_relayed_packets_total{direction="to_peer",transport="udp"} %d
# HELP turnrelay_ready Ready.
# TYPE turnrelay_ready gauge
turnrelay_ready %d
# HELP turnrelay_start_time_seconds Start.
# TYPE turnrelay_start_time_seconds gauge
turnrelay_start_time_seconds %d
# HELP turnrelay_build_info Build.
# TYPE turnrelay_build_info gauge
turnrelay_build_info{version="1"} 1
"""
        families = addUpMetrics([worker % (2, 10, 1, 100), worker % (3, 5, 0, 90)])
        registry = CollectorRegistry()
        registry.register(Families(families))
        scrape = parseScrape(generate_latest(registry).decode())
        self.assertEqual(value(scrape, "turnrelay_allocations", transport="udp", family="ipv4"), 5)
        self.assertEqual(
            value(scrape, "turnrelay_relayed_packets_total", direction="to_peer", transport="udp"),
            15,
        )
        self.assertEqual(value(scrape, "turnrelay_ready"), 0)
        self.assertEqual(value(scrape, "turnrelay_start_time_seconds"), 90)
        self.assertEqual(value(scrape, "turnrelay_build_info", version="1"), 1)
