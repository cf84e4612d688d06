"""The node daemon runs without torch: the node image must not carry it."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import cachenode
from cachenode.testing.azurite import connection_string
from cachenode.testing.node import NodeProcess
from cachenode.testing.paths import project_root
from helpers import BS, TOKEN

BLOCK_TORCH = '''"""Test hook: any import of torch fails, as on a machine without it."""
import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the daemon must not need torch)")
        return None


sys.meta_path.insert(0, _NoTorch())
'''


def read_through(node: NodeProcess, blobs, proxy, name: str) -> None:
    data = bytes(range(256)) * (3 * BS // 256)
    url = blobs.put(name, data)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        assert f.read() == data
    assert proxy.reads_of(blobs.path(name)) == 3  # the node filled the blocks itself


def test_daemon_runs_with_torch_imports_blocked(tmp_path, blobs, proxy):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {"PYTHONPATH": str(hook)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "blocked" in probe.stderr  # the hook is in force
    node = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=connection_string(proxy.port),
                       args=("--block-size", str(BS)), env=env).start()
    try:
        read_through(node, blobs, proxy, "blocked.bin")
    finally:
        assert node.stop() == 0  # and it shuts down cleanly


def test_daemon_runs_in_a_venv_without_torch(tmp_path, blobs, proxy):
    """A fresh venv with the package and its declared dependencies except torch."""
    venv = tmp_path / "venv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    deps = tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = [d for d in deps if not d.replace(" ", "").startswith("torch")]
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for cmd in ([*pip, *deps], [*pip, "--no-deps", "-e", str(project_root())]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    print(f"\ntorch-free venv built in {time.monotonic() - t0:.1f}s")
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0
    # NodeProcess runs sys.executable; this wrapper swaps in the venv's interpreter.
    wrap = ("sh", "-c", 'shift; exec "$0" "$@"', str(py))
    node = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=connection_string(proxy.port),
                       args=("--block-size", str(BS)), wrap=wrap).start()
    try:
        read_through(node, blobs, proxy, "venv.bin")
    finally:
        assert node.stop() == 0
