"""
TURN over TLS through real sockets on 127.0.0.1: certificates replaced
while connections stay up, ALPN, the protocol versions refused, and the
handshake deadline.

The relay runs in-process on the global reactor; the clients are Twisted
TLS clients in the same process that record the certificate they were
served.  Certificates are compared by their SHA-256 fingerprints.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import LogLevel
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase

from tests._assertions import TURNTestCase
from tests._relays import LoopbackRelay, ServerConnections, startRelay
from tests._sockets import TURNStreamClient, UnverifiedClient, streamTURNClient
from tests._timing import PROMPTLY, reactor, within
from turnrelay.stun import attributes as A
from turnrelay.transports.tls import ALPN_STUN_TURN, fingerprint, makeSelfSignedCertificate

# The relay's handshake deadline in these tests (the smallest allowed).
HANDSHAKE_TIMEOUT = 1.0


class CertificateFiles:
    """
    The certificate files a relay is configured with, and two certificates
    (A and B) to put in them.

    @ivar certPath: the configured certificate file.
    @ivar keyPath: the configured key file.
    @ivar pems: the PEM certificate of A and of B, by name.
    """

    def __init__(self, testCase: TestCase) -> None:
        base = FilePath(testCase.mktemp())
        base.makedirs()
        self.certPath = base.child("turns.crt")
        self.keyPath = base.child("turns.key")
        self.pems: Dict[str, bytes] = {}
        self._keys: Dict[str, bytes] = {}
        for name in ("A", "B"):
            cert, key = base.child(f"{name}.crt"), base.child(f"{name}.key")
            makeSelfSignedCertificate(cert.path, key.path)
            self.pems[name] = cert.getContent()
            self._keys[name] = key.getContent()

    def install(self, name: str) -> None:
        """
        Put certificate C{name} in the configured files, key first; each
        file is replaced at once (written aside, then renamed), but a
        watcher may look between the two and find a key that does not fit
        the old certificate, which it must survive.
        """
        self.keyPath.setContent(self._keys[name])
        self.certPath.setContent(self.pems[name])

    def spoil(self) -> None:
        """
        Overwrite the configured files with text that is not PEM.
        """
        self.keyPath.setContent(b"not a key\n")
        self.certPath.setContent(b"not a certificate either\n")

    def fingerprint(self, name: str) -> str:
        """
        @return: the SHA-256 fingerprint of certificate C{name}.
        """
        return fingerprint(x509.load_pem_x509_certificate(self.pems[name]))

    def trusting(
        self, name: str, protocols: Optional[Sequence[bytes]] = None
    ) -> IOpenSSLClientConnectionCreator:
        """
        @return: client options that trust only certificate C{name} (for
            the name C{localhost}, which it is issued for), and offer the
            ALPN C{protocols}.
        """
        return optionsForClientTLS(
            "localhost",
            trustRoot=Certificate.loadPEM(self.pems[name]),
            acceptableProtocols=list(protocols) if protocols else None,
        )


def servedFingerprint(client: TURNStreamClient) -> str:
    """
    @return: the fingerprint of the certificate the server presented to
        C{client} in its handshake.
    """
    certificate = client.transport.getPeerCertificate()  # type: ignore[union-attr]
    return fingerprint(certificate.to_cryptography())


def startTLSRelay(testCase: TestCase, files: CertificateFiles, **settings: Any) -> LoopbackRelay:
    """
    Start a relay with one TLS listener on 127.0.0.1 serving C{files}.
    """
    relay = startRelay(
        testCase,
        listen=["tls:0:interface=127.0.0.1"],
        tls_cert=files.certPath.path,
        tls_key=files.keyPath.path,
        **settings,
    )
    ServerConnections(testCase, relay, "tls")
    return relay


async def handshake(
    testCase: TestCase, relay: LoopbackRelay, tls: IOpenSSLClientConnectionCreator
) -> TURNStreamClient:
    """
    Connect over TLS and complete the handshake (bounded).
    """
    client = await streamTURNClient(testCase, relay.address("tls"), tls)
    await within(client.whenHandshaken(), PROMPTLY, "TLS handshake")
    return client


async def assertBinding(testCase: TURNTestCase, client: TURNStreamClient) -> None:
    """
    Assert that C{client} gets its own address back for a Binding request.
    """
    response = await within(client.session.binding(), PROMPTLY, "Binding response")
    testCase.assertSuccess(response)
    testCase.assertEqual(response.get(A.XOR_MAPPED_ADDRESS), client.address)


class CertificateReloadTests(TURNTestCase, TestCase):
    """
    New certificate files are served to new handshakes; established
    connections go on with theirs.
    """

    timeout = 30

    async def test_reloadKeepsConnections(self) -> None:
        """
        After reloadTLS() a new handshake gets the new certificate and an
        established connection still answers; a broken replacement is
        refused with an error logged, and the last good certificate stays in
        service.
        """
        files = CertificateFiles(self)
        files.install("A")
        relay = startTLSRelay(self, files, tls_check_interval=0)
        first = await handshake(self, relay, files.trusting("A"))
        self.assertEqual(servedFingerprint(first), files.fingerprint("A"))
        await assertBinding(self, first)

        files.install("B")
        self.assertTrue(relay.service.reloadTLS())
        second = await handshake(self, relay, UnverifiedClient())
        self.assertEqual(servedFingerprint(second), files.fingerprint("B"))
        await assertBinding(self, second)
        await assertBinding(self, first)
        self.assertEqual(servedFingerprint(first), files.fingerprint("A"))
        # A client that trusts only B completes its handshake.
        await assertBinding(self, await handshake(self, relay, files.trusting("B")))

        files.spoil()
        self.assertFalse(relay.service.reloadTLS())
        errors = relay.events.matching(
            lambda event: (
                event["log_level"] == LogLevel.error
                and "not reloaded" in event.get("log_format", "")
            )
        )
        self.assertEqual(len(errors), 1, [event.get("log_format") for event in relay.events.events])
        self.assertIn(files.certPath.path, errors[0]["reason"])
        third = await handshake(self, relay, UnverifiedClient())
        self.assertEqual(servedFingerprint(third), files.fingerprint("B"))
        await assertBinding(self, third)
        await assertBinding(self, first)
        await assertBinding(self, second)


class HandshakeTests(TURNTestCase, TestCase):
    """
    What the relay accepts in a TLS handshake, and how long it waits for one.
    """

    timeout = 20

    def setUp(self) -> None:
        self.files = CertificateFiles(self)
        self.files.install("A")
        self.relay = startTLSRelay(
            self, self.files, tls_check_interval=0, tls_handshake_timeout=HANDSHAKE_TIMEOUT
        )

    async def test_alpnStunTurn(self) -> None:
        """
        A client offering the ALPN label stun.turn gets it (RFC 7443 section 4).
        """
        client = await handshake(
            self, self.relay, self.files.trusting("A", protocols=[b"h2", ALPN_STUN_TURN])
        )
        self.assertEqual(client.transport.negotiatedProtocol, ALPN_STUN_TURN)  # type: ignore[union-attr]
        await assertBinding(self, client)

    async def test_alpnOtherProtocolsOnly(self) -> None:
        """
        A client offering only other ALPN labels still completes the
        handshake, without a protocol, and is served.
        """
        client = await handshake(self, self.relay, self.files.trusting("A", protocols=[b"h2"]))
        self.assertIsNone(client.transport.negotiatedProtocol)  # type: ignore[union-attr]
        await assertBinding(self, client)

    async def _pinnedHandshake(self, version: int) -> TURNStreamClient:
        client = await streamTURNClient(self, self.relay.address("tls"), UnverifiedClient(version))
        try:
            await within(client.whenHandshaken(), PROMPTLY, "TLS handshake")
        except SSL.Error:
            pass
        return client

    async def test_tls12Accepted(self) -> None:
        """
        A client that speaks only TLS 1.2 is served (the minimum, BCP 195).
        """
        client = await self._pinnedHandshake(SSL.TLS1_2_VERSION)
        self.assertTrue(client.handshaken)
        await assertBinding(self, client)

    async def test_tls11Refused(self) -> None:
        """
        A client that speaks only TLS 1.1 is refused with a protocol_version
        alert: the relay negotiates TLS 1.2 or later (RFC 8996, BCP 195).
        """
        client = await self._pinnedHandshake(SSL.TLS1_1_VERSION)
        self.assertFalse(client.handshaken)
        reason = client.lostReason
        assert reason is not None
        if reason.check(SSL.Error) and "no protocols available" in str(reason.value):
            raise SkipTest("this OpenSSL cannot offer TLS 1.1 at all")
        self.assertTrue(reason.check(SSL.Error), reason)
        self.assertIn("protocol version", str(reason.value).replace("_", " "))

    async def test_handshakeTimeout(self) -> None:
        """
        A connection that never starts a TLS handshake is closed once
        tls-handshake-timeout has passed; a connection that completed its
        handshake earlier is kept.
        """
        served = await handshake(self, self.relay, self.files.trusting("A"))
        silent = await streamTURNClient(self, self.relay.address("tls"))
        started = reactor.seconds()
        await within(
            silent.whenClosed(), HANDSHAKE_TIMEOUT + PROMPTLY, "closing the silent connection"
        )
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, HANDSHAKE_TIMEOUT * 0.9)
        limits = self.relay.service.streamLimits
        assert limits is not None
        self.assertEqual(limits.closed["handshake-timeout"], 1)
        await assertBinding(self, served)
