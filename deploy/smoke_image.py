"""Smoke test of the node image: podman runs it on loopback against Azurite; a block is read through it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time

from azure.storage.blob import BlobServiceClient

import cachenode
from cachenode.client.admin import scrape
from cachenode.testing.azurite import Azurite
from cachenode.testing.ports import free_port, wait_for_port

TOKEN = "smoke-token"


def main(image: str) -> None:
    with tempfile.TemporaryDirectory(prefix="cn-image-") as tmp, Azurite(tmp) as az:
        svc = BlobServiceClient.from_connection_string(az.connection_string)
        svc.create_container("smoke")
        data = os.urandom(3 * 8 * 2**20 + 12345)
        svc.get_blob_client("smoke", "model.bin").upload_blob(data)
        port = free_port()
        name = f"cachenode-smoke-{os.getpid()}"
        t0 = time.monotonic()
        podman = ["podman", *shlex.split(os.environ.get("PODMAN_ARGS", ""))]
        extra = shlex.split(os.environ.get("PODMAN_RUN_ARGS", ""))
        subprocess.run([*podman, "run", *extra, "-d", "--rm", "--name", name, "--network", "host",
                        "-e", f"AZURE_STORAGE_CONNECTION_STRING={az.connection_string}",
                        "-e", f"CACHENODE_TOKEN={TOKEN}", "--tmpfs", "/var/cache/cachenode",
                        image, "cachenode", "serve", "--port", str(port),
                        "--cache-dir", "/var/cache/cachenode"], check=True, capture_output=True)
        try:
            wait_for_port(port, None, "the node container")
            url = f"http://127.0.0.1:{port}"
            print(f"node container listening after {time.monotonic() - t0:.1f}s")
            with cachenode.open(f"{az.endpoint}/smoke/model.bin", nodes=[url], token=TOKEN) as f:
                assert f.read() == data
            m = scrape(url, TOKEN)
            assert m["cachenode_origin_bytes_total"] == len(data), m
            print(f"read {len(data)} bytes through the image; origin bytes {m['cachenode_origin_bytes_total']:.0f}")
        finally:
            logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True).stderr
            subprocess.run([*podman, "stop", "-t", "10", name], capture_output=True)
        if "Traceback" in logs:
            sys.exit(f"node logged an error:\n{logs}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost/cachenode:0.1.0")
