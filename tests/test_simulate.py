"""`cachebench simulate`: the flow model on cases with known answers, the CLI, and its prediction
of a real `links` run on this machine (root)."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from cachenode.bench.sim.flowmodel import Flow, fair_rates
from cachenode.bench.sim.model import Cluster, Host, LoadParams, Placement, Simulation, cluster_of, member_id
from cachenode.bench.sim.validate import links_cluster
from cachenode.placement import rank
from helpers import cachebench as _bench

MiB = 1 << 20


def test_one_flow_on_one_link_gets_the_link():
    assert fair_rates([Flow({"l": 1.0})], {"l": 100.0}) == [100.0]
    # bytes crossing a link twice (usage 2) get half of it
    assert fair_rates([Flow({"l": 2.0})], {"l": 100.0}) == [50.0]


def test_flows_share_a_link_fairly_per_connection():
    assert fair_rates([Flow({"l": 1}), Flow({"l": 1})], {"l": 100}) == pytest.approx([50, 50])
    assert fair_rates([Flow({"l": 1}, weight=1), Flow({"l": 1}, weight=3)], {"l": 100}) == pytest.approx([25, 75])


def test_max_min_gives_what_a_bottlenecked_flow_leaves_to_the_others():
    # b is held to 2 by its second link; a takes the rest of the first; c is held by its cap
    rates = fair_rates([Flow({"l1": 1}), Flow({"l1": 1, "l2": 1}), Flow({"l1": 1}, cap=5)],
                       {"l1": 30, "l2": 2})
    assert rates == pytest.approx([23, 2, 5])


def test_a_flow_with_nothing_to_limit_it_is_infinitely_fast_and_takes_nothing_from_others():
    assert fair_rates([Flow({"nic": 1}), Flow({"l": 1})], {"nic": math.inf, "l": 7}) == [math.inf, 7]
    with pytest.raises(ValueError, match="weight"):
        fair_rates([Flow({"l": 1}, weight=0)], {"l": 7})


def test_placement_is_the_real_rendezvous_rank():
    p = Placement(LoadParams(64 * MiB, MiB), [member_id(i) for i in range(7)])
    for b, key in enumerate(p.keys):
        assert p.members[p.owner[b]] == rank(key, p.members)[0]


def test_one_warm_reader_on_one_link_takes_size_over_speed():
    size = 512 * MiB
    sim = Simulation(links_cluster(3, 1.0, 2.0), LoadParams(size, 8 * MiB, setup_s=0.0))
    sim.cold()
    peer = links_cluster(3, 1.0, 2.0).hosts[0].nic_out
    assert sim.warm().seconds == pytest.approx(size / peer, rel=1e-6)
    assert sim.blob_direct().seconds == pytest.approx(size / links_cluster(3, 1.0, 2.0).origin_rate, rel=1e-6)


def test_two_readers_on_one_link_share_it():
    size = 256 * MiB
    one = Cluster((Host("peers", 100e6, 100e6), Host("loader", math.inf, math.inf)), ("peers",) * 2,
                  ("loader", "loader"), 50e6)
    sim = Simulation(one, LoadParams(size, 8 * MiB, setup_s=0.0))
    sim.cold()
    assert sim.warm().seconds == pytest.approx(2 * size / 100e6, rel=1e-6)


def test_many_readers_fill_every_block_once():
    size = 200 * MiB
    sim = Simulation(cluster_of(8, 50, 10, 5, 100), LoadParams(size, 4 * MiB))
    cold = sim.cold()
    assert cold.origin_bytes == pytest.approx(size, rel=1e-9)
    assert len(cold.reader_seconds) == 50
    # the origin (5 Gbit/s) is what 50 cold readers wait for, together
    assert cold.seconds >= size / (5e9 / 8)
    warm = sim.warm()
    assert warm.origin_bytes == 0
    # every reader's bytes came from some node
    assert warm.egress.sum() == pytest.approx(50 * size, rel=1e-6)


def test_dead_nodes_blocks_move_to_the_next_in_rank_and_are_filled_again():
    size, k = 300 * MiB, 2
    sim = Simulation(cluster_of(8, 4, 10, 5, 100), LoadParams(size, 4 * MiB, fail=k, fail_at=1.0))
    before = sim.placement.owner.copy()
    cold = sim.cold()
    assert cold.origin_bytes == pytest.approx(size, rel=1e-9)
    warm = sim.warm()
    dead = {member_id(i) for i in range(k)}
    assert sim.dead == dead
    p = sim.placement
    lost = [b for b in range(len(p.keys)) if p.members[before[b]] in dead]
    assert lost, "no block on the dead nodes: the test would prove nothing"
    # the warm load refills exactly the dead nodes' share, once
    assert warm.origin_bytes == pytest.approx(p.sizes[lost].sum(), rel=1e-9)
    for b in lost:
        ranked = rank(p.keys[b], p.members)
        assert p.members[p.owner[b]] == next(m for m in ranked if m not in dead)
    assert all(warm.egress[i] == 0 for i in range(k))


def test_nodes_dying_mid_load_cost_what_they_held_again():
    size, k = 300 * MiB, 2
    sim = Simulation(cluster_of(8, 4, 10, 5, 100), LoadParams(size, 4 * MiB, fail=k, fail_at=0.5))
    p = sim.placement
    on_dead = np.isin(p.owner, range(k))
    cold = sim.cold()
    assert cold.deaths_at is not None and cold.deaths_at < cold.seconds
    warm = sim.warm()
    # Blocks the dead nodes held when they died (the first half) are lost and filled again by
    # their fallbacks (in the cold load if a reader still needed them, else in the warm one);
    # at most one stretch of blocks was in flight at the death.
    first_half = np.cumsum(p.sizes) <= size / 2
    lost = p.sizes[on_dead & first_half].sum()
    stretch = max(p.sizes[a:b].sum() for a, b in sim.bounds)
    extra = cold.origin_bytes + warm.origin_bytes - size
    assert lost > 0
    assert lost - stretch <= extra <= lost + stretch
    assert sim.cached.all()
    assert all(warm.egress[i] == 0 for i in range(k))
    assert sim.warm().origin_bytes == 0  # and then nothing more


def test_readers_on_many_hosts_move_in_lockstep_and_still_fill_once():
    size = 64 * MiB
    sim = Simulation(cluster_of(100, 100, 10, 5, 100), LoadParams(size, MiB))
    cold = sim.cold()
    assert cold.origin_bytes == pytest.approx(size, rel=1e-9) and len(cold.reader_seconds) == 100
    warm = sim.warm()
    # no faster than the busiest owner's NIC out can serve all 100 readers its blocks
    busiest = np.bincount(sim.placement.owner, weights=sim.placement.sizes).max()
    assert warm.seconds >= 99 * busiest / sim.cluster.hosts[0].nic_out  # one reader is local
    assert warm.egress.sum() == pytest.approx(100 * size, rel=1e-6)


def test_the_governor_leaves_headroom_and_backs_off_beside_other_traffic():
    from cachenode.bench.sim.governor import background_rate
    from cachenode.node.qos import QosConfig

    link = 1e9
    alone = background_rate(link, 0.0, link)
    # the headroom is kept on the wire: background's payload rate leaves room for its framing too
    assert alone == pytest.approx(link * (1 - QosConfig.headroom) / (1 + QosConfig.framing))
    beside = background_rate(link, 0.5 * link, link)
    assert link * QosConfig.min_share <= beside < 0.5 * link * (1 - QosConfig.headroom) + 1


def test_warming_ahead_fills_each_owners_share_at_the_governors_pace():
    size = 256 * MiB
    cluster = cluster_of(4, 1, 1.0, 100, 1000)  # the NICs are what warming waits for
    sim = Simulation(cluster, LoadParams(size, 4 * MiB))
    r = sim.prewarm()
    assert r.origin_bytes == pytest.approx(size, rel=1e-9)
    busiest = np.bincount(sim.placement.owner, weights=sim.placement.sizes).max()
    from cachenode.node.qos import QosConfig
    pace = cluster.hosts[0].nic_in * (1 - QosConfig.headroom) / (1 + QosConfig.framing)
    assert r.seconds == pytest.approx(busiest / pace, rel=1e-6)
    assert not sim.cached.any()  # a scenario of its own: the cold load still starts empty
    busy = Simulation(cluster, LoadParams(size, 4 * MiB, busy=0.5)).prewarm()
    assert busy.seconds > 2 * r.seconds


def test_simulate_cli_small(tmp_path):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    r = _bench("simulate", "--nodes", "16", "--readers", "40", "--size", "2GiB", "--nic-gbit", "100",
               "--fail", "2", "--json", str(out), "--plot", str(png), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["nodes"] == 16 and res["readers"] == 40 and res["dead"] == [member_id(0), member_id(1)]
    s = res["scenarios"]
    for name in ("blob_direct_sdk", "cache_cold", "cache_warm"):
        assert {"seconds", "gb_per_s", "origin_bytes", "egress_max_bytes", "egress_mean_bytes"} <= s[name].keys()
    assert s["cache_warm"]["seconds"] < min(s["cache_cold"]["seconds"], s["blob_direct_sdk"]["seconds"])
    # 40 direct readers read the blob 40 times; the cache reads it once, plus what the dead held
    assert s["blob_direct_sdk"]["origin_bytes"] == pytest.approx(40 * res["model_bytes"])
    assert res["model_bytes"] < s["cache_cold"]["origin_bytes"] + s["cache_warm"]["origin_bytes"] < 1.25 * res["model_bytes"]
    assert "cache_warm" in r.stdout and png.stat().st_size > 1000


def test_simulate_names_a_bad_failure_count():
    r = _bench("simulate", "--nodes", "4", "--fail", "4", timeout=60)
    assert r.returncode != 0 and "--fail" in r.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc"),
                                reason="network namespaces and tc need root and iproute2 (CI has both)")


@needs_root
def test_validate_predicts_a_links_run_within_25_percent(tmp_path):
    out = tmp_path / "v.json"
    # links slow enough that they, not this VM's CPU (0.1-0.2 s per load), set the times
    r = _bench("simulate", "--validate", "--validate-size", "48MiB", "--validate-origin-gbit", "0.2",
               "--validate-peer-gbit", "0.5", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    v = json.loads(out.read_text())["validation"]
    assert all(m["verified"] for m in v["measured"].values())
    assert abs(v["cold_error"]) <= 0.25, v
    assert abs(v["warm_error"]) <= 0.25, v
