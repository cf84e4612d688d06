"""Run contender processes, all started together, and collect their JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _line(p: subprocess.Popen, prefix: str) -> str | None:
    """The next stdout line starting with `prefix` (UCX prints its own lines on stdout)."""
    for line in p.stdout:
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


def _env(spec: dict) -> dict[str, str]:
    env = {**os.environ, "UCX_WARN_UNUSED_ENV_VARS": "n"}
    for k, v in spec.get("env", {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_together(specs: list[dict], timeout: float = 1800) -> tuple[list[dict], float]:
    """Start one process per spec, wait until each has imported torch, release them at once.

    Returns their results and the wall time from release until the last one finished. A spec's
    "wrap" prefixes its command; its "env" sets (or, with null, removes) environment variables.
    """
    procs = [subprocess.Popen([*s.get("wrap", ()), sys.executable, "-m", "cachenode.bench.contender",
                               json.dumps(s)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(s))
             for s in specs]
    try:
        for p in procs:
            if _line(p, "READY") is None:
                raise RuntimeError(f"contender {p.args[-1][:80]} failed to start")
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            line = _line(p, "RESULT ")
            if line is None:
                p.wait(timeout)
                raise RuntimeError(f"contender exited with {p.returncode} without a result")
            results.append(json.loads(line))
        wall = time.perf_counter() - t0
        for p in procs:
            p.wait(timeout)
        return results, wall
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
