"""The soak: a short run of `cachebench soak` passes, and its check catches each kind of breach."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cachenode.bench.soak import _tree_bytes, check


def test_a_short_soak_passes_with_every_kind_of_chaos(tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, "-m", "cachenode.bench.cli", "soak", "--duration", "20s",
                        "--chaos-every", "3", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["broken"] == [] and res["bad"] == []
    assert res["outcomes"]["ok"] >= 20
    assert {"kill", "outage", "warm"} <= res["chaos"].keys()
    assert len(res["incarnations"]) >= 4  # 3 nodes + at least one restart
    # objects were written and read beside the loads, and never evicted a checkpoint block
    assert res["objects"]["hit"] > 0 and res["objects"]["put"] > 0
    assert res["block_misses_after_object_flood"] == 0
    assert "Traceback" not in r.stderr


def _result(**over) -> dict:
    r = {"bad": [], "outcomes": {"ok": 5}, "max_cache_dir_mib": 10, "disk_budget_mib": 64,
         "rss_budget_over_idle_mib": 100,
         "incarnations": [{"node": 0, "pid": 1, "rss_over_idle_mib": 20, "fds_start": 10, "fds_end": 12}]}
    r.update(over)
    return r


def test_the_soak_check_names_each_breach():
    assert check(_result()) == []
    assert check(_result(bad=["m0: bytes differ"])) == ["bad load: m0: bytes differ"]
    assert check(_result(outcomes={"named": 3})) == ["no load succeeded"]
    assert "cache dir reached 65 MiB" in check(_result(max_cache_dir_mib=65))[0]
    big = [{"node": 0, "pid": 7, "rss_over_idle_mib": 101, "fds_start": 10, "fds_end": 12}]
    assert "grew 101 MiB" in check(_result(incarnations=big))[0]
    leak = [{"node": 0, "pid": 7, "rss_over_idle_mib": 1, "fds_start": 10, "fds_end": 40}]
    assert check(_result(incarnations=leak)) == ["node 0 descriptors 10 -> 40"]


def test_the_cache_dir_size_counts_a_file_met_under_two_names_once(tmp_path):
    # A block renamed from its temp name while the walk runs is met twice; a hard link is the
    # same file under two names, deterministically (a disk-pressure soak failed on it: 12 > 8 MiB).
    (tmp_path / "tmp").mkdir()
    (tmp_path / "ab").mkdir()
    (tmp_path / "tmp" / "block").write_bytes(b"x" * 1000)
    os.link(tmp_path / "tmp" / "block", tmp_path / "ab" / "block")
    (tmp_path / "ab" / "other").write_bytes(b"y" * 24)
    assert _tree_bytes(tmp_path) == 1024


def test_the_soak_check_names_objects_that_evicted_blocks_or_were_never_read():
    base = _result(mode="chaos", objects={"put": 8, "hit": 8}, block_misses_after_object_flood=0)
    assert check(base) == []
    assert "objects evicted checkpoint blocks: 3" in check({**base, "block_misses_after_object_flood": 3})[0]
    assert "no object was read back" in check({**base, "objects": {"put": 8}})[0]


def test_a_short_disk_pressure_soak_serves_everything_through_the_cluster(tmp_path):
    out = tmp_path / "pressure.json"
    r = subprocess.run([sys.executable, "-m", "cachenode.bench.cli", "soak", "--disk-pressure", "--duration", "20s",
                        "--loaders", "6", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "disk-pressure" and res["chaos"] == {}
    assert res["bypasses"] == 0 and res["named_errors"] == {} and res["outcomes"]["ok"] >= 20
    assert res["evicted_while_sending"] > 0


def test_the_disk_pressure_check_fails_on_any_bypass_error_or_no_pressure():
    base = _result(mode="disk-pressure", bypasses=0, named_errors={}, error_examples={}, evicted_while_sending=3)
    assert check(base) == []
    assert check({**base, "bypasses": 2}) == ["2 reads bypassed the cluster"]
    assert "1 loads failed with Forbidden" in check({**base, "named_errors": {"Forbidden": 1}})[0]
    assert "pressure was not real" in check({**base, "evicted_while_sending": 0})[0]
