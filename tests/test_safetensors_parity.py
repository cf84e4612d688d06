"""Our safetensors header parser accepts and rejects what the reference `safetensors` does, both ways."""

from __future__ import annotations

import json
import math
import random
import struct
import tempfile
from copy import deepcopy
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachenode.client.safetensors_header import SafetensorsError
from cachenode.client.tensors import aread_header, views
from cachenode.torch import iter_safetensors, load_checkpoint, load_safetensors
from helpers import BS, TOKEN

FILE = "model-00001.safetensors"  # every error must name it


class Raw(str):
    """JSON text spliced in verbatim: what json.dumps cannot write (NaN, -0, 1e400, lone surrogates)."""


class Pairs(list):
    """A JSON object as (key, value) pairs, so a test can write a key twice."""


def dump(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, (Pairs, dict)):
        items = v if isinstance(v, Pairs) else v.items()
        return "{" + ",".join(f"{json.dumps(k)}:{dump(x)}" for k, x in items) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(dump(x) for x in v) + "]"
    return json.dumps(v)


def st_file(header, data: bytes = b"", length_delta: int = 0) -> bytes:
    raw = header if isinstance(header, bytes) else dump(header).encode()
    return struct.pack("<Q", len(raw) + length_delta) + raw + data


def T(dtype, shape, offsets, **extra) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets, **extra}


# --- the two loaders under comparison ------------------------------------------------------------

class Blob:
    """The part of AsyncCacheFile that the loaders' header step uses, over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.name, self.pos = data, len(data), FILE, 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    async def read(self, n: int = -1) -> bytes:
        end = self.size if n < 0 else self.pos + n
        out, self.pos = self.data[self.pos:end], min(end, self.size)
        return out


def ours(blob: bytes) -> dict[str, torch.Tensor]:
    """What cachenode's loaders do with a file: their header step, then views of the data section."""
    coro = aread_header(Blob(blob))
    try:
        coro.send(None)  # nothing in it really waits: Blob.read returns at once
    except StopIteration as done:
        header = done.value
    else:
        raise AssertionError("aread_header suspended")
    return views(header, memoryview(bytearray(blob[header.data_offset:])))


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / FILE


def reference(blob: bytes, path: Path) -> dict[str, torch.Tensor] | None:
    """The reference's verdict: `safe_open` (what `load_file` uses), cross-checked against its two
    in-memory paths. None when it refuses the file."""
    path.write_bytes(blob)
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            got = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 -- any refusal, SafetensorError or torch's TypeError alike
        got = None
    try:
        by_load = safetensors.torch.load(blob)
    except Exception:  # noqa: BLE001 -- a KeyError for F4/F8_E8M0, which safe_open does load
        by_load = None
    if by_load is not None:
        assert got is not None, "the reference's load() and safe_open disagree"
        same(by_load, got)
    try:
        safetensors.deserialize(blob)
    except Exception:  # noqa: BLE001
        assert got is None, "safe_open accepted what deserialize refused"
    return got


def same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert (got[k].dtype, got[k].shape) == (v.dtype, v.shape), k
        if v.numel():  # bytes, not values: NaNs compare unequal, and float4 has no torch.equal
            assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def agree(blob: bytes, path: Path) -> dict | None:
    """Assert both verdicts match; returns the tensors when both accept."""
    expected = reference(blob, path)
    if expected is None:
        with pytest.raises(SafetensorsError) as e:  # and never a TypeError, RecursionError, ...
            ours(blob)
        assert FILE in str(e.value)
        return None
    got = ours(blob)
    same(got, expected)
    return got


# --- generated headers ---------------------------------------------------------------------------

# The reference's dtypes and their bits per element (safetensors/src/tensor.rs `Dtype::bitsize`).
BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# The torch dtype the reference's safe_open gives each (F6_* has none).
TORCH = {k: getattr(torch, v) for k, v in {
    "BOOL": "bool", "F4": "float4_e2m1fn_x2", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16",
    "I32": "int32", "U32": "uint32", "F32": "float32", "C64": "complex64", "F64": "float64", "I64": "int64",
    "U64": "uint64"}.items() if hasattr(torch, v)}
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
dims = st.lists(st.integers(0, 3), max_size=3)
HUGE = [2**31, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64]
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 8), st.sampled_from(HUGE), st.floats(allow_nan=False),
    st.sampled_from(list(BITS)), st.text(max_size=4),
    st.sampled_from([Raw("-0"), Raw("NaN"), Raw("1e400"), Raw("1" * 400), Raw('"\\ud800"'),
                     Raw('"\\ud83d\\ude00"'), Raw("1.0")]))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3).map(lambda d: Pairs(d.items()))),
    max_leaves=6)


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


@st.composite
def safetensors_files(draw) -> bytes:
    """A well-formed file of random tensors (all 22 dtypes, zero-size ones too), then 0-3 edits
    of the kinds that split parsers: offsets, duplicates, types, nesting, stray bytes."""
    specs = draw(st.lists(st.tuples(names, st.sampled_from(list(BITS)), dims), max_size=5,
                          unique_by=lambda t: t[0]))
    entries, pos = [], 0
    for name, dtype, shape in draw(st.permutations(specs)):
        count = 1
        for d in shape:
            count *= d
        size = count * BITS[dtype] // 8
        entries.append([name, T(dtype, list(shape), [pos, pos + size])])
        pos += size
    data = random.Random(draw(st.integers(0, 2**32))).randbytes(pos)
    meta = draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)))
    length_delta = 0
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["offset", "swap", "dup", "data", "field", "drop", "extra", "deep",
                                   "seq", "dtype_map", "huge", "meta", "meta_dup", "entry", "length"]))
        e = draw(st.sampled_from(entries)) if entries else None
        spec = e[1] if e and isinstance(e[1], dict) else None
        offsets = spec.get("data_offsets") if spec else None
        if op == "offset" and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
            i = draw(st.integers(0, 1))
            spec["data_offsets"] = list(offsets)
            spec["data_offsets"][i] = max(0, offsets[i] + draw(st.integers(-3, 3)))
        elif op == "swap" and len(entries) > 1 and all(isinstance(x[1], dict) for x in entries):
            a, b = draw(st.permutations(entries))[:2]
            a[1]["data_offsets"], b[1]["data_offsets"] = b[1].get("data_offsets"), a[1].get("data_offsets")
        elif op == "dup" and e:
            copy = deepcopy(e[1])
            if isinstance(copy, dict) and draw(st.booleans()):
                copy["data_offsets"] = [pos, pos + draw(st.integers(0, 2))]
            entries.insert(draw(st.integers(0, len(entries))), [e[0], copy])
        elif op == "data":
            k = draw(st.integers(-2, 2))
            data = data + bytes(k) if k >= 0 else data[:k]
        elif op == "field" and spec:
            spec[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_value)
        elif op == "drop" and spec:
            spec.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif op == "extra" and spec:
            spec[draw(st.sampled_from(["extra", "dtype"]))] = draw(json_value)
        elif op == "deep" and spec:
            spec["nest"] = nested(draw(st.integers(124, 127)))
        elif op == "seq" and spec and len(spec) >= 3:
            e[1] = [spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")][:draw(st.integers(2, 4))]
        elif op == "dtype_map" and spec:
            spec["dtype"] = Pairs([(spec.get("dtype"), draw(st.sampled_from([None, None, 0, []])))])
        elif op == "huge" and spec:
            spec["shape"] = draw(st.permutations([0, draw(st.sampled_from(HUGE)), *draw(dims)]))
        elif op == "meta":
            meta = draw(st.one_of(json_value, st.dictionaries(st.text(max_size=2), json_value, max_size=2)))
        elif op == "meta_dup":
            entries.insert(draw(st.integers(0, len(entries))), ["__metadata__", draw(json_value)])
        elif op == "entry" and e:
            e[1] = draw(json_value)
        elif op == "length":
            length_delta = draw(st.integers(-2, 2))
    pairs = Pairs(tuple(x) for x in entries)
    if meta is not None or draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), ("__metadata__", meta))
    return st_file(pairs, data, length_delta)


PARITY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PARITY
@given(safetensors_files())
def test_generated_files_get_the_reference_verdict_and_tensors(scratch, blob):
    agree(blob, scratch)


@settings(max_examples=150, deadline=None)
@given(st.one_of(json_value, st.lists(st.tuples(st.sampled_from(["__metadata__", "a", "b"]), json_value),
                                      max_size=3).map(Pairs)))
def test_any_json_header_gets_the_reference_verdict(scratch, header):
    agree(st_file(header), scratch)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=8))
def test_arbitrary_header_bytes_get_the_reference_verdict(scratch, raw, data):
    agree(st_file(raw, data), scratch)


BASE = st_file(Pairs([("__metadata__", {"k": "v"}), ("w", T("F32", [2], [0, 8])), ("z", T("U8", [0, 2], [8, 8])),
                      ("b", T("BF16", [1], [8, 10]))]), bytes(range(10)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(BASE) - 1),
                          st.one_of(st.sampled_from(b'-09."[]{},:\\e. tn'), st.integers(0, 255))),
                min_size=1, max_size=3))
def test_corrupted_bytes_of_a_good_file_get_the_reference_verdict(scratch, edits):
    blob = bytearray(BASE)
    for pos, byte in edits:
        blob[pos] = byte
    agree(bytes(blob), scratch)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(BITS)), dims), min_size=1, max_size=4))
def test_files_written_by_the_reference_load_identically(scratch, specs):
    """Files the reference itself writes, for every dtype torch has: ours must give its tensors."""
    sd = {}
    for i, (dtype, shape) in enumerate(specs):
        if dtype not in TORCH or (dtype == "F4" and (not shape or shape[-1] % 2)):
            continue
        shape = [*shape[:-1], shape[-1] // 2] if dtype == "F4" else shape
        dt = TORCH[dtype]
        nbytes = math.prod(shape) * dt.itemsize
        raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        sd[f"t{i}"] = raw.view(dt).reshape(shape)
    blob = safetensors.torch.save(sd)
    same(agree(blob, scratch), sd)


# --- each class from the review, by hand ---------------------------------------------------------

DUP = b'{"a":%s,"a":%s}'
U8 = b'{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}'
ACCEPTED = {
    "C64": st_file({"w": T("C64", [2], [0, 16])}, bytes(range(16))),
    "F8_E4M3FNUZ": st_file({"w": T("F8_E4M3FNUZ", [3], [0, 3])}, b"\x01\x80\x7f"),
    "F8_E5M2FNUZ": st_file({"w": T("F8_E5M2FNUZ", [3], [0, 3])}, b"\x01\x80\x7f"),
    "F8_E8M0": st_file({"w": T("F8_E8M0", [2], [0, 2])}, b"\x01\xff"),
    "F4": st_file({"w": T("F4", [2, 4], [0, 4])}, b"\x12\x34\x56\x78"),
    # The reference reads the header into a HashMap: a repeated name is not an error, each copy
    # must be well-formed and the last one wins.
    "duplicate name, last wins": st_file(DUP % (U8 % (5, 6), U8 % (0, 1)), b"\x07"),
    "zero-size on a boundary": st_file({"a": T("U8", [2], [0, 2]), "z": T("F32", [0, 3], [2, 2]),
                                        "b": T("U8", [1], [2, 3])}, b"abc"),
    "two zero-size at one offset": st_file({"z1": T("U8", [0], [0, 0]), "z2": T("I64", [4, 0], [0, 0])}),
    "zero-size at the end": st_file({"a": T("U8", [1], [0, 1]), "z": T("U8", [0], [1, 1])}, b"x"),
    "huge dims on a zero-size tensor": st_file({"z": T("U8", [0, 2**63 - 1], [0, 0])}),
    "huge dims torch.empty refuses": st_file({"z": T("U8", [0, 2**62, 2**62], [0, 0])}),
    "entry as a sequence": st_file({"a": ["U8", [1], [0, 1]]}, b"x"),
    "dtype as {name: null}": st_file({"a": T(Pairs([("U8", None)]), [1], [0, 1])}, b"x"),
    "127 levels of nesting": st_file({"a": T("U8", [1], [0, 1], x=nested(125))}, b"x"),
    "metadata null": st_file({"__metadata__": None}),
}

REJECTED = {  # id -> (file, what our message must name besides the file)
    "duplicate __metadata__": (st_file(b'{"__metadata__":{},"__metadata__":{}}'), "__metadata__"),
    "duplicate __metadata__, first null": (st_file(b'{"__metadata__":null,"__metadata__":{}}'), "__metadata__"),
    "duplicate field": (st_file(b'{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"),
                        "'a'.*'dtype' appears twice"),
    "duplicate name, bad first copy": (st_file(DUP % (b'{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}',
                                                      U8 % (0, 1)), b"x"), "'a'.*unknown dtype"),
    "duplicate name, last copy leaves a gap": (st_file(DUP % (U8 % (0, 1), U8 % (1, 2)), b"xy"), "'a'.*gap"),
    "gap between tensors": (st_file({"a": T("U8", [1], [0, 1]), "b": T("U8", [1], [2, 3])}, b"xyz"),
                            "'b'.*'a' ends at 1.*gap"),
    "gap before the first tensor": (st_file({"a": T("U8", [1], [1, 2])}, b"xy"), "'a'.*gap"),
    "trailing bytes": (st_file({"a": T("U8", [1], [0, 1])}, b"xy"), "'a'.*trailing"),
    "trailing bytes, no tensors": (st_file({}, b"x"), "no tensors.*trailing"),
    "overlap": (st_file({"a": T("U8", [2], [0, 2]), "b": T("U8", [2], [1, 3])}, b"xyz"), "'b'.*overlap"),
    "zero-size inside a tensor": (st_file({"a": T("U8", [4], [0, 4]), "z": T("U8", [0], [2, 2])}, b"wxyz"),
                                  "'a' and 'z' overlap"),
    "zero-size past the end": (st_file({"a": T("U8", [1], [0, 1]), "z": T("U8", [0], [2, 2])}, b"x"),
                               "'z'.*outside the data section"),
    "same span twice": (st_file({"a": T("U8", [1], [0, 1]), "b": T("U8", [1], [0, 1])}, b"x"), "'a' and 'b' overlap"),
    "metadata value int": (st_file({"__metadata__": {"k": 1}}), "__metadata__ 'k'"),
    "metadata value null": (st_file({"__metadata__": {"k": None}}), "__metadata__ 'k'"),
    "metadata value object": (st_file({"__metadata__": {"k": {}}}), "__metadata__ 'k'"),
    "metadata a list": (st_file({"__metadata__": []}), "__metadata__"),
    "metadata false": (st_file({"__metadata__": False}), "__metadata__"),
    "dtype as a list": (st_file({"a": T(["U8"], [1], [0, 1])}, b"x"), "'a'.*dtype"),
    "dtype {name: 0}": (st_file({"a": T(Pairs([("U8", 0)]), [1], [0, 1])}, b"x"), "'a'.*dtype"),
    "dtype F6 (no torch dtype)": (st_file({"a": T("F6_E2M3", [4], [0, 3])}, b"xyz"), "'a'.*F6_E2M3"),
    "F4 with an odd last dim": (st_file({"a": T("F4", [2, 3], [0, 3])}, b"xyz"), "'a'.*even"),
    "F4 not filling a byte": (st_file({"a": T("F4", [3], [0, 2])}, b"xy"), "'a'.*whole bytes"),
    "shape true": (st_file({"a": T("U8", [True], [0, 1])}, b"x"), "'a'.*shape"),
    "offsets booleans": (st_file({"a": T("U8", [1], [False, True])}, b"x"), "'a'.*data_offsets"),
    "shape -0": (st_file({"a": T("U8", [Raw("-0")], [0, 0])}), "'a'.*shape"),
    "shape 1.0": (st_file({"a": T("U8", [Raw("1.0")], [0, 1])}, b"x"), "'a'.*shape"),
    "dim past u64": (st_file({"a": T("U8", [0, 2**64], [0, 0])}), "'a'.*shape"),
    "dim past int64, zero-size": (st_file({"a": T("U8", [0, 2**63], [0, 0])}), "'a'.*int64"),
    "dim product overflows before the zero": (st_file({"a": T("U8", [2**32, 2**32, 0], [0, 0])}), "'a'.*overflow"),
    "size in bits overflows": (st_file({"a": T("F64", [2**61], [0, 0])}), "'a'.*overflow"),
    "shape an empty object": (st_file({"a": T("U8", {}, [0, 1])}, b"x"), "'a'.*shape"),
    "offsets an object": (st_file({"a": T("U8", [1], {"0": 0, "1": 1})}, b"x"), "'a'.*data_offsets"),
    "three offsets": (st_file({"a": T("U8", [1], [0, 1, 1])}, b"x"), "'a'.*data_offsets"),
    "entry a 2-sequence": (st_file({"a": ["U8", [1]]}, b"x"), "'a'"),
    "missing field": (st_file({"a": {"dtype": "U8", "data_offsets": [0, 1]}}, b"x"), "'a'.*missing shape"),
    "128 levels of nesting": (st_file({"a": T("U8", [1], [0, 1], x=nested(126))}, b"x"), "'a'.*nests"),
    "100000 levels of nesting": (st_file({"a": T("U8", [1], [0, 1], x=nested(100_000))}, b"x"), "'a'.*nests"),
    "number out of range, 400 digits": (st_file({"a": T("U8", [1], [0, 1], x=Raw("9" * 400))}, b"x"),
                                        "'a'.*out of range"),
    "-0 in an ignored field is fine, 1e400 is not": (st_file({"a": T("U8", [1], [0, 1], x=[Raw("-0"), Raw("1e400")])},
                                                          b"x"), "out of range"),
    "NaN": (st_file({"a": T("U8", [1], [0, 1], x=Raw("NaN"))}, b"x"), "not valid JSON"),
    "5000-digit number": (st_file({"a": T("U8", [1], [0, 1], x=Raw("9" * 5000))}, b"x"), "not valid JSON"),
    "unpaired surrogate": (st_file({"a": T("U8", [1], [0, 1], x=Raw('"\\ud800"'))}, b"x"), "'a'.*surrogate"),
    "header not an object": (st_file([]), "not a JSON object"),
    "header too large": (st_file(b"{}", length_delta=100_000_000), "exceeds"),
}


@pytest.mark.parametrize("blob", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_what_the_reference_accepts_loads_identically(scratch, blob):
    assert reference(blob, scratch) is not None  # the claim about the reference holds
    agree(blob, scratch)


@pytest.mark.parametrize("blob, match", REJECTED.values(), ids=REJECTED.keys())
def test_what_the_reference_rejects_is_a_named_safetensors_error(scratch, blob, match):
    assert reference(blob, scratch) is None  # the claim about the reference holds
    with pytest.raises(SafetensorsError, match=f"{FILE}.*{match}"):
        ours(blob)


def test_new_dtypes_hold_the_reference_values(scratch):
    got = ours(ACCEPTED["C64"])["w"]
    assert got.dtype == torch.complex64
    assert torch.equal(got, torch.frombuffer(bytearray(range(16)), dtype=torch.complex64))
    assert ours(ACCEPTED["F4"])["w"].shape == (2, 2)  # two F4 values per float4_e2m1fn_x2, as safe_open


# --- through a real cluster ----------------------------------------------------------------------

def test_bad_headers_fail_loads_through_a_cluster_naming_file_and_tensor(blobs, nodes):
    cluster = nodes.cluster(1, "--block-size", f"{BS}")
    opts = {"nodes": cluster.urls, "token": TOKEN}
    url = blobs.put(f"good/{FILE}", ACCEPTED["C64"])
    same(load_safetensors(url, **opts), {"w": torch.frombuffer(bytearray(range(16)), dtype=torch.complex64)})
    for case in ("zero-size inside a tensor", "metadata value int", "shape true", "100000 levels of nesting"):
        blob, match = REJECTED[case]
        url = blobs.put(f"bad/{FILE}", blob)
        with pytest.raises(SafetensorsError, match=f"{FILE}.*{match}"):
            load_safetensors(url, **opts)
        with pytest.raises(SafetensorsError, match=f"{FILE}.*{match}"):
            list(iter_safetensors(url, **opts))
    # A bad shard inside a sharded checkpoint surfaces the same error.
    blobs.put("bad/model.safetensors.index.json", json.dumps({"weight_map": {"a": FILE}}).encode())
    with pytest.raises(SafetensorsError, match=f"{FILE}.*'a'"):
        load_checkpoint(blobs.url("bad/"), **opts)
