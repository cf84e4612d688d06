"""KV keys carry the model and KV-layout identity and are equal on every host: other hash seeds give the same
keys; another model, dtype, block size, TP rank or layer gives other keys, so a miss, never wrong KV."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from cachenode.client.objects import ObjectClient
from cachenode.kvkeys import KVLayout, chunk_hashes, chunk_keys, model_fingerprint, present_prefix
from helpers import TOKEN

WRITER = "kv-writer-secret"
LAYOUT = KVLayout(model="m" * 32, dtype="torch.bfloat16", block_size=16, tp_rank=0, tp_size=2, num_layers=4,
                  engine="vllm:cpu", shape=(2, 16, 128))
TOKENS = list(range(1000, 1100))

_CHILD = """
import json, sys
from cachenode.kvkeys import KVLayout, chunk_hashes, chunk_keys
layout = KVLayout(**json.loads(sys.argv[1]))
print(json.dumps([chunk_keys(layout, chunk_hashes(list(range(1000, 1100)), 16), 3), hash("vllm block")]))
"""


def _keys_in_process(seed: int) -> tuple[list[str], int]:
    layout = json.dumps(dataclasses.asdict(LAYOUT))
    out = subprocess.run([sys.executable, "-c", _CHILD, layout], env={"PYTHONHASHSEED": str(seed)},
                         capture_output=True, text=True, check=True).stdout
    keys, py_hash = json.loads(out)
    return keys, py_hash


def test_keys_are_equal_across_processes_with_different_hash_seeds():
    (k1, h1), (k2, h2) = _keys_in_process(1), _keys_in_process(2)
    assert h1 != h2  # what vLLM's hash()-seeded block hashes would do across hosts
    assert k1 == k2 == chunk_keys(LAYOUT, chunk_hashes(TOKENS, 16), 3)


@pytest.mark.parametrize("change", [{"model": "n" * 32}, {"dtype": "torch.float16"}, {"block_size": 32},
                                    {"tp_rank": 1}, {"tp_size": 4}, {"num_layers": 5}, {"engine": "vllm:cuda"},
                                    {"shape": (4, 16, 64)}])
def test_any_layout_difference_gives_other_keys(change):
    other = dataclasses.replace(LAYOUT, **change)
    hashes = chunk_hashes(TOKENS, 16)
    assert other.identity() != LAYOUT.identity()
    assert not set(chunk_keys(other, hashes, 0)) & set(chunk_keys(LAYOUT, hashes, 0))


def test_chunk_hashes_chain_the_prefix():
    a = chunk_hashes(TOKENS, 16)
    assert len(a) == 6  # 100 tokens: 6 whole chunks, the partial seventh has no key
    changed = TOKENS[:40] + [7] + TOKENS[41:]
    b = chunk_hashes(changed, 16)
    assert a[:2] == b[:2] and all(x != y for x, y in zip(a[2:], b[2:]))  # token 40 is in chunk 2
    assert chunk_hashes(TOKENS, 16, salt=b"lora-a")[0] != a[0]
    assert chunk_keys(LAYOUT, a, 0) != chunk_keys(LAYOUT, a, 1)  # per layer
    assert present_prefix([True, True, True, False, True, True], 2) == 1


def test_the_model_fingerprint_is_the_weights_not_the_path(tmp_path):
    from safetensors.torch import save_file

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        torch.manual_seed(seed)
        save_file({"w": torch.randn(64, 64)}, tmp_path / name / "model.safetensors")
    cfg = {"model_type": "llama", "hidden_size": 64}
    a, b, c = (model_fingerprint(str(tmp_path / n), cfg) for n in "abc")
    assert a == b  # the same weights under another path (another host's mount point)
    assert a != c  # same config and file names, other weights
    assert model_fingerprint(str(tmp_path / "a"), {**cfg, "hidden_size": 65}) != a


def test_another_model_reads_nothing_from_the_cluster(nodes):
    cluster = nodes.cluster(2, "--namespace", "kv", "--writer-token", f"kv={WRITER}")
    hashes = chunk_hashes(TOKENS, 16)
    writer = ObjectClient([cluster.urls[0]], TOKEN, namespace="kv", writer_token=WRITER)
    reader = ObjectClient([cluster.urls[1]], TOKEN, namespace="kv")
    try:
        keys = chunk_keys(LAYOUT, hashes, 0)
        writer.put({k: bytes([i]) * 4096 for i, k in enumerate(keys)})
        assert reader.exists(keys) == [True] * len(keys)
        assert bytes(reader.get(keys[:1])[0]) == b"\0" * 4096
        for change in ({"model": "n" * 32}, {"dtype": "torch.float16"}, {"tp_rank": 1}):
            other = chunk_keys(dataclasses.replace(LAYOUT, **change), hashes, 0)
            assert reader.exists(other) == [False] * len(other)
            assert reader.get(other) == [None] * len(other)
    finally:
        writer.close()
        reader.close()
