"""
An existing Twisted application that embeds turnrelay.

Think of a SIP or telephony stack with a web front end: it already runs a
reactor and a service tree.  It attaches the relay to that tree (no twistd),
and its web page gets TURN credentials from the application itself, minted
with the shared secret it gave the relay.

Run it from the repository (with turnrelay installed, e.g. by make run):

    .venv/bin/python examples/telephony_app.py

then open http://127.0.0.1:8080/ : the page asks /ice-servers for an
RTCIceServer and shows it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.application.strports import service as endpointService
from twisted.web.resource import Resource
from twisted.web.server import Site

from turnrelay.auth.credentials import mintRESTCredential
from turnrelay.config import buildConfig
from turnrelay.service import RelayService, makeRelayService

PAGE = b"""<!doctype html>
<title>telephony app</title>
<pre id="out">asking for TURN credentials...</pre>
<script>
fetch("/ice-servers").then(r => r.json()).then(server => {
  document.getElementById("out").textContent = JSON.stringify(server, null, 2);
  // A real page would now do: new RTCPeerConnection({iceServers: [server]})
});
</script>
"""


class IceServers(Resource):
    """
    Hands the page an RTCIceServer with a fresh REST credential.
    """

    isLeaf = True

    def __init__(self, reactor: Any, secret: bytes, urls: list[str], ttl: float) -> None:
        super().__init__()
        self._reactor = reactor
        self._secret = secret
        self._urls = urls
        self._ttl = ttl

    def render_GET(self, request: Any) -> bytes:
        # The application knows its logged-in user; here, a made-up one.
        username, password = mintRESTCredential(
            self._secret, "caller-42", self._ttl, self._reactor.seconds()
        )
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        body = {"urls": self._urls, "username": username, "credential": password}
        return json.dumps(body).encode("utf-8")


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


def makeApplication(
    reactor: Any, httpPort: int = 8080, turnPort: int = 3478, secret: bytes | None = None
) -> tuple[MultiService, RelayService]:
    """
    Build the application's service tree, the relay attached to it.

    @return: the tree's root, and the relay (to ask where it listens).
    """
    secret = secret or os.urandom(16).hex().encode()
    application = MultiService()
    relay = makeRelayService(
        buildConfig(
            {
                "listen": [
                    f"udp:{turnPort}:interface=127.0.0.1",
                    f"tcp:{turnPort}:interface=127.0.0.1",
                ],
                "static-auth-secret": [secret.decode()],
                "realm": "telephony.example",
            }
        ),
        reactor,
    )
    relay.setServiceParent(application)
    urls = [
        f"turn:127.0.0.1:{turnPort}?transport=udp",
        f"turn:127.0.0.1:{turnPort}?transport=tcp",
    ]
    root = Resource()
    root.putChild(b"", Page())
    root.putChild(b"ice-servers", IceServers(reactor, secret, urls, ttl=3600))
    web = endpointService(f"tcp:{httpPort}:interface=127.0.0.1", Site(root), reactor=reactor)
    web.setServiceParent(application)
    return application, relay


def main() -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # The application, not the library, decides where logs go.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    application, _ = makeApplication(reactor)
    application.startService()
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
