"""`cachebench transports`: warm block reads per transport vs a raw TCP socket, in one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click

from .testbed import testbed

SHM_TLS = "sm,cma,tcp"


def _probe(spec: dict, env: dict | None = None) -> dict:
    e = {**os.environ, "UCX_WARN_UNUSED_ENV_VARS": "n", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "cachenode.bench.wire_probe", json.dumps(spec)],
                       capture_output=True, text=True, env=e, timeout=900)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"probe {spec.get('transport', 'raw')} failed: {r.stderr[-1500:]}")


def run_transports(size: int, block_size: str, workdir: str | None) -> dict:
    import cachenode

    with testbed(workdir, "cachebench-tr-") as bed:
        token = bed.token
        _, nbytes = bed.checkpoint(size, "t/m.safetensors", name="m.safetensors")
        url = bed.url("t/m.safetensors")
        args = ("--ucx", "--block-size", block_size, "--memory", "8GiB")
        shm = bed.cluster(1, *args, name="shm", env={"UCX_TLS": SHM_TLS})
        tcp = bed.cluster(1, *args, name="tcp", env={"UCX_TLS": "tcp"})
        for c in (shm, tcp):
            cachenode.warm(url, nodes=c.urls, token=token)
        click.echo(f"{nbytes / 2**30:.2f} GiB warm on the node(s); reading every block, best of 3")
        common = {"token": token, "url": url}
        result = {
            # sender and receiver in separate processes, as node and loader are (like iperf3)
            "raw_tcp_gb_per_s": _probe({"raw": True, "bytes": nbytes})["gb_per_s"],
            "raw_tcp_same_process_gb_per_s": _probe({"raw": True, "same_process": True, "bytes": nbytes})["gb_per_s"],
            "transports": {
                "tcp": _probe({**common, "node": shm.urls[0], "transport": "tcp"}),
                "ucx": _probe({**common, "node": shm.urls[0], "transport": "ucx"}),
                "ucx_tcp": _probe({**common, "node": tcp.urls[0], "transport": "ucx"}, {"UCX_TLS": "tcp"}),
            },
            "ucx_tls": {"ucx": SHM_TLS, "ucx_tcp": "tcp"},
            "block_size": block_size, "bytes": nbytes,
        }
    t = result["transports"]
    result["ratios"] = {"tcp_over_raw_tcp": t["tcp"]["gb_per_s"] / result["raw_tcp_gb_per_s"],
                        "tcp_over_raw_tcp_same_process": t["tcp"]["gb_per_s"] / result["raw_tcp_same_process_gb_per_s"],
                        "ucx_over_tcp": t["ucx"]["gb_per_s"] / t["tcp"]["gb_per_s"],
                        "ucx_tcp_over_tcp": t["ucx_tcp"]["gb_per_s"] / t["tcp"]["gb_per_s"]}
    return result
