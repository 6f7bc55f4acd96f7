# -*- test-case-name: tests.test_transports_tls -*-
"""
TLS for TURN over TCP (C{turns:}): server options that follow their
certificate files, and a self-signed certificate for the demo.

Twisted's C{ssl:} endpoints load certificates once.  L{ReloadingTLSOptions}
re-reads the files when they change (it polls them), on SIGHUP and on an
admin's call; established connections keep the certificate they started
with, new handshakes get the new one, and a broken replacement leaves the
old one in service.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
from typing import Any, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import LoopingCall
from twisted.python.filepath import FilePath
from zope.interface import implementer

from turnrelay.logs import Logger, LogLevels

# RFC 7443: the ALPN label of STUN and TURN over TLS.
ALPN_STUN_TURN = b"stun.turn"


def _selectALPN(connection: SSL.Connection, offered: list[bytes]) -> Any:
    # Take stun.turn if offered; otherwise go on without ALPN rather than fail
    # the handshake, as Twisted's own callback would.
    if ALPN_STUN_TURN in offered:
        return ALPN_STUN_TURN
    return SSL.NO_OVERLAPPING_PROTOCOLS


def loadCertificateOptions(
    certPath: FilePath[str], keyPath: FilePath[str], chainPath: Optional[FilePath[str]] = None
) -> Tuple[CertificateOptions, x509.Certificate]:
    """
    Read a PEM certificate, its key and an optional chain into server options:
    TLS 1.2 or later, Twisted's forward-secret cipher list, no compression,
    ALPN C{stun.turn} accepted (RFC 7443; BCP 195 via RFC 8489 section 6.2.3).

    @return: the options and the certificate.
    @raise ValueError: a file is missing, unreadable or not PEM, or the key
        does not match the certificate; the message says which.
    """

    def read(path: FilePath[str], what: str) -> bytes:
        try:
            return path.getContent()
        except OSError as e:
            if e.errno == errno.EACCES:
                fix = "make it readable by the user the relay runs as (the unit's User=)"
            elif e.errno == errno.ENOENT:
                fix = "give the path of an existing PEM file"
            else:
                fix = "give a readable PEM file"
            raise ValueError(f"{what} {path.path}: {e.strerror}; {fix}") from None

    certData = read(certPath, "certificate")
    keyData = read(keyPath, "private key")
    try:
        certificate = x509.load_pem_x509_certificate(certData)
    except ValueError:
        raise ValueError(f"certificate {certPath.path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"private key {keyPath.path} is not an unencrypted PEM private key"
        ) from None
    chain = []
    if chainPath is not None:
        try:
            chain = x509.load_pem_x509_certificates(read(chainPath, "certificate chain"))
        except ValueError:
            raise ValueError(f"certificate chain {chainPath.path} is not PEM") from None
    try:
        # Twisted's options take pyOpenSSL's objects.
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            certificate=crypto.X509.from_cryptography(certificate),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain] or None,
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        context = options.getContext()
        context.check_privatekey()
    except (SSL.Error, ValueError) as e:
        raise ValueError(
            f"private key {keyPath.path} does not fit certificate {certPath.path}: {e}"
        ) from None
    context.set_alpn_select_callback(_selectALPN)
    return options, certificate


def fingerprint(certificate: x509.Certificate) -> str:
    """
    @return: the certificate's SHA-256 fingerprint, colon-separated hex.
    """
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingTLSOptions:
    """
    Server TLS options that follow their certificate files.

    @ivar certificate: the certificate new handshakes get.
    @ivar reloads: how many times new files were put in service (files
        read again with the same certificate, key and chain do not count).
    @ivar reloadFailures: how many times files were read that could not be
        used (the old certificate stayed in service).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        certPath: str,
        keyPath: str,
        chainPath: Optional[str] = None,
        checkInterval: float = 60.0,
        logLevels: Optional[LogLevels] = None,
    ) -> None:
        """
        Load the files now.

        @param checkInterval: seconds between looks at the files' sizes and
            modification times, once L{startWatching} is called.
        @param logLevels: the relay's log levels.
        @raise ValueError: the files cannot be used, with the reason.
        """
        self.logLevels = logLevels
        self._clock = clock
        self._paths = (
            FilePath(certPath),
            FilePath(keyPath),
            None if chainPath is None else FilePath(chainPath),
        )
        self._options, self.certificate = loadCertificateOptions(*self._paths)
        self._contents = self._read()
        self._stamps = self._stat()
        self._checkInterval = checkInterval
        self._watcher: Optional[LoopingCall] = None
        self.reloads = 0
        self.reloadFailures = 0

    def _read(self) -> Tuple[bytes, ...]:
        # What the files held when they were loaded, to tell a real change.
        contents = []
        for path in self._paths:
            if path is not None:
                try:
                    contents.append(path.getContent())
                except OSError:
                    contents.append(b"")
        return tuple(contents)

    def _stat(self) -> Tuple[Tuple[float, int], ...]:
        stamps = []
        for path in self._paths:
            if path is None:
                continue
            path.restat(reraise=False)
            stamps.append((path.getModificationTime(), path.getsize()) if path.exists() else (0, 0))
        return tuple(stamps)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A connection for a new handshake, with the current certificate.
        """
        return SSL.Connection(self._options.getContext(), None)

    def reload(self) -> bool:
        """
        Re-read the files.  If they are not usable, keep the current
        certificate and log why.

        @return: whether the files are in service (L{True} too when they
            did not change, which is not counted as a reload).
        """
        contents = self._read()
        if contents == self._contents:
            self.log.info(
                "TLS certificate files unchanged, not reloaded: {path}", path=self._paths[0].path
            )
            return True
        try:
            options, certificate = loadCertificateOptions(*self._paths)
        except ValueError as e:
            self.reloadFailures += 1
            self.log.error(
                "TLS certificate not reloaded, the old one stays in service: {reason}",
                reason=str(e),
            )
            return False
        self._options, self.certificate = options, certificate
        self._contents = contents
        self.reloads += 1
        self.log.info(
            "TLS certificate reloaded from {path}: {subject}, SHA-256 {fingerprint}",
            path=self._paths[0].path,
            subject=certificate.subject.rfc4514_string(),
            fingerprint=fingerprint(certificate),
        )
        return True

    def checkFiles(self) -> None:
        """
        Reload if the files' sizes or modification times changed.
        """
        stamps = self._stat()
        if stamps != self._stamps:
            self._stamps = stamps
            self.reload()

    def startWatching(self) -> None:
        """
        Look at the files every C{checkInterval} seconds.
        """
        if self._watcher is None and self._checkInterval > 0:
            self._watcher = LoopingCall(self.checkFiles)
            self._watcher.clock = self._clock
            self._watcher.start(self._checkInterval, now=False)

    def stopWatching(self) -> None:
        """
        Stop looking at the files.
        """
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


def makeSelfSignedCertificate(
    certPath: str, keyPath: str, hostnames: Tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
) -> None:
    """
    Write a self-signed certificate and its key (PEM), for the demo default.

    @param hostnames: names and addresses the certificate is for.
    """

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turnrelay demo")])
    alternatives: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternatives.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .sign(key, hashes.SHA256())
    )
    keyFile = FilePath(keyPath)
    keyFile.parent().makedirs(ignoreExistingDirectory=True)
    keyFile.setContent(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyFile.chmod(0o600)
    FilePath(certPath).setContent(certificate.public_bytes(serialization.Encoding.PEM))
