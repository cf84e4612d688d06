"""Human-readable sizes ("8MiB", "4GiB", "1.5GB") parsed to and formatted from byte counts."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse "4GiB" / "512MB" / "1048576" into bytes; raise ValueError naming the bad text."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(
            f"cannot parse size {text!r}: use a number with an optional unit such as 8MiB, 4GiB, 500MB"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def size_text(n: int) -> str:
    """A byte count exactly, in the largest binary unit that divides it ("2GiB", "8MiB", "1000"):
    what parse_size reads back, for defaults shown as flags take them."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def format_size(n: float) -> str:
    """Format a byte count with binary units, e.g. 1.00 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(bit|bps|b/s|B/s|iB/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """Parse a link rate into bytes per second: "10Gbit", "100Mbit", "1.5GB/s", "200MiB/s"."""
    m = _RATE_RE.match(str(text))
    if not m or not m.group(3):
        raise ValueError(f"cannot parse rate {text!r}: use e.g. 10Gbit, 100Mbit, 1GB/s, 200MiB/s")
    value, prefix, unit = float(m.group(1)), m.group(2).lower(), m.group(3).lower()
    base = 1024 if unit == "ib/s" else 1000
    scale = base ** ("kmgt".index(prefix) + 1) if prefix else 1
    return value * scale / 8 if unit in ("bit", "bps") else value * scale
