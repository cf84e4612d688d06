"""Mounting and unmounting: mountpoint checks, the pyfuse3 main loop on asyncio, clean exit on signals."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import subprocess
from typing import Callable

from cachenode.client.config import ClientConfig
from cachenode.errors import CacheError

from .config import MountConfig

log = logging.getLogger(__name__)


class MountError(CacheError, OSError):
    """The mountpoint cannot be used (missing, stale, busy) or FUSE is unavailable."""


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_at(path: str) -> tuple[str, str] | None:
    """(major:minor, fstype) of what is mounted at `path`, from mountinfo (no stat of the path:
    a stale or not-yet-served FUSE mount would fail or hang it)."""
    path = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if _unescape(fields[4]) == path:
                found = (fields[2], fields[sep + 1])  # the last mount on top wins
    return found


def check_mountpoint(path: str) -> None:
    """Refuse a mountpoint that is missing, not a directory, stale or already mounted, naming the fix."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist: create it first (mkdir -p {path})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            raise MountError(f"{path} is a stale FUSE mount (its process has died): clean it up with "
                             f"`cachenode unmount {path}` (or fusermount3 -u {path})") from None
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not os.path.isdir(path) or not (st.st_mode & 0o040000):
        raise MountError(f"mountpoint {path} is not a directory")
    mounted = mount_at(path)
    if mounted is not None and mounted[1].startswith("fuse"):
        try:
            os.listdir(path)  # the root's attributes may still answer; a dead connection does not
        except OSError as exc:
            if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise MountError(f"{path} is a stale FUSE mount (its process has died): clean it up with "
                                 f"`cachenode unmount {path}` (or fusermount3 -u {path})") from None
    if mounted is not None:
        raise MountError(f"{path} is busy: a {mounted[1]} filesystem is already mounted there "
                         f"(unmount it first: `cachenode unmount {path}`)")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module, or give the container the "
                         "device (--device /dev/fuse, or a privileged pod)")


def _set_readahead(mountpoint: str, nbytes: int) -> None:
    """Raise the kernel readahead of the new mount: a FUSE mount starts at 128 KiB, which keeps
    one small request in flight; a larger window lets the kernel ask for the next MiBs while a
    loader is still copying the last ones, so the loader's parallel block fetches have work."""
    mounted = mount_at(mountpoint)
    if mounted is None:
        return
    path = f"/sys/class/bdi/{mounted[0]}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(max(4, nbytes // 1024)))
    except OSError as exc:
        log.warning("could not raise the readahead of %s (%s): reads stay at the kernel's default", path, exc)
    _set_background(mounted[0], max(12, nbytes // (1 << 20) * 2))


def _set_background(dev: str, requests: int) -> None:
    """Let the kernel keep `requests` readahead requests in flight (its default is 12, and it
    stops issuing readahead at 9, the congestion threshold): 12 x 1 MiB is less than the 32 MiB
    window, so an mmap reader waits on the mount with free tasks there. Needs fusectl mounted
    (/sys/fs/fuse/connections) and root; otherwise the defaults stay (logged at debug)."""
    conn = f"/sys/fs/fuse/connections/{dev.split(':')[-1]}"
    try:
        for name, value in (("max_background", requests), ("congestion_threshold", requests * 3 // 4)):
            with open(f"{conn}/{name}", "w") as f:
                f.write(str(value))
    except OSError as exc:
        log.debug("could not raise the FUSE background limit at %s (%s)", conn, exc)


async def serve(config: MountConfig, client_config: ClientConfig,
                ready: Callable[[str], None] | None = None) -> None:
    """Mount, serve until unmounted or SIGTERM/SIGINT, then unmount; raises MountError on a bad mountpoint."""
    import pyfuse3
    import pyfuse3.asyncio

    from .fs import CacheFS
    from .namespace import Namespace, parse_sources
    from .offload import OffloadedClient

    pyfuse3.asyncio.enable()
    mountpoint = os.path.abspath(config.mountpoint)
    check_mountpoint(mountpoint)
    client = OffloadedClient(client_config)
    try:
        sources = parse_sources(client, list(config.sources))
        ns = Namespace(client, sources, config.listing_ttl)
        await ns.refresh()  # an unreachable cluster or a refused source fails here, before mounting
        fs = CacheFS(ns, client, attr_timeout=config.listing_ttl,
                     on_init=lambda: _set_readahead(mountpoint, config.readahead))
        options = set(pyfuse3.default_options) | {"fsname=cachenode", "subtype=cachenode", "ro"}
        if config.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(fs, mountpoint, options)
        except RuntimeError as exc:
            raise MountError(f"could not mount at {mountpoint}: {exc} (is fuse3 installed and "
                             "/dev/fuse usable? allow_other needs user_allow_other in /etc/fuse.conf)") from None
        loop = asyncio.get_running_loop()
        stopping = []

        def stop(signum: int) -> None:
            if not stopping:
                log.info("%s: unmounting %s", signal.Signals(signum).name, mountpoint)
                stopping.append(signum)
                pyfuse3.terminate()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        try:
            if ready is not None:
                ready(mountpoint)
            await pyfuse3.main(max_tasks=config.max_tasks)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            # After an external `fusermount3 -u` the mount is gone already; unmounting again is harmless.
            pyfuse3.close(unmount=True)
            await fs.close()
    finally:
        await client.close()


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount a cachenode mount (also a stale one whose process died) with fusermount3 -u."""
    mountpoint = os.path.abspath(mountpoint)
    mounted = mount_at(mountpoint)
    if mounted is None:
        raise MountError(f"nothing is mounted at {mountpoint}")
    if not mounted[1].startswith("fuse"):
        raise MountError(f"{mountpoint} is a {mounted[1]} mount, not a cachenode (FUSE) mount")
    tool = shutil.which("fusermount3")
    if tool is None:
        raise MountError("fusermount3 not found: install fuse3 (apt-get install fuse3)")
    cmd = [tool, "-u", *(["-z"] if lazy else []), mountpoint]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit status {done.returncode}"
        hint = (" — processes still use it (see `fuser -m`); `cachenode unmount --lazy` detaches it now "
                "and it goes away when they finish" if "busy" in why.lower() else "")
        raise MountError(f"unmount {mountpoint} failed: {why}{hint}")
