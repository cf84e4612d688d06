"""Generate a realistic safetensors checkpoint of a given size (whole transformer-ish layers)."""

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
