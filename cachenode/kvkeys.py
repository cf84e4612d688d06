"""KV-cache object keys that carry the model and KV-layout identity and are equal on every host."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

# Changing how keys are built bumps this: old objects then simply stop matching (a miss).
KEY_VERSION = "kv1"
# Weight files larger than this are fingerprinted by size, header and sampled bytes, not read whole.
_FULL_HASH_LIMIT = 256 * 1024**2
_SAMPLE = 1024**2


@dataclass(frozen=True)
class KVLayout:
    """What makes KV bytes of one chunk mean the same thing: the model and how its KV is laid out.

    Two engines share KV only when every field is equal; any difference gives other keys, so a
    mismatch is a miss, never wrong KV.
    """

    model: str  # model fingerprint (see model_fingerprint), not just a name
    dtype: str  # KV cache dtype as the engine stores it, e.g. "torch.bfloat16"
    block_size: int  # tokens per chunk
    tp_rank: int = 0
    tp_size: int = 1
    num_layers: int = 0
    engine: str = ""  # engine and its in-memory block format, e.g. "vllm:cpu:[H,N,2C]"
    shape: tuple[int, ...] = ()  # per-layer, per-chunk shape of the stored bytes

    def identity(self) -> str:
        """A short digest of every field, the prefix of every key of this layout."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(f"{KEY_VERSION}\0{text}".encode(), digest_size=12).hexdigest()


def chunk_hashes(token_ids: Sequence[int], chunk_size: int, *, salt: bytes = b"") -> list[str]:
    """Prefix-chained hashes of the full chunks of `token_ids` (a partial last chunk has none).

    Built from the token ids alone (never from Python's `hash()`, which is seeded per process
    unless PYTHONHASHSEED is fixed), so every host computes the same chain. Chunk i's hash covers
    tokens [0, (i+1)*chunk_size): equal hashes mean equal prefixes. `salt` (LoRA name,
    multimodal hashes, cache salt) starts the chain.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk_size}")
    out: list[str] = []
    prev = hashlib.blake2b(salt, digest_size=16).digest()
    for start in range(0, len(token_ids) - chunk_size + 1, chunk_size):
        chunk = token_ids[start:start + chunk_size]
        h = hashlib.blake2b(prev, digest_size=16)
        # Fixed-width little-endian: the same bytes for the same ids on every host.
        h.update(b"".join(int(t).to_bytes(8, "little", signed=True) for t in chunk))
        prev = h.digest()
        out.append(prev.hex())
    return out


def chunk_keys(layout: KVLayout, hashes: Iterable[str], layer: int | str) -> list[str]:
    """Object keys of one layer's chunks: `<layout identity>/<layer>/<chunk hash>`."""
    ident = layout.identity()
    return [f"{ident}/{layer}/{h}" for h in hashes]


def present_prefix(found: Sequence[bool], per_chunk: int) -> int:
    """How many leading chunks are wholly present, given `found` for chunk-major keys with
    `per_chunk` keys (layers) per chunk. A chunk missing any layer ends the prefix."""
    n = 0
    for i in range(0, len(found) - per_chunk + 1, per_chunk):
        if not all(found[i:i + per_chunk]):
            break
        n += 1
    return n


def model_fingerprint(name: str, config: dict | None = None, revision: str | None = None) -> str:
    """A digest of the model: its config and, for a local folder, its weight files' bytes.

    A local checkpoint is hashed by content (files up to 256 MiB whole; larger ones by size,
    safetensors header and the first and last MiB), so two folders holding different weights
    under the same name or config never share KV. A hub name is taken with its revision.
    """
    h = hashlib.blake2b(digest_size=16)
    cfg = json.dumps(config or {}, sort_keys=True, default=str)
    h.update(cfg.encode())
    path = Path(name)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    if not weights:
        h.update(f"{name}@{revision or ''}".encode())
    for f in weights:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            if size <= _FULL_HASH_LIMIT:
                for block in iter(lambda: fh.read(8 * 1024**2), b""):
                    h.update(block)
            else:
                h.update(fh.read(_SAMPLE))
                fh.seek(max(0, size - _SAMPLE), os.SEEK_SET)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()
