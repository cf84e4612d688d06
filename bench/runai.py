"""Run:ai Model Streamer as a contender: an HTTPS Azurite it can reach, and a CA bundle it trusts.

Its Azure backend (0.17) builds `https://<account>.<suffix>/` itself and ignores connection
strings, so Azurite must serve HTTPS under a production-style name (`*.blob.localhost`, which
curl maps to loopback) with a certificate the streamer's curl trusts. It reads the system CA
bundle only, so the contender runs in a private mount namespace (`unshare -m`) where a copy of
that bundle with our certificate appended is bind-mounted over it: the system file is never touched.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from cachenode.testing.azurite import AZURITE_ACCOUNT, AZURITE_KEY, Azurite
from cachenode.testing.tls import BLOB_SUFFIX, make_certificate

SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


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
                        "AZURE_STORAGE_ENDPOINT_SUFFIX": f"{BLOB_SUFFIX}:{self.port}",
                        "AZURE_STORAGE_CONNECTION_STRING": None},
                "wrap": ["unshare", "-m", "sh", "-c",
                         f'mount --bind "$0" {SYSTEM_CA_BUNDLE} && exec "$@"', str(self.ca_bundle)]}
