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
    bars = ax.barh(names, speeds, color=colors)
    for bar, (_, s) in zip(bars, rows):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {s['gb_per_s']:.2f} GB/s ({s['seconds']:.1f} s)", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s (checkpoint bytes / seconds until every tensor is in memory)")
    ax.set_xlim(0, max(speeds) * 1.35 if speeds else 1)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
