# -*- test-case-name: tests.test_service -*-
"""
Services that hold one listening socket while they run: the relay's
listeners and the operator's side doors share this.
"""

from __future__ import annotations

import errno
from typing import Any, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from turnrelay.logs import LogLevels
from turnrelay.stun.address import TransportAddress

# The services named otherwise than the setting that configures them.
_SETTING_OF_SERVICE = {"credentials": "credentials-endpoint"}


class ListenFailure(CannotListenError):
    """
    A socket could not be opened: a L{CannotListenError} whose message is
    one line saying which socket, why, and what to do about it.

    @ivar what: the socket, as the operator knows it (C{"the udp listener"},
        C{"metrics"}).
    @ivar setting: the setting that configures it (C{"listen"}), or L{None}.
    """

    def __init__(self, error: CannotListenError, what: str, setting: Optional[str]) -> None:
        super().__init__(error.interface, error.port, error.socketError)
        self.what = what
        self.setting = setting

    def __str__(self) -> str:
        address = self.port if self.interface is None else f"{self.interface}:{self.port}"
        if self.interface is not None and ":" in self.interface:
            address = f"[{self.interface}]:{self.port}"
        change = f" in {self.setting}" if self.setting else ""
        code = getattr(self.socketError, "errno", None)
        if code == errno.EADDRINUSE:
            why = (
                f"the port is in use (another turnrelay, or a coturn service?); stop what holds"
                f" it (ss -lntup | grep :{self.port}), or choose another port{change}"
            )
        elif code == errno.EACCES and isinstance(self.port, int) and 0 < self.port < 1024:
            why = (
                f"permission denied: ports below 1024 need root or the CAP_NET_BIND_SERVICE"
                f" capability (AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit),"
                f" or choose a port from 1024 up{change}"
            )
        elif code == errno.EADDRNOTAVAIL:
            why = (
                f"this host has no address {self.interface}; choose one of its addresses"
                f" (ip -brief address){change}, or 0.0.0.0 or :: for all of them"
            )
        else:
            reason = getattr(self.socketError, "strerror", None) or str(self.socketError)
            why = f"{reason}; fix that, or change the address{change}"
        return f"{self.what} cannot listen on {address}: {why}"


class ListeningService(Service):
    """
    Opens a socket when started and closes it, with whatever connections it
    accepted, when stopped.

    Listening happens synchronously in L{startService}, so a port that is
    in use stops twistd (or an embedder's start-up) with a L{ListenFailure}
    that says which socket could not be opened, why, and what to do.

    @ivar port: the listening port while running, else L{None}.
    """

    port: Optional[IListeningPort] = None

    @property
    def logLevels(self) -> Optional[LogLevels]:
        """
        The log levels of the relay it is part of: its parent's.
        """
        return getattr(self.parent, "logLevels", None)

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

    def describe(self) -> Tuple[str, Optional[str]]:
        """
        Name this socket for an operator, in a L{ListenFailure}.

        @return: what it is (C{"the udp listener"}, or the service's name,
            such as C{"metrics"}) and the setting that configures it.
        """
        if self.name:
            return self.name, _SETTING_OF_SERVICE.get(self.name, self.name)
        listener = getattr(self, "listener", None)
        transport = getattr(listener, "transport", None)
        if transport is not None:
            return f"the {transport} listener", "listen"
        if getattr(self, "path", None) is not None:
            return "the control socket", "control-socket"
        return "a listening socket", None

    def startService(self) -> None:
        try:
            self.port = self.listen()
        except CannotListenError as e:
            if isinstance(e, ListenFailure):
                raise
            what, setting = self.describe()
            raise ListenFailure(e, what, setting) from e
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
