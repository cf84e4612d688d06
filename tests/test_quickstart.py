"""The README's main job, small: Azurite, a node, a checkpoint loaded cold then warm, verified."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quickstart_small(tmp_path):
    out = tmp_path / "qs.json"
    r = subprocess.run([sys.executable, "-m", "cachenode.bench.cli", "quickstart", "--size", "24MiB",
                        "--block-size", "1MiB", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["scenario"]: row for row in json.loads(out.read_text())["scenarios"]}
    assert set(rows) == {"blob direct (azure-storage-blob)", "cache cold", "cache warm"}
    assert all(row["verified"] for row in rows.values())
    size = rows["blob direct (azure-storage-blob)"]["origin_bytes"]
    assert rows["cache cold"]["origin_bytes"] == size
    assert rows["cache warm"]["origin_bytes"] == 0
    assert "cache warm" in r.stdout and "GB/s" in r.stdout
