"""The origin interface: stat an object and read a pinned byte range into a caller's buffer."""

from __future__ import annotations

import abc

from ..blocks import ObjectInfo
from ..source import SourceRef


class Origin(abc.ABC):
    """Where blocks come from on a miss (Azure Blob, a local directory, ...)."""

    @abc.abstractmethod
    async def stat(self, ref: SourceRef) -> ObjectInfo:
        """Size and ETag of `ref`; SourceNotFound / Forbidden / OriginUnavailable on failure."""

    @abc.abstractmethod
    async def read_into(self, ref: SourceRef, etag: str, offset: int, dest: memoryview) -> None:
        """Fill all of `dest` with bytes [offset, offset+len(dest)) of version `etag`.

        Raises SourceChanged if the object no longer has that ETag; never returns mixed bytes.
        """

    async def list(self, ref: SourceRef, prefix: str) -> list[tuple[SourceRef, ObjectInfo]]:
        """Objects whose path starts with `prefix` in the container/directory of `ref`."""
        raise NotImplementedError(f"{type(self).__name__} cannot list")

    async def close(self) -> None:
        """Release connections."""
