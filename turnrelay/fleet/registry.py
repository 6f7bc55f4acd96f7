# -*- test-case-name: tests.test_fleet_registry -*-
"""
The fleet's nodes: each one's addresses, load and state.
"""

from __future__ import annotations

from typing import Any, Dict

from turnrelay.config import RelayConfig


class NodeRegistry:
    """
    Placeholder.
    """

    def __init__(self, node: Any) -> None:
        self.node = node

    def reconfigure(self, config: RelayConfig) -> None:
        pass

    def stats(self) -> Dict[str, Any]:
        return {}
