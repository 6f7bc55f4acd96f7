"""
A sans-IO TURN client for controller tests: it builds authenticated
requests, answers the 401 challenge and decodes what the server sends back
through a L{FakeClientLink}.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence, Tuple

from twisted.trial.unittest import SynchronousTestCase

from turnrelay.auth.credentials import ChainedCredentials, RESTSecrets, StaticCredentials
from turnrelay.auth.longterm import LongTermAuthenticator
from turnrelay.auth.nonce import NonceMinter
from turnrelay.stun import attributes as A
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.credentials import longTermKey
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.testing import FakeClientLink, FakeUDPPort, FakeUDPReactor
from turnrelay.turn.limits import RelayLimits
from turnrelay.turn.policy import PeerPolicy
from turnrelay.turn.relay import RelayPortPool
from turnrelay.turn.server import TURNServer

REALM = "example.org"
USERS = {"alice": "alice-password", "bob": "bob-password"}
REST_SECRETS = [b"north-secret-1", b"south-secret-2"]
RELAY_IP = "198.51.100.1"
RELAY_IP6 = "2001:db8:1::1"
# Peers in the tests: documentation addresses the harness's policy allows;
# 203.0.113.0/24 stays denied.  No packet leaves the fake reactor.
ALLOWED = ["198.51.100.0/24", "2001:db8:1::/48"]
PEER_A = TransportAddress("198.51.100.20", 5000)
PEER_B = TransportAddress("198.51.100.21", 6000)
DENIED_PEER = TransportAddress("203.0.113.5", 5000)
PEER_6 = TransportAddress("2001:db8:1::20", 7000)
# The SOFTWARE of the test client's first request.
CLIENT_SOFTWARE = "turnrelay tests, sans-IO client"


class Harness:
    """
    A TURN server on a fake reactor, with two static users and REST secrets.
    """

    def __init__(
        self,
        limits: RelayLimits = RelayLimits(),
        minPort: int = 50000,
        maxPort: int = 50099,
        externalIP: Optional[str] = None,
        software: Optional[str] = None,
        relayIP: Optional[str] = RELAY_IP,
        relayIP6: Optional[str] = None,
    ) -> None:
        self.reactor = FakeUDPReactor()
        credentials = ChainedCredentials(
            [StaticCredentials(REALM, USERS), RESTSecrets(self.reactor, REST_SECRETS)]
        )
        self.server = TURNServer(
            clock=self.reactor,
            software=software,
            authenticator=LongTermAuthenticator(REALM, credentials, NonceMinter(self.reactor)),
            peerPolicy=PeerPolicy(allow=ALLOWED),
            relayPorts=self.pool(relayIP, minPort, maxPort),
            relayPorts6=self.pool(relayIP6, minPort, maxPort),
            limits=limits,
            externalIP=externalIP,
        )
        self._nextClientPort = 40000

    def pool(self, relayIP: Optional[str], minPort: int, maxPort: int) -> Optional[RelayPortPool]:
        return None if relayIP is None else RelayPortPool(self.reactor, relayIP, minPort, maxPort)

    def client(
        self,
        username: str = "alice",
        password: Optional[str] = None,
        host: str = "192.0.2.50",
        sha256: bool = False,
        transport: str = "udp",
    ) -> TURNClient:
        self._nextClientPort += 1
        link = FakeClientLink(
            TransportAddress(host, self._nextClientPort),
            TransportAddress("192.0.2.1", 3478),
            transport,
        )
        if password is None:
            password = USERS.get(username, "")
        return TURNClient(self.server, link, username, password, sha256)

    def relayPort(self, client: TURNClient) -> FakeUDPPort:
        allocation = client.link.allocation
        assert allocation is not None
        port = allocation.relayPort
        assert isinstance(port, FakeUDPPort)
        return port


class TURNClient:
    """
    One client of the harness's server, on its own 5-tuple.
    """

    def __init__(
        self,
        server: TURNServer,
        link: FakeClientLink,
        username: str,
        password: str,
        sha256: bool,
    ) -> None:
        self.server = server
        self.link = link
        self.username = username
        self.password = password
        self.sha256 = sha256
        self.nonce: Optional[str] = None
        self.realm: Optional[str] = None
        self.lastRequest = b""

    def key(self) -> bytes:
        algorithm = A.PASSWORD_ALGORITHM_SHA256 if self.sha256 else A.PASSWORD_ALGORITHM_MD5
        return longTermKey(self.username, self.realm or REALM, self.password, algorithm)

    def send(self, data: bytes) -> Optional[STUNMessage]:
        """
        Hand bytes to the server; decode its one answer, if any.
        """
        self.lastRequest = data
        self.server.stunReceived(data, self.link)
        sent = self.link.popSent()
        assert not self.link.sent, "more than one answer"
        return None if sent is None else decodeMessage(sent)

    def build(
        self,
        method: int,
        attributes: Sequence[Tuple[int, Any]] = (),
        tid: Optional[bytes] = None,
        fingerprint: bool = False,
    ) -> bytes:
        """
        An authenticated request with the current nonce.
        """
        message = STUNMessage(method, MessageClass.REQUEST, tid or os.urandom(12), list(attributes))
        message.add(A.USERNAME, self.username)
        message.add(A.REALM, self.realm or REALM)
        message.add(A.NONCE, self.nonce or "")
        if self.sha256:
            algorithms = (
                A.PasswordAlgorithm(A.PASSWORD_ALGORITHM_SHA256),
                A.PasswordAlgorithm(A.PASSWORD_ALGORITHM_MD5),
            )
            message.add(A.PASSWORD_ALGORITHMS, algorithms)
            message.add(A.PASSWORD_ALGORITHM, algorithms[0])
        return message.encode(key=self.key(), sha256=self.sha256, fingerprint=fingerprint)

    def request(
        self,
        method: int,
        attributes: Iterable[Tuple[int, Any]] = (),
        tid: Optional[bytes] = None,
        fingerprint: bool = False,
    ) -> STUNMessage:
        """
        Send an authenticated request, doing the 401/438 dance first if
        needed, and return the final response.
        """
        attributes = list(attributes)
        if self.nonce is None:
            self.challenge(method)
        response = self.send(self.build(method, attributes, tid, fingerprint))
        assert response is not None, "no answer"
        if (
            response.messageClass == MessageClass.ERROR_RESPONSE
            and response.get(A.ERROR_CODE).code == 438
        ):
            self.nonce = response.get(A.NONCE)
            response = self.send(self.build(method, attributes, tid, fingerprint))
            assert response is not None
        return response

    def challenge(self, method: int = Method.ALLOCATE) -> STUNMessage:
        """
        Send an unauthenticated request and keep the realm and nonce of the 401.

        The request names its software, as many clients' do: over UDP, that
        makes it large enough for the full challenge (PASSWORD-ALGORITHMS
        included) within the relay's amplification limit.
        """
        request = STUNMessage(
            method, MessageClass.REQUEST, os.urandom(12), [(A.SOFTWARE, CLIENT_SOFTWARE)]
        )
        response = self.send(request.encode())
        assert response is not None
        self.nonce = response.get(A.NONCE)
        self.realm = response.get(A.REALM)
        return response

    def allocate(self, *attributes: Tuple[int, Any], tid: Optional[bytes] = None) -> STUNMessage:
        return self.request(
            Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP), *attributes], tid
        )

    def indication(self, method: int, *attributes: Tuple[int, Any]) -> None:
        data = STUNMessage(
            method, MessageClass.INDICATION, os.urandom(12), list(attributes)
        ).encode()
        self.server.stunReceived(data, self.link)


class TURNTestCase(SynchronousTestCase):
    """
    Assertions shared by the controller tests.
    """

    def assertSuccess(self, response: Optional[STUNMessage]) -> STUNMessage:
        assert response is not None, "no answer"
        self.assertEqual(
            response.messageClass,
            MessageClass.SUCCESS_RESPONSE,
            f"error {response.get(A.ERROR_CODE)}",
        )
        return response

    def assertError(self, response: Optional[STUNMessage], code: int) -> STUNMessage:
        assert response is not None, "no answer"
        self.assertEqual(response.messageClass, MessageClass.ERROR_RESPONSE)
        self.assertEqual(response.get(A.ERROR_CODE).code, code)
        return response
