"""Smoke tests of cachebench: each subcommand runs small, cleans up, and writes the JSON keys."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cachebench as _bench


def test_compare_small(tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    r = _bench("compare", "--size", "8MiB", "--nodes", "2", "--readers", "2", "--block-size", "1MiB",
               "--concurrency", "4", "--repeat", "2", "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"model_bytes", "nodes", "readers", "transport", "scenarios", "ratios", "ratios_range"} <= res.keys()
    s = res["scenarios"]
    for name in ("blob_direct_sdk", "adlfs", "local_safetensors", "cache_cold", "cache_warm",
                 "cache_cold_concurrent"):
        assert {"seconds", "gb_per_s", "origin_bytes", "peak_rss_bytes", "verified", "runs", "range"} <= s[name].keys(), name
        assert s[name]["verified"], name
        runs = s[name]["runs"]
        assert len(runs) == 2 and all(run["verified"] for run in runs), name
        lo, hi = s[name]["range"]["seconds"]
        assert lo == min(x["seconds"] for x in runs) <= s[name]["seconds"] <= hi == max(x["seconds"] for x in runs)
    from cachenode.bench.runai import unavailable

    if unavailable() is None:  # installed by the bench extra; root for its mount namespace
        assert s["runai_streamer"]["verified"] and len(s["runai_streamer"]["runs"]) == 2, s["runai_streamer"]
    else:
        assert s["runai_streamer"]["skipped"] == unavailable()
    # a fresh blob per round: each round's cold loads fill once, each warm load reads nothing
    assert all(run["origin_bytes"] == res["model_bytes"] for run in s["cache_cold_concurrent"]["runs"])
    assert all(run["origin_bytes"] == res["model_bytes"] for run in s["cache_cold"]["runs"])
    assert all(run["origin_bytes"] == 0 for run in s["cache_warm"]["runs"])
    for name in ("cache_cold", "cache_warm"):
        b = s[name]["breakdown"]
        assert {"stat_s", "header_s", "wait_bytes_s", "digest_s", "first_touch_s", "tensors_s"} <= b.keys(), b
        assert b["wait_bytes_s"] > 0
    lo, hi = res["ratios_range"]["warm_over_blob_direct"]
    assert lo <= res["ratios"]["warm_over_blob_direct"] <= hi
    assert "waiting for bytes" in r.stdout and "(min-max)" in r.stdout
    from cachenode.bench.compare import mount_unavailable

    if mount_unavailable() is None:  # /dev/fuse and the mount extra: the cluster through a FUSE mount
        m = s["cache_warm_mount"]
        assert m["verified"] and len(m["runs"]) == 2 and all(run["origin_bytes"] == 0 for run in m["runs"])
        assert "mount_over_warm" in res["ratios"]
    else:
        assert s["cache_warm_mount"]["skipped"] == mount_unavailable()
    assert png.stat().st_size > 1000


def test_transports_small(tmp_path):
    out = tmp_path / "t.json"
    r = _bench("transports", "--size", "8MiB", "--block-size", "1MiB", "--repeat", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["raw_tcp_gb_per_s"] > 0 and res["raw_tcp_same_process_gb_per_s"] > 0
    assert res["transports"]["tcp"]["channel"] == "HttpNodeClient"
    assert res["transports"]["ucx"]["channel"] == "UcxNodeClient"
    assert all(t["gb_per_s"] > 0 and len(t["runs"]) == 2 for t in res["transports"].values())
    lo, hi = res["ratios_range"]["tcp_over_raw_tcp"]
    assert lo <= res["ratios"]["tcp_over_raw_tcp"] <= hi


def test_rounds_summary_medians_worst_cases_and_ranges():
    from cachenode.bench.rounds import summarize, summarize_ratios

    runs = [{"seconds": s, "gb_per_s": 1 / s, "origin_bytes": o, "verified": v, "breakdown": {"x_s": s}}
            for s, o, v in ((3.0, 10, True), (1.0, 10, True), (2.0, 12, False))]
    out = summarize(runs)
    assert out["seconds"] == 2.0 and out["breakdown"] == {"x_s": 2.0}
    assert out["range"]["seconds"] == [1.0, 3.0] and out["range"]["gb_per_s"] == [1 / 3, 1.0]
    assert out["origin_bytes"] == 12  # a fill-once miss in any round shows
    assert out["verified"] is False and out["runs"] == runs
    medians, ranges = summarize_ratios([{"a": 1.0}, {"a": 4.0, "b": 2.0}, {"a": 2.0}])
    assert medians == {"a": 2.0, "b": 2.0} and ranges == {"a": [1.0, 4.0], "b": [2.0, 2.0]}


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc"),
                                reason="network namespaces and tc need root and iproute2 (CI has both)")


def _namespaces() -> set[str]:
    """Test-link namespaces whose creating process is gone (a leak), or that the test's own
    run made. Namespaces of a concurrent run on the same machine (another test session, a
    benchmark) belong to a live process and are left out: cachenode/testing/netns.py ends each name with
    its creator's pid."""
    import re

    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    mine_or_leaked = set()
    for name in names:
        m = re.fullmatch(r"cn[a-z]+(\d+)", name)
        if m is None or not Path(f"/proc/{m.group(1)}").exists() or int(m.group(1)) == os.getpid():
            mine_or_leaked.add(name)
    return mine_or_leaked


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


@needs_root
def test_links_small(tmp_path):
    before = _namespaces()
    out, png = tmp_path / "l.json", tmp_path / "l.png"
    r = _bench("links", "--size", "24MiB", "--origin-gbit", "0.2", "--peer-gbit", "1.6", "--nodes", "2",
               "--block-size", "1MiB", "--concurrency", "8", "--repeat", "2", "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"origin_gbit", "peer_gbit", "model_bytes", "scenarios"} <= res.keys()
    s = res["scenarios"]
    for name in ("blob_direct_sdk", "cache_cold", "cache_warm"):
        assert {"seconds", "gb_per_s", "origin_bytes", "verified"} <= s[name].keys(), name
        assert s[name]["verified"], name
    assert all(run["origin_bytes"] == res["model_bytes"] for run in s["cache_cold"]["runs"])
    assert all(run["origin_bytes"] == 0 for run in s["cache_warm"]["runs"])
    assert len(s["cache_cold"]["runs"]) == 2 and "warm_speedup_over_cold" in res["ratios_range"]
    # the shaped origin link is what a cold load waits for: no faster than 0.2 Gbit/s allows
    assert s["blob_direct_sdk"]["seconds"] >= res["model_bytes"] * 8 / 0.2e9 * 0.9
    assert s["cache_cold"]["seconds"] >= res["model_bytes"] * 8 / 0.2e9 * 0.9
    assert png.stat().st_size > 1000
    assert _namespaces() == before


def _interrupt_after_setup(args: list[str], work: Path, during=lambda pid: None) -> None:
    """Start a cachebench run, Ctrl-C it once its services are up, and wait for it to end."""
    # Started as from a background job (a CI script, nohup): SIGINT arrives ignored, and the
    # command must still stop on it.
    p = subprocess.Popen([sys.executable, "-m", "cachenode.bench.cli", *args, "--workdir", str(work)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in p.stdout:  # Azurite and the nodes are running once this line is out
            if line.startswith("checkpoint "):
                break
        assert _processes_mentioning(str(work))
        during(p.pid)
        p.send_signal(signal.SIGINT)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_compare_ctrl_c_stops_every_process(tmp_path):
    _interrupt_after_setup(["compare", "--size", "256MiB", "--nodes", "2"], tmp_path / "w")
    assert _processes_mentioning(str(tmp_path / "w")) == []


@needs_root
def test_links_ctrl_c_removes_every_process_and_namespace(tmp_path):
    before = _namespaces()

    def two_namespaces_up(pid):
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert len([line for line in out.splitlines() if line.split()[0].endswith(str(pid))]) == 2

    _interrupt_after_setup(["links", "--size", "256MiB", "--origin-gbit", "0.1", "--nodes", "2"], tmp_path / "w",
                           during=two_namespaces_up)
    assert _namespaces() == before
    assert _processes_mentioning(str(tmp_path / "w")) == []


@pytest.mark.parametrize("args, message", [
    (("compare", "--concurrency", "4,x"), "'4,x' is not a comma-separated list of whole numbers"),
    (("links", "--concurrency", "0"), "every count must be at least 1"),
    (("compare", "--block-size", "1"), "block size 1 out of range"),
    (("transports", "--block-size", "8XB"), "cannot parse size '8XB'"),
    (("links", "--origin-gbit", "0"), "'--origin-gbit'"),
])
def test_bad_arguments_are_named_before_anything_starts(args, message):
    r = _bench(*args, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr


def test_engine_results_are_written_where_asked(tmp_path):
    """`cachebench engine` runs for many minutes: the last step (its JSON) must not be where it
    fails (a NameError there once lost a whole run)."""
    import json

    from cachenode.bench.engine import save

    out = tmp_path / "engine.json"
    save({"model_bytes": 1 << 30, "medians": {}}, str(out), None, 3, "tcp")
    assert json.loads(out.read_text())["model_bytes"] == 1 << 30
