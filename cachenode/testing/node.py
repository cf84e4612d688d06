"""`cachenode serve` as a child process, on a port of its own or one picked for it."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from .ports import free_port
from .process import ChildProcess


class PortTaken(RuntimeError):
    """The node's port was bound by someone else between picking it and the node's bind."""


class NodeProcess(ChildProcess):
    """`cachenode serve` as a child process on a free port; `url` once it listens.

    Its stderr goes to `<cache_dir>.log`; its stdout is read for the "listening on" line.
    """

    pipe_stdout = True

    def __init__(self, cache_dir: str | Path, *, token: str | None, conn_str: str | None,
                 args: tuple[str, ...] = (), port: int = 0, wrap: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, repick: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        super().__init__(self.cache_dir.with_suffix(".log"))
        self.extra_env = env or {}
        self.wrap = wrap  # a command prefix, e.g. ("ip", "netns", "exec", NAME)
        self.token = token
        self.conn_str = conn_str
        self.args = args
        self.port = port
        self.repick = repick  # `port` came from free_port(): another one will do
        self.url = ""

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        """Start and wait for "listening on"; a port picked by `free_port()` can be taken by
        another process before the node binds it, so such a start is retried on a fresh port
        (only when the caller says `repick`: a fixed port that is busy is an error to report).
        Port 0 (the default) lets the node bind any free port itself, which has no race."""
        for attempt in range(5):
            try:
                return super().start(timeout)
            except PortTaken:
                if not self.repick or attempt == 4:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def prepare(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}
        if self.token:
            env["CACHENODE_TOKEN"] = self.token
        if self.conn_str:
            env["AZURE_STORAGE_CONNECTION_STRING"] = self.conn_str
        env.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        cmd = [*self.wrap, sys.executable, "-m", "cachenode", "serve", "--port", str(self.port),
               "--cache-dir", str(self.cache_dir), *self.args]
        if not self.token:
            cmd.append("--no-auth")
        return cmd

    def wait_ready(self, timeout: float) -> None:
        ready: list[str] = []
        proc = self.proc

        def read_until_listening() -> None:
            # UCX writes its own warnings to stdout; skip to our line.
            for out in proc.stdout:
                if "listening on " in out:
                    ready.append(out)
                    return

        reader = threading.Thread(target=read_until_listening, daemon=True)
        reader.start()
        reader.join(timeout)
        line = ready[0] if ready else ""
        if "listening on " not in line:
            self.stop()
            if any(ln.startswith("Error: cannot listen") and "already in use" in ln
                   for ln in self.log_since_start().splitlines()):
                raise PortTaken(f"port {self.port} taken before the node bound it")
            raise RuntimeError(f"node did not start: {line!r}; see {self.log_path}")
        self.url = line.split("listening on ", 1)[1].split()[0]
