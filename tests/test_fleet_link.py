"""
Tests for L{turnrelay.fleet.link}: a node's connection to a real Redis.
"""

from __future__ import annotations

import os
from typing import List

from twisted.trial.unittest import TestCase

from tests._redis import startRedis
from tests._timing import PROMPTLY, poll, reactor, within
from turnrelay.config import RedisURL
from turnrelay.fleet.link import RedisLink, RedisUnavailable
from turnrelay.transports.tls import makeSelfSignedCertificate


class RedisLinkTests(TestCase):
    """
    A L{RedisLink} against a real C{redis-server}.
    """

    async def test_upDownUp(self) -> None:
        """
        Commands answer while Redis does; while it is stopped they fail at
        once with L{RedisUnavailable}, counted; when it is back, the link
        says so to its listeners and commands answer again.
        """
        redis = await startRedis(self)
        link = RedisLink(redis.url, reactor, timeout=0.5)
        ups: List[bool] = []
        link.whenUp(lambda: ups.append(True))
        link.startService()
        self.addCleanup(link.stopService)
        await poll(lambda: link.up, PROMPTLY, "the link to be up")
        self.assertEqual(await within(link.call("test", "set", "k", "v"), PROMPTLY, "SET"), "OK")
        self.assertEqual(await within(link.call("test", "get", "k"), PROMPTLY, "GET"), "v")
        self.assertEqual(len(ups), 1)

        await redis.stop()
        await poll(lambda: not link.up, PROMPTLY, "the link to be down")
        with self.assertRaises(RedisUnavailable):
            await link.call("test", "get", "k")
        self.assertGreaterEqual(link.failures["test"], 1)

        await redis.start()
        await poll(lambda: link.up, PROMPTLY * 2, "the link to be up again")
        self.assertEqual(len(ups), 2)
        # Nothing was saved: a restarted Redis starts empty.
        self.assertIsNone(await within(link.call("test", "get", "k"), PROMPTLY, "GET"))

    async def test_tls(self) -> None:
        """
        Over C{rediss://}, the link verifies the server's certificate: with
        the CA that made it, commands answer; with another CA, the link
        never comes up.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        files = {}
        for name in ("redis", "stranger"):
            certificate = os.path.join(directory, f"{name}.pem")
            key = os.path.join(directory, f"{name}-key.pem")
            makeSelfSignedCertificate(certificate, key, ("127.0.0.1",))
            files[name] = (certificate, key)
        redis = await startRedis(self, tls=files["redis"])
        # Both at once: the one that trusts another CA can never come up,
        # and by the time the other is up it has had as long to try.
        doubting = RedisLink(redis.url, reactor, timeout=0.5, tlsCA=files["stranger"][0])
        trusting = RedisLink(redis.url, reactor, timeout=0.5, tlsCA=files["redis"][0])
        for link in (doubting, trusting):
            link.startService()
            self.addCleanup(link.stopService)
        await poll(lambda: trusting.up, PROMPTLY, "the link over TLS to be up")
        self.assertEqual(await within(trusting.call("t", "set", "k", "v"), PROMPTLY, "SET"), "OK")
        self.assertFalse(doubting.up)
        with self.assertRaises(RedisUnavailable):
            await doubting.call("t", "get", "k")

    async def test_notAnswering(self) -> None:
        """
        With no Redis at all, the link stays down and commands fail at once.
        """
        link = RedisLink(RedisURL("127.0.0.1", 1), reactor, timeout=0.2)
        link.startService()
        self.addCleanup(link.stopService)
        with self.assertRaises(RedisUnavailable):
            await link.call("test", "get", "k")
        self.assertFalse(link.up)
