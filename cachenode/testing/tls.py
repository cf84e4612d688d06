"""A self-signed certificate for an HTTPS test endpoint: `*.blob.localhost` and 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

# `<account>.blob.localhost` resolves to loopback (curl maps *.localhost there itself)
BLOB_SUFFIX = "blob.localhost"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for *.blob.localhost and 127.0.0.1, valid for two days;
    returns (cert.pem, key.pem) written into `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{BLOB_SUFFIX}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(f"*.{BLOB_SUFFIX}"), x509.DNSName(BLOB_SUFFIX),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
