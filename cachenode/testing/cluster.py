"""A local cluster: n node processes sharing a peers file, and a node's view of the members."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from cachenode.transport.wire import MEMBERS_PATH, bearer

from .node import NodeProcess
from .ports import free_port


def members_of(url: str, token: str | None) -> list[dict]:
    """A node's view of the cluster: [{id, url, healthy}]."""
    req = urllib.request.Request(f"{url}{MEMBERS_PATH}", headers=bearer(token))
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["members"]


class LocalCluster:
    """n node processes sharing a peers file (re-read by the nodes when it changes).

    On loopback by default; `host` + `wrap` put them on another address, e.g. in a namespace.
    """

    def __init__(self, workdir: str | Path, n: int, *, token: str | None, conn_str: str | None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", wrap: tuple[str, ...] = ()) -> None:
        self.env = env
        self.host, self.wrap = host, wrap
        self.workdir = Path(workdir)
        self.n = n
        self.token = token
        self.conn_str = conn_str
        self.args = args
        self.peers_file = self.workdir / "peers.txt"
        self.procs: list[NodeProcess] = []

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.procs]

    def ids(self) -> list[str]:
        return [u.removeprefix("http://") for u in self.urls]

    def start(self) -> "LocalCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(self.n)]
        self.peers_file.write_text("".join(f"http://{self.host}:{p}\n" for p in ports))
        try:
            for p in ports:
                self._start_one(p)
            if [p.port for p in self.procs] != ports:  # a port was taken and re-picked
                self.peers_file.write_text("".join(f"{u}\n" for u in self.urls))
            self.wait_members(self.n)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, port: int) -> NodeProcess:
        proc = NodeProcess(self.workdir / f"node{len(self.procs)}", token=self.token,
                           conn_str=self.conn_str, port=port, env=self.env, wrap=self.wrap, repick=True,
                           args=("--host", self.host, "--peers-file", str(self.peers_file), *self.args))
        self.procs.append(proc)
        return proc.start()

    def add(self) -> NodeProcess:
        """Start one more node and list it in the peers file."""
        proc = self._start_one(free_port())
        self.peers_file.write_text("".join(f"{u}\n" for u in self.urls))
        return proc

    def wait_members(self, n: int, healthy: int | None = None, timeout: float = 15.0) -> None:
        healthy = n if healthy is None else healthy
        deadline = time.monotonic() + timeout
        while True:
            views = [members_of(p.url, self.token) for p in self.procs if p.proc is not None]
            if all(len(v) == n and sum(m["healthy"] for m in v) == healthy for v in views):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"members never settled at {n} ({healthy} healthy): {views}")
            time.sleep(0.1)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
