# -*- test-case-name: tests.test_service -*-
"""
Services that hold one listening socket while they run: the relay's
listeners and the operator's side doors share this.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort

from turnrelay.stun.address import TransportAddress


class ListeningService(Service):
    """
    Opens a socket when started and closes it, with whatever connections it
    accepted, when stopped.

    Listening happens synchronously in L{startService}, so a port that is
    in use stops twistd (or an embedder's start-up) with the OS's reason.

    @ivar port: the listening port while running, else L{None}.
    """

    port: Optional[IListeningPort] = None

    def listen(self) -> IListeningPort:
        """
        Open the socket.  Subclasses say how.
        """
        raise NotImplementedError()

    def closeConnections(self) -> List[Deferred[Any]]:
        """
        Close the connections the socket accepted, when the service stops.

        @return: L{Deferred}s that fire when they are closed; none by default.
        """
        return []

    def startService(self) -> None:
        self.port = self.listen()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        port, self.port = self.port, None
        closing: List[Deferred[Any]] = []
        if port is not None:
            closing.append(maybeDeferred(port.stopListening))
            closing.extend(self.closeConnections())
        return DeferredList(closing)

    @property
    def address(self) -> Optional[TransportAddress]:
        """
        The bound address while listening (the real port when 0 was asked).
        """
        if self.port is None:
            return None
        host: Any = self.port.getHost()
        return TransportAddress(host.host, host.port)
