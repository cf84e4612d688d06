"""`cachenode mount` as a child process, started once the mount is up."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .azurite import AZURITE_ACCOUNT
from .process import ChildProcess


class MountProcess(ChildProcess):
    """`cachenode mount` as a child process (foreground); started once the mount is up.

    `stop()` sends SIGTERM, which unmounts; SIGKILL leaves a stale mount.
    """

    stop_timeout = 20.0

    def __init__(self, mountpoint: str | Path, sources: list[str], nodes: list[str], *,
                 token: str | None, account: str = AZURITE_ACCOUNT, args: tuple[str, ...] = (),
                 log_path: str | Path | None = None, wrap: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, local_socket: str | Path | None = None) -> None:
        """`wrap`: a command prefix (e.g. VethHost.net_prefix(); not `ip netns exec`, whose
        mount namespace would hide the mount); `env`: extra CACHENODE_* settings of the mount's
        loader; `local_socket`: this host's node's (its --local-socket path): blocks come as
        its memfds."""
        self.mountpoint = Path(mountpoint)
        super().__init__(log_path or f"{self.mountpoint}.log")
        self.cmd = [*wrap, sys.executable, "-m", "cachenode", "mount", str(self.mountpoint),
                    *(a for s in sources for a in ("--source", s)),
                    *(a for n in nodes for a in ("--node", n)), *args]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}
        self.env["AZURE_STORAGE_ACCOUNT_NAME"] = account  # az://container names no account
        if token:
            self.env["CACHENODE_TOKEN"] = token
        self.env.update(env or {})
        if local_socket:
            self.env["CACHENODE_LOCAL_SOCKET"] = str(local_socket)

    def prepare(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return self.cmd

    def environment(self) -> dict[str, str]:
        return self.env

    def wait_ready(self, timeout: float) -> None:
        from cachenode.client.mount.run import mount_at

        deadline = time.monotonic() + timeout
        while mount_at(str(self.mountpoint)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mount did not come up: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
