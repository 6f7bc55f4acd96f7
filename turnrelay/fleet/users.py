# -*- test-case-name: tests.test_fleet_users -*-
"""
Long-term users and REST secrets kept in Redis, in coturn's key layout.
"""

from __future__ import annotations

from typing import Any, Dict

from turnrelay.config import RelayConfig


class RedisUsers:
    """
    Placeholder.
    """

    def __init__(self, node: Any) -> None:
        self.node = node

    def reconfigure(self, config: RelayConfig) -> None:
        pass

    def stats(self) -> Dict[str, Any]:
        return {}
