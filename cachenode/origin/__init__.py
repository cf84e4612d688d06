"""Origins (where blocks come from on a miss) and the one place that picks one for a source."""

from __future__ import annotations

from typing import Callable

from ..source import FILE, SourceRef
from .base import Origin


class Origins:
    """The origin for a source: the file origin for file://, else the Azure origin that
    `azure_for` gives for the source's account (the node has one; a loader's bypass makes one
    per account it may read, see credentials.bypass_credentials). Backends load lazily, so a
    loader that never bypasses never imports the Azure SDK."""

    def __init__(self, azure_for: Callable[[SourceRef], Origin], file: Origin | None = None,
                 file_roots: tuple[str, ...] = ("/",)) -> None:
        self._azure_for = azure_for
        self._file = file
        self._file_roots = file_roots

    @property
    def file(self) -> Origin:
        if self._file is None:
            from .file import FileOrigin

            self._file = FileOrigin(self._file_roots)
        return self._file

    def for_ref(self, ref: SourceRef) -> Origin:
        return self.file if ref.kind == FILE else self._azure_for(ref)

    async def close(self) -> None:
        """Close the file origin if one was made (the Azure ones belong to whoever made them)."""
        if self._file is not None:
            await self._file.close()
