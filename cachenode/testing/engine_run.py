"""One vLLM engine start in this process: load, generate greedily, print timings and tokens as JSON.

Run as `python -m cachenode.testing.engine_run SPEC_JSON` in a fresh process per engine (vLLM sets
process-wide state; tests and `cachebench engine` share it). The engine core runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), so the loader's time is measured the same way for every
load format: around `load_weights`, beside the figure vLLM logs itself ("Loading weights took",
which only some loaders log). An error is printed as {"error": type, "message": ...}.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

RESULT = "ENGINE-RESULT "


def _time_load_weights(timings: list[float]) -> None:
    """Every loader's load_weights, timed from the outside (Run:ai's loader logs no time)."""
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    original = BaseModelLoader.load_model

    def load_model(self, *args, **kwargs):
        inner = self.load_weights

        def timed(model, model_config):
            start = time.perf_counter()
            try:
                return inner(model, model_config)
            finally:
                timings.append(time.perf_counter() - start)

        self.load_weights = timed
        try:
            return original(self, *args, **kwargs)
        finally:
            del self.load_weights

    BaseModelLoader.load_model = load_model


def run(spec: dict) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    timings: list[float] = []
    _time_load_weights(timings)
    kwargs = {"enforce_eager": True, "max_model_len": 128, "max_num_seqs": 4, "seed": 0,
              **spec.get("engine", {})}
    start = time.perf_counter()
    if spec.get("extra"):
        kwargs["model_loader_extra_config"] = spec["extra"]
    llm = LLM(model=spec["model"], load_format=spec.get("load_format", "auto"), **kwargs)
    ready = time.perf_counter() - start
    outs = llm.generate(spec.get("prompts", ["the cache"]),
                        SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 8)), use_tqdm=False)
    return {"ready_s": ready, "load_weights_s": timings[0] if timings else None,
            "tokens": [list(o.outputs[0].token_ids) for o in outs]}


def run_engine(spec: dict, *, env: dict | None = None, timeout: float = 600, cwd=None,
               wrap: list[str] | tuple[str, ...] = ()) -> dict:
    """Start one engine for `spec` in a fresh process; its result, plus the seconds of the
    "Loading weights took" line if the load format logs one, and the process output's tail.
    `wrap` prefixes the command (the Run:ai contender's private mount namespace)."""
    import subprocess

    proc = subprocess.run([*wrap, sys.executable, "-m", "cachenode.testing.engine_run", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if not lines:
        raise RuntimeError(f"engine process exited {proc.returncode} without a result:\n{proc.stdout[-4000:]}")
    out = json.loads(lines[-1][len(RESULT):])
    logged = re.findall(r"Loading weights took ([0-9.]+) seconds", proc.stdout)
    out["logged_load_s"] = float(logged[0]) if logged else None
    out["log_tail"] = proc.stdout[-3000:]
    out["log"] = proc.stdout
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        out = run(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        out = {"error": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
    print(RESULT + json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)  # vLLM's atexit teardown can hang or take long on CPU; the result is out


if __name__ == "__main__":
    main()
