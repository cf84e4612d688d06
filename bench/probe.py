"""One measurement in a fresh process: a JSON spec in, "READY" once set up, one "RESULT <json>" line out.

`python -m cachenode.bench.probe '<spec>'` is the child; `run_probe` and `run_together` are the
parent. A fresh process per measurement means fresh memory (first-touch page faults paid by every
contender alike) and an honest peak RSS. The child imports and sets up what its kind needs, prints
READY, waits for a line on stdin (so several children can be released at once), measures, and
prints one RESULT line. A spec's "kind" names the measurement (`KINDS`); its "wrap" prefixes the
command (a namespace, a mount namespace), its "env" sets (or, with null, removes) environment
variables.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

# kind -> the module (cachenode.bench.<module>) whose `prepare(spec)` sets the measurement up
# and returns it, a callable that measures and returns the result (a dict).
KINDS = {"cache": "contender", "local": "contender", "blob_sdk": "contender", "adlfs": "contender",
         "runai": "contender", "wire": "wire_probe", "raw_tcp": "wire_probe", "raw_sender": "wire_probe",
         "background_read": "qos_read", "warm": "qos_read"}


def _env(spec: dict) -> dict[str, str]:
    env = {**os.environ, "UCX_WARN_UNUSED_ENV_VARS": "n"}
    for k, v in spec.get("env", {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class _Probe:
    """One probe process, started; `ready()` waits until it has set up, `go()` releases it,
    `result()` reads its RESULT. It is killed if it is still running `timeout` s after its start."""

    def __init__(self, spec: dict, timeout: float) -> None:
        self.kind = spec.get("kind")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([*spec.get("wrap", ()), sys.executable, "-m", "cachenode.bench.probe",
                                      json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=_env(spec))
        self._deadline = threading.Timer(timeout, self.proc.kill)
        self._deadline.daemon = True
        self._deadline.start()

    def _line(self, prefix: str) -> str | None:
        """The next stdout line starting with `prefix` (UCX prints its own lines on stdout)."""
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
        return None

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def ready(self) -> None:
        if self._line("READY") is None:
            self.proc.wait()
            raise RuntimeError(f"probe {self.kind} failed to start (exit {self.proc.returncode}): "
                               f"{self._stderr_tail()}")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        line = self._line("RESULT ")
        if line is None:
            self.proc.wait()
            raise RuntimeError(f"probe {self.kind} exited with {self.proc.returncode} without a result: "
                               f"{self._stderr_tail()}")
        return json.loads(line)

    def close(self, kill: bool = False) -> None:
        """Wait for the process to end (`kill`: end it now); pass on what it wrote to stderr."""
        self._deadline.cancel()
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:  # a write to stdin the child never read
                pass
        self._stderr.seek(0)
        sys.stderr.write(self._stderr.read().decode(errors="replace"))
        self._stderr.close()


def run_together(specs: list[dict], timeout: float = 1800,
                 beside: Callable[[], None] | None = None) -> tuple[list[dict], float]:
    """Start one probe per spec, wait until each has set up, release them at once, and run
    `beside()` (if given) here while they measure.

    Returns their results and the wall time from release until the last result arrived.
    """
    probes: list[_Probe] = []
    done = False
    try:
        probes.extend(_Probe(s, timeout) for s in specs)
        for p in probes:
            p.ready()
        t0 = time.perf_counter()
        for p in probes:
            p.go()
        if beside is not None:
            beside()
        results = [p.result() for p in probes]
        wall = time.perf_counter() - t0
        done = True
        return results, wall
    finally:
        for p in probes:
            p.close(kill=not done)  # a failed run leaves no probe waiting for its release


def run_probe(spec: dict, timeout: float = 1800) -> dict:
    """One probe, released as soon as it has set up; its result."""
    return run_together([spec], timeout)[0][0]


def main(spec: dict) -> dict:
    """The child: set up, say READY, wait for the parent's line, measure."""
    if spec.get("kind") not in KINDS:
        raise SystemExit(f"unknown probe kind {spec.get('kind')!r}")
    measure = importlib.import_module(f"cachenode.bench.{KINDS[spec['kind']]}").prepare(spec)
    print("READY", flush=True)
    sys.stdin.readline()
    return measure()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
