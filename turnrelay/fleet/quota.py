# -*- test-case-name: tests.test_fleet_quota -*-
"""
Per-user and total allocation quotas counted over the whole fleet.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet.defer import Deferred, succeed

from turnrelay.config import RelayConfig


class FleetQuota:
    """
    Placeholder: grants everything (the node's own quotas still hold).
    """

    def __init__(self, node: Any) -> None:
        self.node = node

    def reserve(self, username: str) -> Deferred[bool]:
        return succeed(True)

    def release(self, username: str) -> None:
        pass

    def reconfigure(self, config: RelayConfig) -> None:
        pass

    def stats(self) -> Dict[str, Any]:
        return {}
