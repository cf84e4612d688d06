"""Files into blob storage: upload one as a block blob, creating its container (Azurite's or any account's)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def upload(conn_str: str, container: str, blob: str, path: str | Path,
           progress: Callable[[int], None] | None = None, ca_file: str | None = None) -> str:
    """Upload a local file as a block blob (creating the container); returns its ETag.

    `ca_file`: the certificate to trust for an HTTPS endpoint (a test Azurite's own)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    kwargs = {"connection_verify": ca_file} if ca_file else {}
    with BlobServiceClient.from_connection_string(conn_str, **kwargs) as svc:
        try:
            svc.create_container(container)
        except ResourceExistsError:
            pass
        done = [0]

        def hook(current, total):
            # parallel chunks report out of order: count only what moves the high-water mark
            if progress and current is not None and current > done[0]:
                progress(current - done[0])
                done[0] = current

        with open(path, "rb") as f:
            res = svc.get_blob_client(container, blob).upload_blob(
                f, overwrite=True, max_concurrency=4, progress_hook=hook)
        return res["etag"]
