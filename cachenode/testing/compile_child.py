"""One fresh-process torch.compile of a small MLP, with or without the cluster's artifacts: JSON spec in, JSON out.

`python -m cachenode.testing.compile_child '<spec>'` prints one "RESULT <json>" line. The parent
sets TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR in the child's environment (fresh, or a warm copy).
Spec: {"source": "cold" | "cluster" | "local", "api": "one_line" | "context", "width", "blocks",
"shapes": [[batch, ...], ...] (the first call's shape first), "nodes", "token", "writer_token",
"namespace", "chunk_size"}. The result has the first output, Inductor's counters after the first
call and at the end, what the compile cache loaded and published, its log lines, and the seconds
from process start to the first output.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


def process_age() -> float:
    """Seconds since this process started (from /proc: interpreter start-up included)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def _counters() -> dict:
    from torch._dynamo.utils import counters

    return {k: v for k, v in counters["inductor"].items() if "cache" in k}


def build_model(width: int, blocks: int):
    """The same weights and inputs in every process (seeded)."""
    import torch

    torch.manual_seed(0)
    layers = []
    for _ in range(blocks):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.LayerNorm(width)]
    return torch.nn.Sequential(*layers).eval()


def run(spec: dict, started_before: float = 0.0) -> dict:
    """Compile and call as the spec says; `started_before`: seconds this process ran before run()
    was called that count towards "process start to first output" (0: measured from /proc)."""
    t0 = time.perf_counter()
    age0 = started_before or process_age()
    lines = _Lines()
    logging.getLogger("cachenode").addHandler(lines)
    logging.getLogger("cachenode").setLevel(logging.INFO)
    import torch

    model = build_model(spec["width"], spec["blocks"])
    inputs = [torch.randn(*shape, spec["width"], generator=torch.Generator().manual_seed(1)) for shape in spec["shapes"]]
    options = spec.get("compile_options", {})
    load = publish = None
    cache = None
    with torch.no_grad():
        if spec["source"] == "cluster":
            from cachenode.client.compile_cache import CompileCache, PublishingCompiled

            cache = CompileCache(model, options, namespace=spec["namespace"], nodes=spec["nodes"], token=spec["token"],
                                 writer_token=spec.get("writer_token"), chunk_size=spec.get("chunk_size", 4 << 20))
            load = cache.load()
            compiled = cache.compile(model)
            if spec.get("api", "one_line") == "one_line":
                compiled = PublishingCompiled(compiled, cache)
        else:
            compiled = torch.compile(model, **options)
        first = compiled(inputs[0])
        seconds = age0 + time.perf_counter() - t0
        after_first = _counters()
        for x in inputs[1:]:
            compiled(x)
        if cache is not None:
            if spec.get("api", "one_line") == "one_line":
                publish = compiled.publish() if len(inputs) > 1 else compiled.last_publish
            else:
                publish = cache.publish()
            cache.close()
        eager = model(inputs[0])
    return {"seconds": seconds, "out": first.flatten().tolist(), "eager_close": bool(torch.allclose(first, eager, atol=1e-5)),
            "counters_first": after_first, "counters": _counters(),
            "load": None if load is None else vars(load), "publish": None if publish is None else vars(publish),
            "logs": lines.lines}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run(json.loads(sys.argv[1]))), flush=True)
