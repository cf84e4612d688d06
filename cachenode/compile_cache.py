"""Compiled kernels from the cluster: `cachenode.compile_cache.compile(model)` and `CompileCache` (front door)."""

from cachenode.client.compile_artifacts import ArtifactRefused
from cachenode.client.compile_dir import DirectoryCache
from cachenode.client.compile_cache import CompileCache, LoadResult, PublishResult, PublishingCompiled, compile
from cachenode.client.compile_identity import Identity, compute_identity

__all__ = ["compile", "CompileCache", "DirectoryCache", "PublishingCompiled", "LoadResult", "PublishResult", "ArtifactRefused",
           "Identity", "compute_identity"]
