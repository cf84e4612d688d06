"""The mount's configuration: one frozen dataclass, whose fields are `cachenode mount`'s flags."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from cachenode.flags import flag


@dataclass(frozen=True)
class MountConfig:
    """What `cachenode mount` needs besides the loader's ClientConfig (flags: cachenode/flags.py)."""

    mountpoint: str
    sources: tuple[str, ...] = flag(MISSING, "--source", "Container or prefix to show, e.g. az://models/llama "
                                    "(repeatable). Appears as MOUNTPOINT/<container>/<prefix>/...",
                                    metavar="URL", required=True)
    # Also how long the kernel keeps attributes.
    listing_ttl: float = flag(10.0, "--listing-ttl", "Seconds a listing (names, sizes) is cached before the nodes "
                              "are asked again.", range=(0, 86400))
    # Bytes; FUSE's default is 128 KiB.
    readahead: int = flag(32 << 20, "--readahead", "Kernel readahead for the mount: how far ahead of a reader "
                          "blocks are fetched.", kind="size")
    allow_other: bool = flag(False, "--allow-other", "Let other users read the mount (non-root: needs "
                             "user_allow_other in /etc/fuse.conf).")
    max_tasks: int = 64            # FUSE requests served concurrently
