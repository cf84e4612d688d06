"""load_checkpoint on a prefix named without its trailing slash."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from cachenode.errors import SourceNotFound
from cachenode.torch import load_checkpoint
from helpers import BS, TOKEN


def test_prefix_without_trailing_slash(blobs, nodes, tmp_path):
    node = nodes.start("--block-size", str(BS))
    sd = {"w": torch.arange(10, dtype=torch.float32)}
    p = tmp_path / "model.safetensors"
    safetensors.torch.save_file(sd, str(p))
    blobs.put("dir/model.safetensors", p.read_bytes())
    blobs.put("dir-2/other.bin", b"x")
    for url in (blobs.url("dir"), blobs.url("dir/")):
        got = load_checkpoint(url, nodes=[node.url], token=TOKEN)
        assert torch.equal(got["w"], sd["w"])
    # a prefix with no checkpoint: the error says what was looked for and how to name a prefix
    with pytest.raises(SourceNotFound, match="trailing '/'"):
        load_checkpoint(blobs.url("dir-2"), nodes=[node.url], token=TOKEN)
    with pytest.raises(SourceNotFound, match="trailing '/'"):
        load_checkpoint(blobs.url("nothing-here"), nodes=[node.url], token=TOKEN)
