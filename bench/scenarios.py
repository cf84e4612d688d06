"""Run contenders and record scenarios round by round: what `compare` and `links` share."""

from __future__ import annotations

import click

from cachenode.client.admin import scrape

from . import rounds
from .probe import run_together


def scenario(results: list[dict], wall: float, model_bytes: int, reference: str, origin: int,
             **extra) -> dict:
    """One scenario's JSON from its contenders' results: with several readers, the wall time
    until the last one finished and the bytes all of them loaded."""
    seconds = wall if len(results) > 1 else results[0]["seconds"]
    out = {"seconds": seconds, "gb_per_s": model_bytes * len(results) / seconds / 1e9,
           "origin_bytes": origin, "peak_rss_bytes": max(r["peak_rss_bytes"] for r in results),
           "baseline_rss_bytes": max(r["baseline_rss_bytes"] for r in results),
           "verified": all(r["digest"] == reference for r in results),
           **({"reader_seconds": [r["seconds"] for r in results]} if len(results) > 1 else {}), **extra}
    if all("cpu_seconds" in r for r in results):
        out["cpu_seconds"] = {"loader": sum(r["cpu_seconds"] for r in results)}
    if len(results) == 1 and "breakdown" in results[0]:
        out["breakdown"] = results[0]["breakdown"]
    return out


class Recorder:
    """Runs contender processes, records each scenario's run per round and prints a line per run.

    `scenarios` summarises every scenario over the rounds recorded so far (bench/rounds.py);
    `round(i)` is round i's own runs, for ratios taken within a round.
    """

    def __init__(self, model_bytes: int, reference: str, node_urls: list[str], token: str,
                 services: dict[str, list[int]] | None = None) -> None:
        self.model_bytes, self.reference = model_bytes, reference
        self.node_urls, self.token = node_urls, token
        # pids of the processes that serve the loads ({"nodes": [...], "azurite": [...]}): the
        # CPU they burn during a run is part of its cost on a machine of two cores
        self.services = services or {}
        self.runs: dict[str, list[dict]] = {}
        self.skipped: dict[str, str] = {}

    @property
    def scenarios(self) -> dict[str, dict]:
        out = {name: rounds.summarize(runs) for name, runs in self.runs.items()}
        out.update({name: {"skipped": why} for name, why in self.skipped.items()})
        return out

    def round(self, i: int) -> dict[str, dict]:
        """Each scenario's run in round i (scenarios with fewer rounds left out)."""
        return {name: runs[i] for name, runs in self.runs.items() if len(runs) > i}

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why

    def origin_bytes(self) -> int:
        """Bytes the cluster's nodes have read from the origin so far."""
        return int(sum(scrape(u, self.token).get("cachenode_origin_bytes_total", 0) for u in self.node_urls))

    def record(self, name: str, results: list[dict], wall: float, origin: int,
               cpu: dict[str, float] | None = None, **extra) -> None:
        s = scenario(results, wall, self.model_bytes, self.reference, origin, **extra)
        if "cpu_seconds" in s:
            s["cpu_seconds"].update(cpu or {})
        self.runs.setdefault(name, []).append(s)
        click.echo(f"  {name:<24} {s['seconds']:7.2f} s  {s['gb_per_s']:.3f} GB/s")

    def run(self, name: str, specs: list[dict], origin: int | None = None, **extra) -> None:
        """Run `specs` together; origin bytes = `origin`, or what the cluster read meanwhile."""
        before = self.origin_bytes() if origin is None else 0
        results, wall, cpu = self._run_together(specs)
        self.record(name, results, wall, self.origin_bytes() - before if origin is None else origin,
                    cpu=cpu, **extra)

    def _run_together(self, specs: list[dict]) -> tuple[list[dict], float, dict[str, float]]:
        """run_together, plus the CPU seconds each group of service processes used meanwhile."""
        before = {k: cpu_seconds(pids) for k, pids in self.services.items()}
        results, wall = run_together(specs)
        return results, wall, {k: cpu_seconds(pids) - before[k] for k, pids in self.services.items()}

    def blob_direct(self, conn_str: str, container: str, blob: str, concurrencies: tuple[int, ...]) -> None:
        """blob_direct_sdk: the SDK at each concurrency, the best one recorded (as a user would tune it)."""
        best = None
        for c in concurrencies:
            results, wall, cpu = self._run_together([{"kind": "blob_sdk", "conn_str": conn_str,
                                                      "container": container, "blob": blob, "concurrency": c}])
            if best is None or results[0]["seconds"] < best[0][0]["seconds"]:
                best = (results, wall, cpu, c)
        self.record("blob_direct_sdk", best[0], best[1], self.model_bytes, cpu=best[2], concurrency=best[3])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` have used so far (0 for one that is gone)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick
