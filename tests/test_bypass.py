"""The loader's direct origin read (bypass) sends credentials only where they belong."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import warnings

import pytest

import cachenode
from cachenode.client.api import BypassWarning
from cachenode.testing.azurite import AZURITE_ACCOUNT
from cachenode.testing.tls import make_certificate


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records every request's headers; answers with `reply` (status, JSON body)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        status, body = self.server.reply
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


class Listener:
    """A real HTTP(S) listener on loopback that only watches what arrives."""

    def __init__(self, reply, tls: tuple | None = None) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        self.server.seen, self.server.reply = [], reply
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list:
        return self.server.seen

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def managed_identity():
    """A stand-in App Service managed-identity endpoint on loopback, handing out a canary token:
    DefaultAzureCredential can get a token without a cloud."""
    mi = Listener((200, {"access_token": "CANARY-TOKEN", "expires_on": str(int(time.time()) + 3600),
                         "resource": "https://storage.azure.com", "token_type": "Bearer"}))
    yield {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{mi.port}/msi/token", "IDENTITY_HEADER": "secret"}, mi
    mi.close()


@pytest.fixture
def canary(tmp_path):
    """An HTTPS listener on loopback with a certificate the loader trusts (token credentials are
    only ever sent over HTTPS): (its environment for the loader, the listener)."""
    cert, key = make_certificate(tmp_path / "tls")
    c = Listener((404, {}), tls=(cert, key))
    yield {"SSL_CERT_FILE": str(cert)}, c
    c.close()


LOADER = """
import sys, warnings, cachenode
warnings.simplefilter("ignore")
try:
    cachenode.open(sys.argv[1], nodes=[]).close()
except cachenode.CacheError as exc:
    print(type(exc).__name__, exc)
"""


def _authorizations(listener: Listener) -> list[str]:
    return [h.get("Authorization", "") + h.get("authorization", "") for _, _, h in listener.seen]


def test_bypass_never_sends_a_token_to_a_host_named_by_the_url(managed_identity, canary):
    """The loader (a fresh process: TLS trust is read at import) has a managed identity and no
    node; the URL names a listener on loopback, which must not see the token."""
    (mi_env, _), (tls_env, lure) = managed_identity, canary
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHENODE_", "AZURE_"))}
    for name in (f"https://127.0.0.1:{lure.port}/someaccount/models/m.bin",
                 f"https://127.0.0.1:{lure.port}/devstoreaccount1/models/m.bin"):
        out = subprocess.run([sys.executable, "-c", LOADER, name], env={**env, **mi_env, **tls_env},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    assert lure.seen, "the listener should have been asked (anonymously)"
    assert not [a for a in _authorizations(lure) if a], lure.seen
    assert all("sig=" not in path for _, path, _ in lure.seen)


def test_bypass_reads_its_own_account_from_the_configured_endpoint(blobs, azurite, monkeypatch):
    """Same account as the credentials, but the URL names another host: the configured endpoint
    is read (right bytes), and the URL's host never sees a request."""
    data = os.urandom(1000)
    blobs.put("own.bin", data)
    lure = Listener((404, {}))
    try:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
        url = f"http://127.0.0.1:{lure.port}/{AZURITE_ACCOUNT}/{blobs.container}/own.bin"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BypassWarning)
            with cachenode.open(url, nodes=[]) as f:
                assert f.via == "origin" and f.read() == data
        assert lure.seen == []
    finally:
        lure.close()
