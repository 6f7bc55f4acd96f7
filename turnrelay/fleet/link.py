# -*- test-case-name: tests.test_fleet_link -*-
"""
One node's connection to the fleet's Redis server.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, List, Optional, Set

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from turnrelay.config import RedisURL
from turnrelay.interfaces import QuotaUnavailable
from turnrelay.logs import Logger, LogLevels

# Every key turnrelay writes starts with this (coturn's user keys excepted,
# whose layout is coturn's).
KEY_PREFIX = "turnrelay:"

# Seconds between two PINGs, which tell whether Redis answers.
PING_INTERVAL = 1.0


class RedisUnavailable(QuotaUnavailable):
    """
    Redis did not answer in time, or the node is not connected to it.
    """


class RedisLink(Service):
    """
    A connection to Redis that reconnects by itself (with C{txredisapi}'s
    backoff), bounds every command by C{redis-timeout}, and knows whether
    Redis answers: a PING every second.  A change either way is logged once
    and told to the listeners of L{whenUp} (a node resynchronises what Redis
    may have lost).

    @ivar up: whether Redis answered the last PING.
    @ivar failures: commands that failed or timed out, by what they were for.
    @ivar reconnects: times Redis came back after being down.
    """

    log = Logger()

    def __init__(
        self,
        url: RedisURL,
        reactor: Any,
        timeout: float = 0.5,
        logLevels: Optional[LogLevels] = None,
        connect: Optional[Callable[..., Any]] = None,
        tlsCA: Optional[str] = None,
    ) -> None:
        """
        @param connect: makes the connection (C{txredisapi.lazyConnection}
            by default).
        @param tlsCA: with C{rediss://}, a PEM file of the CA certificates
            that vouch for the server's certificate; the system's trusted
            CAs by default.
        """
        self.url = url
        self.tlsCA = tlsCA
        self.logLevels = logLevels
        self.timeout = timeout
        self.up = False
        self.failures: Counter[str] = Counter()
        self.reconnects = 0
        self._reactor: IReactorTime = reactor
        self._connect = connect
        self._redis: Any = None
        self._ping: Optional[LoopingCall] = None
        self._upListeners: List[Callable[[], None]] = []
        self._subscriptions: List[Any] = []
        # Commands (and PINGs) not answered yet: cancelled at stop.
        self._inFlight: Set[Deferred[Any]] = set()

    def startService(self) -> None:
        super().startService()
        self._redis = self._makeConnection()
        self._ping = LoopingCall(self._checkUp)
        self._ping.clock = self._reactor
        self._ping.start(PING_INTERVAL, now=True)

    def _makeConnection(self) -> Any:
        if self._connect is not None:
            return self._connect(self.url)
        import txredisapi

        return txredisapi.lazyConnection(
            host=self.url.host,
            port=self.url.port,
            # No SELECT for the default database: one round trip less, and
            # nothing to fail unhandled in txredisapi when TLS is refused.
            dbid=self.url.db or None,
            password=self.url.password,
            ssl_context_factory=self._tls() or False,
            connectTimeout=self.timeout * 4,
            replyTimeout=self.timeout,
            convertNumbers=False,
        )

    def _tls(self) -> Any:
        """
        With C{rediss://}: TLS that verifies the server's certificate for
        the URL's host, against C{tlsCA} or the system's trusted CAs (a
        Redis reachable by others must not be impersonated: it holds the
        fleet's quotas and users).  L{None} without TLS.
        """
        if not self.url.tls:
            return None
        from twisted.internet.ssl import (
            Certificate,
            optionsForClientTLS,
            platformTrust,
            trustRootFromCertificates,
        )

        trust: Any = platformTrust()
        if self.tlsCA is not None:
            with open(self.tlsCA, "rb") as f:
                text = f.read()
            end = b"-----END CERTIFICATE-----"
            blocks = [block + end for block in text.split(end) if b"-----BEGIN" in block]
            trust = trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])
        return optionsForClientTLS(self.url.host, trustRoot=trust)

    def stopService(self) -> Any:
        super().stopService()
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self._ping = None
        redis, self._redis = self._redis, None
        for waiting in list(self._inFlight):
            waiting.cancel()
        closing: List[Deferred[Any]] = [
            subscription.disconnect() for subscription in self._subscriptions
        ]
        self._subscriptions = []
        if redis is not None:
            closing.append(redis.disconnect())
        return gatherResults(closing, consumeErrors=True) if closing else None

    def whenUp(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener} each time Redis answers again after it did not
        (and the first time it answers).
        """
        self._upListeners.append(listener)

    def call(self, what: str, command: str, *arguments: Any) -> Deferred[Any]:
        """
        Send one command.

        @param what: what it is for, to count its failures by.
        @param command: the name of a C{txredisapi} method (C{"hincrby"},
            C{"eval"}, C{"execute_command"}...).
        @return: a L{Deferred} firing with the answer, or failing with
            L{RedisUnavailable} when Redis is down or late.
        """
        redis = self._redis
        if redis is None or not self.up:
            self.failures[what] += 1
            return fail(RedisUnavailable(f"Redis at {self.url} is not answering"))
        try:
            answer: Deferred[Any] = getattr(redis, command)(*arguments)
        except Exception as e:
            self.failures[what] += 1
            return fail(RedisUnavailable(f"{command}: {e}"))
        self._track(answer)

        def failed(failure: Failure) -> Failure:
            self.failures[what] += 1
            return Failure(RedisUnavailable(f"{command}: {failure.getErrorMessage()}"))

        return answer.addErrback(failed)

    def _track(self, waiting: Deferred[Any]) -> None:
        # Bounded by the timeout, and cancelled if the link stops first.
        waiting.addTimeout(self.timeout, self._reactor)
        self._inFlight.add(waiting)

        def done(result: Any) -> Any:
            self._inFlight.discard(waiting)
            return result

        waiting.addBoth(done)

    def subscribe(self, channel: str, received: Callable[[str], None]) -> None:
        """
        Call C{received} with each message published on C{channel}, on a
        connection of its own (a subscribed connection takes no commands);
        it resubscribes after a reconnection.
        """
        import txredisapi

        link = self

        class Subscriber(txredisapi.SubscriberProtocol):
            def connectionMade(self) -> Any:
                # After txredisapi's own start (AUTH with the password).
                ready = super().connectionMade()
                if isinstance(ready, Deferred):
                    return ready.addCallback(lambda _: self.subscribe(channel))
                return self.subscribe(channel)

            def messageReceived(self, pattern: Any, messageChannel: Any, message: Any) -> None:
                try:
                    received(message if isinstance(message, str) else message.decode())
                except Exception:
                    link.log.failure("while handling a message on {channel}", channel=channel)

        # txredisapi's factories connect through their own startConnecting
        # (a ClientService per connection, which reconnects with backoff):
        # connectTCP would fail, a RedisFactory being no ClientFactory.
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = Subscriber
        factory.maxDelay = 5
        factory.password = self.url.password
        # The command connection's endpoint (TLS included), so that both
        # reach Redis the same way.
        factory.startConnecting(
            txredisapi._makeEndpoint(self.url.host, self.url.port, self.timeout * 4, self._tls())
        )
        self._subscriptions.append(factory)

    def _checkUp(self) -> None:
        redis = self._redis
        if redis is None:
            return
        try:
            pinged: Deferred[Any] = redis.ping()
        except Exception:
            self._changed(False, "not connected")
            return
        self._track(pinged)
        pinged.addCallbacks(
            lambda _: self._changed(True, None),
            lambda failure: self._changed(False, failure.getErrorMessage()),
        )

    def _changed(self, up: bool, why: Optional[str]) -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            self.reconnects += 1
            self.log.info("Redis at {url} answers", url=str(self.url))
            for listener in list(self._upListeners):
                try:
                    listener()
                except Exception:
                    self.log.failure("while resynchronising with Redis")
        else:
            self.log.warn(
                "Redis at {url} does not answer ({why}): relaying goes on; "
                "new allocations follow redis-unavailable",
                url=str(self.url),
                why=why,
            )
