"""Copy a model's small files (config, tokenizer) from a blob prefix to a local folder through the cluster."""

from __future__ import annotations

import fnmatch
import os
import tempfile
from urllib.parse import quote

from ..api import Client
from .weights import prefix_url


def select(names: list[str], allow: list[str] | None, ignore: list[str] | None) -> list[str]:
    """Run:ai's pull_files rule: fnmatch on the full blob name ("*" crosses "/"), allow first."""
    names = [n for n in names if not n.endswith("/")]
    if allow is not None:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in allow)]
    if ignore is not None:
        names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in ignore)]
    return names


def pull_files(client: Client, url: str, dst: str, allow: list[str] | None = None,
               ignore: list[str] | None = None) -> list[str]:
    """Every blob under the prefix `url` that the patterns select, into `dst` at the same
    relative path (each written to a temp name, then renamed: a reader never sees half a file).
    Returns the relative names written."""
    base = prefix_url(url)
    ref = client.aclient.parse(base, prefix=True)
    listing = client.list(base)
    full = [r.path for r, _ in listing if r.path.startswith(ref.path)]
    written = []
    root = os.path.realpath(dst)
    for name in select(full, allow, ignore):
        rel = name[len(ref.path):]
        target = os.path.realpath(os.path.join(root, rel))
        if not target.startswith(root + os.sep):  # a blob name must not climb out of dst
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with client.open(base + quote(rel, safe="/")) as src:
            data = src.read()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".pull-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
        written.append(rel)
    return written
