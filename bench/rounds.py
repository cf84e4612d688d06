"""Repeated rounds, for every subcommand: medians with their min-max, ratios taken per round.

On a 2-core VM shared by Azurite, the nodes and the reader, one run of the same command swings
2-3x (DESIGN.md), so no figure comes from a single run: every subcommand runs its contenders
`--repeat` times, interleaved (one of each per round, not N of one then N of the next, so a
slow minute hits every contender alike), and reports the median with the min and max beside it.
Ratios are taken within each round, where the contenders shared the same conditions, and then
summarised the same way.
"""

from __future__ import annotations

import statistics
from typing import Callable

# A target on these must hold in every round, so the summary keeps the worst round's figure
# rather than the median (a fill-once miss in one round of three is a miss).
WORST = {"origin_bytes": max, "peak_rss_bytes": max, "baseline_rss_bytes": max}
# Figures whose spread is shown beside the median.
RANGED = ("seconds", "gb_per_s")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def median_range(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the rounds' values."""
    return statistics.median(values), min(values), max(values)


def summarize(runs: list[dict], ranged: tuple[str, ...] = RANGED) -> dict:
    """One scenario over its rounds, keeping a single run's keys: numbers become the median
    (the WORST keys the worst round), booleans hold only if they held in every round, dicts of
    numbers (a time breakdown) become per-key medians, anything else is the first round's.
    Adds "runs" (every round) and "range" ({key: [min, max]} for `ranged`)."""
    if not runs:
        raise ValueError("summarize needs at least one round")
    out: dict = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs if key in r]
        if isinstance(first, bool):
            out[key] = all(values)
        elif _number(first) and all(_number(v) for v in values):
            out[key] = WORST.get(key, statistics.median)(values)
        elif isinstance(first, dict) and all(_number(v) for v in first.values()):
            out[key] = {k: statistics.median(d[k] for d in values if k in d) for k in first}
        else:
            out[key] = first
    out["range"] = {k: [min(r[k] for r in runs), max(r[k] for r in runs)]
                    for k in ranged if all(_number(r.get(k)) for r in runs)}
    out["runs"] = runs
    return out


def summarize_ratios(per_round: list[dict]) -> tuple[dict, dict]:
    """Ratios computed in each round -> (their medians, {key: [min, max]}). A ratio missing
    from some round (a contender skipped there) is summarised over the rounds that have it."""
    keys = [k for r in per_round for k in r]
    medians, ranges = {}, {}
    for k in dict.fromkeys(keys):
        values = [r[k] for r in per_round if k in r]
        medians[k], lo, hi = median_range(values)
        ranges[k] = [lo, hi]
    return medians, ranges


def run_rounds(repeat: int, one_round: Callable[[int], None], echo: Callable[[str], None]) -> None:
    """Call one_round(i) for i in 0..repeat-1, announcing each (each round runs every contender once)."""
    for i in range(repeat):
        echo(f"round {i + 1}/{repeat}")
        one_round(i)


def fmt_range(median: float, lo: float, hi: float, fmt: str = "{:.2f}", unit: str = "") -> str:
    """"1.23x (1.10-1.40)": a median with its range, as the tables print them."""
    return f"{fmt.format(median)}{unit} ({fmt.format(lo)}-{fmt.format(hi)})"
