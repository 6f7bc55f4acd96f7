"""
The TURN client of the tests, without I/O, and the credentials it shares
with the relays of the tests.

L{TURNSession} holds one client's long-term credentials (RFC 8489 section
9.2): it builds requests and signs them with the nonce it has learned,
writes the 401/438 exchange once (L{TURNSession.exchange}, a generator that
yields each request and is sent each response), and checks the integrity of
what comes back.  Whatever carries the bytes drives it:

  - L{TURNClient} hands them straight to a controller and its answer comes
    back at once (tests on the fake reactor);
  - L{tests._sockets.SocketTURNSession} writes them to a UDP socket or a
    TCP or TLS connection and waits for the answer.

The independent clients of the interoperability tests (C{tests/interop/})
have their own code on purpose.
"""

from __future__ import annotations

import os
from typing import Any, Generator, Iterable, Optional, Sequence, Tuple

from tests._assertions import errorCode
from turnrelay.stun import attributes as A
from turnrelay.stun.credentials import longTermKey
from turnrelay.stun.message import MessageClass, Method, STUNMessage, decodeMessage
from turnrelay.testing import FakeClientLink
from turnrelay.turn.server import TURNServer

# The credentials every relay of the tests knows -------------------------------

REALM = "example.org"
USERS = {"alice": "alice-password", "bob": "bob-password"}
USERNAME = "alice"
PASSWORD = USERS[USERNAME]
# TURN REST API shared secrets, the first current, the second being rotated
# out.
REST_SECRETS = ("north-secret-1", "south-secret-2")
REST_SECRET = REST_SECRETS[0]

# The SOFTWARE of a client's first, unauthenticated request.
CLIENT_SOFTWARE = "turnrelay tests, sans-IO client"

Attributes = Iterable[Tuple[int, Any]]
Exchange = Generator[bytes, STUNMessage, STUNMessage]
"""
A request's exchange: yields each request to send, is sent each response,
and returns the final response.
"""


class TURNSession:
    """
    One client's requests and credentials, whatever carries them.

    @ivar username: the user.
    @ivar password: its password.
    @ivar sha256: whether to use SHA-256 (RFC 8489 section 9.2.2) rather
        than MD5 for the key and MESSAGE-INTEGRITY-SHA256 for integrity.
    @ivar realm: the realm of the last challenge, once challenged.
    @ivar nonce: the nonce in use, once challenged.
    """

    def __init__(
        self, username: str = USERNAME, password: str = PASSWORD, sha256: bool = False
    ) -> None:
        self.username = username
        self.password = password
        self.sha256 = sha256
        self.realm: Optional[str] = None
        self.nonce: Optional[str] = None

    def key(self) -> bytes:
        """
        The long-term key, in the realm of the last challenge.
        """
        algorithm = A.PASSWORD_ALGORITHM_SHA256 if self.sha256 else A.PASSWORD_ALGORITHM_MD5
        return longTermKey(self.username, self.realm or REALM, self.password, algorithm)

    def challengeRequest(self, method: int = Method.ALLOCATE) -> bytes:
        """
        An unauthenticated request, answered with the realm and a nonce.

        It names its software, as many clients' do: over UDP, that makes it
        large enough for the full challenge (PASSWORD-ALGORITHMS included)
        within the relay's amplification limit.
        """
        request = STUNMessage(
            method, MessageClass.REQUEST, os.urandom(12), [(A.SOFTWARE, CLIENT_SOFTWARE)]
        )
        return request.encode()

    def build(
        self,
        method: int,
        attributes: Sequence[Tuple[int, Any]] = (),
        tid: Optional[bytes] = None,
        fingerprint: bool = False,
    ) -> bytes:
        """
        A request signed with the current nonce.

        @param tid: its transaction ID; a fresh one by default.
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

    def buildIndication(self, method: int, *attributes: Tuple[int, Any]) -> bytes:
        """
        An indication (Send, say): never signed.
        """
        return STUNMessage(
            method, MessageClass.INDICATION, os.urandom(12), list(attributes)
        ).encode()

    def learn(self, challenge: STUNMessage) -> None:
        """
        Keep the nonce (and realm) of a 401 or 438 answer.
        """
        self.nonce = challenge.get(A.NONCE)
        self.realm = challenge.get(A.REALM, self.realm)

    def checkIntegrity(self, response: STUNMessage) -> STUNMessage:
        """
        Check that a response to a signed request is signed with our key: a
        success must be, an error may not be (the server could not tell who
        asked), but a signature present must be right.

        @return: C{response}.
        @raise AssertionError: the signature is missing or wrong.
        """
        if response.messageIntegritySHA256 is not None:
            valid = response.verifyMessageIntegritySHA256(self.key())
        elif response.messageIntegrity is not None:
            valid = response.verifyMessageIntegrity(self.key())
        else:
            valid = response.messageClass != MessageClass.SUCCESS_RESPONSE
        if not valid:
            raise AssertionError(f"response without valid MESSAGE-INTEGRITY: {response!r}")
        return response

    def exchange(
        self,
        method: int,
        attributes: Attributes = (),
        tid: Optional[bytes] = None,
        fingerprint: bool = False,
    ) -> Exchange:
        """
        An authenticated request: first an unauthenticated one to learn the
        realm and nonce if none is known, and once more with a fresh nonce
        after 438 (RFC 8489 section 9.2.4).

        @return: the final response, its integrity checked.
        """
        attributes = list(attributes)
        if self.nonce is None:
            self.learn((yield self.challengeRequest(method)))
        response = yield self.build(method, attributes, tid, fingerprint)
        if errorCode(response) == 438:
            self.learn(response)
            response = yield self.build(method, attributes, tid, fingerprint)
        return self.checkIntegrity(response)


class TURNClient(TURNSession):
    """
    A client of a controller, on its own 5-tuple, without a socket: what it
    sends goes straight to L{TURNServer.stunReceived}, and the answer comes
    back through its L{FakeClientLink} at once.

    @ivar server: the controller.
    @ivar link: the client's link, which holds its allocation once made.
    @ivar lastRequest: the last bytes sent.
    """

    def __init__(
        self,
        server: TURNServer,
        link: FakeClientLink,
        username: str = USERNAME,
        password: str = PASSWORD,
        sha256: bool = False,
    ) -> None:
        super().__init__(username, password, sha256)
        self.server = server
        self.link = link
        self.lastRequest = b""

    def send(self, data: bytes) -> Optional[STUNMessage]:
        """
        Hand bytes to the server; decode its one answer, if any.
        """
        self.lastRequest = data
        self.server.stunReceived(data, self.link)
        sent = self.link.popSent()
        assert not self.link.sent, "more than one answer"
        return None if sent is None else decodeMessage(sent)

    def request(
        self,
        method: int,
        attributes: Attributes = (),
        tid: Optional[bytes] = None,
        fingerprint: bool = False,
    ) -> STUNMessage:
        """
        Send an authenticated request (see L{TURNSession.exchange}).

        @return: the final response.
        """
        exchange = self.exchange(method, attributes, tid, fingerprint)
        data = next(exchange)
        while True:
            response = self.send(data)
            assert response is not None, "no answer"
            try:
                data = exchange.send(response)
            except StopIteration as done:
                final: STUNMessage = done.value
                return final

    def challenge(self, method: int = Method.ALLOCATE) -> STUNMessage:
        """
        Send an unauthenticated request and keep the realm and nonce of the
        401.

        @return: the 401.
        """
        response = self.send(self.challengeRequest(method))
        assert response is not None, "no answer"
        self.learn(response)
        return response

    def allocate(self, *attributes: Tuple[int, Any], tid: Optional[bytes] = None) -> STUNMessage:
        """
        Ask for a UDP allocation with C{attributes}.
        """
        return self.request(
            Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, A.TRANSPORT_UDP), *attributes], tid
        )

    def indication(self, method: int, *attributes: Tuple[int, Any]) -> None:
        """
        Send an indication; nothing comes back.
        """
        self.server.stunReceived(self.buildIndication(method, *attributes), self.link)
