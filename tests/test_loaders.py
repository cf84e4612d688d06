"""Torch loaders through a real cluster: safetensors for every dtype, streaming, shards, .pt, fsspec."""

from __future__ import annotations

import io
import json
import struct

import fsspec
import pytest
import safetensors.torch
import torch

import cachenode
from cachenode.client.safetensors_header import SafetensorsError
from cachenode.torch import iter_safetensors, load_checkpoint, load_safetensors
from helpers import BS, TOKEN


@pytest.fixture(scope="module")
def cluster(module_nodes):
    return module_nodes.cluster(3, "--block-size", f"{BS}")


def _every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    f = torch.randn(37, 11, generator=g)
    sd = {
        "f64": f.double(), "f32": f, "f16": f.half(), "bf16": f.bfloat16(),
        "f8_e4m3": f.to(torch.float8_e4m3fn), "f8_e5m2": f.to(torch.float8_e5m2),
        "i64": torch.randint(-2**40, 2**40, (13,), generator=g), "i32": torch.randint(-9, 9, (5, 3), dtype=torch.int32, generator=g),
        "i16": torch.randint(-9, 9, (7,), dtype=torch.int16, generator=g), "i8": torch.randint(-9, 9, (3,), dtype=torch.int8, generator=g),
        "u8": torch.randint(0, 255, (9,), dtype=torch.uint8, generator=g),
        "u16": torch.randint(0, 60000, (4,), generator=g).to(torch.uint16),
        "u32": torch.randint(0, 2**31, (4,), generator=g).to(torch.uint32),
        "u64": torch.randint(0, 2**62, (4,), generator=g).to(torch.uint64),
        "bool": torch.rand(17, generator=g) > 0.5,
        "scalar": torch.tensor(3.5), "empty": torch.empty(0, 5), "empty_bf16": torch.empty(3, 0, dtype=torch.bfloat16),
        "big": torch.randn(5 * BS // 4 + 3, generator=g),  # spans 6 blocks, unaligned end
    }
    for i in range(200):  # many tiny tensors sharing a block
        sd[f"tiny.{i}"] = torch.full((i % 3 + 1,), float(i))
    return sd


def _same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        if v.numel():  # compare bytes: NaNs and fp8 compare unequal as numbers
            assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def test_load_safetensors_every_dtype_matches_safetensors(blobs, cluster, tmp_path):
    path = tmp_path / "all.safetensors"
    safetensors.torch.save_file(_every_dtype(), str(path), metadata={"format": "pt", "x": "y"})
    url = blobs.put("all.safetensors", path.read_bytes())
    expected = safetensors.torch.load_file(str(path))
    got = load_safetensors(url, nodes=[cluster.urls[0]], token=TOKEN)
    _same(got, expected)
    assert got.metadata == {"format": "pt", "x": "y"}
    assert list(got) == list(safetensors.safe_open(str(path), "pt").keys()) or set(got) == set(expected)
    # one buffer: every non-empty tensor points into the same allocation
    base = got["big"].untyped_storage().data_ptr()
    assert all(abs(t.untyped_storage().data_ptr() - base) < path.stat().st_size
               for t in got.values() if t.numel())


def test_iter_safetensors_yields_each_tensor_once_complete(blobs, cluster, tmp_path):
    path = tmp_path / "it.safetensors"
    sd = _every_dtype()
    safetensors.torch.save_file(sd, str(path))
    url = blobs.put("it.safetensors", path.read_bytes())
    names = []
    got = {}
    for name, t in iter_safetensors(url, nodes=[cluster.urls[1]], token=TOKEN):
        names.append(name)
        got[name] = t.clone()  # the consumer may keep or copy; values must be final when yielded
    assert len(names) == len(set(names))
    _same(got, safetensors.torch.load_file(str(path)))


def test_sharded_checkpoint_by_prefix_and_index(blobs, cluster, tmp_path):
    sd = _every_dtype()
    names = sorted(sd)
    shards = {f"model-0000{i + 1}-of-00003.safetensors": names[i::3] for i in range(3)}
    weight_map = {}
    for shard, keys in shards.items():
        p = tmp_path / shard
        safetensors.torch.save_file({k: sd[k] for k in keys}, str(p))
        blobs.put(f"llm/{shard}", p.read_bytes())
        weight_map.update({k: shard for k in keys})
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    blobs.put("llm/model.safetensors.index.json", json.dumps(index).encode())
    for url in (blobs.url("llm/"), blobs.url("llm/model.safetensors.index.json")):
        got = load_checkpoint(url, nodes=[cluster.urls[2]], token=TOKEN)
        _same(got, {k: v.contiguous() for k, v in sd.items()})
        assert got.metadata == {"total_size": 1}


def test_sharded_index_naming_a_missing_tensor_is_an_error(blobs, cluster, tmp_path):
    p = tmp_path / "a.safetensors"
    safetensors.torch.save_file({"x": torch.ones(2)}, str(p))
    blobs.put("bad/a.safetensors", p.read_bytes())
    blobs.put("bad/model.safetensors.index.json",
              json.dumps({"weight_map": {"x": "a.safetensors", "y": "a.safetensors"}}).encode())
    with pytest.raises(SafetensorsError, match="'y' in a.safetensors"):
        load_checkpoint(blobs.url("bad/"), nodes=[cluster.urls[0]], token=TOKEN)


@pytest.mark.parametrize("name", ["model.pt", "pytorch_model.bin"])
def test_torch_checkpoints(blobs, cluster, name):
    sd = {k: v for k, v in _every_dtype().items() if not k.startswith("tiny")}
    buf = io.BytesIO()
    torch.save(sd, buf)
    url = blobs.put(name, buf.getvalue())
    with cachenode.open(url, nodes=[cluster.urls[0]], token=TOKEN) as f:
        _same(torch.load(f, weights_only=True, mmap=False), sd)
    _same(load_checkpoint(url, nodes=[cluster.urls[1]], token=TOKEN), sd)


def test_fsspec_filesystem(blobs, cluster, tmp_path):
    data = bytes(range(256)) * 1000
    blobs.put("fs/dir/a.bin", data)
    blobs.put("fs/b.bin", b"hello")
    opts = {"nodes": [cluster.urls[0]], "token": TOKEN, "account_name": "devstoreaccount1"}
    with fsspec.open(f"cachenode://{blobs.container}/fs/dir/a.bin", "rb", **opts) as f:
        assert f.read() == data
    fs = fsspec.filesystem("cachenode", **opts)
    c = blobs.container
    assert fs.ls(f"{c}/fs", detail=False) == [f"{c}/fs/b.bin", f"{c}/fs/dir"]
    assert fs.info(f"{c}/fs/dir/a.bin")["size"] == len(data)
    assert fs.info(f"{c}/fs/dir")["type"] == "directory"
    assert fs.cat(f"{c}/fs/b.bin") == b"hello"
    assert fs.cat_file(f"{c}/fs/dir/a.bin", start=10, end=20) == data[10:20]
    with pytest.raises(FileNotFoundError):
        fs.info(f"{c}/fs/nope.bin")
    with fs.open(f"{c}/fs/dir/a.bin") as f:
        arr = bytearray(300)
        f.seek(1000)
        assert f.readinto(arr) == 300 and bytes(arr) == data[1000:1300]


def _st(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.mark.parametrize("blob, match", [
    (b"\x01\x02", "too short"),
    (_st(b"{}", length=10**6), "runs past the end"),
    (_st(b"{not json"), "not valid JSON"),
    (_st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "'w'.*outside the data section"),
    (_st({"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "'w'.*unknown dtype 'Q9'"),
    (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "'a' and 'b' overlap"),
    (_st({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "'w'.*expected 12"),
    (_st({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "'w'.*bad shape"),
])
def test_malformed_safetensors_are_named(blobs, cluster, blob, match):
    url = blobs.put("bad.safetensors", blob)
    with pytest.raises(SafetensorsError, match=f"bad.safetensors.*{match}" if "'" in match else match) as e:
        load_safetensors(url, nodes=[cluster.urls[0]], token=TOKEN)
    assert "bad.safetensors" in str(e.value)


def test_gpu_staging_buffer_is_pinned_only_for_cuda():
    from cachenode.client.tensors import alloc

    assert not alloc(16, "cpu").is_pinned()
    if torch.cuda.is_available():  # not on the CPU-only development machines
        assert alloc(16, "cuda").is_pinned()
