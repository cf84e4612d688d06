"""safetensors files through the cache straight into torch tensors that view one buffer."""

from __future__ import annotations

import torch

from .api import Client
from .safetensors_header import Header, SafetensorsError, header_length, parse_header

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_header(f, name: str) -> Header:
    """Read and validate the header of an open cachenode (or any seekable binary) file."""
    size = f.seek(0, 2)
    f.seek(0)
    n = header_length(f.read(8), size, name)
    raw = f.read(n)
    if len(raw) != n:
        raise SafetensorsError(f"{name}: header truncated ({len(raw)} of {n} bytes)")
    return parse_header(raw, size, name)


def views(header: Header, data: bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Every tensor as a view of `data` (the data section); no per-tensor copies.

    The tensors keep `data` alive through torch's buffer reference.
    """
    out = {}
    for e in header.tensors:
        dtype = TORCH_DTYPES[e.dtype]
        if e.end == e.begin:
            out[e.name] = torch.empty(e.shape, dtype=dtype)
            continue
        raw = torch.frombuffer(data, dtype=torch.uint8, count=e.end - e.begin, offset=e.begin)
        out[e.name] = raw.view(dtype).view(e.shape)
    return out


def load_safetensors(url: str, *, client: Client | None = None, on_bytes=None, **kwargs
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, __metadata__) of a safetensors file read through the cache into one buffer."""
    own = client is None
    client = client or Client(**kwargs)
    try:
        with client.open(url, on_bytes=on_bytes) as f:
            header = read_header(f, url)
            data = bytearray(header.data_size)
            f.seek(header.data_offset)
            got = f.readinto(data)
            if got != len(data):
                raise SafetensorsError(f"{url}: data section truncated ({got} of {len(data)} bytes)")
        return views(header, data), header.metadata
    finally:
        if own:
            client.close()
