"""A UCX worker progressed by the asyncio loop that owns it: requests are loop futures, no threads."""

from __future__ import annotations

import asyncio
import logging

from .ucx_wire import load_ucxx

log = logging.getLogger("cachenode.ucx")

# Progress at least this often while requests are posted, whatever the worker's event fd says
# (as ucxx's own blocking mode does: a missed wake-up must not stall a transfer for good).
SAFETY_PROGRESS = 0.5


class UcxEngine:
    """One UCX context and worker, on ucxx's low-level API, progressed from this loop.

    Why not ucxx's own progress: its default (a progress thread, then a notifier thread that
    hands each completion to the loop through run_coroutine_threadsafe) costs a node more CPU
    per block than the node's own work, in thread hops and GIL hand-offs (measured on the
    2-core VM, warm 8 MiB blocks over shared memory: node 0.09 -> 0.04 CPU s/GB, loader
    0.34 -> 0.28); its blocking mode waits for a request by yielding in a loop, which burns a
    core while a receive is posted.

    Here the loop watches the worker's event fd. On an event, and soon after a request is
    posted, it progresses the worker, completes the futures of finished requests, and arms
    the fd again. A body that arrives is copied by the kernel (cma) inside that progress, on
    this loop's thread, once (as an HTTP loader's socket reads copy on its loop).

    Every call must come from the loop the engine was made in (its futures are that loop's).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        load_ucxx()  # ucxx's import sets UCX's environment defaults before the library reads them
        from ucxx._lib import libucxx as api
        from ucxx._lib.arr import Array

        self._api, self._array = api, Array
        self._context = api.UCXContext({})
        self._worker = api.UCXWorker(self._context, enable_delayed_submission=False,
                                     enable_python_future=False)
        self._worker.init_blocking_progress_mode()
        self.address = self._worker.address.tobytes()
        # request -> (its future, its buffer): a request's own `completed` says when it is over,
        # and the buffer is held here until then (a send over TCP reads it after tag_send
        # returns; the caller may have dropped its last reference, e.g. a packed header)
        self._pending: dict[object, tuple[asyncio.Future, object]] = {}
        self._kicked = False
        self._safety: asyncio.TimerHandle | None = None
        self._fd = self._worker.epoll_file_descriptor
        self.loop.add_reader(self._fd, self._progress)
        self.closed = False

    # -- requests ------------------------------------------------------------------------

    def recv(self, buf, tag: int) -> asyncio.Future:
        """Receive the message tagged `tag` (from any endpoint) into `buf`: done when it landed."""
        self._check()
        arr = self._array(buf)
        return self._track(self._worker.tag_recv(arr, self._api.UCXXTag(tag)), arr)

    def send(self, ep, buf, tag: int) -> asyncio.Future:
        """Send `buf` (not copied: it must stay unchanged until done) as one message tagged `tag`."""
        self._check()
        arr = self._array(buf)
        return self._track(ep.tag_send(arr, self._api.UCXXTag(tag)), arr)

    def get_ucx_address_from_buffer(self, address: bytes):
        return self._api.UCXAddress.create_from_buffer(address)

    async def create_endpoint_from_worker_address(self, address, endpoint_error_handling: bool = False):
        """An endpoint to the worker at `address` (see get_ucx_address_from_buffer)."""
        self._check()
        ep = self._api.UCXEndpoint.create_from_worker_address(self._worker, address, endpoint_error_handling)
        self._kick()
        return Endpoint(self, ep)

    def cancel_inflight(self) -> None:
        """Cancel what ucxx has set aside for cancelling: the requests of endpoints closed
        meanwhile (their futures then fail with UCX's cancel error). A receive posted on the
        worker itself is not among them and stays posted (measured: 0 cancelled, with ucxx's
        own progress too), so whoever gave it a buffer waits for it to finish."""
        if not self.closed:
            self._worker.cancel_inflight_requests()
            self._kick()

    def close(self) -> None:
        """Withdraw what is posted, fail what waits on it, and stop watching the worker."""
        if self.closed:
            return
        try:
            self._worker.cancel_inflight_requests()
            self._worker.progress()
        except Exception as exc:  # noqa: BLE001 - closing: nothing to report it to
            log.debug("UCX engine close: %s", exc)
        self.closed = True
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
        if self._safety is not None:
            self._safety.cancel()
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("UCX engine closed"))
        self._pending.clear()

    # -- progress ------------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise ConnectionError("UCX engine closed")

    def _track(self, request, buffer) -> asyncio.Future:
        fut = self.loop.create_future()
        self._pending[request] = (fut, buffer)
        # Posted from here, a request may need progress to go out (a send queued on a lane, a
        # receive that matched a message already waiting): the fd says nothing about those.
        self._kick()
        return fut

    def _kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            self.loop.call_soon(self._progress)

    def _progress(self) -> None:
        self._kicked = False
        if self.closed:
            return
        worker = self._worker
        while True:
            worker.progress()
            self._complete()
            # Armed: the fd wakes the loop on the next event. Not armed: events are waiting.
            if worker.arm():
                break
        if self._pending and self._safety is None:
            self._safety = self.loop.call_later(SAFETY_PROGRESS, self._safety_progress)

    def _safety_progress(self) -> None:
        self._safety = None
        self._progress()

    def _complete(self) -> None:
        done = [r for r in self._pending if r.completed]
        for request in done:
            fut, _ = self._pending.pop(request)
            if fut.done():  # its waiter was cancelled (it stopped waiting; UCX is done anyway)
                continue
            try:
                request.check_error()
            except Exception as exc:  # noqa: BLE001 - UCX's error, for the waiter to translate
                fut.set_exception(exc)
            else:
                fut.set_result(None)


class Endpoint:
    """An endpoint to one peer's worker; sends go through the engine that progresses it."""

    def __init__(self, engine: UcxEngine, ep) -> None:
        self._engine = engine
        self._ep = ep

    def send(self, buf, tag: int) -> asyncio.Future:
        return self._engine.send(self._ep, buf, tag)

    async def close(self) -> None:
        """Drop the endpoint without waiting for its peer (error handling is off: a flush to a
        peer that went away could wait for good)."""
        ep, self._ep = self._ep, None
        if ep is not None and not self._engine.closed:
            ep.close()
            self._engine._kick()
