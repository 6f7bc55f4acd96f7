# -*- test-case-name: tests.test_fleet_users -*-
"""
Long-term users and REST secrets kept in Redis, in coturn's key layout
(the C{redis-users} setting), so that a fleet moving from coturn keeps its
user database and its tools (C{turnadmin}).

The keys, for the relay's C{realm} (coturn's C{turndb/schema.userdb.redis}):

  - C{turn/realm/<realm>/user/<username>/key}: a string, the user's
    long-term key as hex, C{MD5(username:realm:password)} as C{turnadmin}
    writes it (32 hex digits; 64 make a SHA-256 key; a C{0x} before them is
    accepted);
  - C{turn/realm/<realm>/user/<username>/password}: a string, the password
    in clear (coturn allows it with Redis), used when the user has no
    C{key};
  - C{turn/realm/<realm>/secret/<any id>}: a string, one TURN REST API
    shared secret (coturn's layout: one key per secret);
  - C{turn/realm/<realm>/secret}: a set of shared secrets, also read (a
    plain string there counts as one secret).

Other keys under the realm (coturn's C{max-bps}, quotas...) are ignored.

Each node reads them all into memory, with C{SCAN} (never C{KEYS}, which
blocks Redis), at start, every C{redis-users-refresh} seconds and whenever
Redis answers again: a user added, changed or deleted is seen within a
refresh, without a restart.  While Redis does not answer, the last read
stays in force.  Requests are answered from memory: authentication never
waits for Redis.

The users join the relay's credential chain after the configured ones
(C{user}, C{static-auth-secret}); the keys are checked by
L{StaticCredentials} and the secrets by L{RESTSecrets}, as the configured
ones are.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from turnrelay.auth.credentials import (
    ChainedCredentials,
    ICredentialStore,
    IExpiringCredentials,
    RESTSecrets,
    StaticCredentials,
)
from turnrelay.config import RelayConfig
from turnrelay.fleet.link import RedisUnavailable
from turnrelay.fleet.revocation import RevokingCredentials
from turnrelay.logs import Logger

# Keys asked for per SCAN step and per MGET: big enough for few round
# trips, small enough not to hold Redis up.
_BATCH = 500

_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


def realmPrefix(realm: str) -> str:
    """
    @return: where coturn keeps C{realm}'s users and secrets.
    """
    return f"turn/realm/{realm}/"


@implementer(ICredentialStore, IExpiringCredentials)
class RedisUserStore:
    """
    The users and secrets last read from Redis, as a credential store.

    @ivar users: the users' keys (a L{StaticCredentials}), or L{None}.
    @ivar secrets: the REST secrets (a L{RESTSecrets}), or L{None}.
    """

    def __init__(self) -> None:
        self.users: Optional[StaticCredentials] = None
        self.secrets: Optional[RESTSecrets] = None

    def __repr__(self) -> str:
        count = 0 if self.users is None else len(self.users.usernames())
        return f"<RedisUserStore: {count} user(s), {self.secrets!r}>"

    def keysFor(self, username: str, realm: str, algorithm: int) -> List[bytes]:
        """
        @see: L{ICredentialStore.keysFor}
        """
        keys: List[bytes] = []
        if self.users is not None:
            keys.extend(self.users.keysFor(username, realm, algorithm))
        if self.secrets is not None:
            keys.extend(self.secrets.keysFor(username, realm, algorithm))
        return keys

    def usernameForHash(self, userhash: bytes, realm: str) -> Optional[str]:
        """
        @see: L{ICredentialStore.usernameForHash}
        """
        if self.users is None:
            return None
        return self.users.usernameForHash(userhash, realm)

    def isExpired(self, username: str) -> bool:
        """
        @see: L{IExpiringCredentials.isExpired}
        """
        return self.secrets is not None and self.secrets.isExpired(username)


class RedisUsers(Service):
    """
    This node's copy of the users and REST secrets kept in Redis, refreshed
    every C{redis-users-refresh} seconds and added to the relay's
    credential chain.

    @ivar node: the L{FleetNode<turnrelay.fleet.node.FleetNode>}.
    @ivar store: the credential store the chain asks.
    @ivar refreshes: refreshes done.
    @ivar lastRefresh: when the last one was done (the reactor's time), or
        L{None}.
    """

    name = "redis-users"
    log = Logger()

    def __init__(self, node: Any) -> None:
        self.node = node
        self.store = RedisUserStore()
        self.refreshes = 0
        self.lastRefresh: Optional[float] = None
        self._realm = node.config.realm
        self._interval = node.config.redisUsersRefresh
        self._refresher: Optional[LoopingCall] = None
        self._refreshing = False
        self._counts: Tuple[int, int] = (0, 0)
        self._install()

    def _install(self) -> None:
        """
        Put L{store} at the end of the relay's credential chain (inside the
        revocations' wrapper, if it is there), once.
        """
        authenticator = self.node.server.authenticator
        current = authenticator.credentials
        holder = current if isinstance(current, RevokingCredentials) else None
        chain = holder.inner if holder is not None else current
        if isinstance(chain, ChainedCredentials) and self.store in chain.stores:
            return
        extended = ChainedCredentials([chain, self.store])
        if holder is not None:
            holder.inner = extended
        else:
            authenticator.credentials = extended

    # Service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.node.link.whenUp(self._refreshNow)
        self._startRefreshing()

    def _startRefreshing(self) -> None:
        self._refresher = LoopingCall(self._refreshNow)
        self._refresher.clock = self.node.reactor
        self._refresher.start(self._interval, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        self._refresher = None
        return None

    def reconfigure(self, config: RelayConfig) -> None:
        """
        The relay rebuilt its credential chain: add the users to it again;
        a new realm or refresh interval takes effect now.
        """
        self._install()
        realmChanged = config.realm != self._realm
        self._realm = config.realm
        if realmChanged:
            # The users read were the old realm's.
            self.store.users = None
            self.store.secrets = None
        if self.store.secrets is not None:
            self.store.secrets.maxTTL = config.restMaxTTL
        if config.redisUsersRefresh != self._interval or realmChanged:
            self._interval = config.redisUsersRefresh
            if self.running:
                if self._refresher is not None and self._refresher.running:
                    self._refresher.stop()
                self._startRefreshing()

    def stats(self) -> Dict[str, Any]:
        """
        @return: the users and secrets read from Redis, and the refreshes.
        """
        users, secrets = self._counts
        return {"redisUsers": users, "redisSecrets": secrets, "redisUsersRefreshes": self.refreshes}

    # Reading ---------------------------------------------------------------

    def _refreshNow(self) -> None:
        # The timer and the link's comeback both land here: one read at a
        # time.
        if self._refreshing or not self.running:
            return
        self._refreshing = True

        def done(result: Any) -> None:
            self._refreshing = False
            if isinstance(result, Failure):
                if result.check(RedisUnavailable):
                    self.log.debug("users not refreshed from Redis: {why}", why=result.value)
                else:
                    self.log.failure("while reading the users kept in Redis", result)

        self.refresh().addBoth(done)

    def refresh(self) -> Deferred[None]:
        """
        Read the realm's users and secrets from Redis and put them in force.

        @return: a L{Deferred} firing once done, or failing with
            L{RedisUnavailable} (the users read before stay in force).
        """
        return ensureDeferred(self._refresh())

    async def _refresh(self) -> None:
        realm = self._realm
        prefix = realmPrefix(realm)
        link = self.node.link
        pattern = _GLOB_SPECIALS.sub(r"\\\1", prefix) + "*"
        names: List[str] = []
        cursor: Any = "0"
        while True:
            cursor, batch = await link.call("redis-users", "scan", cursor, pattern, _BATCH)
            names.extend(_text(name) for name in batch)
            if str(cursor) == "0":
                break
        keys: Dict[str, str] = {}
        passwords: Dict[str, str] = {}
        secretKeys: List[str] = []
        secretSet = False
        for name in set(names):
            rest = name[len(prefix) :]
            if rest.startswith("user/") and rest.endswith("/key"):
                keys[rest[len("user/") : -len("/key")]] = name
            elif rest.startswith("user/") and rest.endswith("/password"):
                passwords[rest[len("user/") : -len("/password")]] = name
            elif rest.startswith("secret/"):
                secretKeys.append(name)
            elif rest == "secret":
                secretSet = True
        values = await self._values([*keys.values(), *passwords.values(), *secretKeys])
        secrets = [values[name] for name in sorted(secretKeys) if values.get(name)]
        if secretSet:
            secrets.extend(await self._secretSet(prefix + "secret"))
        users: Dict[str, str] = {}
        for username, name in passwords.items():
            if values.get(name):
                users[username] = values[name]
        for username, name in keys.items():
            key = values.get(name)
            if key:
                users[username] = key if key[:2].lower() == "0x" else "0x" + key
        if realm != self._realm:
            # Reconfigured to another realm meanwhile: this read is stale.
            return
        self._put(realm, users, list(dict.fromkeys(secrets)))

    async def _values(self, names: List[str]) -> Dict[str, str]:
        """
        @return: the string values of keys C{names} (those deleted since the
            SCAN, or not strings, left out).
        """
        values: Dict[str, str] = {}
        for start in range(0, len(names), _BATCH):
            chunk = names[start : start + _BATCH]
            answers = await self.node.link.call("redis-users", "mget", chunk)
            for name, value in zip(chunk, answers or (), strict=False):
                if value is not None:
                    values[name] = _text(value)
        return values

    async def _secretSet(self, key: str) -> List[str]:
        link = self.node.link
        kind = _text(await link.call("redis-users", "type", key))
        if kind == "set":
            members = await link.call("redis-users", "smembers", key)
            return sorted(_text(member) for member in members or ())
        if kind == "string":
            value = await link.call("redis-users", "get", key)
            return [] if value is None else [_text(value)]
        return []

    def _put(self, realm: str, users: Dict[str, str], secrets: List[str]) -> None:
        good: Dict[str, str] = {}
        for username, secret in users.items():
            try:
                StaticCredentials(realm, {username: secret})
            except ValueError as e:
                # The message names the user, never the secret.
                self.log.warn("a user kept in Redis is ignored: {why}", why=str(e))
                continue
            good[username] = secret
        self.store.users = StaticCredentials(realm, good) if good else None
        self.store.secrets = (
            RESTSecrets(
                self.node.reactor,
                [secret.encode("utf-8") for secret in secrets],
                self.node.config.restMaxTTL,
            )
            if secrets
            else None
        )
        self.refreshes += 1
        self.lastRefresh = self.node.reactor.seconds()
        counts = (len(good), len(secrets))
        if counts != self._counts:
            self.log.info(
                "{users} user(s) and {secrets} REST secret(s) of realm {realm} read from Redis",
                users=counts[0],
                secrets=counts[1],
                realm=realm,
            )
        self._counts = counts


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
