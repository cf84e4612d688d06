"""One reader process of many loading the same file at once: waits for "go", reads it whole, prints its sha256.

`python -m cachenode.testing.read_child SOURCE [NODE TOKEN]` prints "ready" once imported, reads
a line from stdin (the parent's go, sent to every reader at once), then reads SOURCE whole into
one buffer and prints one JSON line: {"bytes", "sha256", "seconds"}. With NODE and TOKEN, SOURCE
is a URL read through the cluster loader (cachenode.open; CACHENODE_LOCAL_SOCKET in the
environment sends it to this host's node); without, a local path (a file of a mount) read with
plain open().
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time


def read_whole(source: str, node: str | None, token: str | None) -> bytearray:
    if node is None:
        f = open(source, "rb", buffering=0)
        size = os.fstat(f.fileno()).st_size
    else:
        import cachenode

        f = cachenode.open(source, nodes=[node], token=token)
        size = f.size
    with f:
        buf = bytearray(size)
        view, done = memoryview(buf), 0
        while done < size:
            n = f.readinto(view[done:])
            if not n:
                break
            done += n
    return buf[:done] if done != size else buf


def main(argv: list[str]) -> None:
    source, node, token = (argv + [None, None])[:3]
    if node is not None:
        import cachenode  # noqa: F401 - imported before the go: the readers start together
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    data = read_whole(source, node, token)
    seconds = time.perf_counter() - t0
    print(json.dumps({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "seconds": seconds}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
