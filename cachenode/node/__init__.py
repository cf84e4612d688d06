"""The cache node (daemon side): block cache, node service, membership, QoS, metrics, daemon."""

from ..blocks import Block, BlockRequest
from .cache import BlockCache

__all__ = ["BlockCache", "Block", "BlockRequest"]
