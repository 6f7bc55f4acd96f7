# -*- test-case-name: tests.test_admin_credentials -*-
"""
The credentials endpoint: a web application's server asks it for TURN
credentials and hands the answer to its page, which passes it to
C{RTCPeerConnection} as an C{RTCIceServer}::

    GET /credentials?user=ID
    Authorization: Bearer TOKEN

    200 OK
    Content-Type: application/json
    Cache-Control: no-store

    {"urls": ["turn:turn.example.org:3478?transport=udp", ...],
     "username": "1700086400:ID", "credential": "...", "ttl": 86400}

The credential is a TURN REST API one (L{RelayService.mintCredential
<turnrelay.service.RelayService.mintCredential>}), so the web application
needs neither the shared secret nor the formula.  POST works the same way.

A request with C{service=turn} gets draft-uberti-behave-turn-rest-00's
shape instead (section 2.2), with the user id in C{username}::

    GET /credentials?service=turn&username=ID

    {"username": "1700086400:ID", "password": "...", "ttl": 86400,
     "uris": ["turn:turn.example.org:3478?transport=udp", ...]}

Browsers may call it from the pages of the origins listed in
C{credentials-cors-origins}: their CORS preflight (C{OPTIONS}) is answered
without a token, and their answers carry C{Access-Control-Allow-Origin}.
While the relay drains, every request gets 503: credentials for a relay
that takes no new allocation would only fail later.

On a node of a fleet (C{redis}), C{urls} also holds the URLs of the
fleet's least-loaded other serving node when it is less loaded (fewer live
allocations, then fewer relayed packets per second) than this one
(L{NodeRegistry.steeringURLs
<turnrelay.fleet.registry.NodeRegistry.steeringURLs>}): an ICE agent
gathers candidates from every URL, so the client allocates on both and
keeps this node should the other fail.  Every node must then share the
C{static-auth-secret} and realm.

The bearer token is read from C{credentials-token-file} at every request (a
small file: cheaper than it sounds, and simpler than caching it), so a new
token applies at once, without a reload; a file that cannot be read at
start-up stops the relay, and one that goes missing later makes every
request fail with 503.  The token is compared in constant time and never
logged, and neither is the credential.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any, Dict, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

from turnrelay.admin.web import AdminWebService, OnePageRoot, QuietSite
from turnrelay.config import ConfigError, RelayConfig
from turnrelay.logs import Logger
from turnrelay.urls import iceServerURLs

# User ids are short: the REST username (expiry, ':', id) must fit STUN's
# USERNAME (RFC 8489 section 14.3) with room to spare.
MAX_USER_ID = 128


class TokenUnavailable(Exception):
    """
    The token file cannot be read, or holds no token.
    """


def readToken(path: str) -> bytes:
    """
    Read the bearer token: the file's content without surrounding
    whitespace.

    @raise TokenUnavailable: the file cannot be read or is blank, in which
        case no request may pass.
    """
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise TokenUnavailable(f"credentials-token-file {path!r}: {e.strerror}") from None
    if not token:
        raise TokenUnavailable(f"credentials-token-file {path!r} is empty")
    return token


def presentedToken(request: Request) -> Optional[bytes]:
    """
    @return: the token of an C{Authorization: Bearer} header (the scheme is
        case-insensitive, RFC 9110 section 11.1), or L{None}.
    """
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


class _Refusal(Exception):
    """
    A request answered with an error.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CredentialsPage(Resource):
    """
    C{/credentials}: mints a TURN credential for a caller holding the
    bearer token, and answers with an C{RTCIceServer} and its lifetime.

    The relay's current configuration (C{relay.config}) is read at every
    request, so a configuration reload changes the TTL and the URLs' host.

    @ivar relay: the L{turnrelay.service.RelayService} to mint with.
    """

    isLeaf = True
    log = Logger()
    # How long a browser may cache a preflight's answer, in seconds.
    preflightMaxAge = 600

    def __init__(self, relay: Any) -> None:
        super().__init__()
        self.relay = relay
        self.logLevels = relay.logLevels

    def render_GET(self, request: Request) -> bytes:
        self._allowOrigin(request)
        try:
            self._authorize(request)
            if self.relay.draining:
                request.setHeader(b"retry-after", b"60")
                raise _Refusal(503, "the relay is draining: it takes no new allocation")
            body = self._answer(request)
        except _Refusal as refusal:
            request.setResponseCode(refusal.code)
            body = {"error": refusal.message}
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8") + b"\n"

    render_POST = render_GET

    def render_OPTIONS(self, request: Request) -> bytes:
        """
        Answer a CORS preflight: 204 with what the page may send if its
        origin is allowed, 403 otherwise.  No token is needed: browsers send
        none with a preflight.
        """
        if not self._allowOrigin(request):
            request.setResponseCode(403)
            return b""
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"authorization, content-type")
        request.setHeader(b"access-control-max-age", str(self.preflightMaxAge).encode())
        return b""

    def _allowOrigin(self, request: Request) -> bool:
        """
        Add the CORS headers a request from an allowed origin needs.

        @return: whether the request's C{Origin} is allowed.
        """
        request.setHeader(b"vary", b"Origin")
        origin = request.getHeader(b"origin")
        allowed = self.relay.config.credentialsCORSOrigins
        if origin is None or not allowed:
            return False
        text = origin.decode("latin-1")
        if "*" not in allowed and text not in allowed:
            return False
        request.setHeader(b"access-control-allow-origin", origin)
        return True

    def _answer(self, request: Request) -> Dict[str, Any]:
        args = request.args or {}
        service = args.get(b"service")
        if service is None:
            return self._iceServer(self._userID(request))
        if service[0] != b"turn":
            raise _Refusal(400, "service must be turn")
        server = self._iceServer(self._userID(request, b"username"))
        # draft-uberti-behave-turn-rest-00 section 2.2.
        return {
            "username": server["username"],
            "password": server["credential"],
            "ttl": server["ttl"],
            "uris": server["urls"],
        }

    def _authorize(self, request: Request) -> None:
        config: RelayConfig = self.relay.config
        try:
            if config.credentialsTokenFile is None:
                raise TokenUnavailable("credentials-token-file is no longer set")
            token = readToken(config.credentialsTokenFile)
        except TokenUnavailable as e:
            self.log.error("credentials endpoint refuses every request: {why}", why=str(e))
            raise _Refusal(503, "the credentials endpoint has no token configured") from None
        presented = presentedToken(request)
        if presented is not None and hmac.compare_digest(presented, token):
            return
        challenge = b'Bearer realm="turnrelay"'
        if presented is not None:
            challenge += b', error="invalid_token"'
        request.setHeader(b"www-authenticate", challenge)
        self.log.warn(
            "credentials request from {client} refused: {why}",
            client=getattr(request.getClientAddress(), "host", "?"),
            why="wrong bearer token" if presented is not None else "no bearer token",
        )
        raise _Refusal(401, "a valid bearer token is required")

    def _userID(self, request: Request, parameter: bytes = b"user") -> str:
        values = (request.args or {}).get(parameter)
        if not values:
            return secrets.token_urlsafe(12)
        name = parameter.decode()
        try:
            userID = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise _Refusal(400, f"{name} must be UTF-8") from None
        if not 0 < len(userID) <= MAX_USER_ID or not userID.isprintable():
            raise _Refusal(400, f"{name} must be 1 to {MAX_USER_ID} printable characters")
        if ":" in userID:
            raise _Refusal(400, f"{name} must not contain ':', the REST username separator")
        return userID

    def _iceServer(self, userID: str) -> Dict[str, Any]:
        relay = self.relay
        config: RelayConfig = relay.config
        urls = iceServerURLs(config, relay.listeningAddresses())
        if not urls:
            raise _Refusal(503, "no address to advertise: set server-name, external-ip or relay-ip")
        fleet = getattr(relay, "fleet", None)
        if fleet is not None:
            # The credential is good on every node (they share the secret):
            # offer the least-loaded one too, while it is less loaded.
            urls += [url for url in fleet.registry.steeringURLs() if url not in urls]
        ttl = min(config.credentialsTTL, config.restMaxTTL)
        try:
            username, credential = relay.mintCredential(userID, ttl)
        except ValueError:
            raise _Refusal(503, "no static-auth-secret is configured to mint with") from None
        return {
            "urls": urls,
            "username": username,
            "credential": credential,
            "ttl": int(ttl),
        }


def makeCredentialsService(relay: Any, config: RelayConfig, reactor: Any) -> AdminWebService:
    """
    Build the credentials endpoint of a relay: C{/credentials} on
    C{config.credentialsEndpoint}.

    @param relay: the L{turnrelay.service.RelayService} to mint with.
    @param config: the configuration; C{credentialsEndpoint} says where to
        listen.
    @param reactor: the reactor to listen with.
    @return: an L{IService<twisted.application.service.IService>} named
        C{"credentials"}, to attach to the relay.
    @raise ConfigError: the token file cannot be read or is empty.
    """
    assert config.credentialsEndpoint is not None, "credentials-endpoint is not configured"
    assert config.credentialsTokenFile is not None, "credentials-token-file is not configured"
    try:
        readToken(config.credentialsTokenFile)
    except TokenUnavailable as e:
        raise ConfigError(f"{e}; it must hold the bearer token") from None
    site = QuietSite(OnePageRoot(b"credentials", CredentialsPage(relay)), reactor=reactor)
    return AdminWebService(reactor, config.credentialsEndpoint, site, "credentials")
