"""Azurite, the Azure Blob emulator, as a child process; its well-known account and connection strings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .paths import project_root
from .ports import free_port, wait_for_port
from .process import ChildProcess

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published well-known development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(port: int, host: str = "127.0.0.1", scheme: str = "http") -> str:
    return (f"DefaultEndpointsProtocol={scheme};AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={scheme}://{host}:{port}/{AZURITE_ACCOUNT};")


def find_azurite() -> str:
    """azurite-blob from the project's own npm install (or $CACHENODE_AZURITE_BIN)."""
    candidates = [os.environ.get("CACHENODE_AZURITE_BIN", ""),
                  str(project_root() / "node_modules/.bin/azurite-blob"),
                  str(Path.cwd() / "node_modules/.bin/azurite-blob"),
                  shutil.which("azurite-blob") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        "Azurite not found: run `npm ci` in the project folder (bench/setup.sh does) "
        "or set CACHENODE_AZURITE_BIN")


class Azurite(ChildProcess):
    """Azurite's blob service on a free port of `host` (127.0.0.1), data in `workdir`.

    `wrap` prefixes the command, e.g. ("ip", "netns", "exec", NAME) to put it behind a link;
    `tls` = (cert file, key file) serves HTTPS instead of HTTP.
    """

    def __init__(self, workdir: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 wrap: tuple[str, ...] = (), tls: tuple[Path, Path] | None = None) -> None:
        self.workdir = Path(workdir)
        super().__init__(self.workdir / "azurite.log")
        self.port = port or free_port()
        self.host = host
        self.wrap = wrap
        self.tls = tls
        self.scheme = "https" if tls else "http"

    @property
    def connection_string(self) -> str:
        return connection_string(self.port, self.host, self.scheme)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/{AZURITE_ACCOUNT}"

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [*self.wrap, find_azurite(), "--blobHost", self.host, "--blobPort", str(self.port),
                "--location", str(self.workdir), "--silent", "--disableTelemetry", "--loose",
                "--skipApiVersionCheck",
                *(("--cert", str(self.tls[0]), "--key", str(self.tls[1])) if self.tls else ())]

    def wait_ready(self, timeout: float) -> None:
        wait_for_port(self.port, self.proc, "Azurite", timeout, host=self.host)
