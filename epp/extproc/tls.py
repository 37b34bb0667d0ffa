"""Server certificates: a self-signed one made at start-up (reference behaviour) or read from --cert-path,
optionally reloaded when the files change (--enable-cert-reload)."""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("epp.tls")


class CertificateError(ValueError):
    """--cert-path holds no usable certificate; the message names the file and what is wrong."""


@dataclass(frozen=True)
class KeyPair:
    key_pem: bytes
    cert_pem: bytes  # the leaf first, then any chain
    serial: int

    def describe(self) -> str:
        return f"serial {self.serial:x}"

    def __iter__(self):  # `key, cert = tls.self_signed()`, as callers wrote it before this type existed
        return iter((self.key_pem, self.cert_pem))


def self_signed() -> KeyPair:
    """ECDSA P-256 rather than the reference's RSA-4096: same trust model (gateways skip
    verification), but start-up takes milliseconds and handshakes are cheaper."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Inference Ext")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(key_pem, cert.public_bytes(serialization.Encoding.PEM), cert.serial_number)


def _files(path: str) -> tuple[Path, Path]:
    d = Path(path)
    return d / "tls.crt", d / "tls.key"


def parse_pair(crt_path: Path, crt: bytes, key_path: Path, key: bytes) -> KeyPair:
    """Checks what grpc would only report as a failed bind: both files parse and belong together."""
    try:
        certs = x509.load_pem_x509_certificates(crt)
    except ValueError:
        raise CertificateError(f"{crt_path} is not a valid PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        why = (
            "is encrypted (a key with a passphrase is not supported)"
            if isinstance(exc, TypeError)
            else ("is not a valid PEM private key")
        )
        raise CertificateError(f"{key_path} {why}") from None
    leaf = certs[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, pub) != private.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise CertificateError(f"{key_path} is not the private key of the certificate in {crt_path}")
    return KeyPair(key, crt, leaf.serial_number)


def from_dir(path: str) -> KeyPair:
    crt, key = _files(path)
    missing = [str(p) for p in (crt, key) if not p.is_file()]
    if missing:
        raise CertificateError(f"--cert-path {path}: missing {', '.join(missing)}")
    try:
        return parse_pair(crt, crt.read_bytes(), key, key.read_bytes())
    except OSError as exc:
        raise CertificateError(f"--cert-path {path}: {exc.strerror}: {exc.filename}") from None
    except CertificateError as exc:
        raise CertificateError(f"--cert-path {path}: {exc}") from None


def _config(pair: KeyPair):
    return grpc.ssl_server_certificate_configuration([(pair.key_pem, pair.cert_pem)])


class ReloadingCertificates:
    """A certificate fetcher for grpc's dynamic server credentials.

    grpc calls `fetch` (on one of its own threads) before every new TLS handshake; it answers
    None while tls.crt and tls.key are unchanged, so the cost per connection is two stat()
    calls (plus, at most once per `recheck` seconds, reading the files: a rewrite within one
    timestamp tick that keeps the size, as a same-curve key does, leaves stat() unchanged), and
    open connections (ext_proc streams in flight) keep the certificate they were made with.
    A change is taken only when both files parse and the key matches the certificate: a writer
    that replaces one file and then the other (rather than the
    atomic symlink swap of a Kubernetes secret volume) is seen half-way as a mismatch, kept
    on the previous certificate, and picked up once the second file lands.
    """

    def __init__(self, path: str, initial: KeyPair, recheck: float = 1.0) -> None:
        self.path = path
        self.current = initial
        self.reloads = 0
        self.recheck = recheck
        self._lock = threading.Lock()
        self._seen = self._signature()
        self._rejected: tuple | None = None
        self._rejected_bytes: tuple[bytes, bytes] | None = None
        self._last_read = time.monotonic()

    def _signature(self) -> tuple | None:
        out = []
        for p in _files(self.path):
            try:
                st = os.stat(p)  # follows the ..data symlink of a secret volume, so a swap changes the inode
            except OSError:
                return None
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _read(self) -> tuple[bytes, bytes] | None:
        crt, key = _files(self.path)
        try:
            return crt.read_bytes(), key.read_bytes()
        except OSError:
            return None

    def fetch(self):
        try:
            with self._lock:
                sig = self._signature()
                if sig is None:
                    return None
                now = time.monotonic()
                unchanged = sig == self._seen or sig == self._rejected
                if unchanged and now - self._last_read < self.recheck:
                    return None
                self._last_read = now
                data = self._read()
                if unchanged and (
                    data is None
                    or data == self._rejected_bytes
                    or data == (self.current.cert_pem, self.current.key_pem)
                ):
                    return None
                try:
                    if data is None:
                        raise CertificateError("tls.crt or tls.key could not be read")
                    crt, key = _files(self.path)
                    pair = parse_pair(crt, data[0], key, data[1])
                except CertificateError as exc:
                    self._rejected, self._rejected_bytes = sig, data
                    log.warning(
                        "certificate in %s not reloaded, still serving %s: %s", self.path, self.current.describe(), exc
                    )
                    return None
                self._seen, self._rejected, self._rejected_bytes = sig, None, None
                if pair.cert_pem == self.current.cert_pem and pair.key_pem == self.current.key_pem:
                    return None
                self.current = pair
                self.reloads += 1
                log.info("reloaded the certificate from %s (%s); new connections use it", self.path, pair.describe())
                return _config(pair)
        except Exception:  # an exception here would fail the handshake of a healthy client
            log.exception("certificate reload check failed; keeping the current certificate")
            return None


def server_credentials(
    cert_path: str, reload: bool
) -> tuple[grpc.ServerCredentials, KeyPair, ReloadingCertificates | None]:
    pair = from_dir(cert_path) if cert_path else self_signed()
    if reload and cert_path:
        watcher = ReloadingCertificates(cert_path, pair)
        return grpc.dynamic_ssl_server_credentials(_config(pair), watcher.fetch), pair, watcher
    return grpc.ssl_server_credentials([(pair.key_pem, pair.cert_pem)]), pair, None
