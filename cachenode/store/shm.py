"""Block buffers in memfds: the node's own bytes, which this host's loaders can then be handed by descriptor, uncopied."""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import weakref

# F_SEAL_FUTURE_WRITE (Linux 5.1; not in Python 3.11's fcntl): no more write() and no new
# writable mapping by anyone, while the node's own mapping, made before, stays writable. The
# node never writes a buffer once its fill is done; a loader holding a descriptor cannot write.
F_SEAL_FUTURE_WRITE = 0x0010
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL


class _Mapping(ctypes.Array):
    """Base of the exporter types: a memfd's bytes mapped into this process. Views of a buffer
    keep its exporter alive, so the mapping (and the descriptor) outlive every view of it."""

    _type_ = ctypes.c_char
    _length_ = 0
    fd: int


class ShmBuffers:
    """Allocates block buffers as memfds mapped here, one memfd per buffer (one descriptor each),
    at most `limit` at once; past it, plain memory (handed over by copy: store/host_copies.py).

    A buffer is a writable memoryview; `handle` gives a descriptor of exactly its bytes, sealed,
    for a loader on this host (NodeService.host_copy). The memory is freed, and the descriptor
    closed, when the last view of the buffer is released (the tier evicted it and every send of
    it is done); a loader's own descriptor keeps the pages until it closes it.
    """

    def __init__(self, limit: int = 1 << 16) -> None:
        self.limit = limit
        libc = ctypes.CDLL(None, use_errno=True)
        self._mmap = libc.mmap
        self._mmap.restype = ctypes.c_void_p
        self._mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long]
        self._munmap = libc.munmap
        self._munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._types: dict[int, type] = {}
        self.live = 0  # buffers (and descriptors) held now

    def __call__(self, length: int) -> memoryview | bytearray:
        """A new zeroed buffer of `length` bytes (a fill or a forward writes it once)."""
        if self.live >= self.limit:
            return bytearray(length)  # descriptors are for connections too
        fd = os.memfd_create("cachenode-block", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, length)
            addr = self._mmap(None, max(1, length), mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                err = ctypes.get_errno()
                raise OSError(err, f"mmap of a {length}-byte block buffer: {os.strerror(err)}")
        except BaseException:
            os.close(fd)
            raise
        kind = self._types.get(length)
        if kind is None:
            kind = self._types[length] = type("BlockMapping", (_Mapping,), {"_length_": length})
        exporter = kind.from_address(addr)
        exporter.fd = fd
        self.live += 1
        # Not at exit: a thread may still read a view then, and exit frees the memory anyway.
        weakref.finalize(exporter, self._free, addr, max(1, length), fd).atexit = False
        return memoryview(exporter).cast("B")

    def _free(self, addr: int, length: int, fd: int) -> None:
        self._munmap(addr, length)
        os.close(fd)
        self.live -= 1


def mapped(buf) -> bool:
    """True if `buf` is a whole ShmBuffers buffer (it has a memfd to hand over)."""
    exporter = buf.obj if isinstance(buf, memoryview) else None
    return isinstance(exporter, _Mapping) and buf.nbytes == exporter._length_


def handle(buf) -> int | None:
    """A new descriptor (the caller's to close) of the memfd behind `buf`, sealed against
    writes, or None if `buf` is not a whole ShmBuffers buffer."""
    if not mapped(buf):
        return None
    fd = buf.obj.fd
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SEAL == 0:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    return os.dup(fd)
