"""The identity compiled artifacts are keyed by, computed from the model, the software and the device."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import platform
import sys
from dataclasses import dataclass
from typing import Any, Mapping

# CPU flags that change the kernels Inductor's C++ backend emits (vector ISA and matrix units);
# two hosts that differ in any of them must not share compiled code.
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
              "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")

# Identity format version: bump when what goes into an identity changes, so old sets are not reused.
IDENTITY_FORMAT = 1


@dataclass(frozen=True)
class Identity:
    """What compiled artifacts were made for; `digest` (sha256 hex of `fields` as canonical JSON)
    is the only thing keys are built from. Built by `compute_identity`, never typed by a user."""

    fields: Mapping[str, Any]
    digest: str

    def describe(self) -> str:
        """A short human line for logs: the parts a person would check on a mismatch."""
        f = self.fields
        return (f"{self.digest[:16]} (model {f['model'][:12]}, torch {f['software']['torch']}, "
                f"device {f['device'].get('kind')}:{f['device'].get('capability')})")


def _canonical(value: Any) -> Any:
    """A JSON-able, order-independent form of option values (tuples as lists, sets sorted, objects
    by type name and repr: a callable backend is known by its qualified name)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__qualname__, **_canonical(dataclasses.asdict(value))}
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return f"{type(value).__qualname__}:{value!r}"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _source_of(cls: type) -> str:
    """A class's source when Python can find it (its forward defines the traced graph), else its name."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"


def model_fingerprint(model: Any) -> str:
    """sha256 of what defines the graphs a model compiles to.

    A torch module: its module tree (class and repr of every submodule, which carries the layer
    sizes and flags), the source of each class (forward is what Dynamo traces), and every parameter
    and buffer's name, shape, dtype, device and requires_grad. Not the weight values: unfrozen
    weights are graph inputs, so retrained weights of the same architecture share compiled code.
    A config object (dataclass, mapping, `to_dict()`, e.g. a Hugging Face config): its values.
    """
    try:
        import torch
        is_module = isinstance(model, torch.nn.Module)
    except ImportError:  # a config object on a host without torch still has an identity
        is_module = False
    if is_module:
        classes = sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}")
        tensors = [(name, list(t.shape), str(t.dtype), t.device.type, bool(t.requires_grad))
                   for name, t in [*model.named_parameters(), *model.named_buffers()]]
        return _digest({"kind": "module", "tree": repr(model), "tensors": tensors,
                        "training": model.training,
                        "classes": {f"{c.__module__}.{c.__qualname__}": hashlib.sha256(_source_of(c).encode()).hexdigest()
                                    for c in classes}})
    if hasattr(model, "to_dict") and callable(model.to_dict):
        return _digest({"kind": "config", "type": type(model).__qualname__, "values": _canonical(model.to_dict())})
    return _digest({"kind": "config", "type": type(model).__qualname__, "values": _canonical(model)})


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_versions(engine: str | None = None) -> dict[str, Any]:
    """Python, torch (with its git commit), Triton, and the engine's version when one is named."""
    import torch

    out = {"python": ".".join(map(str, sys.version_info[:3])), "torch": torch.__version__,
           "torch_git": getattr(torch.version, "git_version", None), "triton": _version("triton"),
           "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}
    if engine:
        out["engine"] = {"name": engine, "version": _version(engine) or _version(f"{engine}-cpu")}
    return out


def _cpu_flags(cpuinfo: str) -> list[str]:
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return [f for f in _ISA_FLAGS if f in present]
    return []


def device_description(device: str = "cpu", cpuinfo: str | None = None) -> dict[str, Any]:
    """Device kind and capability: on CUDA the compute capability and name; on CPU torch's own
    vector capability (what Inductor's C++ backend targets) and the ISA flags of /proc/cpuinfo."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return {"kind": "cuda", "capability": f"sm_{major}{minor}", "name": torch.cuda.get_device_name(index)}
    if kind != "cpu":
        return {"kind": kind, "capability": None}
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    return {"kind": "cpu", "arch": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
            "isa": _cpu_flags(cpuinfo)}


def _device_of(model: Any) -> str:
    try:
        return next(iter(model.parameters())).device.type
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def compute_identity(model: Any, compile_options: Mapping[str, Any] | None = None, *,
                     engine: str | None = None, device: str | None = None) -> Identity:
    """The identity of the artifacts `torch.compile(model, **compile_options)` makes on this host.

    `device` defaults to where the model's parameters are (CPU for a config object).
    """
    fields = {"format": IDENTITY_FORMAT, "model": model_fingerprint(model),
              "software": software_versions(engine),
              "device": device_description(device or _device_of(model)),
              "compile": _canonical(dict(compile_options or {}))}
    return Identity(fields=fields, digest=_digest(fields))
