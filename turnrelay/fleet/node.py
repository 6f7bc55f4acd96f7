# -*- test-case-name: tests.test_fleet -*-
"""
This node's part in a fleet, for one relay.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

from turnrelay.config import RelayConfig
from turnrelay.fleet.accounting import Accounting
from turnrelay.fleet.link import KEY_PREFIX, RedisLink
from turnrelay.fleet.quota import FleetQuota
from turnrelay.fleet.registry import NodeRegistry
from turnrelay.fleet.revocation import Revocations
from turnrelay.fleet.users import RedisUsers
from turnrelay.logs import Logger, LogLevels


class FleetNode(MultiService):
    """
    A relay's membership of a fleet: its L{RedisLink}, and what it shares
    over it.  A child of the relay's service, started and stopped with it.

    @ivar relay: the L{RelayService<turnrelay.service.RelayService>}.
    @ivar server: its controller.
    @ivar config: the configuration in force (a reload replaces it).
    @ivar nodeID: this node's name in the fleet.
    @ivar link: the connection to Redis.
    @ivar quota: the quotas shared by the fleet.
    @ivar revocations: the credentials revoked fleet-wide.
    @ivar users: the users and secrets kept in Redis, or L{None}.
    @ivar registry: the fleet's nodes, this one among them.
    @ivar accounting: usage per user, added up over the fleet.
    """

    name = "fleet"
    log = Logger()

    def __init__(
        self, relay: Any, config: RelayConfig, reactor: Any, logLevels: Optional[LogLevels] = None
    ) -> None:
        super().__init__()
        assert config.redis is not None
        self.relay = relay
        self.server = relay.server
        self.config = config
        self.reactor = reactor
        self.logLevels = logLevels
        self.nodeID = config.nodeID or socket.gethostname()
        self.prefix = KEY_PREFIX
        self.link = RedisLink(
            config.redis, reactor, config.redisTimeout, logLevels, tlsCA=config.redisTLSCA
        )
        self.link.setServiceParent(self)
        self.quota = FleetQuota(self)
        self.revocations = Revocations(self)
        self.users: Optional[RedisUsers] = RedisUsers(self) if config.redisUsers else None
        self.registry = NodeRegistry(self)
        self.accounting = Accounting(self)
        for part in self.parts():
            if IService.providedBy(part):
                part.setServiceParent(self)

    def parts(self) -> List[Any]:
        """
        @return: what this node shares, each C{reconfigure(config)}-able.
        """
        parts: List[Any] = [self.quota, self.revocations, self.registry, self.accounting]
        if self.users is not None:
            parts.append(self.users)
        return parts

    def stopService(self) -> Deferred[Any]:
        """
        Stop the parts first, then the link: what they write as they stop
        (usage of the allocations the relay's stop ended, this node's
        lease given back) still has a connection to go over.
        """
        Service.stopService(self)
        parts = [service for service in reversed(list(self)) if service is not self.link]
        stopping = [maybeDeferred(service.stopService) for service in parts]
        return DeferredList(stopping).addBoth(lambda _: self.link.stopService())

    def reconfigure(self, config: RelayConfig) -> None:
        """
        Put a reloaded configuration in force (the Redis URL and node name
        need a restart).
        """
        self.config = config
        for part in self.parts():
            part.reconfigure(config)

    def stats(self) -> Dict[str, Any]:
        """
        @return: the node's fleet figures, for C{status} and C{/metrics}.
        """
        figures: Dict[str, Any] = {
            "node": self.nodeID,
            "redis": str(self.link.url),
            "up": self.link.up,
            "failures": dict(self.link.failures),
            "reconnects": self.link.reconnects,
        }
        for part in self.parts():
            figures.update(part.stats())
        return figures
