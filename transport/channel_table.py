"""One channel per node, made on first use: the table every transport's connector keeps."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from cachenode.errors import PeerUnavailable

from .base import ClientChannel

C = TypeVar("C", bound=ClientChannel)


class ChannelTable(Generic[C]):
    """Channels by key: a node's URL (HTTP), or the address it advertised for a transport."""

    def __init__(self, transport: str) -> None:
        self._transport = transport
        self._channels: dict[str, C] = {}

    def get(self, url: str, key: str | None, make: Callable[[], C]) -> C:
        """The channel to the node at `url` under `key`, made by `make()` the first time."""
        if key is None:
            raise PeerUnavailable(f"cache node {url} advertises no {self._transport} address")
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = make()
        return channel

    def digest_seconds(self) -> float:
        return sum(c.digest_seconds for c in self._channels.values())

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
