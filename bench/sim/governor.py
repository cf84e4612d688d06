"""The node's idle-bandwidth governor replayed against steady foreign traffic: the rate it grants warming.

The governor is cachenode/node/qos.py's `decide`; the figure is the average rate it grants
background fills.
"""

from __future__ import annotations

from cachenode.node.qos import QosConfig, decide


def background_rate(link: float, other: float, demand: float, seconds: float = 30.0,
                    cfg: QosConfig | None = None) -> float:
    """Mean background limit (bytes/s) over `seconds` of the governor's control loop on a link of
    `link` bytes/s, while other traffic steadily moves `other` bytes/s and the fills could take
    up to `demand` bytes/s. The loop is the node's own: one decision per `interval`, from the
    rates it would measure (ours = what the limit lets through, theirs = `other`)."""
    cfg = cfg or QosConfig(link_speed=link)
    # the governor starts at the usable link, as payload (Governor.__init__)
    limit = link * (1 - cfg.headroom) / (1 + cfg.framing)
    total, steps = 0.0, max(1, int(seconds / cfg.interval))
    for _ in range(steps):
        own = min(limit, demand)
        total += own
        limit = decide(cfg, limit, own, other, other)
    return total / steps
