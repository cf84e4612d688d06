"""The contenders' loads as probe kinds (bench/probe.py): imports before the clock, then one timed load.

Each load's result: seconds, CPU seconds, peak RSS, the import baseline and a data digest (and,
for cache loads, the loader's own time breakdown).
"""

from __future__ import annotations

import resource
import time
from typing import Callable


def _rss() -> int:
    """Peak RSS of this process image (VmHWM): unlike ru_maxrss it is not inherited over exec
    from a parent that once held a large buffer."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu() -> float:
    """CPU seconds this process has used, every thread (I/O loop, prefault) included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prepare(spec: dict) -> Callable[[], dict]:
    """Import and set up `spec`'s load; returns the timed load."""
    import torch  # noqa: F401  (part of the baseline every contender pays)

    from cachenode.bench.loads import data_digest

    kind = spec["kind"]
    extra: dict = {}
    if kind == "cache":
        from cachenode.bench.loads import cache_tensors

        if spec.get("transport") == "ucx":
            # loading UCX's shared libraries (0.4 s) is an import, like every contender's
            # imports: before the clock, not part of the load
            from cachenode.transport.ucx_wire import load_ucxx

            load_ucxx()

        from cachenode.client.loadstats import LoadStats

        stats = LoadStats()
        extra["breakdown"] = stats

        def load():
            return cache_tensors(spec["url"], spec["nodes"], spec["token"],
                                 transport=spec.get("transport", "tcp"), stats=stats,
                                 window=spec.get("window"), local_socket=spec.get("local_socket"))
    elif kind == "local":
        import safetensors.torch

        def load():
            # load_file hands out tensors over an mmap of the page cache; clone() puts each in
            # fresh memory, as every other contender must (first-touch costs alike).
            return {k: v.clone() for k, v in safetensors.torch.load_file(spec["path"]).items()}
    elif kind == "blob_sdk":
        from cachenode.bench.loads import blob_sdk_tensors

        def load():
            return blob_sdk_tensors(spec["conn_str"], spec["container"], spec["blob"], spec["concurrency"])
    elif kind == "adlfs":
        import adlfs  # noqa: F401  (imports before the clock, as for every contender)
        import safetensors.torch  # noqa: F401

        from cachenode.bench.loads import adlfs_tensors

        def load():
            return adlfs_tensors(spec["conn_str"], spec["container"], spec["blob"])
    elif kind == "runai":
        from runai_model_streamer import SafetensorsStreamer

        def load():
            # owned tensors (the default): each stays valid after the streamer closes
            with SafetensorsStreamer() as streamer:
                streamer.stream_file(spec["url"])
                return dict(streamer.get_tensors())
    else:
        raise SystemExit(f"unknown contender kind {kind!r}")

    baseline = _rss()

    def measure() -> dict:
        cpu0 = _cpu()
        t0 = time.perf_counter()
        tensors = load()
        seconds = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        peak = _rss()
        out = {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
               "tensors": len(tensors), "digest": data_digest(tensors)}
        if "breakdown" in extra:
            b = extra["breakdown"].as_dict()
            b.pop("bytes")
            # what the loader's own phases do not cover: client set-up and tear-down
            b["other_s"] = max(0.0, seconds - sum(v for k, v in b.items() if k != "first_touch_s"))
            out["breakdown"] = b
        return out
    return measure
