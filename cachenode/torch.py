"""Torch loaders: `cachenode.torch.load_safetensors`, `iter_safetensors`, `load_checkpoint`."""

from cachenode.client.checkpoints import aload_checkpoint, load_checkpoint
from cachenode.client.tensors import (
    StateDict, aiter_safetensors, aload_safetensors, iter_safetensors, load_safetensors,
)

__all__ = ["load_safetensors", "iter_safetensors", "load_checkpoint", "aload_safetensors",
           "aiter_safetensors", "aload_checkpoint", "StateDict"]
