"""The kernel libraries Inductor built (its cache dir's `xx/c....so`), packed beside torch's own artifacts in one set.

On CPU, torch's portable artifacts (`save_cache_artifacts`) hold the generated C++ sources, not
the libraries g++ built from them: a reader with those alone skips Inductor's lowering but still
runs g++ for every kernel, which is most of a cold compile here (measured: a 6-block MLP read
from the cluster took about as long as a cold compile, a warm cache dir half). Inductor looks
for a kernel's library at `<cache dir>/<key[1:3]>/<key>.so`, the key hashing the source and the
full compile command (compiler, flags, the vector ISA, include paths), and builds only when the
file is absent. So a library placed at the same path is used as built; one built with another
command has another key and is simply never looked up.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from pathlib import Path

# `xx/c<key>.so` only: nothing else is read from or written to a cache dir (no traversal).
_LIBRARY = re.compile(r"^[A-Za-z0-9_]{2}/c[A-Za-z0-9_]{8,128}\.so$")
_MAGIC = b"CNCK1"  # a set made of torch's blob and kernel libraries
_HEADER = struct.Struct("<5sI")  # magic, header JSON length


def inductor_cache_dir() -> Path:
    """The Inductor cache dir this process uses (TORCHINDUCTOR_CACHE_DIR or torch's default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def collect(root: Path, since: float) -> dict[str, bytes]:
    """The kernel libraries under `root` written at or after `since` (this process's builds and
    the ones it installed from the cluster), by their path relative to `root`."""
    out: dict[str, bytes] = {}
    if not root.is_dir():
        return out
    for path in root.glob("??/c*.so"):
        rel = path.relative_to(root).as_posix()
        try:
            if _LIBRARY.match(rel) and path.stat().st_mtime >= since:
                out[rel] = path.read_bytes()
        except OSError:  # removed while we looked: it is not part of this set
            continue
    return out


def install(root: Path, files: dict[str, bytes]) -> int:
    """Place libraries at their paths under `root` unless one is already there; each is written to
    a temporary file and renamed, so a compile racing with us never reads half a library."""
    placed = 0
    for rel, data in files.items():
        if not _LIBRARY.match(rel):
            raise ValueError(f"kernel library path {rel[:80]!r} is not an Inductor cache path")
        placed += place(root / rel, data, 0o755)
    return placed


def place(target: Path, data: bytes, mode: int) -> bool:
    """Write `target` unless it exists, through a temporary file and a rename (a reader racing
    with us never sees half a file); True if written."""
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".cachenode-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, target)
    return True


def pack(torch_blob: bytes, files: dict[str, bytes]) -> bytes:
    """One set: a header naming torch's blob length and each library's path and length, then the bytes."""
    header = json.dumps({"torch": len(torch_blob), "files": [[k, len(v)] for k, v in sorted(files.items())]},
                        separators=(",", ":")).encode()
    return b"".join([_HEADER.pack(_MAGIC, len(header)), header, torch_blob,
                     *(files[k] for k in sorted(files))])


def unpack(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """(torch's blob, {path: library}); ValueError if the framing does not add up."""
    if len(data) < _HEADER.size:
        raise ValueError("artifact set shorter than its header")
    magic, n = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("not an artifact set of this format")
    header = json.loads(data[_HEADER.size:_HEADER.size + n])
    off = _HEADER.size + n
    torch_blob = data[off:off + header["torch"]]
    off += header["torch"]
    files = {}
    for rel, length in header["files"]:
        files[rel] = data[off:off + length]
        off += length
    if off != len(data) or len(torch_blob) != header["torch"]:
        raise ValueError("artifact set lengths do not add up")
    return torch_blob, files
