"""Server certificates: a self-signed one made at start-up (reference behaviour) or read from --cert-path."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def self_signed() -> tuple[bytes, bytes]:
    """(key PEM, cert PEM). ECDSA P-256 rather than the reference's RSA-4096: same trust model
    (gateways skip verification), but start-up takes milliseconds and handshakes are cheaper."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Inference Ext")])
    now = datetime.datetime.now(datetime.timezone.utc)
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
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def from_dir(path: str) -> tuple[bytes, bytes]:
    d = Path(path)
    crt, key = d / "tls.crt", d / "tls.key"
    missing = [str(p) for p in (crt, key) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--cert-path {path}: missing {', '.join(missing)}")
    return key.read_bytes(), crt.read_bytes()
