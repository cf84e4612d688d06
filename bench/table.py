"""Terminal output for benchmarks: an aligned text table and a byte progress bar."""

from __future__ import annotations

from typing import Callable

from tqdm import tqdm


def byte_bar(desc: str, total: int) -> tqdm:
    """A transient progress bar counting bytes."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, dynamic_ncols=True)


def print_table(rows: list[dict], columns: list[tuple[str, str, str | Callable]]) -> None:
    """columns: (title, key, format string or function); with key None the function gets the row."""
    cells = [[t for t, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            if key is None:  # fmt reads the whole row (a median with its range)
                line.append(fmt(row))
                continue
            value = row.get(key, "")
            line.append(fmt(value) if callable(fmt) else fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def spread_cell(fmt: str | Callable, key: str) -> Callable[[dict], str]:
    """A cell showing a row's median `key` with its range over rounds ("1.23 (1.10-1.40)")."""
    def show(v) -> str:
        return fmt(v) if callable(fmt) else fmt.format(v)

    def cell(row: dict) -> str:
        lo_hi = row.get("range", {}).get(key)
        return show(row[key]) + (f" ({show(lo_hi[0])}-{show(lo_hi[1])})" if lo_hi and len(row.get("runs", ())) > 1 else "")
    return cell


BREAKDOWN = [("stat_s", "stat"), ("header_s", "header"), ("wait_bytes_s", "waiting for bytes"),
             ("digest_s", "digest"), ("tensors_s", "tensors"), ("first_touch_tail_s", "first-touch tail"),
             ("other_s", "client set-up/close")]


def breakdown_line(name: str, b: dict) -> str:
    """Where a cache load's time went (medians over rounds), as one line."""
    parts = " + ".join(f"{label} {b[k]:.2f}" for k, label in BREAKDOWN if k in b)
    return (f"  {name}: {parts} s; first touch of fresh memory {b.get('first_touch_s', 0.0):.2f} s "
            "(prefault thread, beside the wait)")


def cpu_line(name: str, cpu: dict, seconds: float) -> str:
    """CPU seconds each party burned during a load (medians), against its wall time."""
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
    return f"  {name:<22} {parts} (total {sum(cpu.values()):.2f} in {seconds:.2f} s wall)"
