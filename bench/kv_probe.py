"""One KV measurement in a fresh process: batch puts then batch gets of one contender at one concurrency.

Run as `python -m cachenode.bench.kv_probe SPEC_JSON`; prints one `RESULT {json}` line. Every
contender gets the same objects, batch depth and concurrency; gets land in buffers allocated and
touched before the clock starts, wherever the contender can write into a caller's buffer.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _summary(seconds: float, nbytes: int, lat: list[float]) -> dict:
    return {"gb_per_s": nbytes / seconds / 1e9, "seconds": seconds, "bytes": nbytes, "batches": len(lat),
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * _percentile(lat, 0.99)}


def _plan(spec: dict) -> tuple[list[str], list[bytes], list[list[list[int]]], list[list[list[int]]]]:
    """Keys, payloads, and per worker the batches (lists of object indices) it puts and gets."""
    n, batch, conc = spec["objects"], spec["batch"], spec["concurrency"]
    size = spec["object_size"]
    payloads = [(i.to_bytes(4, "little") * (size // 4 + 1))[:size] for i in range(n)]  # each its own bytes
    keys = [f"{spec['tag']}/chunk-{i:06d}" for i in range(n)]
    puts = [list(range(s, min(n, s + batch))) for s in range(0, n, batch)]
    put_plan = [puts[w::conc] for w in range(conc)]
    gets = [[(b * batch + j * 7) % n for j in range(batch)] for b in range(spec["get_batches"])]
    get_plan = [gets[w::conc] for w in range(conc)]
    return keys, payloads, put_plan, get_plan


def _buffers(conc: int, batch: int, size: int) -> list[list[memoryview]]:
    """Each worker's destination buffers, touched now (first touch is not the contender's cost)."""
    out = []
    for _ in range(conc):
        region = bytearray(batch * size)
        region[::4096] = b"\1" * len(region[::4096])
        out.append([memoryview(region)[i * size:(i + 1) * size] for i in range(batch)])
    return out


async def _cachenode(spec: dict) -> dict:
    from cachenode.client.objects import AsyncObjectClient

    keys, payloads, put_plan, get_plan = _plan(spec)
    conc = spec["concurrency"]
    client = AsyncObjectClient(spec["nodes"], spec["token"], namespace=spec["namespace"],
                               writer_token=spec["writer"], transports=spec["transport"], peer_timeout=30)
    bufs = _buffers(conc, spec["batch"], spec["object_size"])
    await client.exists(keys[:1])  # members and channels known before the clock starts
    put_lat: list[float] = []
    get_lat: list[float] = []

    async def put_worker(w: int) -> None:
        for b in put_plan[w]:
            t = time.perf_counter()
            res = await client.put({keys[i]: payloads[i] for i in b})
            put_lat.append(time.perf_counter() - t)
            assert all(v == "stored" for v in res.values()), res

    async def get_worker(w: int) -> None:
        for b in get_plan[w]:
            t = time.perf_counter()
            got = await client.get([keys[i] for i in b], into=bufs[w][:len(b)])
            get_lat.append(time.perf_counter() - t)
            if got[0] is None or bytes(got[0][:16]) != payloads[b[0]][:16]:
                raise AssertionError(f"object {keys[b[0]]} missing or wrong")

    t0 = time.perf_counter()
    await asyncio.gather(*(put_worker(w) for w in range(conc)))
    t1 = time.perf_counter()
    await asyncio.gather(*(get_worker(w) for w in range(conc)))
    t2 = time.perf_counter()
    verified = _verify(get_plan, bufs, payloads)
    await client.delete(keys)
    await client.close()
    return _result(spec, t1 - t0, t2 - t1, put_lat, get_lat, verified)


def _verify(get_plan, bufs, payloads) -> bool:
    """Every worker's last batch, byte for byte (the others were spot-checked as they came)."""
    for w, plan in enumerate(get_plan):
        if plan and any(bytes(bufs[w][j]) != payloads[i] for j, i in enumerate(plan[-1])):
            return False
    return True


def _result(spec, put_s, get_s, put_lat, get_lat, verified) -> dict:
    size = spec["object_size"]
    return {"put": _summary(put_s, size * spec["objects"], put_lat),
            "get": _summary(get_s, size * spec["batch"] * spec["get_batches"], get_lat),
            "verified": verified}


async def _redis(spec: dict) -> dict:
    import redis.asyncio as aioredis

    keys, payloads, put_plan, get_plan = _plan(spec)
    conc = spec["concurrency"]
    pool = aioredis.ConnectionPool(host="127.0.0.1", port=spec["redis_port"], max_connections=conc)
    r = aioredis.Redis(connection_pool=pool)
    await asyncio.gather(*(r.ping() for _ in range(conc)))  # connections open before the clock
    put_lat: list[float] = []
    get_lat: list[float] = []
    last: dict[int, list[bytes]] = {}

    async def put_worker(w: int) -> None:
        for b in put_plan[w]:
            t = time.perf_counter()
            await r.mset({keys[i]: payloads[i] for i in b})
            put_lat.append(time.perf_counter() - t)

    async def get_worker(w: int) -> None:
        for b in get_plan[w]:
            t = time.perf_counter()
            got = await r.mget([keys[i] for i in b])  # redis-py returns new bytes: no caller buffers
            get_lat.append(time.perf_counter() - t)
            if got[0] is None or got[0][:16] != payloads[b[0]][:16]:
                raise AssertionError(f"object {keys[b[0]]} missing or wrong")
            last[w] = got

    t0 = time.perf_counter()
    await asyncio.gather(*(put_worker(w) for w in range(conc)))
    t1 = time.perf_counter()
    await asyncio.gather(*(get_worker(w) for w in range(conc)))
    t2 = time.perf_counter()
    verified = all(last[w] == [payloads[i] for i in plan[-1]] for w, plan in enumerate(get_plan) if plan)
    await r.delete(*keys)
    await r.aclose()
    await pool.aclose()
    return _result(spec, t1 - t0, t2 - t1, put_lat, get_lat, verified)


def _mooncake(spec: dict) -> dict:
    from mooncake.store import MooncakeDistributedStore

    keys, payloads, put_plan, get_plan = _plan(spec)
    conc, batch, size = spec["concurrency"], spec["batch"], spec["object_size"]
    store = MooncakeDistributedStore()
    # No segment of its own (0 bytes): objects live in the holder's, and every get crosses TCP.
    rc = store.setup("127.0.0.1", spec["metadata"], 0, 64 << 20, "tcp", "", spec["master"])
    if rc != 0:
        raise RuntimeError(f"Mooncake setup failed: {rc}")
    # Sources and destinations registered with the transfer engine (its zero-copy path).
    src = bytearray(b"".join(payloads))
    src_addr = ctypes.addressof((ctypes.c_char * len(src)).from_buffer(src))
    store.register_buffer(src_addr, len(src))
    bufs = _buffers(conc, batch, size)
    addrs = []
    for w in range(conc):
        region = bufs[w][0].obj
        addr = ctypes.addressof((ctypes.c_char * len(region)).from_buffer(region))
        store.register_buffer(addr, len(region))
        addrs.append(addr)
    put_lat: list[float] = []
    get_lat: list[float] = []

    def put_worker(w: int) -> None:
        for b in put_plan[w]:
            t = time.perf_counter()
            rcs = store.batch_put_from([keys[i] for i in b], [src_addr + i * size for i in b], [size] * len(b))
            put_lat.append(time.perf_counter() - t)
            if any(x != 0 for x in rcs):
                raise RuntimeError(f"Mooncake batch_put_from: {rcs}")

    def get_worker(w: int) -> None:
        for b in get_plan[w]:
            t = time.perf_counter()
            got = store.batch_get_into([keys[i] for i in b], [addrs[w] + j * size for j in range(len(b))],
                                       [size] * len(b))
            get_lat.append(time.perf_counter() - t)
            if any(x != size for x in got):
                raise RuntimeError(f"Mooncake batch_get_into: {got}")

    with ThreadPoolExecutor(conc) as pool:
        t0 = time.perf_counter()
        list(pool.map(put_worker, range(conc)))
        t1 = time.perf_counter()
        list(pool.map(get_worker, range(conc)))
        t2 = time.perf_counter()
    verified = _verify(get_plan, bufs, payloads)
    store.batch_remove(keys, True)
    store.close()
    return _result(spec, t1 - t0, t2 - t1, put_lat, get_lat, verified)


def main() -> None:
    spec = json.loads(sys.argv[1])
    kind = spec["contender"]
    if kind == "redis":
        result = asyncio.run(_redis(spec))
    elif kind == "mooncake":
        result = _mooncake(spec)
    else:
        result = asyncio.run(_cachenode(spec))
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    if kind == "mooncake" or spec.get("transport") == "ucx":
        import os

        os._exit(0)  # their native threads do not end on their own; everything is measured and closed


if __name__ == "__main__":
    main()
