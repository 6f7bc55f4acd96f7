"""
The operator's side of a running relay: the SSH admin console (manhole),
the Prometheus metrics endpoint and the HTTP credentials endpoint.

Each module offers one C{make...Service(relay, config, reactor)} that
L{turnrelay.service.makeRelayService} attaches when the corresponding
setting is given.  They use the relay's public API only
(L{turnrelay.service.RelayService}: C{server.registry}, C{stats()},
C{drain()}, C{reloadTLS()}, C{reloadConfig()}, C{mintCredential()}).
"""
