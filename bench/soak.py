"""`cachebench soak`: loaders, objects, warms, node kills and origin outages in a loop (or disk pressure); nothing wrong, lost or leaked.

A bounded chaos run against a real cluster (3 node processes, Azurite). Loader threads read whole
checkpoints and random ranges through the cache while a chaos thread SIGKILLs and restarts nodes,
stops and restarts the origin, and warms blobs. Every load must return the uploaded bytes or fail
with a named error (a `CacheError`). Beside them an object thread puts and gets objects
(small object budgets, flooded all the time): every get is the object's own bytes or a miss, and
at the end a checkpoint loaded, then the object budgets flooded 4x, loads again without one block
miss (objects never evict blocks). Node memory, cache directories and descriptors are sampled
throughout and checked against the budgets the nodes were given.

`--disk-pressure` is the other mode: no kills, outages or warms, nodes with `--memory 0` and a
disk budget far below the checkpoints, so blocks are evicted while they are being sent. There
every load must succeed through the cluster: any bypass or error fails the run, and so does a
run in which no block file was evicted during a send (the pressure was not real).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cachenode.client.admin import scrape
from cachenode.errors import CacheError

from .testbed import CONTAINER, testbed

MiB = 1 << 20
BLOCK, MEMORY, DISK = 1 * MiB, 48 * MiB, 64 * MiB
# Objects beside the checkpoints (chaos mode): budgets far below what the object thread writes,
# so objects evict objects all the time; they must never evict a block.
NS, WRITER = "soak", "soak-writer"
OBJECT_MEMORY, OBJECT_DISK, OBJECT_SIZE, OBJECT_BATCH = 8 * MiB, 8 * MiB, 256 * 1024, 8
OBJECT_ARGS = ("--namespace", NS, "--writer-token", f"{NS}={WRITER}", "--object-memory", f"{OBJECT_MEMORY // MiB}MiB",
               "--object-disk", f"{OBJECT_DISK // MiB}MiB")
# Disk pressure: 4 MiB blocks, two of them per node's disk, no memory tier.
PRESSURE_BLOCK, PRESSURE_DISK = 4 * MiB, 8 * MiB
# What a node may hold above its idle size: --memory, its fill slots (a quarter more for
# background fills) and responses in flight, plus allocator/runtime slack (as tests/test_budgets.py).
SLOTS = max(4, MEMORY // 4 // BLOCK)
RSS_OVER_IDLE = MEMORY + (SLOTS + max(1, SLOTS // 4)) * BLOCK + 32 * BLOCK + 48 * MiB + OBJECT_MEMORY + 16 * MiB
FD_GROWTH = 16  # peer pools and keep-alive connections settle to a few; growth beyond is a leak


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _tree_bytes(root: Path) -> int:
    """Bytes of the files under `root`, each file once: a block written to a temp name and renamed
    into its directory while the walk runs is met under both names (the walk read the temp
    directory first), and counting it twice reported one block over the budget."""
    seen: dict[tuple[int, int], int] = {}
    for d, _, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(d, name))
            except FileNotFoundError:  # renamed or evicted while we walked
                continue
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


@dataclass
class Incarnation:
    """One node process from start to kill: its idle size and what it reached."""

    node: int
    pid: int
    idle_rss: int
    fds_start: int = 0
    fds_end: int = 0
    peak_rss: int = 0


@dataclass
class SoakLog:
    outcomes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)     # named errors, by type
    examples: dict[str, str] = field(default_factory=dict)  # the first message of each type
    bad: list[str] = field(default_factory=list)          # wrong bytes or unnamed errors
    bypasses: int = 0                                     # reads that went around the cluster
    chaos: Counter = field(default_factory=Counter)
    objects: Counter = field(default_factory=Counter)     # object keys put, hit, missed
    max_disk: int = 0
    lives: list[Incarnation] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def outcome(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.outcomes[kind] += 1
            if kind == "named":
                kind_name = detail.split(":", 1)[0]
                self.errors[kind_name] += 1
                self.examples.setdefault(kind_name, detail[:500])
            elif kind != "ok":
                self.bad.append(detail)


def _load_once(rng: random.Random, blobs: dict[str, bytes], url_of, nodes: list[str], token: str,
               log: SoakLog, block: int = BLOCK) -> None:
    import torch

    from cachenode.client.api import Client
    from cachenode.client.tensors import load_safetensors

    name = rng.choice(sorted(blobs))
    data = blobs[name]
    try:
        with Client(nodes, token) as client:
            if rng.random() < 0.3:
                tensors = load_safetensors(url_of(name), client=client)
                ref = _reference(data)
                ok = tensors.keys() == ref.keys() and all(
                    torch.equal(_as_bytes(tensors[k]), _as_bytes(ref[k])) for k in ref)
                del tensors
            else:
                start = rng.randrange(len(data))
                if rng.random() < 0.5:  # whole blocks, straight into the buffer
                    start -= start % block
                n = rng.choice([1, 4096, block, 3 * block + 7, len(data)])
                with client.open(url_of(name)) as f:
                    f.seek(start)
                    buf = bytearray(min(n, len(data) - start))
                    f.readinto(buf)
                ok = bytes(buf) == data[start:start + len(buf)]
            with log.lock:
                log.bypasses += client.aclient.bypass_count
        log.outcome("ok" if ok else "wrong", f"{name}: bytes differ")
    except CacheError as exc:
        log.outcome("named", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 — anything not named is what the soak is looking for
        log.outcome("unnamed", f"{name}: {type(exc).__name__}: {exc}")


def _object_value(key: str) -> bytes:
    """An object's bytes follow from its key, so any get can be checked without remembering puts."""
    seed = key.encode().ljust(64, b".")[:64]
    return (seed * (OBJECT_SIZE // 64 + 1))[:OBJECT_SIZE]


def _objects_once(client, rng: random.Random, n: int, log: SoakLog) -> None:
    """Put a batch of new objects, then get it and a few older keys back: every answer is the
    object's own bytes or a miss (a node killed or restarted meanwhile), never other bytes."""
    keys = [f"o{n}-{i}" for i in range(OBJECT_BATCH)]
    older = [f"o{rng.randrange(max(1, n))}-{rng.randrange(OBJECT_BATCH)}" for _ in range(4)]
    try:
        client.put({k: _object_value(k) for k in keys}, background=rng.random() < 0.5)
        asked = list(dict.fromkeys(keys + older))
        for k, v in zip(asked, client.get(asked)):
            if v is None:
                log.objects["miss"] += 1
            elif bytes(v) == _object_value(k):
                log.objects["hit"] += 1
            else:
                log.outcome("wrong", f"object {k}: bytes differ")
        log.objects["put"] += len(keys)
    except CacheError as exc:
        log.objects[f"named {type(exc).__name__}"] += 1
    except Exception as exc:  # noqa: BLE001 — anything not named is what the soak is looking for
        log.outcome("unnamed", f"objects: {type(exc).__name__}: {exc}")


def _objects_never_evict_blocks(name: str, blobs, url_of, nodes, token, log: SoakLog) -> int:
    """With everything up: load a checkpoint, flood every node's object budgets 4x over, load it
    again; the block misses the second load caused (0: objects evicted no block)."""
    import cachenode
    from cachenode.client.objects import ObjectClient

    def load() -> None:
        with cachenode.open(url_of(name), nodes=nodes, token=token) as f:
            if f.read() != blobs[name]:
                log.outcome("wrong", f"{name}: bytes differ (object flood check)")

    load()
    misses = sum(scrape(u, token).get("cachenode_misses_total", 0.0) for u in nodes)
    flood = 4 * (OBJECT_MEMORY + OBJECT_DISK) * len(nodes) // OBJECT_SIZE
    with ObjectClient(nodes, token, namespace=NS, writer_token=WRITER, transports="tcp") as client:
        for start in range(0, flood, 32):
            client.put({f"flood-{i}": _object_value(f"flood-{i}") for i in range(start, start + 32)})
    load()
    return int(sum(scrape(u, token).get("cachenode_misses_total", 0.0) for u in nodes) - misses)


def _reference(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def _as_bytes(t):
    """A tensor's bytes as uint8 (random bytes make NaNs, which torch.equal calls unequal)."""
    import torch

    return t.contiguous().view(-1).view(torch.uint8)


def run_soak(seconds: float, *, loaders: int = 3, n_blobs: int = 4, blob_mib: int = 12,
             chaos_every: float = 6.0, outage: float = 4.0, workdir: str | None = None,
             seed: int = 0, progress=None, disk_pressure: bool = False, n_nodes: int = 3) -> dict:
    """Run the soak for `seconds`; returns its figures (see `check` for what must hold).
    `disk_pressure`: the disk-pressure mode (module docstring) instead of chaos."""
    import tempfile

    from cachenode.client.bypass import BypassWarning

    from cachenode.testing.blobs import upload

    from .checkpoint import make_safetensors

    warnings.simplefilter("ignore", BypassWarning)  # bypass is expected while nodes die
    rng = random.Random(seed)
    log = SoakLog()
    with testbed(workdir, "cachebench-soak-") as bed:
        blobs: dict[str, bytes] = {}
        for i in range(n_blobs):
            path = Path(tempfile.mkstemp(dir=bed.base, suffix=".safetensors")[1])
            make_safetensors(path, blob_mib * MiB, seed=seed + i)
            upload(bed.azurite.connection_string, CONTAINER, f"soak/m{i}.safetensors", path)
            blobs[f"soak/m{i}.safetensors"] = path.read_bytes()
        block, disk = (PRESSURE_BLOCK, PRESSURE_DISK) if disk_pressure else (BLOCK, DISK)
        memory = 0 if disk_pressure else MEMORY
        cluster = bed.cluster(n_nodes, "--block-size", str(block), "--memory", f"{memory // MiB}MiB",
                              "--disk", f"{disk // MiB}MiB", "--idle-timeout", "2",
                              "--origin-timeout", "3", *(() if disk_pressure else OBJECT_ARGS))
        nodes, token = list(cluster.urls), bed.token  # updated in place if a node moves
        lives: dict[int, Incarnation] = {}

        def born(i: int) -> None:
            pid = cluster.procs[i].proc.pid
            lives[i] = Incarnation(i, pid, _status(pid, "VmRSS"), fds_start=len(os.listdir(f"/proc/{pid}/fd")))
            log.lives.append(lives[i])

        for i in range(len(cluster.procs)):
            born(i)
        stop = threading.Event()
        deadline = time.monotonic() + seconds

        def loader(k: int) -> None:
            r = random.Random(seed * 1000 + k)
            while not stop.is_set():
                _load_once(r, blobs, bed.url, nodes, token, log, block)

        def sample() -> None:
            for i, life in list(lives.items()):
                p = cluster.procs[i].proc
                if p is None or p.pid != life.pid or p.poll() is not None:
                    continue
                try:
                    life.peak_rss = max(life.peak_rss, _status(life.pid, "VmHWM"))
                    life.fds_end = len(os.listdir(f"/proc/{life.pid}/fd"))
                except FileNotFoundError:
                    continue
            log.max_disk = max([log.max_disk] + [_tree_bytes(p.cache_dir) for p in cluster.procs])

        def objects() -> None:
            from cachenode.client.objects import ObjectClient

            r, n = random.Random(seed + 7), 0
            while not stop.is_set():
                with ObjectClient(list(nodes), token, namespace=NS, writer_token=WRITER, transports="tcp",
                                  peer_timeout=3) as client:
                    for _ in range(10):
                        _objects_once(client, r, n, log)
                        n += 1

        threads = [threading.Thread(target=loader, args=(k,), daemon=True) for k in range(loaders)]
        if not disk_pressure:
            threads.append(threading.Thread(target=objects, daemon=True))
        for t in threads:
            t.start()
        actions = ["warm", "kill", "outage"]
        next_chaos = time.monotonic() + chaos_every
        while time.monotonic() < deadline:
            sample()
            if disk_pressure and time.monotonic() >= next_chaos:  # no chaos: only progress
                next_chaos = time.monotonic() + chaos_every
                if progress:
                    progress(log, deadline - time.monotonic())
            elif time.monotonic() >= next_chaos:
                action = actions[log.chaos.total() % len(actions)]
                log.chaos[action] += 1
                _chaos(action, rng, cluster, bed, blobs, nodes, token, outage, born, sample)
                next_chaos = time.monotonic() + chaos_every
                if progress:
                    progress(log, deadline - time.monotonic())
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(120)
        # Quiet: idle connections close (--idle-timeout 2), then a last look and a final check
        # that every blob loads byte-exact with everything up.
        time.sleep(4)
        sample()
        for name in blobs:
            _load_once(random.Random(0), {name: blobs[name]}, bed.url, nodes, token, log, block)
        if any(t.is_alive() for t in threads):
            log.bad.append("a loader thread did not finish within 120 s of the end (hung load)")
        held = sum(scrape(u, token).get("cachenode_disk_evicted_while_held_total", 0.0) for u in cluster.urls)
        evicted_by_objects = (None if disk_pressure else
                              _objects_never_evict_blocks(sorted(blobs)[0], blobs, bed.url, nodes, token, log))
    r = _figures(log, seconds, disk + (0 if disk_pressure else OBJECT_DISK))
    r.update(mode="disk-pressure" if disk_pressure else "chaos", evicted_while_sending=int(held),
             objects=dict(log.objects), block_misses_after_object_flood=evicted_by_objects)
    return r


def _chaos(action: str, rng: random.Random, cluster, bed, blobs, nodes, token, outage, born,
           sample) -> None:
    import cachenode

    if action == "kill":
        i = rng.randrange(len(cluster.procs))
        sample()  # the victim's last figures
        cluster.procs[i].stop(signal.SIGKILL)
        time.sleep(1.0)
        cluster.procs[i].start()
        if cluster.urls != nodes:  # its port was taken meanwhile: list where it is now
            cluster.peers_file.write_text("".join(f"{u}\n" for u in cluster.urls))
            nodes[:] = cluster.urls
        born(i)
    elif action == "outage":
        bed.azurite.stop()
        time.sleep(outage)
        bed.azurite.start()
    else:
        name = rng.choice(sorted(blobs))
        try:
            cachenode.warm(bed.url(name), nodes=nodes, token=token)
        except CacheError:
            pass  # a warm racing a kill may fail; loads are what is checked


def _figures(log: SoakLog, seconds: float, disk: int = DISK) -> dict:
    lives = [{"node": x.node, "pid": x.pid, "idle_rss_mib": round(x.idle_rss / MiB, 1),
              "rss_over_idle_mib": round(max(0, x.peak_rss - x.idle_rss) / MiB, 1),
              "fds_start": x.fds_start, "fds_end": x.fds_end} for x in log.lives]
    return {"seconds": seconds, "loads": sum(log.outcomes.values()), "outcomes": dict(log.outcomes),
            "named_errors": dict(log.errors), "error_examples": log.examples, "bad": log.bad[:20], "chaos": dict(log.chaos),
            "bypasses": log.bypasses,
            "max_cache_dir_mib": round(log.max_disk / MiB, 1), "disk_budget_mib": disk // MiB,
            "rss_budget_over_idle_mib": RSS_OVER_IDLE // MiB, "incarnations": lives}


def check(r: dict) -> list[str]:
    """What must hold at the end of a soak; returns the broken rules (empty: it passed)."""
    broken = [f"bad load: {b}" for b in r["bad"]]
    if r["outcomes"].get("ok", 0) == 0:
        broken.append("no load succeeded")
    if r.get("mode") == "disk-pressure":  # nothing fails here: every load is served by the cluster
        if r.get("bypasses"):
            broken.append(f"{r['bypasses']} reads bypassed the cluster")
        for kind, n in r.get("named_errors", {}).items():
            broken.append(f"{n} loads failed with {kind}: {r['error_examples'].get(kind, '')[:300]}")
        if not r.get("evicted_while_sending"):
            broken.append("no block file was evicted during a send: the pressure was not real")
    elif "objects" in r:  # chaos: objects were written and read beside the loads, never at blocks' cost
        if not r["objects"].get("hit"):
            broken.append(f"no object was read back: {r['objects']}")
        if r.get("block_misses_after_object_flood"):
            broken.append(f"objects evicted checkpoint blocks: {r['block_misses_after_object_flood']} block misses "
                          f"after flooding the object budgets")
    if r["max_cache_dir_mib"] > r["disk_budget_mib"]:
        broken.append(f"cache dir reached {r['max_cache_dir_mib']} MiB > --disk {r['disk_budget_mib']} MiB")
    for x in r["incarnations"]:
        if x["rss_over_idle_mib"] > r["rss_budget_over_idle_mib"]:
            broken.append(f"node {x['node']} (pid {x['pid']}) grew {x['rss_over_idle_mib']} MiB over idle "
                          f"> {r['rss_budget_over_idle_mib']} MiB")
    last = {}
    for x in r["incarnations"]:
        last[x["node"]] = x
    for x in last.values():  # the incarnations alive at the end, after the quiet period
        if x["fds_end"] > x["fds_start"] + FD_GROWTH:
            broken.append(f"node {x['node']} descriptors {x['fds_start']} -> {x['fds_end']}")
    return broken


def command(seconds: float, loaders: int, chaos_every: float, workdir: str | None, json_path: str | None, *,
            disk_pressure: bool = False, n_nodes: int = 3) -> None:
    """`cachebench soak`: progress while it runs, then the figures and the verdict; fails if a rule broke."""
    import click

    from .output import write_results

    def progress(log, left):
        o = log.outcomes
        click.echo(f"{max(0, left):5.0f}s left: {o['ok']} ok, {o['named']} named errors, "
                   f"{len(log.bad)} bad, {log.bypasses} bypasses; chaos {dict(log.chaos)}")

    r = run_soak(seconds, loaders=loaders, chaos_every=chaos_every, workdir=workdir, progress=progress,
                 disk_pressure=disk_pressure, n_nodes=n_nodes)
    click.echo(f"{r['loads']} loads in {seconds:.0f}s: {r['outcomes']}; named errors {r['named_errors']}")
    for kind, text in r["error_examples"].items():
        click.echo(f"  e.g. {text}")
    if "objects" in r:
        click.echo(f"objects {r['objects']}; block misses after flooding the object budgets: "
                   f"{r['block_misses_after_object_flood']}")
    click.echo(f"chaos {r['chaos']}; cache dir peak {r['max_cache_dir_mib']} MiB (--disk {r['disk_budget_mib']} MiB); "
               f"{r['bypasses']} bypasses; {r['evicted_while_sending']} block files evicted during a send")
    for x in r["incarnations"]:
        click.echo(f"  node {x['node']} pid {x['pid']}: idle {x['idle_rss_mib']} MiB, +{x['rss_over_idle_mib']} MiB "
                   f"peak (budget +{r['rss_budget_over_idle_mib']}), fds {x['fds_start']} -> {x['fds_end']}")
    broken = check(r)
    r["broken"] = broken
    write_results(r, json_path, None, "")
    if broken:
        raise click.ClickException("soak failed:\n  " + "\n  ".join(broken))
    click.echo("soak passed")
