"""Start and stop real local services: Azurite (the Azure Blob emulator) and node processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published well-known development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def scratch_dir(stack, workdir: str | None, prefix: str, keep: bool = False) -> Path:
    """`workdir` as given (kept), or a new temp dir that `stack` removes when it unwinds."""
    if workdir:
        return Path(workdir)
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_string(port: int, host: str = "127.0.0.1", scheme: str = "http") -> str:
    return (f"DefaultEndpointsProtocol={scheme};AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={scheme}://{host}:{port}/{AZURITE_ACCOUNT};")


def find_azurite() -> str:
    """azurite-blob from the project's own npm install (or $CACHENODE_AZURITE_BIN)."""
    candidates = [os.environ.get("CACHENODE_AZURITE_BIN", ""),
                  str(project_root() / "node_modules/.bin/azurite-blob"),
                  str(Path.cwd() / "node_modules/.bin/azurite-blob"),
                  shutil.which("azurite-blob") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        "Azurite not found: run `npm ci` in the project folder (bench/setup.sh does) "
        "or set CACHENODE_AZURITE_BIN")


def wait_for_port(port: int, proc: subprocess.Popen | None, what: str, timeout: float = 30.0,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Azurite:
    """Azurite's blob service on a free port of `host` (127.0.0.1), data in `workdir`.

    `wrap` prefixes the command, e.g. ("ip", "netns", "exec", NAME) to put it behind a link;
    `tls` = (cert file, key file) serves HTTPS instead of HTTP.
    """

    def __init__(self, workdir: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 wrap: tuple[str, ...] = (), tls: tuple[Path, Path] | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.host = host
        self.wrap = wrap
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.proc: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port, self.host, self.scheme)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/{AZURITE_ACCOUNT}"

    def start(self) -> "Azurite":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "azurite.log", "ab")
        self.proc = subprocess.Popen(
            [*self.wrap, find_azurite(), "--blobHost", self.host, "--blobPort", str(self.port),
             "--location", str(self.workdir), "--silent", "--disableTelemetry", "--loose",
             "--skipApiVersionCheck",
             *(("--cert", str(self.tls[0]), "--key", str(self.tls[1])) if self.tls else ())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            wait_for_port(self.port, self.proc, "Azurite", host=self.host)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PortTaken(RuntimeError):
    """The node's port was bound by someone else between picking it and the node's bind."""


class NodeProcess:
    """`cachenode serve` as a child process on a free port; `url` once it listens."""

    def __init__(self, cache_dir: str | Path, *, token: str | None, conn_str: str | None,
                 args: tuple[str, ...] = (), port: int = 0, wrap: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, repick: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.extra_env = env or {}
        self.wrap = wrap  # a command prefix, e.g. ("ip", "netns", "exec", NAME)
        self.token = token
        self.conn_str = conn_str
        self.args = args
        self.port = port
        self.repick = repick  # `port` came from free_port(): another one will do
        self.url = ""
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        """Start and wait for "listening on"; a port picked by `free_port()` can be taken by
        another process before the node binds it, so such a start is retried on a fresh port
        (only when the caller says `repick`: a fixed port that is busy is an error to report).
        Port 0 (the default) lets the node bind any free port itself, which has no race."""
        for attempt in range(5):
            try:
                return self._start_once(timeout)
            except PortTaken:
                if not self.repick or attempt == 4:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> "NodeProcess":
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}
        if self.token:
            env["CACHENODE_TOKEN"] = self.token
        if self.conn_str:
            env["AZURE_STORAGE_CONNECTION_STRING"] = self.conn_str
        env.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
        env.update(self.extra_env)
        cmd = [*self.wrap, sys.executable, "-m", "cachenode", "serve", "--port", str(self.port),
               "--cache-dir", str(self.cache_dir), *self.args]
        if not self.token:
            cmd.append("--no-auth")
        log = open(self.cache_dir.with_suffix(".log"), "ab")
        log_start = log.seek(0, os.SEEK_END)  # this start's own lines begin here
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                     env=env, text=True, start_new_session=True)
        log.close()
        ready: list[str] = []

        def wait_ready() -> None:
            # UCX writes its own warnings to stdout; skip to our line.
            for out in self.proc.stdout:
                if "listening on " in out:
                    ready.append(out)
                    return

        reader = threading.Thread(target=wait_ready, daemon=True)
        reader.start()
        reader.join(timeout)
        line = ready[0] if ready else ""
        if "listening on " not in line:
            self.stop()
            log_path = self.cache_dir.with_suffix(".log")
            with open(log_path, "rb") as f:
                f.seek(log_start)
                ours = f.read().decode(errors="replace")
            if any(ln.startswith("Error: cannot listen") and "already in use" in ln
                   for ln in ours.splitlines()):
                raise PortTaken(f"port {self.port} taken before the node bound it")
            raise RuntimeError(f"node did not start: {line!r}; see {log_path}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the node (SIGTERM = graceful; SIGKILL = crash); returns its exit code."""
        if self.proc is None:
            return None
        if sig == signal.SIGTERM:
            _stop(self.proc)
        else:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        code = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def members_of(url: str, token: str | None) -> list[dict]:
    """A node's view of the cluster: [{id, url, healthy}]."""
    import json
    import urllib.request

    from cachenode.transport.wire import MEMBERS_PATH, bearer

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


class MountProcess:
    """`cachenode mount` as a child process (foreground); started once the mount is up."""

    def __init__(self, mountpoint: str | Path, sources: list[str], nodes: list[str], *,
                 token: str | None, account: str = AZURITE_ACCOUNT, args: tuple[str, ...] = (),
                 log_path: str | Path | None = None) -> None:
        self.mountpoint = Path(mountpoint)
        self.cmd = [sys.executable, "-m", "cachenode", "mount", str(self.mountpoint),
                    *(a for s in sources for a in ("--source", s)),
                    *(a for n in nodes for a in ("--node", n)), *args]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}
        self.env["AZURE_STORAGE_ACCOUNT_NAME"] = account  # az://container names no account
        if token:
            self.env["CACHENODE_TOKEN"] = token
        self.log_path = Path(log_path or f"{self.mountpoint}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "MountProcess":
        from cachenode.client.mount.run import mount_at

        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while mount_at(str(self.mountpoint)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mount did not come up: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the mount process (SIGTERM unmounts; SIGKILL leaves a stale mount); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code, self.proc = self.proc.returncode, None
        return code

    def __enter__(self) -> "MountProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
