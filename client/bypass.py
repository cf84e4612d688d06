"""Reading the origin directly when no node answers: with the loader's own credentials, sent only where they belong."""

from __future__ import annotations

import logging
import warnings

from cachenode.blocks import ObjectInfo
from cachenode.credentials import bypass_credentials
from cachenode.errors import CacheError, OriginUnavailable
from cachenode.source import SourceRef

from .config import ClientConfig

log = logging.getLogger("cachenode.client")


class BypassWarning(UserWarning):
    """No cache node could serve; the loader reads the origin directly."""


class Bypass:
    """The loader's origins, made on first use (the Azure SDK is imported only then), and the
    one warning a client gives when it starts bypassing the cluster."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._origins = None
        self._azure: dict[tuple, object] = {}
        self._warned = False
        self.count = 0  # blocks and stats read around the cluster by this client (each is logged)
        self.reason = "no cache node answered"  # why the last bypass happened, for its errors

    def _origin(self, ref: SourceRef):
        if self._origins is None:
            from cachenode.origin import Origins

            self._origins = Origins(self._azure_for)
        return self._origins.for_ref(ref)

    def _azure_for(self, ref: SourceRef):
        creds = bypass_credentials(self.config.azure, ref)
        key = (ref.account, creds.service_url(), creds.use_default_credential)
        if key not in self._azure:
            from cachenode.origin.azure import AzureOrigin

            self._azure[key] = AzureOrigin(creds)
        return self._azure[key]

    def warn(self, reason: str) -> None:
        """Count and log one read around the cluster (the first one also warns)."""
        self.reason = reason
        self.count += 1
        log.info("bypass #%d: %s; reading the origin directly", self.count, reason)
        if not self._warned:
            self._warned = True
            warnings.warn(f"cachenode: {reason}; reading the origin directly (bypass)",
                          BypassWarning, stacklevel=5)
            log.warning("%s; reading the origin directly (bypass)", reason)

    async def stat(self, ref: SourceRef) -> ObjectInfo:
        try:
            return await self._origin(ref).stat(ref)
        except Exception as exc:  # noqa: BLE001 - said together with why we are here at all
            raise self._failed(exc, ref) from exc

    async def read_into(self, ref: SourceRef, etag: str, offset: int, dest: memoryview) -> None:
        try:
            await self._origin(ref).read_into(ref, etag, offset, dest)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc, ref) from exc

    def _failed(self, exc: Exception, ref: SourceRef) -> Exception:
        """The direct read's error, saying first that no node served (alone, a credentials
        error from the bypass reads as if the cluster had a credentials problem)."""
        msg = f"{self.reason}, and reading {ref} directly failed: {exc}"
        if isinstance(exc, CacheError):
            try:
                return type(exc)(msg)
            except TypeError:  # an error class with a constructor of its own
                pass
        return OriginUnavailable(msg)

    async def close(self) -> None:
        for origin in self._azure.values():
            await origin.close()
        self._azure.clear()
        if self._origins is not None:
            await self._origins.close()
