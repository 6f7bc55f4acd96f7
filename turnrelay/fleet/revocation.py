# -*- test-case-name: tests.test_fleet_revocation -*-
"""
Credentials revoked on every node of the fleet.

A revoked username is refused by every node's authentication (401, as an
unknown user) and its live allocations are ended on every node, within a
second of the revocation.

What is revoked
===============
A name in the revoked set refuses:

  - that exact username (a static user, C{user = alice:...}, a user kept
    in Redis, or one whole TURN REST API username such as
    C{1700000000:alice}, which then refuses that one credential only);
  - every TURN REST API username whose user id part is that name:
    revoking C{alice} also refuses C{1700000000:alice}, C{1700086400:alice}
    and any credential the web service mints for C{alice} later, which is
    what an operator revoking a person means.

Shared state in Redis
=====================
  - C{turnrelay:revoked}: a set whose members are the revoked names.  It is
    the truth: each node loads it at start and whenever Redis answers
    again, and re-reads it every second (so a missed message costs at most
    a second, and an unrevocation reaches every node within one).
  - C{turnrelay:revocations}: a pub/sub channel on which each revocation is
    published, the message being the name; every node ends that user's
    allocations as soon as it hears it.

An operator revokes with C{revoke("alice")} in the admin console,
C{turnrelayctl revoke alice} (and C{unrevoke}), or with their own tooling,
in this order::

    SADD turnrelay:revoked alice
    PUBLISH turnrelay:revocations alice

and takes a revocation back with C{SREM turnrelay:revoked alice} (nothing
to publish: nodes see it at their next re-read).  A name published but not
added to the set has its allocations ended, but is let in again at the next
re-read.

Without Redis
=============
Revocation is a fleet feature (the C{redis} setting): a single relay has
no revoked set, and C{revoke} says so; there, remove the user from the
configuration, reload, and C{kill} its allocations.  While Redis is down a
node keeps the set it last read, and C{revoke} fails (nothing is revoked
anywhere) rather than revoke on one node only.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Set

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from turnrelay.auth.credentials import (
    IClientCredentialStore,
    ICredentialStore,
    IExpiringCredentials,
    keysForClient,
    restExpiry,
)
from turnrelay.config import RelayConfig
from turnrelay.fleet.link import RedisUnavailable
from turnrelay.logs import Logger
from turnrelay.stun.address import TransportAddress
from turnrelay.turn.registry import AllocationObserver

REVOKED = "revoked"
"""
The revoked set's key, after the fleet's prefix (C{turnrelay:revoked}).
"""

CHANNEL = "revocations"
"""
The channel revocations are published on, after the fleet's prefix
(C{turnrelay:revocations}).
"""

RELOAD_INTERVAL = 1.0
"""
Seconds between two re-reads of the revoked set: the fallback when a
message is missed (a reconnection), and how unrevocations spread.
"""

REASON = "revoked"
"""
Why the allocations of a revoked user end, for the log and observers.
"""

# The TURN REST API's default separator between expiry and user id, which
# turnrelay's RESTSecrets use.
_SEPARATOR = ":"


def revokedBy(username: str, revoked: Iterable[str] | Set[str]) -> bool:
    """
    Whether C{username} is refused by the revoked names C{revoked}: it is
    one of them, or it is a TURN REST API username whose user id part is.

    @param revoked: the revoked names (a set, for speed).
    """
    names = revoked if isinstance(revoked, (set, frozenset)) else set(revoked)
    if username in names:
        return True
    if restExpiry(username, _SEPARATOR) is None:
        return False
    _, separator, userID = username.partition(_SEPARATOR)
    return bool(separator) and userID in names


@implementer(IClientCredentialStore, IExpiringCredentials)
class RevokingCredentials:
    """
    A credential chain in which revoked usernames have no keys, so that
    their requests get 401 as an unknown user's would.

    @ivar inner: the chain wrapped (the relay's configured stores, and
        those fleet parts add to it).
    @ivar isRevoked: tells whether a username is revoked.
    """

    def __init__(self, inner: ICredentialStore, isRevoked: Callable[[str], bool]) -> None:
        self.inner = inner
        self.isRevoked = isRevoked

    def __repr__(self) -> str:
        return f"<RevokingCredentials around {self.inner!r}>"

    def keysFor(self, username: str, realm: str, algorithm: int) -> List[bytes]:
        """
        @return: no keys for a revoked username, else the chain's.
        """
        if self.isRevoked(username):
            return []
        return self.inner.keysFor(username, realm, algorithm)

    def keysForClient(
        self,
        username: str,
        realm: str,
        algorithm: int,
        clientAddress: TransportAddress,
        transport: Optional[str],
    ) -> List[bytes]:
        """
        @return: no keys for a revoked username, else the chain's.
        """
        if self.isRevoked(username):
            return []
        return keysForClient(self.inner, username, realm, algorithm, clientAddress, transport)

    def usernameForHash(self, userhash: bytes, realm: str) -> Optional[str]:
        """
        @return: the chain's answer (a revoked user then has no keys).
        """
        return self.inner.usernameForHash(userhash, realm)

    def isExpired(self, username: str) -> bool:
        """
        @return: the chain's answer, if it knows about expiry.
        """
        if IExpiringCredentials.providedBy(self.inner):
            return bool(IExpiringCredentials(self.inner).isExpired(username))
        return False


def revokingChain(authenticator: Any, isRevoked: Callable[[str], bool]) -> RevokingCredentials:
    """
    Make C{authenticator}'s credential chain refuse what C{isRevoked} says,
    once: a chain already wrapped (by these revocations) is left as it is.

    @return: the wrapper in place.
    """
    current = authenticator.credentials
    if isinstance(current, RevokingCredentials):
        current.isRevoked = isRevoked
        return current
    wrapper = RevokingCredentials(current, isRevoked)
    authenticator.credentials = wrapper
    return wrapper


class Revocations(Service, AllocationObserver):
    """
    The names revoked fleet-wide, kept in memory on this node: its
    authentication refuses them, and their allocations here are ended as
    soon as a revocation is heard of.

    @ivar node: the L{FleetNode<turnrelay.fleet.node.FleetNode>}.
    @ivar revoked: the revoked names, as last read or heard.
    @ivar ended: allocations ended here because of a revocation.
    """

    name = "revocations"
    log = Logger()

    def __init__(self, node: Any) -> None:
        self.node = node
        self.revoked: Set[str] = set()
        self.ended = 0
        self.key = node.prefix + REVOKED
        self.channel = node.prefix + CHANNEL
        self._reloads: Optional[LoopingCall] = None
        self._reloading = False
        # Names heard on the channel while a re-read is under way: its
        # answer may predate them.
        self._heard: Set[str] = set()
        self._wrap()

    def _wrap(self) -> None:
        revokingChain(self.node.server.authenticator, self.isRevoked)

    # Service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        link = self.node.link
        link.subscribe(self.channel, self._published)
        link.whenUp(self._reloadNow)
        self.node.server.registry.addObserver(self)
        self._reloads = LoopingCall(self._reloadNow)
        self._reloads.clock = self.node.reactor
        self._reloads.start(RELOAD_INTERVAL, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._reloads is not None and self._reloads.running:
            self._reloads.stop()
        self._reloads = None
        self.node.server.registry.removeObserver(self)
        return None

    def reconfigure(self, config: RelayConfig) -> None:
        """
        The relay rebuilt its credential chain: refuse revoked names in the
        new one too.
        """
        self._wrap()

    def stats(self) -> Dict[str, Any]:
        """
        @return: how many names are revoked, and allocations ended for it.
        """
        return {"revoked": len(self.revoked), "revokedAllocationsEnded": self.ended}

    # Asking ----------------------------------------------------------------

    def isRevoked(self, username: str) -> bool:
        """
        @return: whether C{username} is refused (see the module's
            docstring for what a revoked name covers).
        """
        return bool(self.revoked) and revokedBy(username, self.revoked)

    # Acting ----------------------------------------------------------------

    def revoke(self, username: str) -> Deferred[int]:
        """
        Revoke C{username} on every node: added to the revoked set, then
        published.  This node applies it at once, without waiting for its
        own message.

        @return: a L{Deferred} firing with how many allocations ended on
            this node, or failing with L{RedisUnavailable} (then nothing
            was revoked, or only in Redis if the PUBLISH failed: the other
            nodes then see it at their next re-read).
        @raise ValueError: an empty name.
        """
        _checkName(username)
        link = self.node.link

        def added(_: object) -> Deferred[Any]:
            return link.call("revocation", "publish", self.channel, username)

        def published(_: object) -> int:
            self.log.info("{username} revoked on the fleet", username=username)
            return self._apply([username])

        adding: Deferred[Any] = link.call("revocation", "sadd", self.key, username)
        return adding.addCallback(added).addCallback(published)

    def unrevoke(self, username: str) -> Deferred[bool]:
        """
        Take a revocation back: removed from the revoked set; this node lets
        the name in at once, the others at their next re-read (within
        L{RELOAD_INTERVAL}).

        @return: a L{Deferred} firing with whether it was revoked, or
            failing with L{RedisUnavailable}.
        @raise ValueError: an empty name.
        """
        _checkName(username)

        def removed(count: Any) -> bool:
            self.revoked.discard(username)
            self._heard.discard(username)
            self.log.info("{username} no longer revoked on the fleet", username=username)
            return bool(int(count))

        removing: Deferred[Any] = self.node.link.call("revocation", "srem", self.key, username)
        return removing.addCallback(removed)

    def reload(self) -> Deferred[None]:
        """
        Read the revoked set again; names new to this node have their
        allocations ended.  If Redis does not answer the set read last is
        kept.

        @return: a L{Deferred} firing once done (never failing).
        """
        self._reloading = True
        self._heard = set()
        reading: Deferred[Any] = self.node.link.call("revocation", "smembers", self.key)

        def read(members: Any) -> None:
            names = {_text(member) for member in members or ()}
            fresh = names - self.revoked
            self.revoked = names | self._heard
            if fresh:
                self._apply(fresh)

        def done(result: Any) -> None:
            self._reloading = False
            if isinstance(result, Failure) and not result.check(RedisUnavailable):
                self.log.failure("while reading the revoked set", result)

        return reading.addCallback(read).addBoth(done)

    def _reloadNow(self) -> None:
        # The timer and the link's comeback both land here; one read at a
        # time is enough.
        if not self._reloading and self.running:
            self.reload()

    def _published(self, username: str) -> None:
        # A revocation published by any node (this one included) or tool.
        if not username:
            return
        self._heard.add(username)
        self._apply([username])

    def _apply(self, names: Iterable[str]) -> int:
        """
        Refuse C{names} here and end their allocations.

        @return: how many allocations ended.
        """
        names = set(names)
        self.revoked |= names
        ended = self.node.relay.endAllocations(
            predicate=lambda allocation: revokedBy(allocation.username or "", names),
            reason=REASON,
        )
        if ended:
            self.ended += ended
            self.log.info(
                "ended {count} allocation(s) of revoked {usernames}",
                count=ended,
                usernames=", ".join(sorted(names)),
            )
        return int(ended)

    # IAllocationObserver: an Allocate authenticated just before the
    # revocation may finish after it (the fleet quota answers later); its
    # allocation is ended as soon as it exists.

    def allocationCreated(self, allocation: Any) -> None:
        if self.isRevoked(allocation.username or ""):
            self.node.reactor.callLater(0, self._endLate, allocation)

    def _endLate(self, allocation: Any) -> None:
        ended = self.node.relay.endAllocations(
            predicate=lambda candidate: candidate is allocation, reason=REASON
        )
        self.ended += ended


def _checkName(username: str) -> None:
    if not username or any(ord(c) < 0x20 or c == "\x7f" for c in username):
        raise ValueError(f"{username!r} is not a username")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
