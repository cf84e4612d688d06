"""Max-min fair sharing of link capacities among flows: the rate engine of `cachebench simulate`.

A flow is a set of byte streams that move together (one reader's blocks from all their owners,
say): for each byte it moves, it puts `usage[link]` bytes on each link. TCP shares a bottleneck
roughly equally per connection, so a flow carries a `weight` (the connections it stands for)
and may have a ceiling of its own (`cap`, e.g. connections x per-connection origin throughput).
Rates are the weighted max-min fair allocation, found by progressive filling: every unfrozen
flow's rate rises in proportion to its weight until a link is full or a flow meets its cap;
those flows are frozen, and the rest rise on into the capacity left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class Flow:
    """Bytes on each link per byte of the flow, its connections and its own ceiling (bytes/s)."""

    usage: dict[str, float] = field(default_factory=dict)
    weight: float = 1.0
    cap: float = math.inf


def fair_rates(flows: Sequence[Flow], capacity: Mapping[str, float]) -> list[float]:
    """Weighted max-min fair rates (bytes/s) of `flows` over links of `capacity` (bytes/s).

    Links missing from `capacity`, or with infinite capacity, constrain nothing: a flow that
    meets no finite link and has no cap gets an infinite rate. A flow needs a positive weight
    (ValueError).
    """
    names = sorted({name for f in flows for name in f.usage
                    if math.isfinite(capacity.get(name, math.inf))})
    col = {name: i for i, name in enumerate(names)}
    usage = np.zeros((len(flows), len(names)))
    for i, f in enumerate(flows):
        if not f.weight > 0:
            raise ValueError(f"flow {i} has weight {f.weight}: every flow needs a positive weight")
        for name, a in f.usage.items():
            if name in col:
                usage[i, col[name]] += a
    weight = np.array([f.weight for f in flows], dtype=float)
    cap_level = np.array([f.cap / f.weight for f in flows], dtype=float)  # level at which a flow meets its cap
    left = np.array([capacity[name] for name in names], dtype=float)
    rate = np.zeros(len(flows))
    active = np.ones(len(flows), dtype=bool)
    unbounded = (usage.sum(axis=1) == 0) & ~np.isfinite(cap_level)
    rate[unbounded] = math.inf
    active &= ~unbounded
    level = 0.0
    while active.any():
        # per link: capacity used per unit of level by the flows still rising
        demand = usage[active].T @ weight[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            link_level = np.where(demand > 0, level + np.maximum(left, 0) / demand, np.inf)
        step_to = min(link_level.min(initial=np.inf), cap_level[active].min())
        left -= demand * (step_to - level)
        level = step_to
        # freeze flows on full links (relative tolerance: levels differ by rounding only) and
        # flows at their cap
        full = link_level <= level * (1 + 1e-9)
        frozen = active & ((usage[:, full] > 0).any(axis=1) | (cap_level <= level * (1 + 1e-9)))
        rate[frozen] = weight[frozen] * level
        active &= ~frozen
    return rate.tolist()
