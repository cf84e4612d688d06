"""Parse and validate a safetensors header (8-byte length + JSON) without any framework."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from cachenode.errors import CacheError

# safetensors dtype -> bytes per element
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors reference limit


class SafetensorsError(CacheError, ValueError):
    """A malformed safetensors file; the message names the file and, where known, the tensor."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data section
    end: int


@dataclass(frozen=True)
class Header:
    data_offset: int  # where the data section starts in the file
    data_size: int
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]


def header_length(prefix: bytes, file_size: int, name: str) -> int:
    """Length of the JSON header from the file's first 8 bytes."""
    if file_size < 8 or len(prefix) < 8:
        raise SafetensorsError(f"{name}: {file_size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > file_size - 8:
        raise SafetensorsError(f"{name}: header length {n} runs past the end of the file ({file_size} bytes)")
    if n > MAX_HEADER:
        raise SafetensorsError(f"{name}: header length {n} exceeds {MAX_HEADER} bytes")
    return n


def parse_header(raw: bytes, file_size: int, name: str) -> Header:
    """Validate the JSON header `raw` (without the 8-byte prefix) against the file size."""
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{name}: header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SafetensorsError(f"{name}: header is not a JSON object")
    data_offset = 8 + len(raw)
    data_size = file_size - data_offset
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"{name}: __metadata__ is not an object")
    entries = [_entry(name, k, v, data_size) for k, v in doc.items()]
    spans = sorted((e.begin, e.end, e.name) for e in entries if e.end > e.begin)
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{name}: tensors {n0!r} and {n1!r} overlap ({b0}..{e0} and {b1}..)")
    return Header(data_offset, data_size, tuple(entries), {str(k): str(v) for k, v in metadata.items()})


def _entry(fname: str, tname: str, spec, data_size: int) -> TensorEntry:
    where = f"{fname}: tensor {tname!r}"
    if not isinstance(spec, dict):
        raise SafetensorsError(f"{where}: entry is not an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype not in ITEMSIZE:
        raise SafetensorsError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsError(f"{where}: bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise SafetensorsError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if begin > end or end > data_size:
        raise SafetensorsError(f"{where}: data_offsets {offsets} outside the data section ({data_size} bytes)")
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        raise SafetensorsError(f"{where}: {end - begin} bytes for shape {shape} of {dtype} (expected {expected})")
    return TensorEntry(tname, dtype, tuple(shape), begin, end)
