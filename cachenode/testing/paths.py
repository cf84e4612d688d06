"""Folders the harness uses: the source tree it runs from, and scratch folders."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def project_root() -> Path:
    """The project folder this package runs from (pyproject.toml, node_modules)."""
    return Path(__file__).resolve().parents[2]


def scratch_dir(stack, workdir: str | None, prefix: str, keep: bool = False) -> Path:
    """`workdir` as given (kept), or a new temp dir that `stack` removes when it unwinds."""
    if workdir:
        return Path(workdir)
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
    return base
