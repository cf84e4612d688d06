"""Members that failed a request sit out a pause (1 s doubling to 30 s), then get one probe: loader and node alike."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

FIRST_PAUSE = 1.0
MAX_PAUSE = 30.0


@dataclass
class _Pause:
    until: float
    length: float
    probing: bool = False


class Pauses:
    """The one rule for a member that failed: skip it for a while, then try it again.

    A failure pauses the member for FIRST_PAUSE seconds; when the pause is over, exactly one
    request may go to it (the probe) while every other still skips it. A probe that succeeds
    ends the pause, one that fails doubles it (at most MAX_PAUSE). Failures of requests that
    were already in flight when the member was paused do not lengthen the pause, so a member
    killed mid-load costs at most one probe per pause window, and a member that failed one
    request is asked again within a second instead of being dropped for a file's life.
    """

    def __init__(self, first: float = FIRST_PAUSE, most: float = MAX_PAUSE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._first = first
        self._most = most
        self._clock = clock
        self._paused: dict[str, _Pause] = {}

    def admit(self, member_id: str) -> bool:
        """May a request go to `member_id` now? True for a member in good standing, and for
        the one probe of a member whose pause is over (the caller must then report the
        outcome with `succeeded`, `failed` or `abandoned`)."""
        p = self._paused.get(member_id)
        if p is None:
            return True
        if p.probing or self._clock() < p.until:
            return False
        p.probing = True
        return True

    def succeeded(self, member_id: str) -> None:
        self._paused.pop(member_id, None)

    def failed(self, member_id: str, probe: bool | None = None) -> None:
        """A request to `member_id` failed. `probe` says whether it was the member's probe
        (None: infer it: a failure while a probe is out is taken as the probe's)."""
        now = self._clock()
        p = self._paused.get(member_id)
        if p is None:
            self._paused[member_id] = _Pause(now + self._first, self._first)
            return
        if probe is False or not p.probing:
            return  # in flight before the pause began: the pause already accounts for it
        length = min(self._most, p.length * 2)
        self._paused[member_id] = _Pause(now + length, length)

    def abandoned(self, member_id: str) -> None:
        """The probe ended with no verdict (cancelled): the next request may probe."""
        p = self._paused.get(member_id)
        if p is not None:
            p.probing = False

    def briefly(self, member_id: str) -> bool:
        """Paused after a single failure (no failed probe yet): worth waiting for."""
        p = self._paused.get(member_id)
        return p is not None and p.length <= self._first

    def is_paused(self, member_id: str) -> bool:
        return member_id in self._paused

    def paused(self) -> frozenset[str]:
        """The members sitting out now (probe or not): what a request tells a node to avoid."""
        return frozenset(self._paused)

    def pause_left(self, member_id: str) -> float:
        """Seconds until `member_id` may be probed (0 if it is not paused or may be now)."""
        p = self._paused.get(member_id)
        return 0.0 if p is None else max(0.0, p.until - self._clock())
