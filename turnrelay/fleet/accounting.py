# -*- test-case-name: tests.test_fleet_accounting -*-
"""
Usage per user, added up over the fleet.
"""

from __future__ import annotations

from typing import Any, Dict

from turnrelay.config import RelayConfig


class Accounting:
    """
    Placeholder.
    """

    def __init__(self, node: Any) -> None:
        self.node = node

    def reconfigure(self, config: RelayConfig) -> None:
        pass

    def stats(self) -> Dict[str, Any]:
        return {}
