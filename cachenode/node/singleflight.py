"""Single-flight: concurrent callers for one key share one running fill."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """At most one fill per key at a time; everyone else asking meanwhile waits on it."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task] = {}

    def in_flight(self) -> int:
        return len(self._flights)

    async def do(self, key: Hashable, fill: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run `fill` once for `key`; returns (result, shared) where shared means we joined."""
        task = self._flights.get(key)
        shared = task is not None
        if task is None:
            # The fill runs as its own task: a first caller that disconnects must not cancel
            # the fill the other waiters depend on.
            task = asyncio.ensure_future(fill())
            self._flights[key] = task
            task.add_done_callback(lambda t, k=key: self._forget(k, t))
        return await asyncio.shield(task), shared

    def _forget(self, key: Hashable, task: asyncio.Task) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters re-raise it, nobody else must log it
