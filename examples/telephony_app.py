"""
An existing Twisted application that embeds turnrelay.

Think of a SIP or telephony stack with a web front end: it already runs a
reactor and a service tree.  It attaches the relay to that tree (no twistd),
and its web page gets TURN credentials from the application itself, minted
with the shared secret it gave the relay.  It uses every extension point
the relay offers an embedder:

  - its own credential store (L{SIPAccounts}): its SIP accounts may use the
    relay with their SIP passwords, from the office network only (the
    store sees the client's address and transport); a configuration
    reload keeps it;
  - allocation observers (L{CallRecords}): a record per allocation, with
    the usage at its end, whatever the log level;
  - a peer filter (L{Telephony.peerFilter}): peers the fraud desk blocked
    are refused, after the relay's own peer policy;
  - ending a call's allocations: C{POST /hangup?call=ID}.

Run it from the repository (with turnrelay installed, e.g. by make run):

    .venv/bin/python examples/telephony_app.py

then open http://127.0.0.1:8080/ : the page asks /ice-servers?call=7 for
an RTCIceServer and shows it; C{curl -X POST
http://127.0.0.1:8080/hangup?call=7} ends that call's allocations.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Any, Dict, List, Optional, Set

import attr
from twisted.application.service import MultiService
from twisted.application.strports import service as endpointService
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from turnrelay.auth.credentials import IClientCredentialStore, StaticCredentials, mintRESTCredential
from turnrelay.config import buildConfig
from turnrelay.interfaces import IAllocationObserver
from turnrelay.service import RelayService, makeRelayService
from turnrelay.stun.address import TransportAddress
from turnrelay.turn.allocation import Allocation

REALM = "telephony.example"
# The office network SIP accounts may use the relay from.
OFFICE = ipaddress.ip_network("127.0.0.0/8")

PAGE = b"""<!doctype html>
<title>telephony app</title>
<pre id="out">asking for TURN credentials...</pre>
<script>
fetch("/ice-servers?call=7").then(r => r.json()).then(server => {
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
        # The application knows its logged-in user; here, a made-up one.  The
        # call goes into the user id, so that hanging up finds its
        # allocations (see Telephony.hangUp).
        call = (request.args.get(b"call") or [b"0"])[0].decode("ascii", "replace")
        username, password = mintRESTCredential(
            self._secret, callUser(call), self._ttl, self._reactor.seconds()
        )
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        body = {"urls": self._urls, "username": username, "credential": password}
        return json.dumps(body).encode("utf-8")


class HangUp(Resource):
    """
    C{POST /hangup?call=ID}: the call is over; end its allocations.
    """

    isLeaf = True

    def __init__(self, telephony: Telephony) -> None:
        super().__init__()
        self._telephony = telephony

    def render_POST(self, request: Any) -> bytes:
        call = (request.args.get(b"call") or [b""])[0].decode("ascii", "replace")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"ended": self._telephony.hangUp(call)}).encode("utf-8")


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


def callUser(call: str) -> str:
    """
    The user id of the REST credentials minted for a call.
    """
    return f"call-{call}.caller-42"


@implementer(IClientCredentialStore)
class SIPAccounts:
    """
    The application's SIP accounts, as a credential store: an account may
    use the relay with its SIP password, from the office network only.
    """

    def __init__(self, accounts: Dict[str, str]) -> None:
        self._keys = StaticCredentials(REALM, accounts)

    def keysFor(self, username: str, realm: str, algorithm: int) -> List[bytes]:
        # Without the client's address, no key: the office rule cannot hold.
        return []

    def keysForClient(
        self,
        username: str,
        realm: str,
        algorithm: int,
        clientAddress: TransportAddress,
        transport: Optional[str],
    ) -> List[bytes]:
        if ipaddress.ip_address(clientAddress.host) not in OFFICE:
            return []
        return self._keys.keysFor(username, realm, algorithm)

    def usernameForHash(self, userhash: bytes, realm: str) -> Optional[str]:
        return self._keys.usernameForHash(userhash, realm)


@attr.define
class CallRecord:
    """
    One allocation's record: who, when, what it relayed.
    """

    username: str
    relayed: str
    events: List[str] = attr.Factory(list)
    usage: Optional[Dict[str, Any]] = None


@implementer(IAllocationObserver)
class CallRecords:
    """
    Keeps a record of every allocation, for billing and support.
    """

    def __init__(self) -> None:
        self.records: Dict[Allocation, CallRecord] = {}

    def allocationCreated(self, allocation: Allocation) -> None:
        self.records[allocation] = CallRecord(allocation.username, str(allocation.relayedAddress))
        self.records[allocation].events.append("created")

    def allocationRefreshed(self, allocation: Allocation, lifetime: float) -> None:
        self.records[allocation].events.append(f"refreshed for {lifetime:g} s")

    def allocationPermissionAdded(self, allocation: Allocation, host: str) -> None:
        self.records[allocation].events.append(f"permission for {host}")

    def allocationEnded(self, allocation: Allocation, reason: str, usage: Dict[str, Any]) -> None:
        record = self.records[allocation]
        record.events.append(f"ended: {reason}")
        record.usage = usage


class Telephony:
    """
    The application's side of the relay: its accounts, records, blocked
    peers, and hanging up.

    @ivar relay: the embedded relay.
    @ivar records: the allocation records.
    @ivar blockedPeers: IP addresses the fraud desk blocked.
    """

    def __init__(self) -> None:
        self.relay: Optional[RelayService] = None
        self.accounts = SIPAccounts({"alice": "alice's SIP password"})
        self.records = CallRecords()
        self.blockedPeers: Set[str] = set()

    def peerFilter(self, allocation: Allocation, peer: TransportAddress) -> Optional[str]:
        """
        Refuse peers the fraud desk blocked (after the relay's policy).
        """
        if peer.host in self.blockedPeers:
            return "blocked by the fraud desk"
        return None

    def hangUp(self, call: str) -> int:
        """
        End the allocations of a call's credentials.

        @return: how many were ended.
        """
        assert self.relay is not None
        suffix = ":" + callUser(call)
        return self.relay.endAllocations(
            predicate=lambda allocation: allocation.username.endswith(suffix),
            reason=f"call {call} hung up",
        )


@attr.define
class Application:
    """
    The application's service tree and its parts.
    """

    services: MultiService
    relay: RelayService
    telephony: Telephony


def makeApplication(
    reactor: Any, httpPort: int = 8080, turnPort: int = 3478, secret: bytes | None = None
) -> Application:
    """
    Build the application's service tree, the relay attached to it.

    @return: the tree's root, the relay and the application's telephony
        side.
    """
    secret = secret or os.urandom(16).hex().encode()
    application = MultiService()
    telephony = Telephony()
    relay = makeRelayService(
        buildConfig(
            {
                "listen": [
                    f"udp:{turnPort}:interface=127.0.0.1",
                    f"tcp:{turnPort}:interface=127.0.0.1",
                ],
                "static-auth-secret": [secret.decode()],
                "realm": REALM,
                # A demo on loopback: the browsers' peers are local too.
                "allow-loopback-peers": True,
            }
        ),
        reactor,
        credentials=telephony.accounts,
        observers=[telephony.records],
        peerFilter=telephony.peerFilter,
    )
    telephony.relay = relay
    relay.setServiceParent(application)
    urls = [
        f"turn:127.0.0.1:{turnPort}?transport=udp",
        f"turn:127.0.0.1:{turnPort}?transport=tcp",
    ]
    root = Resource()
    root.putChild(b"", Page())
    root.putChild(b"ice-servers", IceServers(reactor, secret, urls, ttl=3600))
    root.putChild(b"hangup", HangUp(telephony))
    web = endpointService(f"tcp:{httpPort}:interface=127.0.0.1", Site(root), reactor=reactor)
    web.setServiceParent(application)
    return Application(application, relay, telephony)


def main() -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # The application, not the library, decides where logs go.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    application = makeApplication(reactor).services
    application.startService()
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
