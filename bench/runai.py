"""Run:ai Model Streamer as a contender: an HTTPS Azurite it can reach, and a CA bundle it trusts.

Its Azure backend (0.17) builds `https://<account>.<suffix>/` itself and ignores connection
strings, so Azurite must serve HTTPS under a production-style name (`*.blob.localhost`, which
curl maps to loopback) with a certificate the streamer's curl trusts. It reads the system CA
bundle only, so the contender runs in a private mount namespace (`unshare -m`) where a copy of
that bundle with our certificate appended is bind-mounted over it: the system file is never touched.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import os
import shutil
from pathlib import Path

from .services import AZURITE_ACCOUNT, AZURITE_KEY, Azurite

SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_SUFFIX = "blob.localhost"


def unavailable() -> str | None:
    """Why the streamer cannot run here, or None."""
    for module, dist in (("runai_model_streamer", "runai-model-streamer"),
                         ("runai_model_streamer_azure", "runai-model-streamer-azure")):
        if importlib.util.find_spec(module) is None:
            return f"{dist} is not installed (pip install 'cachenode[bench]')"
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "trusting the test certificate needs a private mount namespace (root and unshare)"
    if not SYSTEM_CA_BUNDLE.is_file():
        return f"no system CA bundle at {SYSTEM_CA_BUNDLE} to extend with the test certificate"
    return None


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for *.blob.localhost and 127.0.0.1, valid for two days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{_SUFFIX}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(f"*.{_SUFFIX}"), x509.DNSName(_SUFFIX),
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


class HttpsAzurite(Azurite):
    """A second Azurite, over HTTPS, for the streamer (the HTTP one serves everyone else)."""

    def __init__(self, workdir: str | Path) -> None:
        workdir = Path(workdir)
        self.cert, key = make_certificate(workdir / "tls")
        super().__init__(workdir / "data", tls=(self.cert, key))
        self.ca_bundle = workdir / "tls" / "ca-bundle.crt"
        self.ca_bundle.write_bytes(SYSTEM_CA_BUNDLE.read_bytes() + b"\n" + self.cert.read_bytes())

    def contender(self, container: str, blob: str) -> dict:
        """The contender spec: its URL, credentials, endpoint and the mount-namespace wrapper."""
        return {"kind": "runai", "url": f"az://{container}/{blob}",
                "env": {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
                        "AZURE_STORAGE_ENDPOINT_SUFFIX": f"{_SUFFIX}:{self.port}",
                        "AZURE_STORAGE_CONNECTION_STRING": None},
                "wrap": ["unshare", "-m", "sh", "-c",
                         f'mount --bind "$0" {SYSTEM_CA_BUNDLE} && exec "$@"', str(self.ca_bundle)]}
