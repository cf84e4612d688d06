"""The KV benchmark's other contenders as child processes: Redis (persistence off) and a Mooncake Store (master + one holder)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from cachenode.testing.ports import free_port, wait_for_port
from cachenode.testing.process import ChildProcess


class RedisServer(ChildProcess):
    """Debian's `redis-server` on 127.0.0.1, memory only (no RDB, no AOF), LRU at `maxmemory`."""

    def __init__(self, workdir: Path, maxmemory: str = "4gb") -> None:
        super().__init__(workdir / "redis.log")
        self.workdir = workdir
        self.port = free_port()
        self.maxmemory = maxmemory

    @staticmethod
    def available() -> str | None:
        """Why Redis cannot run here (None: it can)."""
        if shutil.which("redis-server") is None:
            return "redis-server not installed (apt-get install redis-server)"
        try:
            import hiredis  # noqa: F401
            import redis  # noqa: F401
        except ImportError as exc:
            return f"redis-py with hiredis not installed ({exc}): pip install 'redis[hiredis]'"
        return None

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru",
                "--protected-mode", "yes"]

    def wait_ready(self, timeout: float) -> None:
        wait_for_port(self.port, self.proc, "redis-server", timeout)


def _mooncake_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class MooncakeMaster(ChildProcess):
    """`mooncake_master` with its HTTP metadata server, both on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir / "mooncake-master.log")
        self.workdir = workdir
        self.rpc_port, self.meta_port, self.metrics_port = free_port(), free_port(), free_port()

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def metadata(self) -> str:
        return f"http://127.0.0.1:{self.meta_port}/metadata"

    @staticmethod
    def available() -> str | None:
        """Why Mooncake Store cannot run here (None: it can)."""
        if not os.path.exists(_mooncake_bin("mooncake_master")):
            return "mooncake-transfer-engine-non-cuda not installed (no mooncake_master)"
        try:
            from mooncake.store import MooncakeDistributedStore  # noqa: F401
        except ImportError as exc:  # e.g. libibverbs.so.1 missing: apt-get install libibverbs1
            return f"mooncake.store does not import: {exc}"
        return None

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [_mooncake_bin("mooncake_master"), f"--rpc_port={self.rpc_port}", "--rpc_address=127.0.0.1",
                "--enable_http_metadata_server=true", "--http_metadata_server_host=127.0.0.1",
                f"--http_metadata_server_port={self.meta_port}", f"--metrics_port={self.metrics_port}"]

    def wait_ready(self, timeout: float) -> None:
        wait_for_port(self.rpc_port, self.proc, "mooncake_master", timeout)
        wait_for_port(self.meta_port, self.proc, "mooncake metadata server", timeout)


HOLDER = """
import sys, time
from mooncake.store import MooncakeDistributedStore
store = MooncakeDistributedStore()
rc = store.setup("127.0.0.1", sys.argv[1], int(sys.argv[3]), 16 << 20, "tcp", "", sys.argv[2])
print("MOONCAKE_HOLDER_READY" if rc == 0 else f"setup failed: {rc}", flush=True)
while True:
    time.sleep(3600)
"""


class MooncakeHolder(ChildProcess):
    """A Mooncake Store client that only mounts a memory segment (the store's capacity), over TCP."""

    pipe_stdout = True

    def __init__(self, workdir: Path, master: MooncakeMaster, segment: int) -> None:
        super().__init__(workdir / "mooncake-holder.log")
        self.workdir = workdir
        self.master = master
        self.segment = segment

    def command(self) -> list[str]:
        return [sys.executable, "-c", HOLDER, self.master.metadata, self.master.master, str(self.segment)]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            if "MOONCAKE_HOLDER_READY" in line:
                return
            if "setup failed" in line or time.monotonic() > deadline:
                break
        raise RuntimeError(f"Mooncake holder did not start; see {self.log_path}")
