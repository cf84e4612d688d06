"""The set-up every benchmark shares: a scratch dir, Azurite, a generated checkpoint uploaded, a token, clusters."""

from __future__ import annotations

import secrets
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cachenode.testing.azurite import Azurite
from cachenode.testing.blobs import upload
from cachenode.testing.cluster import LocalCluster
from cachenode.testing.paths import scratch_dir

from .checkpoint import make_safetensors
from .table import byte_bar

CONTAINER = "models"


@dataclass
class Testbed:
    """What a benchmark runs against; everything it starts stops when the `testbed` block ends."""

    stack: ExitStack
    base: Path
    azurite: Azurite
    token: str

    def checkpoint(self, size: int, blob: str, *, name: str = "model.safetensors",
                   upload_label: str = "upload") -> tuple[Path, int]:
        """Generate a safetensors checkpoint of about `size` bytes and upload it as `blob`."""
        path = self.base / name
        with byte_bar("generate checkpoint", size) as bar:
            nbytes = make_safetensors(path, size, progress=bar.update)
        with byte_bar(upload_label, nbytes) as bar:
            upload(self.azurite.connection_string, CONTAINER, blob, path, progress=bar.update)
        return path, nbytes

    def url(self, blob: str) -> str:
        return f"{self.azurite.endpoint}/{CONTAINER}/{blob}"

    def service_pids(self, cluster: LocalCluster) -> dict[str, list[int]]:
        """The pids serving loads, by group: the cluster's nodes and Azurite."""
        return {"nodes": [p.proc.pid for p in cluster.procs if p.proc is not None],
                "azurite": [self.azurite.proc.pid]}

    def cluster(self, n: int, *args: str, name: str = "cluster", conn_str: str | None = None,
                **kwargs) -> LocalCluster:
        """n nodes sharing this testbed's token, reading Azurite (or `conn_str`, e.g. a relay)."""
        return self.stack.enter_context(LocalCluster(
            self.base / name, n, token=self.token, conn_str=conn_str or self.azurite.connection_string,
            args=args, **kwargs))


@contextmanager
def testbed(workdir: str | None, prefix: str, *, keep: bool = False, azurite_host: str = "127.0.0.1",
            azurite_wrap: tuple[str, ...] = ()) -> Iterator[Testbed]:
    """A scratch dir (`workdir`, or a temp dir removed at the end unless `keep`) with Azurite
    started in it (on `azurite_host`, its command prefixed by `azurite_wrap`, e.g. a namespace)."""
    with ExitStack() as stack:
        base = scratch_dir(stack, workdir, prefix, keep=keep)
        azurite = stack.enter_context(Azurite(base / "azurite", host=azurite_host, wrap=azurite_wrap))
        yield Testbed(stack, base, azurite, secrets.token_urlsafe(24))
