"""Transport registry: names/schemes to backends, optional ones found lazily, best common pick."""

from __future__ import annotations

import importlib.util

# scheme -> transport name. Nodes advertise the names they listen on; URLs use the schemes.
SCHEMES = {"http": "tcp", "tcp": "tcp", "ucx": "ucx"}
DEFAULT_PREFERENCE = ("ucx", "tcp")


def available(name: str) -> bool:
    """Whether this process can speak `name` (UCX needs the optional `ucxx` package)."""
    if name == "tcp":
        return True
    if name == "ucx":
        return importlib.util.find_spec("ucxx") is not None
    return False


def parse_preference(text: str | None) -> tuple[str, ...]:
    """"ucx,tcp" -> ("ucx", "tcp"); unknown names are an error naming them."""
    if not text:
        return DEFAULT_PREFERENCE
    names = tuple(SCHEMES.get(n.strip().lower(), n.strip().lower()) for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ("tcp", "ucx")]
    if bad:
        raise ValueError(f"unknown transport(s) {', '.join(bad)}: use ucx and/or tcp")
    return names


def pick(preference: tuple[str, ...], offered: dict[str, str]) -> str:
    """The first preferred transport that the member offers and this process can use."""
    for name in preference:
        if name == "tcp" or (name in offered and available(name)):
            return name
    return "tcp"
