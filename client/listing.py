"""Blob listings as a tree: the files a listing holds and the directories their names imply."""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def blob_tree(root: str, files: Iterable[tuple[str, T]]) -> tuple[dict[str, T], set[str]]:
    """(full name -> value, directory names) for `files` named below directory `root`.

    Blob storage has no directories: every "/"-separated prefix of a blob name below `root` is one.
    """
    out: dict[str, T] = {}
    dirs: set[str] = set()
    for full, value in files:
        out[full] = value
        parent = full.rsplit("/", 1)[0] if "/" in full else ""
        while len(parent) > len(root) and parent not in dirs:
            dirs.add(parent)
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
    return out, dirs
