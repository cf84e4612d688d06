"""`--load-format cachenode`: a vLLM model loader that streams weights from the cluster into load_weights."""

from __future__ import annotations

import logging
import os
import time

import torch
from torch import nn
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from cachenode.errors import CacheError, PeerUnavailable

from ..api import Client
from .options import EngineOptions
from .weights import WeightStream

# Under vLLM's logger, so our lines show in its log with its format and level.
log = logging.getLogger("vllm.plugins.cachenode")
LOAD_FORMAT = "cachenode"


def register() -> None:
    """The `vllm.general_plugins` entry point: register the load format and the az:// hooks.
    vLLM calls it in every process it starts, possibly more than once."""
    from vllm.model_executor import model_loader

    from . import vllm_hooks

    # Checked first: registering twice makes vLLM warn that the format is overwritten.
    if getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {}).get(LOAD_FORMAT) is not CachenodeModelLoader:
        model_loader.register_model_loader(LOAD_FORMAT)(CachenodeModelLoader)
    vllm_hooks.install(env_client)


def env_client() -> Client | None:
    """A client from CACHENODE_* / AZURE_STORAGE_ACCOUNT_NAME, or None if no node is configured."""
    options = EngineOptions.resolve(None)
    return Client(config=options.client) if options.client.nodes else None


def model_url(model_config: ModelConfig) -> str:
    """Where the weights are: the az:// URL vLLM kept in model_weights after pulling the config
    files, else the model as given (a blob URL, or a local folder read as file://)."""
    url = model_config.model_weights or model_config.model
    if os.path.isdir(url):
        return "file://" + os.path.abspath(url)
    return url


class CachenodeModelLoader(BaseModelLoader):
    """Reads the checkpoint's shards through cache nodes (each block from blob storage once per
    cluster) and hands vLLM each tensor as soon as its span has arrived; nothing is written to disk.

    Options: `--model-loader-extra-config '{"nodes": [...], "window": 8, ...}'` over CACHENODE_*.
    """

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.options = EngineOptions.resolve(load_config.model_loader_extra_config)
        self.last_stream: dict | None = None  # what the last load read (tests, benchmarks)

    def _client(self, url: str) -> Client:
        client = Client(config=self.options.client)
        try:
            self._require_cluster(client, url)
        except BaseException:
            client.close()
            raise
        return client

    def _require_cluster(self, client: Client, url: str) -> None:
        """Without origin credentials on this host a load must not fall into bypass (it would
        fail late, or retry an unreachable endpoint): say so at once, naming the URL."""
        if self.options.may_bypass:
            return
        failures: list[str] = []
        answer = client.run(client.aclient.cluster.ask(_members_only, failures))
        if answer is None:
            tried = ", ".join(self.options.client.nodes) or "none configured (CACHENODE_NODES)"
            why = f": {'; '.join(failures)}" if failures else ""
            raise PeerUnavailable(f"cannot load {url}: no cache node answered (tried {tried}){why}, and this "
                                  "host has no origin credentials (AZURE_STORAGE_*) to read it directly")

    def stream(self, url: str, device: str | torch.device = "cpu", want=None, share=None
               ) -> tuple[Client, WeightStream]:
        """(client, stream) over the checkpoint at `url`; every shard pinned to its ETag now."""
        client = self._client(url)
        try:
            return client, WeightStream(client, url, device=device, span_bytes=self.options.span_bytes,
                                        depth=self.options.depth, want=want, share=share)
        except CacheError as exc:
            client.close()
            raise (exc if url in str(exc) else type(exc)(f"loading {url}: {exc}")) from None
        except BaseException:
            client.close()
            raise

    def download_model(self, model_config: ModelConfig) -> None:
        """Nothing to download: check that the checkpoint resolves (its shards and headers)."""
        client, stream = self.stream(model_url(model_config))
        stream.close()
        client.close()

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        url = model_url(model_config)
        device = _device_of(model)
        start = time.perf_counter()
        client, stream = self.stream(url, device, share=_tensor_parallel_share())
        try:
            with stream:
                loaded = model.load_weights(iter(stream))
        finally:
            client.close()
        seconds = time.perf_counter() - start
        # The same words as vLLM's default loader, so logs and `cachebench engine` compare them.
        log.info("Loading weights took %.2f seconds", seconds)
        log.info("cachenode: %s: %.2f s waiting for bytes, %.2f s in vLLM's weight loaders (%d threads allowed"
                 " on CPUs %s)", url, stream.wait_s, seconds - stream.wait_s, torch.get_num_threads(),
                 sorted(os.sched_getaffinity(0)))
        self.last_stream = {"url": url, "bytes": stream.bytes_read, "from_peers": stream.bytes_received,
                            "shards": len(stream.shards), "seconds": seconds}
        if stream.share is not None:
            log.info("cachenode: TP rank %d read %.1f MiB of %s from the cluster, %.1f MiB from its peers",
                     stream.share.rank, stream.bytes_read / 2**20, url, stream.bytes_received / 2**20)
        if loaded is not None:
            missing = {n for n, _ in model.named_parameters()} - set(loaded)
            if missing:
                log.warning("cachenode: %d parameters got no weight from %s (e.g. %s)", len(missing), url,
                            sorted(missing)[0])


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class _TensorParallelShare:
    """The ranks of one tensor-parallel group loading together: each reads a 1/TP share of the
    checkpoint's spans from the cluster and broadcasts it to the others (vLLM's group: NCCL on
    GPUs, gloo on CPU). Every rank's weight loaders still see whole tensors and narrow them to
    their slice as usual, so nothing model-specific is needed; the cluster sends each byte to
    the group once instead of TP times."""

    def __init__(self, group) -> None:
        self.group = group
        self.rank = group.rank_in_group
        self.size = group.world_size

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        self.group.broadcast(tensor, src=src)


def _tensor_parallel_share() -> _TensorParallelShare | None:
    from vllm.distributed import get_tensor_model_parallel_world_size, get_tp_group

    return _TensorParallelShare(get_tp_group()) if get_tensor_model_parallel_world_size() > 1 else None


async def _members_only(node) -> None:
    """The question for Cluster.ask when only "does a node answer" matters."""
