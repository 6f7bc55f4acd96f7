"""
The credentials endpoint (L{turnrelay.admin.credentials}): a relay with
UDP, TCP and TLS listeners on a fake reactor, asked over an HTTP connection
on a string transport; the URL rules on their own; and one round trip over
real loopback.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Sequence, Tuple

import attr
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests._assertions import TURNTestCase
from tests._logs import LogRecorder
from tests._relays import FakeRelay, httpRequest
from tests._session import TURNClient
from tests._timing import reactor
from turnrelay.admin.credentials import makeCredentialsService
from turnrelay.config import ConfigError, ListenerConfig, RelayConfig, buildConfig
from turnrelay.service import makeRelayService
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.message import MessageClass
from turnrelay.testing import FakeUDPReactor
from turnrelay.transports.tls import makeSelfSignedCertificate
from turnrelay.urls import iceServerURLs

ENDPOINT_PORT = 8089
TOKEN = "Vb3kQ-7wd1d2ZxQq3e0y1A"
TTL = 600


class CredentialsTestCase(TURNTestCase):
    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.reactor.advance(1_700_000_000)
        self.tokenFile = os.path.abspath(self.mktemp())
        self.writeToken(f"  {TOKEN}\n")
        certificate, key = os.path.abspath("cert.pem"), os.path.abspath("key.pem")
        makeSelfSignedCertificate(certificate, key, ("192.0.2.1",))
        self.settings: Dict[str, Any] = {
            "listen": [
                "udp:3478:interface=192.0.2.1",
                "tcp:3478:interface=192.0.2.1",
                "tls:5349:interface=192.0.2.1",
            ],
            "tls-cert": certificate,
            "tls-key": key,
            "relay-ip": "198.51.100.1",
            "realm": "example.org",
            "static-auth-secret": ["a shared secret"],
            "credentials-endpoint": f"tcp:{ENDPOINT_PORT}:interface=127.0.0.1",
            "credentials-token-file": self.tokenFile,
            "credentials-ttl": TTL,
        }
        self.fake = FakeRelay(self.reactor, **self.settings).start(self)
        self.relay = self.fake.service
        self.site = next(
            factory for port, factory, _, _ in self.reactor.tcpServers if port == ENDPOINT_PORT
        )

    def writeToken(self, text: str) -> None:
        with open(self.tokenFile, "w") as f:
            f.write(text)

    def ask(
        self,
        path: bytes = b"/credentials?user=carol",
        token: str | None = TOKEN,
        method: bytes = b"GET",
        headers: Sequence[bytes] = (),
        body: bytes = b"",
    ) -> Tuple[int, Dict[bytes, bytes], Dict[str, Any]]:
        """
        Ask the endpoint, with the token if given.

        @return: the status, the headers and the decoded JSON body.
        """
        if token is not None:
            headers = [b"Authorization: Bearer " + token.encode(), *headers]
        status, responseHeaders, content = httpRequest(self.site, method, path, headers, body)
        return status, responseHeaders, json.loads(content)

    def client(self, username: str, password: str) -> TURNClient:
        return self.fake.client(username, password)


class AuthorizationTests(CredentialsTestCase):
    """
    Only a caller presenting the bearer token gets credentials.
    """

    def assertRefused(
        self, status: int, headers: Dict[bytes, bytes], body: Dict[str, Any], challenge: bytes
    ) -> None:
        self.assertEqual(status, 401)
        self.assertEqual(headers[b"www-authenticate"], challenge)
        self.assertEqual(list(body), ["error"])

    def test_missingToken(self) -> None:
        """
        A request without a token gets 401 with a Bearer challenge.
        """
        self.assertRefused(*self.ask(token=None), b'Bearer realm="turnrelay"')

    def test_wrongToken(self) -> None:
        """
        A wrong token, a prefix of the right one or another scheme get 401.
        """
        invalid = b'Bearer realm="turnrelay", error="invalid_token"'
        self.assertRefused(*self.ask(token="not the token"), invalid)
        self.assertRefused(*self.ask(token=TOKEN[:-1]), invalid)
        self.assertRefused(*self.ask(token=TOKEN + "x"), invalid)
        basic = [b"Authorization: Basic " + TOKEN.encode()]
        self.assertRefused(*self.ask(token=None, headers=basic), b'Bearer realm="turnrelay"')

    def test_rightToken(self) -> None:
        """
        The token from the file, without its surrounding whitespace, gets 200;
        the scheme's case does not matter.
        """
        self.assertEqual(self.ask()[0], 200)
        lower = [b"Authorization: bearer " + TOKEN.encode()]
        self.assertEqual(self.ask(token=None, headers=lower)[0], 200)

    def test_tokenReadEachRequest(self) -> None:
        """
        A new token in the file applies at the next request, and the old one
        stops working.
        """
        self.writeToken("a-new-token\n")
        self.assertEqual(self.ask()[0], 401)
        self.assertEqual(self.ask(token="a-new-token")[0], 200)

    def test_tokenFileGone(self) -> None:
        """
        Without a readable or non-blank token file every request gets 503.
        """
        self.writeToken(" \n")
        self.assertEqual(self.ask()[0], 503)
        self.assertEqual(self.ask(token=" ")[0], 503)
        os.remove(self.tokenFile)
        status, _, body = self.ask()
        self.assertEqual((status, list(body)), (503, ["error"]))

    def test_tokenFileUnreadableAtStart(self) -> None:
        """
        A relay whose token file cannot be read does not start.
        """
        settings = {**self.settings, "credentials-token-file": os.path.abspath("missing")}
        error = self.assertRaises(
            ConfigError, makeRelayService, buildConfig(settings), FakeUDPReactor()
        )
        self.assertIn("credentials-token-file", str(error))

    def test_neverLogged(self) -> None:
        """
        Neither the token nor the minted credential appears in any log event.
        """
        logs = LogRecorder(self, namespace="")
        events = logs.events
        self.site.doStart()
        self.ask(token="a wrong one")
        self.ask(token=TOKEN[:8])
        _, _, body = self.ask()
        self.site.doStop()
        self.assertTrue(events, "the refusals are logged")
        logged = "\n".join(formatEvent(event) + repr(event) for event in events)
        for secret in (TOKEN, TOKEN[:8], "a wrong one", body["credential"]):
            self.assertNotIn(secret, logged)


class AnswerTests(CredentialsTestCase):
    """
    What an authorized caller gets.
    """

    def test_iceServer(self) -> None:
        """
        The answer is an RTCIceServer (URLs for each listener, username,
        credential) and the TTL, as uncached JSON.
        """
        status, headers, body = self.ask()
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"cache-control"], b"no-store")
        self.assertEqual(sorted(body), ["credential", "ttl", "urls", "username"])
        self.assertEqual(
            body["urls"],
            [
                "turn:192.0.2.1:3478?transport=udp",
                "turn:192.0.2.1:3478?transport=tcp",
                "turns:192.0.2.1:5349?transport=tcp",
            ],
        )
        self.assertEqual(body["ttl"], TTL)
        self.assertEqual(body["username"], f"{1_700_000_000 + TTL}:carol")

    def test_credentialAuthenticates(self) -> None:
        """
        The minted username and credential allocate on the relay until the
        TTL passes.
        """
        body = self.ask()[2]
        self.assertSuccess(self.client(body["username"], body["credential"]).allocate())
        self.reactor.advance(TTL + 1)
        self.assertErrorCode(self.client(body["username"], body["credential"]).allocate(), 401)

    def test_ttlCappedByRESTMaxTTL(self) -> None:
        """
        The TTL answered is the one minted: credentials-ttl, at most
        rest-max-ttl.
        """
        self.relay.reloadConfig(
            buildConfig({**self.settings, "credentials-ttl": 7200, "rest-max-ttl": 3600})
        )
        body = self.ask()[2]
        self.assertEqual(body["ttl"], 3600)
        self.assertEqual(body["username"], f"{1_700_000_000 + 3600}:carol")

    def test_defaultUser(self) -> None:
        """
        Without a user id a random one is made up for each request.
        """
        first = self.ask(b"/credentials")[2]["username"]
        second = self.ask(b"/credentials")[2]["username"]
        self.assertNotEqual(first, second)
        expiry, _, userID = first.partition(":")
        self.assertEqual(int(expiry), 1_700_000_000 + TTL)
        self.assertGreaterEqual(len(userID), 16)

    def test_badUser(self) -> None:
        """
        A user id with ':' (the REST separator), an empty, overlong, non-UTF-8
        or unprintable one gets 400.
        """
        for user in (b"a:b", b"", b"x" * 129, b"%ff", b"a%0Ab"):
            status, _, body = self.ask(b"/credentials?user=" + user)
            self.assertEqual((status, list(body)), (400, ["error"]), user)
        self.assertEqual(self.ask(b"/credentials?user=" + b"x" * 128)[0], 200)

    def test_post(self) -> None:
        """
        POST works as GET, with the user in the query or a form body.
        """
        status, _, body = self.ask(method=b"POST")
        self.assertEqual((status, body["username"]), (200, f"{1_700_000_000 + TTL}:carol"))
        form = [b"Content-Type: application/x-www-form-urlencoded"]
        status, _, body = self.ask(b"/credentials", method=b"POST", headers=form, body=b"user=dan")
        self.assertEqual((status, body["username"]), (200, f"{1_700_000_000 + TTL}:dan"))

    def test_elsewhere404(self) -> None:
        """
        Every path but /credentials is 404, even with the token.
        """
        for path in (b"/", b"/credential", b"/credentials/", b"/metrics"):
            status, _, _ = httpRequest(self.site, b"GET", path, [b"Authorization: Bearer x"])
            self.assertEqual(status, 404, path)


class RESTShapeTests(CredentialsTestCase):
    """
    The draft-uberti-behave-turn-rest-00 shape, beside the RTCIceServer one.
    """

    def test_ubertiShape(self) -> None:
        """
        C{service=turn&username=ID} answers C{username}, C{password}, C{ttl}
        and C{uris}, and the credential allocates.
        """
        status, _, body = self.ask(b"/credentials?service=turn&username=erin")
        self.assertEqual(status, 200)
        self.assertEqual(sorted(body), ["password", "ttl", "uris", "username"])
        self.assertEqual(body["username"], f"{1_700_000_000 + TTL}:erin")
        self.assertEqual(body["ttl"], TTL)
        self.assertEqual(body["uris"][0], "turn:192.0.2.1:3478?transport=udp")
        self.assertSuccess(self.client(body["username"], body["password"]).allocate())

    def test_ubertiRefusals(self) -> None:
        """
        Another service, or a bad username, gets 400; the token is still
        needed.
        """
        self.assertEqual(self.ask(b"/credentials?service=stun&username=erin")[0], 400)
        self.assertEqual(self.ask(b"/credentials?service=turn&username=a:b")[0], 400)
        self.assertEqual(self.ask(b"/credentials?service=turn&username=erin", token=None)[0], 401)


class CORSTests(CredentialsTestCase):
    """
    Pages of the origins in credentials-cors-origins may call the endpoint.
    """

    ORIGIN = b"https://app.example.org"

    def allow(self, *origins: str) -> None:
        self.relay.reloadConfig(
            buildConfig({**self.settings, "credentials-cors-origins": list(origins)})
        )

    def preflight(self, origin: bytes) -> Tuple[int, Dict[bytes, bytes], bytes]:
        return httpRequest(
            self.site,
            b"OPTIONS",
            b"/credentials",
            [
                b"Origin: " + origin,
                b"Access-Control-Request-Method: GET",
                b"Access-Control-Request-Headers: authorization",
            ],
        )

    def test_preflightAllowed(self) -> None:
        """
        A preflight from an allowed origin gets 204 with the methods and
        headers the page may use, without a token.
        """
        self.allow("https://app.example.org")
        status, headers, _ = self.preflight(self.ORIGIN)
        self.assertEqual(status, 204)
        self.assertEqual(headers[b"access-control-allow-origin"], self.ORIGIN)
        self.assertIn(b"GET", headers[b"access-control-allow-methods"])
        self.assertIn(b"authorization", headers[b"access-control-allow-headers"])

    def test_preflightRefused(self) -> None:
        """
        A preflight from an origin not listed, or with none configured, gets
        403 without CORS headers.
        """
        status, headers, _ = self.preflight(self.ORIGIN)
        self.assertEqual(status, 403)
        self.assertNotIn(b"access-control-allow-origin", headers)
        self.allow("https://other.example.org")
        status, headers, _ = self.preflight(self.ORIGIN)
        self.assertEqual(status, 403)
        self.assertNotIn(b"access-control-allow-origin", headers)

    def test_answerCarriesOrigin(self) -> None:
        """
        The answer to an allowed origin carries Access-Control-Allow-Origin
        (a 401 too, so the page can read it); other origins' do not.
        """
        self.allow("https://app.example.org")
        status, headers, _ = self.ask(headers=[b"Origin: " + self.ORIGIN])
        self.assertEqual((status, headers[b"access-control-allow-origin"]), (200, self.ORIGIN))
        self.assertEqual(headers[b"vary"], b"Origin")
        status, headers, _ = self.ask(token=None, headers=[b"Origin: " + self.ORIGIN])
        self.assertEqual((status, headers[b"access-control-allow-origin"]), (401, self.ORIGIN))
        status, headers, _ = self.ask(headers=[b"Origin: https://evil.example"])
        self.assertNotIn(b"access-control-allow-origin", headers)

    def test_anyOrigin(self) -> None:
        """
        C{*} allows every origin.
        """
        self.allow("*")
        self.assertEqual(self.preflight(b"https://x.example")[0], 204)

    def test_badOrigin(self) -> None:
        """
        An origin with a path or another scheme is refused at configuration.
        """
        for origin in ("https://app.example.org/", "ftp://x.example", "app.example.org"):
            with self.assertRaises(ConfigError) as caught:
                buildConfig({**self.settings, "credentials-cors-origins": [origin]})
            self.assertIn("credentials-cors-origins", str(caught.exception))


class DrainingTests(CredentialsTestCase):
    """
    A draining relay hands out no credentials.
    """

    def test_503WhileDraining(self) -> None:
        """
        While the relay drains, an authorized request gets 503 with
        Retry-After, in both shapes.
        """
        self.relay.drain()
        status, headers, body = self.ask()
        self.assertEqual((status, list(body)), (503, ["error"]))
        self.assertIn(b"retry-after", headers)
        self.assertEqual(self.ask(b"/credentials?service=turn&username=erin")[0], 503)


class URLTests(SynchronousTestCase):
    """
    iceServerURLs: which host the turn: and turns: URLs name.
    """

    listeners = [
        ("udp", TransportAddress("192.0.2.1", 3478)),
        ("tcp", TransportAddress("2001:db8::1", 3478)),
        ("tls", TransportAddress("0.0.0.0", 443)),
    ]

    def test_serverName(self) -> None:
        """
        server-name, when set, names every URL; an IPv6 one in brackets.
        """
        config = RelayConfig(serverName="turn.example.org", externalIP="203.0.113.9")
        self.assertEqual(
            iceServerURLs(config, self.listeners),
            [
                "turn:turn.example.org:3478?transport=udp",
                "turn:turn.example.org:3478?transport=tcp",
                "turns:turn.example.org:443?transport=tcp",
            ],
        )
        config = RelayConfig(serverName="2001:db8::9")
        self.assertEqual(
            iceServerURLs(config, self.listeners[:1]), ["turn:[2001:db8::9]:3478?transport=udp"]
        )

    def test_externalIP(self) -> None:
        """
        Without server-name, external-ip names every URL.
        """
        config = RelayConfig(externalIP="2001:db8:ff::1")
        self.assertEqual(
            iceServerURLs(config, self.listeners),
            [
                "turn:[2001:db8:ff::1]:3478?transport=udp",
                "turn:[2001:db8:ff::1]:3478?transport=tcp",
                "turns:[2001:db8:ff::1]:443?transport=tcp",
            ],
        )

    def test_listenerAddress(self) -> None:
        """
        Otherwise a listener's specific address names its URL (IPv6 in
        brackets), and the relay IP a wildcard listener's.
        """
        config = RelayConfig(relayIP="198.51.100.1")
        self.assertEqual(
            iceServerURLs(config, self.listeners),
            [
                "turn:192.0.2.1:3478?transport=udp",
                "turn:[2001:db8::1]:3478?transport=tcp",
                "turns:198.51.100.1:443?transport=tcp",
            ],
        )

    def test_nothingToAdvertise(self) -> None:
        """
        A wildcard listener with no relay IP to fall back on gets no URL.
        """
        config = RelayConfig(listeners=(ListenerConfig("udp", 3478, "::"),))
        self.assertEqual(iceServerURLs(config, [("udp", TransportAddress("::", 3478))]), [])

    def test_duplicates(self) -> None:
        """
        Listeners that come out as the same URL are listed once.
        """
        config = RelayConfig(serverName="turn.example.org")
        listeners = [
            ("udp", TransportAddress("192.0.2.1", 3478)),
            ("udp", TransportAddress("192.0.2.2", 3478)),
        ]
        self.assertEqual(
            iceServerURLs(config, listeners), ["turn:turn.example.org:3478?transport=udp"]
        )


class LoopbackTests(TestCase):
    """
    A round trip over a real socket on 127.0.0.1.
    """

    async def test_roundTrip(self) -> None:
        """
        Over loopback, no token gets 401 and the token gets credentials that
        authenticate on the relay.
        """
        tokenFile = os.path.abspath(self.mktemp())
        with open(tokenFile, "w") as f:
            f.write(TOKEN)
        fake = FakeRelay(
            static_auth_secret=["a shared secret"], credentials_token_file=tokenFile
        ).start(self)
        relay, config = fake.service, fake.config
        endpoint = ListenerConfig("tcp", 0, "127.0.0.1")
        service = makeCredentialsService(
            relay, attr.evolve(config, credentialsEndpoint=endpoint), reactor
        )
        service.startService()
        self.addCleanup(service.stopService)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        address = service.address
        assert address is not None
        url = f"http://127.0.0.1:{address.port}/credentials?user=erin".encode()

        refused = await agent.request(b"GET", url)
        await readBody(refused)
        self.assertEqual(refused.code, 401)

        headers = Headers({b"authorization": [b"Bearer " + TOKEN.encode()]})
        response = await agent.request(b"GET", url, headers)
        body = json.loads(await readBody(response))
        self.assertEqual(response.code, 200)
        self.assertEqual(body["urls"], ["turn:192.0.2.1:3478?transport=udp"])
        self.assertTrue(body["username"].endswith(":erin"))
        client = fake.client(body["username"], body["credential"])
        self.assertEqual(client.allocate().messageClass, MessageClass.SUCCESS_RESPONSE)
