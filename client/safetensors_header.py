"""Parse and validate a safetensors header (8-byte length + JSON) without any framework."""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

from cachenode.errors import CacheError

# safetensors dtype -> bits per element (F4 and F6 pack several elements into a byte); the full
# set the reference format defines, whether or not a framework can hold it.
BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
MAX_HEADER = 100_000_000  # the reference's MAX_HEADER_SIZE (decimal, not MiB)
U64_MAX = 2**64 - 1  # the reference computes sizes in usize and rejects what overflows it
# serde_json refuses a 128th level of nesting; Python's json would go on until a RecursionError.
MAX_DEPTH = 127
FIELDS = ("dtype", "shape", "data_offsets")


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
    if n > MAX_HEADER:
        raise SafetensorsError(f"{name}: header length {n} exceeds {MAX_HEADER} bytes")
    if n > file_size - 8:
        raise SafetensorsError(f"{name}: header length {n} runs past the end of the file ({file_size} bytes)")
    return n


def parse_header(raw: bytes, file_size: int, name: str) -> Header:
    """Validate the JSON header `raw` (without the 8-byte prefix) against the file size.

    Accepts exactly what the reference `safetensors` (serde_json + its `validate`) accepts:
    tensors must tile the data section from 0 to its end in offset order, with no gap, overlap
    or trailing byte, and a zero-size tensor may only sit on a boundary between tensors.
    """
    doc, escapes = _loads(raw, name)
    if not isinstance(doc, _Obj):
        raise SafetensorsError(f"{name}: header is not a JSON object")
    data_offset = 8 + len(raw)
    data_size = file_size - data_offset
    metadata: dict[str, str] | None = None
    specs: dict[str, object] = {}
    seen_metadata = False
    for key, value in doc:
        if escapes and _has_surrogate(key):
            raise SafetensorsError(f"{name}: tensor {key!r}: unpaired surrogate escape in the name")
        if key == "__metadata__":
            if seen_metadata:
                raise SafetensorsError(f"{name}: __metadata__ appears twice")
            seen_metadata, metadata = True, _metadata(name, value, escapes)
        else:
            # A repeated tensor name is not an error to the reference: each copy must be
            # well-formed, and the last one wins (serde fills a HashMap).
            specs[key] = _entry(name, key, value, escapes)
    entries = [TensorEntry(k, *spec) for k, spec in specs.items()]
    end = _check_layout(name, entries, data_size)
    if end != data_size:  # only short of it: _check_layout refuses a tensor past the end
        last = max(entries, key=lambda e: (e.begin, e.end), default=None)
        after = f"the last tensor {last.name!r} ends at {end}" if last else "there are no tensors"
        raise SafetensorsError(f"{name}: {after} but the data section holds {data_size} bytes"
                               f" ({data_size - end} trailing bytes)")
    return Header(data_offset, data_size, tuple(entries), metadata or {})


class _Obj(list):
    """A JSON object as its (key, value) pairs in document order, so duplicate keys stay visible."""


class _Reject(Exception):
    """JSON that Python's parser takes but serde_json refuses."""


def _no_constant(s: str):
    raise _Reject(f"{s} is not JSON")


def _parse_int(s: str):
    # serde_json reads "-0" as a float, and a literal past any 64-bit integer as an f64 (refused
    # when it overflows): a usize field refuses both. float() also spares Python's int() its
    # 4300-digit limit, a raw ValueError, on huge literals.
    if s == "-0":
        return -0.0
    return _parse_float(s) if len(s) > 21 else int(s)


def _parse_float(s: str) -> float:
    f = float(s)
    if math.isinf(f):
        raise _Reject(f"number {s if len(s) <= 20 else s[:20] + '...'} out of range")
    return f


_DECODER = json.JSONDecoder(object_pairs_hook=_Obj, parse_float=_parse_float, parse_constant=_no_constant)
# An int hook costs a third of the parse, so only text holding a "-0" goes through it; the other
# case it covers, a huge literal in an ignored field, _walk catches.
_INT_DECODER = json.JSONDecoder(object_pairs_hook=_Obj, parse_int=_parse_int, parse_float=_parse_float,
                                parse_constant=_no_constant)
# Python decodes an unpaired surrogate escape ("\ud800") into the string; serde_json refuses it.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _loads(raw: bytes, name: str):
    try:
        text = bytes(raw).decode("utf-8")
        doc = (_INT_DECODER if "-0" in text else _DECODER).decode(text)
    except (UnicodeDecodeError, ValueError, _Reject) as exc:  # JSONDecodeError is a ValueError
        raise SafetensorsError(f"{name}: header is not valid JSON ({exc})") from None
    except RecursionError:
        where = _deep_key(text)
        where = f"{name}: {_what(where)}" if where is not None else name
        raise SafetensorsError(f"{where}: header nests deeper than {MAX_DEPTH} levels") from None
    return doc, "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None


_TOKEN = re.compile(r'("(?:[^"\\]|\\.)*")(\s*:)?|[\[\]{}]')


def _deep_key(text: str) -> str | None:
    """The top-level key under which `text` first nests too deep: json gave up with a
    RecursionError, so find it by scanning strings and brackets up to that point."""
    depth, key = 0, None
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            if m.group(2) and depth == 1:
                key = m.group(1)
        elif m.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                try:
                    return json.loads(key) if key else None
                except ValueError:
                    return None
        else:
            depth -= 1
    return None


def _walk(doc, where: str, depth: int, escapes: bool) -> None:
    """Apply serde_json's nesting limit and, if the text has surrogate escapes, its surrogate rule
    to a value the reference otherwise ignores (an unknown field), `depth` levels down."""
    stack = [(doc, depth)]  # iterative: the input is attacker-sized
    while stack:
        node, depth = stack.pop()
        if escapes and _has_surrogate(node):
            raise SafetensorsError(f"{where}: unpaired surrogate escape in {_short(node)}")
        if type(node) is int and not -2**63 <= node <= U64_MAX:
            try:  # serde_json holds it as an f64, and refuses it if that overflows
                float(node)
            except OverflowError:
                raise SafetensorsError(f"{where}: number {_short(node)} out of range") from None
        if not isinstance(node, list):
            continue
        if depth > MAX_DEPTH:
            raise SafetensorsError(f"{where}: header nests deeper than {MAX_DEPTH} levels")
        for item in node:
            if isinstance(node, _Obj):
                stack.append((item[0], depth))
                stack.append((item[1], depth + 1))
            else:
                stack.append((item, depth + 1))


def _what(key: str) -> str:
    return key if key == "__metadata__" else f"tensor {key!r}"


def _has_surrogate(s) -> bool:
    return isinstance(s, str) and any("\ud800" <= c <= "\udfff" for c in s)


def _metadata(fname: str, value, escapes: bool) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, _Obj):
        raise SafetensorsError(f"{fname}: __metadata__ must be an object of strings, not {_kind(value)}")
    for k, v in value:
        if not isinstance(v, str):
            raise SafetensorsError(f"{fname}: __metadata__ {k!r} must be a string, not {_kind(v)}")
        if escapes and (_has_surrogate(k) or _has_surrogate(v)):
            raise SafetensorsError(f"{fname}: __metadata__ {k!r}: unpaired surrogate escape")
    return dict(value)


def _entry(fname: str, tname: str, spec, escapes: bool) -> tuple[str, tuple[int, ...], int, int]:
    where = f"{fname}: tensor {tname!r}"
    if isinstance(spec, _Obj):
        fields = dict(spec)
        if len(fields) < len(spec):
            for f in FIELDS:
                if sum(k == f for k, _ in spec) > 1:
                    raise SafetensorsError(f"{where}: {f!r} appears twice")
        if len(fields) > 3 or escapes:
            for k, v in spec:
                if k not in FIELDS:  # ignored, as serde ignores unknown fields; but serde_json parsed it
                    _walk([k, v], where, 2, escapes)
        missing = [f for f in FIELDS if f not in fields]
        if missing:
            raise SafetensorsError(f"{where}: missing {', '.join(missing)}")
        dtype, shape, offsets = (fields[f] for f in FIELDS)
    elif _array(spec) and len(spec) == 3:
        dtype, shape, offsets = spec  # serde also reads a struct from a sequence of its fields
    else:
        raise SafetensorsError(f"{where}: entry must be an object with {', '.join(FIELDS)}, not {_kind(spec)}")
    dtype = _dtype(where, dtype)
    if not _array(shape) or not all(type(d) is int and 0 <= d <= U64_MAX for d in shape):
        raise SafetensorsError(f"{where}: bad shape {_short(shape)} (needs a list of non-negative integers)")
    if not _array(offsets) or len(offsets) != 2 or not (_usize(offsets[0]) and _usize(offsets[1])):
        raise SafetensorsError(f"{where}: bad data_offsets {_short(offsets)} (needs [begin, end])")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _dtype(where: str, value) -> str:
    # serde reads a unit enum variant from "U8" and also from {"U8": null}.
    if isinstance(value, _Obj) and len(value) == 1 and value[0][1] is None:
        value = value[0][0]
    if not isinstance(value, str) or value not in BITS:
        raise SafetensorsError(f"{where}: unknown dtype {_short(value)}")
    return value


def _array(v) -> bool:
    return isinstance(v, list) and not isinstance(v, _Obj)


def _usize(v) -> bool:
    return type(v) is int and 0 <= v <= U64_MAX  # type(): a JSON true is no dimension


def _kind(v) -> str:
    return "an object" if isinstance(v, _Obj) else type(v).__name__


def _short(v) -> str:
    r = repr(dict(v) if isinstance(v, _Obj) else v)
    return r if len(r) <= 80 else r[:77] + "..."


def _check_layout(fname: str, entries: list[TensorEntry], data_size: int) -> int:
    """The reference's `validate`: in offset order each tensor starts where the previous ended and
    is exactly as long as its shape and dtype say, sizes computed without overflowing a u64.
    Returns where the last tensor ends."""
    pos, prev = 0, None
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        where = f"{fname}: tensor {e.name!r}"
        if e.end < e.begin:
            raise SafetensorsError(f"{where}: data_offsets [{e.begin}, {e.end}] end before they begin")
        if e.end > data_size:
            raise SafetensorsError(f"{where}: data_offsets [{e.begin}, {e.end}] outside the data section"
                                   f" ({data_size} bytes)")
        if e.begin < pos:
            raise SafetensorsError(f"{fname}: tensors {prev.name!r} and {e.name!r} overlap ({prev.name!r} ends"
                                   f" at {pos}, {e.name!r} starts at {e.begin})")
        if e.begin > pos:
            after = f"{prev.name!r} ends at {pos}" if prev else "the data section starts at 0"
            raise SafetensorsError(f"{where}: starts at {e.begin} but {after} (a gap; tensors must tile"
                                   " the data section)")
        count = 1
        for d in e.shape:
            count *= d
            if count > U64_MAX:
                raise SafetensorsError(f"{where}: shape {list(e.shape)} overflows a 64-bit element count")
        bits = count * BITS[e.dtype]
        if bits > U64_MAX:
            raise SafetensorsError(f"{where}: shape {list(e.shape)} of {e.dtype} overflows a 64-bit size")
        if bits % 8:
            raise SafetensorsError(f"{where}: {count} elements of {e.dtype} do not fill whole bytes")
        if e.end - e.begin != bits // 8:
            raise SafetensorsError(f"{where}: {e.end - e.begin} bytes for shape {list(e.shape)} of {e.dtype}"
                                   f" (expected {bits // 8})")
        pos, prev = e.end, e
    return pos
