"""Terminal output for benchmarks: an aligned text table and a byte progress bar."""

from __future__ import annotations

from typing import Callable

from tqdm import tqdm


def byte_bar(desc: str, total: int) -> tqdm:
    """A transient progress bar counting bytes."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, dynamic_ncols=True)


def print_table(rows: list[dict], columns: list[tuple[str, str, str | Callable]]) -> None:
    """columns: (title, key, format string or function)."""
    cells = [[t for t, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row.get(key, "")
            line.append(fmt(value) if callable(fmt) else fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
