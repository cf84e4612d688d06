"""load_checkpoint: how a prefix without its slash, and shard names, become blob names."""

from __future__ import annotations

import json

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


def test_shard_names_with_url_characters_read_their_own_blobs(blobs, nodes, tmp_path):
    node = nodes.start("--block-size", str(BS))
    names = ["a#1.safetensors", "b%41.safetensors", "c?x=1.safetensors", "d e+f.safetensors"]
    weight_map, expected = {}, {}
    for i, shard in enumerate(names):
        t = torch.full((5,), float(i))
        p = tmp_path / f"{i}.safetensors"
        safetensors.torch.save_file({f"w{i}": t}, str(p))
        blobs.put(f"sh/{shard}", p.read_bytes())
        weight_map[f"w{i}"], expected[f"w{i}"] = shard, t
    # decoys: what each name would read if its URL were not quoted
    decoy = tmp_path / "decoy.safetensors"
    safetensors.torch.save_file({"decoy": torch.zeros(1)}, str(decoy))
    for wrong in ("a", "bA.safetensors", "c", "d e f.safetensors"):
        blobs.put(f"sh/{wrong}", decoy.read_bytes())
    blobs.put("sh/model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
    got = load_checkpoint(blobs.url("sh/"), nodes=[node.url], token=TOKEN)
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_an_index_with_no_shards_loads_nothing_instead_of_failing_oddly(blobs, nodes):
    node = nodes.start("--block-size", str(BS))
    url = blobs.put("empty/model.safetensors.index.json", json.dumps({"weight_map": {}}).encode())
    assert load_checkpoint(url, nodes=[node.url], token=TOKEN) == {}
