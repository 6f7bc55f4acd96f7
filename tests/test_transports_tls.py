"""
Tests for L{turnrelay.transports.tls}: loading, reloading, ALPN.
"""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from turnrelay.transports.tls import (
    ALPN_STUN_TURN,
    ReloadingTLSOptions,
    _selectALPN,
    fingerprint,
    loadCertificateOptions,
    makeSelfSignedCertificate,
)


class CertificateFilesMixin:
    def makeCertificate(
        self, name: str, hostnames: tuple[str, ...] = ("localhost",)
    ) -> tuple[str, str]:
        directory = FilePath(self.mktemp())  # type: ignore[attr-defined]
        cert, key = directory.child(f"{name}-cert.pem"), directory.child(f"{name}-key.pem")
        makeSelfSignedCertificate(cert.path, key.path, hostnames)
        return cert.path, key.path


class LoadTests(CertificateFilesMixin, SynchronousTestCase):
    """
    Tests for L{loadCertificateOptions} and L{makeSelfSignedCertificate}.
    """

    def test_selfSigned(self) -> None:
        """
        The demo certificate names its hosts and its key is private to its owner.
        """
        cert, key = self.makeCertificate("demo", ("localhost", "127.0.0.1"))
        options, certificate = loadCertificateOptions(FilePath(cert), FilePath(key))
        self.assertEqual(certificate.subject.rfc4514_string(), "CN=turnrelay demo")
        extension = certificate.extensions[0].value
        self.assertIn("127.0.0.1", str(extension))
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)

    def test_modernTLSOnly(self) -> None:
        """
        The context refuses TLS 1.0 and 1.1 (BCP 195, checklist item 4).
        """
        cert, key = self.makeCertificate("demo")
        options, _ = loadCertificateOptions(FilePath(cert), FilePath(key))
        # set_options(0) changes nothing and returns the options in force.
        current = options.getContext().set_options(0)
        for option in (SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1, SSL.OP_NO_COMPRESSION):
            self.assertTrue(current & option)

    def test_errors(self) -> None:
        """
        A missing file, a file that is not PEM and a key that does not fit
        the certificate are refused, naming the file.
        """
        cert, key = self.makeCertificate("a")
        otherCert, otherKey = self.makeCertificate("b")
        junk = FilePath(self.mktemp())
        junk.setContent(b"not a certificate")
        cases = [
            (FilePath("/nonexistent/cert.pem"), FilePath(key), "/nonexistent/cert.pem"),
            (junk, FilePath(key), junk.path),
            (FilePath(cert), junk, junk.path),
            (FilePath(cert), FilePath(otherKey), "does not fit"),
        ]
        for certPath, keyPath, expected in cases:
            error = self.assertRaises(ValueError, loadCertificateOptions, certPath, keyPath)
            self.assertIn(expected, str(error))

    def test_alpn(self) -> None:
        """
        ALPN selects stun.turn when offered (RFC 7443) and otherwise goes on
        without ALPN rather than failing the handshake.
        """
        self.assertEqual(_selectALPN(None, [b"h2", ALPN_STUN_TURN]), ALPN_STUN_TURN)  # type: ignore[arg-type]
        self.assertIs(_selectALPN(None, [b"h2"]), SSL.NO_OVERLAPPING_PROTOCOLS)  # type: ignore[arg-type]


class ReloadTests(CertificateFilesMixin, SynchronousTestCase):
    """
    Tests for L{ReloadingTLSOptions}.
    """

    def setUp(self) -> None:
        self.cert, self.key = self.makeCertificate("live")
        self.clock = Clock()
        self.options = ReloadingTLSOptions(self.clock, self.cert, self.key, checkInterval=10)

    def replaceWith(self, name: str) -> None:
        cert, key = self.makeCertificate(name)
        FilePath(self.cert).setContent(FilePath(cert).getContent())
        FilePath(self.key).setContent(FilePath(key).getContent())
        # Make the change visible whatever the file system's time resolution.
        for path in (self.cert, self.key):
            os.utime(path, (1, 1))

    def test_connection(self) -> None:
        """
        New connections are built from the current certificate.
        """
        connection = self.options.serverConnectionForTLS(None)
        self.assertIsInstance(connection, SSL.Connection)

    def test_reload(self) -> None:
        """
        reload() puts new files in service and logs the new fingerprint.
        """
        old = fingerprint(self.options.certificate)
        self.replaceWith("new")
        with capturedLogs() as events:
            self.assertTrue(self.options.reload())
        new = fingerprint(self.options.certificate)
        self.assertNotEqual(new, old)
        self.assertEqual([e["fingerprint"] for e in events], [new])

    def test_brokenReplacementKeepsOld(self) -> None:
        """
        A corrupt replacement is refused with an error log, and the old
        certificate stays in service.
        """
        old = fingerprint(self.options.certificate)
        FilePath(self.cert).setContent(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        with capturedLogs() as events:
            self.assertFalse(self.options.reload())
        self.assertEqual(fingerprint(self.options.certificate), old)
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn(self.cert, event["reason"])
        self.assertIsInstance(self.options.serverConnectionForTLS(None), SSL.Connection)

    def test_watching(self) -> None:
        """
        Changed files are noticed on the next look and reloaded; unchanged
        ones are not re-read.
        """
        self.options.startWatching()
        self.addCleanup(self.options.stopWatching)
        old = fingerprint(self.options.certificate)
        with capturedLogs() as events:
            self.clock.advance(10)
        self.assertEqual(list(events), [])
        self.replaceWith("watched")
        self.clock.advance(10)
        self.assertNotEqual(fingerprint(self.options.certificate), old)

    def test_stopWatching(self) -> None:
        """
        stopWatching leaves no timer behind.
        """
        self.options.startWatching()
        self.options.stopWatching()
        self.assertEqual(self.clock.getDelayedCalls(), [])
