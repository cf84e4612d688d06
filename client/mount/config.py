"""The mount's configuration: one frozen dataclass, whose fields make `cachenode mount`'s options."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MountConfig:
    """What `cachenode mount` needs besides the loader's ClientConfig (options: cachenode/options.py)."""

    mountpoint: str
    sources: tuple[str, ...] = field(metadata={
        "option": "--source", "metavar": "URL", "required": True,
        "help": "Container or prefix to show, e.g. az://models/llama (repeatable). Appears as "
                "MOUNTPOINT/<container>/<prefix>/..."})
    # Seconds a listing (and the kernel's attributes) stay cached.
    listing_ttl: float = field(default=10.0, metadata={
        "option": "--listing-ttl", "range": (0, 86400),
        "help": "Seconds a listing (names, sizes) is cached before the nodes are asked again."})
    # Bytes; FUSE's default is 128 KiB.
    readahead: int = field(default=32 << 20, metadata={
        "option": "--readahead", "kind": "size",
        "help": "Kernel readahead for the mount: how far ahead of a reader blocks are fetched."})
    allow_other: bool = field(default=False, metadata={
        "option": "--allow-other",
        "help": "Let other users read the mount (non-root: needs user_allow_other in /etc/fuse.conf)."})
    max_tasks: int = 64            # FUSE requests served concurrently
