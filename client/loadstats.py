"""Where one load's wall time went, filled by the loader when the caller passes a LoadStats."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass


@dataclass
class LoadStats:
    """Seconds per phase of one safetensors load (all measured on the loader's own clock).

    stat_s + header_s + wait_bytes_s + digest_s + tensors_s + first_touch_tail_s is the load's
    sequential path; first_touch_s runs on another thread beside the wait, so it explains a slow
    wait (a wait close to first_touch_s means fresh pages, not the wire, set the pace).
    """

    stat_s: float = 0.0            # finding a node, its member list, the file's size/ETag/block size
    header_s: float = 0.0          # reading and parsing the safetensors header
    wait_bytes_s: float = 0.0      # first block asked .. last block in, less digest and tensor work
    # checking received blocks' digests: the loop's time for HTTP; for UCX the summed time of
    # per-block checks on worker threads, which overlap each other and the wait
    digest_s: float = 0.0
    tensors_s: float = 0.0         # building tensor views as their blocks complete
    # populating the fresh buffer's pages on the prefault thread, beside the wait (0 for a buffer
    # too small for the thread: its page faults then land in the wait itself)
    first_touch_s: float = 0.0
    first_touch_tail_s: float = 0.0  # still waiting for that thread after the last block landed
    bytes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Stopwatch:
    """Seconds since it was made (or last lapped)."""

    def __init__(self) -> None:
        self._t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        return dt
