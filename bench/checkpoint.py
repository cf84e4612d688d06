"""Generate a realistic safetensors checkpoint of a given size, and upload files to Azure Blob."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import numpy as np

# A transformer-ish layer: big bf16 matrices, some fp16/f32 vectors, an int table.
_LAYER = [
    ("attn.qkv.weight", "BF16", (3072, 1024)),
    ("attn.out.weight", "BF16", (1024, 1024)),
    ("mlp.up.weight", "F16", (4096, 1024)),
    ("mlp.down.weight", "BF16", (1024, 4096)),
    ("norm.weight", "F32", (1024,)),
    ("norm.bias", "F32", (1023,)),   # odd size: offsets that are not block- or 4-aligned
    ("router.index", "I64", (3, 7)),
    ("empty", "F16", (0, 16)),
]
_ITEM = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}


def make_safetensors(path: str | Path, size: int, seed: int = 0,
                     progress: Callable[[int], None] | None = None) -> int:
    """Write a checkpoint of about `size` bytes (whole layers); returns the file size."""
    entries, offset, layer = {}, 0, 0
    while offset < size or layer == 0:
        for name, dtype, shape in _LAYER:
            n = int(np.prod(shape)) * _ITEM[dtype]
            entries[f"layers.{layer}.{name}"] = {"dtype": dtype, "shape": list(shape),
                                                 "data_offsets": [offset, offset + n]}
            offset += n
        layer += 1
    header = json.dumps({"__metadata__": {"format": "pt", "generator": "cachebench"}, **entries},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # data section 8-aligned, as safetensors writes it
    rng = np.random.default_rng(seed)
    chunk = 16 * 1024 * 1024
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        left = offset
        while left:
            n = min(chunk, left)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n
            if progress:
                progress(n)
    return 8 + len(header) + offset


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
