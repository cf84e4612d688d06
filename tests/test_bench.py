"""Smoke tests of cachebench: each subcommand runs small, cleans up, and writes the JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cachenode.bench.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_compare_small(tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    r = _bench("compare", "--size", "24MiB", "--nodes", "2", "--readers", "2", "--block-size", "1MiB",
               "--concurrency", "4", "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"model_bytes", "nodes", "readers", "transport", "scenarios"} <= res.keys()
    s = res["scenarios"]
    for name in ("blob_direct_sdk", "local_safetensors", "cache_cold", "cache_warm", "cache_cold_concurrent"):
        assert {"seconds", "gb_per_s", "origin_bytes", "peak_rss_bytes", "verified"} <= s[name].keys(), name
        assert s[name]["verified"], name
    assert "skipped" in s["runai_streamer"] or s["runai_streamer"]["verified"]
    assert s["cache_cold_concurrent"]["origin_bytes"] == res["model_bytes"]
    assert s["cache_warm"]["origin_bytes"] == 0
    assert png.stat().st_size > 1000


def test_transports_small(tmp_path):
    out = tmp_path / "t.json"
    r = _bench("transports", "--size", "32MiB", "--block-size", "1MiB", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["raw_tcp_gb_per_s"] > 0
    assert res["transports"]["tcp"]["channel"] == "HttpNodeClient"
    assert res["transports"]["ucx"]["channel"] == "UcxNodeClient"
    assert all(t["gb_per_s"] > 0 for t in res["transports"].values())
