"""A bar chart of a cachebench result (GB/s per scenario), for people."""

from __future__ import annotations


def plot_scenarios(result: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, s) for name, s in result["scenarios"].items() if "gb_per_s" in s]
    names = [n for n, _ in rows]
    speeds = [s["gb_per_s"] for _, s in rows]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.6))
    colors = ["#4c72b0" if n.startswith("cache") else "#999999" for n in names]
    # whiskers: the min-max over rounds around the median bar
    lo_hi = [s.get("range", {}).get("gb_per_s", [s["gb_per_s"]] * 2) for _, s in rows]
    err = [[max(0.0, v - lo) for v, (lo, _) in zip(speeds, lo_hi)], [max(0.0, hi - v) for v, (_, hi) in zip(speeds, lo_hi)]]
    bars = ax.barh(names, speeds, color=colors, xerr=err, capsize=3, error_kw={"elinewidth": 1})
    for bar, (_, s), (_, hi) in zip(bars, rows, lo_hi):
        ax.text(max(bar.get_width(), hi), bar.get_y() + bar.get_height() / 2,
                f" {s['gb_per_s']:.2f} GB/s ({s['seconds']:.1f} s)", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s (checkpoint bytes / seconds until every tensor is in memory); median, min-max")
    ax.set_xlim(0, max(hi for _, hi in lo_hi) * 1.35 if speeds else 1)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
