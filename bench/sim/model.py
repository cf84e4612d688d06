"""A flow-level model of readers loading one checkpoint through a cachenode cluster.

What is real: block geometry and keys (cachenode/blocks.py), owners and fallbacks by rendezvous
rank (cachenode/placement.py), the loader's window (client/config.py) and its header-first read,
and the node's policies: only the owner fills a block from the origin, once, while every reader
waiting for it waits on that one fill (single-flight); readers ask each block's owner directly;
when owners die, the next live member in rank takes their blocks over and fills them again.

What is modelled: bytes move as fluid flows over links (each host's NIC in and out, the origin
account's egress), shared max-min fairly per connection (bench/sim/flowmodel.py), recomputed at
every event (a reader crossing a stretch of blocks, catching up with the readers ahead of it,
finishing; nodes dying). A reader is one flow spread over the owners of the blocks it reads
next, in proportion to the bytes each owns, so a cluster of 1024 nodes and a 270 GB model runs
in seconds. Readers on one host move as one group (they would share everything equally).

Readers that start together and wait on the same fills move together (the "front"), and the
front carries the fills of the stretch it is reading: for every byte it reads, `pending/left`
bytes come from the origin into their owners. A reader behind the front reads what the front
has filled. A node forwards a block only once it is whole; where that shows (the header block,
then the first window of blocks, whose fills share the origin and end together) those stretches
are filled first and read after. Later the window slides a block at a time and fills overlap
forwards. Per-request latency and CPU are left out: milliseconds against the seconds links take
(`--validate` measures how far that holds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cachenode.blocks import DEFAULT_BLOCK_SIZE, block_count, block_key, block_span
from cachenode.client.config import ClientConfig
from cachenode.node.config import NodeConfig
from cachenode.placement import rank, score
from cachenode.source import parse_source

from .flowmodel import Flow, fair_rates
from .governor import background_rate

# Payload bytes per byte on an Ethernet wire at MTU 1500: 1448 bytes of TCP payload (with the
# timestamp option) in a 1514-byte frame. tc and NICs count frames, loaders count payload.
PAYLOAD_PER_WIRE_BYTE = 1448 / 1514
# any name: it only seeds the block keys
SOURCE = "https://demo.blob.core.windows.net/models/llama-3-70b/model.safetensors"
EPS = 1e-9
# Readers on up to this many hosts are followed host by host; beyond it they move in lockstep
# (one flow over every reader host): the slowest host then paces all of them, so the last
# reader's time is an upper bound, and a step costs one flow instead of one per host.
LOCKSTEP_ABOVE = 64


@dataclass(frozen=True)
class Host:
    """A machine: its NIC's payload bytes/s each way (inf: not a bottleneck)."""

    name: str
    nic_in: float
    nic_out: float
    # all readers' reads from the node on this host (loopback: no NIC; by default unlimited,
    # like the reader's own receive path, which `LoadParams.reader_rate` bounds instead)
    local: float = math.inf


@dataclass(frozen=True)
class Cluster:
    """Where nodes and readers sit, and what the origin gives (payload bytes/s)."""

    hosts: tuple[Host, ...]
    node_hosts: tuple[str, ...]      # host of node i (member id `member_id(i)`)
    reader_hosts: tuple[str, ...]    # host of each reader
    origin_rate: float               # the storage account's egress, all connections together
    conn_rate: float = math.inf      # one origin connection (one range GET at a time)


@dataclass(frozen=True)
class LoadParams:
    """The checkpoint and the loader's behaviour."""

    model_bytes: int
    block_size: int = DEFAULT_BLOCK_SIZE
    window: int = ClientConfig.window   # blocks in flight per reader (the loader's default)
    sdk_concurrency: int = 8            # connections of a direct blob download (blob_direct_sdk)
    setup_s: float = 0.02               # open: member list and stat round trips (measured ~0.01-0.05 s)
    stretches: int = 128                # the model is cut into this many stretches of blocks (events)
    fail: int = 0                       # nodes that die ...
    fail_at: float = 1.0                # ... when the cold front has read this share of the model (1: after it)
    # Share of every NIC (each way) the GPU jobs' own traffic holds: loads get the rest, and
    # warming (background) gets what the node's idle-bandwidth governor grants beside it.
    busy: float = 0.0
    warm_concurrency: int = NodeConfig.warm_concurrency  # fills at a time per node when warming
    reader_rate: float = math.inf       # what one reader process can take in, bytes/s (copies, PCIe)


def member_id(i: int) -> str:
    return f"node-{i:04d}"


def gbit(x: float) -> float:
    """Payload bytes/s of a link of `x` Gbit/s on the wire."""
    return x * 1e9 / 8 * PAYLOAD_PER_WIRE_BYTE


def cluster_of(nodes: int, readers: int, nic_gbit: float, origin_gbit: float, conn_mbyte: float) -> Cluster:
    """A GPU cluster: each node on its own host with one NIC, readers spread round-robin over them."""
    hosts = tuple(Host(f"h{i}", gbit(nic_gbit), gbit(nic_gbit)) for i in range(nodes))
    return Cluster(hosts, tuple(h.name for h in hosts), tuple(hosts[r % nodes].name for r in range(readers)),
                   gbit(origin_gbit), conn_mbyte * 1e6)


class Placement:
    """Owners of every block by the real rendezvous rank; `fail` moves blocks to their fallbacks."""

    def __init__(self, params: LoadParams, members: list[str]) -> None:
        ref = parse_source(SOURCE)
        n = block_count(params.model_bytes, params.block_size)
        self.keys = [block_key(ref, '"0x8DC0FFEE"', params.model_bytes, params.block_size, i) for i in range(n)]
        self.sizes = np.array([block_span(params.model_bytes, params.block_size, i)[1] for i in range(n)], float)
        self.members = members
        self.live = list(members)
        index = {m: i for i, m in enumerate(members)}
        # rank(key, members)[0] without sorting every member list: the same order, (score, id)
        self.owner = np.array([index[max(members, key=lambda m, k=k: (score(k, m), m))] for k in self.keys])

    def fail(self, dead: set[str]) -> np.ndarray:
        """Remove `dead` members; returns the indices of the blocks that moved to a fallback."""
        self.live = [m for m in self.live if m not in dead]
        if not self.live:
            raise ValueError("every node died: nothing left to place blocks on")
        index = {m: i for i, m in enumerate(self.members)}
        moved = np.flatnonzero(np.isin(self.owner, [index[d] for d in dead]))
        for b in moved:
            self.owner[b] = index[rank(self.keys[b], self.live)[0]]  # the next live member in rank
        return moved


@dataclass(eq=False)  # compared by identity: a group is one set of readers
class _Group:
    """Readers moving together (readers per host): where they are (stretch, share of it read)
    and when they finished."""

    readers: np.ndarray
    stretch: int = 0
    q: float = 0.0
    done: float | None = None


@dataclass(eq=False)
class _Run:
    """One load in progress: its reader groups, per-stretch views (bytes each node serves, sizes,
    what is left to fill) and running totals."""

    direct: bool
    kill_at: float | None
    groups: list[_Group]
    total: float
    served: list[np.ndarray]
    sizes: list[float]
    pending: list[np.ndarray]
    egress: np.ndarray
    t: float = 0.0
    origin: float = 0.0
    steps: int = 0
    deaths_at: float | None = None


@dataclass
class PhaseResult:
    seconds: float
    reader_seconds: list[float]
    origin_bytes: float
    egress: np.ndarray      # bytes each node served to readers
    steps: int
    deaths_at: float | None = None


@dataclass
class Simulation:
    """One cluster loading one checkpoint: `cold()` on an empty cache, then `warm()` on what it left."""

    cluster: Cluster
    params: LoadParams
    placement: Placement = field(init=False)

    def __post_init__(self) -> None:
        c, p = self.cluster, self.params
        self.host_index = {h.name: i for i, h in enumerate(c.hosts)}
        self.node_host = np.array([self.host_index[h] for h in c.node_hosts])
        self.capacity = {"origin": c.origin_rate}
        for i, h in enumerate(c.hosts):
            free = 1 - p.busy
            self.capacity[f"in:{i}"], self.capacity[f"out:{i}"] = h.nic_in * free, h.nic_out * free
            self.capacity[f"local:{i}"] = h.local
        self.placement = Placement(p, [member_id(i) for i in range(len(c.node_hosts))])
        n = len(self.placement.sizes)
        step = max(p.window, -(-(n - 1) // max(1, p.stretches)))
        # The loader reads the safetensors header (block 0) on its own, then asks for a window
        # of data blocks at once. The fills of one such batch share the origin fairly and end
        # together, and a node forwards a block only once it is whole: those two stretches are
        # filled first, then read ("waves"). Later the window slides a block at a time and fills
        # overlap forwards, which the front's shared flow models.
        first = min(n, 1 + p.window)
        self.waves = 2
        self.bounds = [(0, min(1, n)), (1, first)] + [(b, min(n, b + step)) for b in range(first, n, step)]
        self.bounds = [(a, b) for a, b in self.bounds if b > a]
        self.cached = np.zeros(n, dtype=bool)
        self.dead: set[str] = set()

    # -- per-stretch views -------------------------------------------------------------------
    def _by_node(self, blocks: slice, mask: np.ndarray | None = None) -> np.ndarray:
        sizes = self.placement.sizes[blocks] if mask is None else self.placement.sizes[blocks] * mask
        return np.bincount(self.placement.owner[blocks], weights=sizes, minlength=len(self.node_host))

    def _stretch_views(self) -> tuple[list[np.ndarray], list[float]]:
        """Per stretch: bytes each node serves from it, and its size."""
        served = [self._by_node(slice(a, b)) for a, b in self.bounds]
        return served, [float(s.sum()) for s in served]

    def _reader_usage(self, g: _Group, served: np.ndarray, size: float) -> dict[str, float]:
        """Link bytes per byte read by each of the group's readers, summed over its readers:
        owners' NICs out, the readers' NICs in; blocks owned on a reader's own host cross no NIC."""
        share = np.bincount(self.node_host, weights=served, minlength=len(self.cluster.hosts)) / size
        m = g.readers
        usage: dict[str, float] = {}
        for kind, load in (("out", (m.sum() - m) * share), ("in", m * (1 - share)), ("local", m * share)):
            for h in np.flatnonzero(load > EPS):
                usage[f"{kind}:{h}"] = float(load[h])
        return usage

    def _kill(self, pending: list[np.ndarray]) -> None:
        """The first `fail` live nodes die: their blocks (cached or being filled) are lost and
        move to the next member in rank, which fills them again when they are next read."""
        dead = set(self.placement.live[:self.params.fail])
        idx = [self.placement.members.index(d) for d in dead]
        moved = self.placement.fail(dead)
        self.dead |= dead
        self.cached[moved] = False
        mask = np.zeros(len(self.cached))
        mask[moved] = 1.0
        for s, (a, b) in enumerate(self.bounds):
            pending[s][idx] = 0.0
            pending[s] += self._by_node(slice(a, b), mask[a:b])

    # -- a load ------------------------------------------------------------------------------
    def _load(self, direct: bool, kill_at: float | None) -> PhaseResult:
        """Every reader loads the model at once (`direct`: from the origin itself); `fail` nodes
        die when the front has read `kill_at` of it. Event by event: this step's flows and their
        fair rates, the time to the next event, everyone moved on to it."""
        run = self._begin(direct, kill_at)
        while any(g.done is None for g in run.groups):
            run.steps += 1
            flows, members, fills = self._flows(run)
            # a flow nothing limits (readers reading only their own host's node) ends its
            # stretch at once: a finite stand-in keeps the arithmetic below free of inf * 0
            rates = [min(r, 1e30) for r in fair_rates(flows, self.capacity)]
            dt = self._next_event(run, members, rates, fills)
            run.t += dt
            self._move(run, dt, members, rates, fills)
            self._catch_up(run.groups)
            self._end_stretches(run)
            self._kill_when_due(run)
        reader_s = [g.done for g in run.groups for _ in range(int(g.readers.sum()))]
        return PhaseResult(max(reader_s), reader_s, run.origin, run.egress, run.steps, run.deaths_at)

    def _begin(self, direct: bool, kill_at: float | None) -> _Run:
        """The readers in groups (one per host; one in lockstep beyond LOCKSTEP_ABOVE hosts) at
        the start, and what is left to fill of every stretch."""
        c = self.cluster
        counts = np.bincount([self.host_index[h] for h in c.reader_hosts], minlength=len(c.hosts)).astype(float)
        hosts = np.flatnonzero(counts)
        if len(hosts) > LOCKSTEP_ABOVE:
            groups = [_Group(counts)]
        else:
            groups = [_Group(np.where(np.arange(len(counts)) == h, counts, 0.0)) for h in hosts]
        total = float(self.placement.sizes.sum())
        # a direct download is one stretch: the whole blob, from the origin
        served, sizes = ([], [total]) if direct else self._stretch_views()
        pending = [] if direct else [self._by_node(slice(a, b), ~self.cached[a:b]) for a, b in self.bounds]
        return _Run(direct, kill_at, groups, total, served, sizes, pending, np.zeros(len(self.node_host)))

    def _flows(self, run: _Run) -> tuple[list[Flow], list[list[_Group]], list[tuple[int, float]]]:
        """This step's flows; per flow, the groups it moves and (stretch, origin bytes per byte
        read): 0 for readers reading filled blocks, -1 for a wave's fills (which move no reader)."""
        live = [g for g in run.groups if g.done is None]
        flows: list[Flow] = []
        members: list[list[_Group]] = []
        fills: list[tuple[int, float]] = []
        if run.direct:
            p, c = self.params, self.cluster
            for g in live:
                usage = {f"in:{h}": float(g.readers[h]) for h in np.flatnonzero(g.readers)}
                flows.append(Flow({"origin": float(g.readers.sum()), **usage}, p.sdk_concurrency,
                                  min(p.reader_rate, p.sdk_concurrency * c.conn_rate)))
                members.append([g])
                fills.append((0, 0.0))
            return flows, members, fills
        by_stretch: dict[int, list[_Group]] = {}
        for g in live:
            by_stretch.setdefault(g.stretch, []).append(g)
        for s, gs in by_stretch.items():
            for flow, moves, fill in self._stretch_flows(run, s, gs):
                flows.append(flow)
                members.append(moves)
                fills.append(fill)
        return flows, members, fills

    def _stretch_flows(self, run: _Run, s: int, gs: list[_Group]) -> list[tuple[Flow, list[_Group], tuple[int, float]]]:
        """The flows of the groups in stretch `s`: a wave's fills, or readers behind the front
        and the front itself."""
        p = self.params
        window = 1 if s == 0 else p.window
        need = float(run.pending[s].sum())
        lead = max(g.q for g in gs)
        if s < self.waves and need > EPS * run.sizes[s]:
            return [self._wave_flow(run, s, need, window)]
        front = [g for g in gs if need > EPS * run.sizes[s] and g.q >= lead - EPS]
        out = [(Flow(self._reader_usage(g, run.served[s], run.sizes[s]), window, p.reader_rate), [g], (s, 0.0))
               for g in gs if g not in front]
        if front:
            out.append(self._front_flow(run, s, front, lead, need, window))
        return out

    def _wave_flow(self, run: _Run, s: int, need: float, window: int) -> tuple[Flow, list[_Group], tuple[int, float]]:
        """A wave: its readers wait until every block of it is filled; the fills share the origin."""
        c = self.cluster
        into = np.bincount(self.node_host, weights=run.pending[s], minlength=len(c.hosts)) / need
        usage = {"origin": 1.0, **{f"in:{h}": f for h, f in enumerate(into) if f > 0}}
        n_fill = max(1.0, min(window, math.ceil(need / self.params.block_size - EPS)))
        return Flow(usage, n_fill, n_fill * c.conn_rate), [], (s, -1.0)

    def _front_flow(self, run: _Run, s: int, front: list[_Group], lead: float, need: float,
                    window: int) -> tuple[Flow, list[_Group], tuple[int, float]]:
        """Readers at the front wait on the fills of what they read next: for every byte they
        read, `per_byte` bytes come from the origin into their owners."""
        p, c = self.params, self.cluster
        per_byte = need / max(EPS, (1 - lead) * run.sizes[s])
        usage: dict[str, float] = {"origin": per_byte}
        into = np.bincount(self.node_host, weights=run.pending[s], minlength=len(c.hosts)) / need
        for h, f in enumerate(into):
            if f > 0:
                usage[f"in:{h}"] = usage.get(f"in:{h}", 0.0) + per_byte * f
        for g in front:
            for k, v in self._reader_usage(g, run.served[s], run.sizes[s]).items():
                usage[k] = usage.get(k, 0.0) + v
        blocks_left = need / p.block_size
        fills_in_flight = max(1.0, min(window, math.ceil(blocks_left - EPS)))
        return (Flow(usage, window, min(p.reader_rate, fills_in_flight * c.conn_rate / per_byte)), front,
                (s, per_byte))

    def _next_event(self, run: _Run, members: list[list[_Group]], rates: list[float],
                    fills: list[tuple[int, float]]) -> float:
        """Seconds to the next event: a flow reaching the end of its stretch, a reader catching
        up with the front, nodes dying."""
        pending, sizes = run.pending, run.sizes
        dt = math.inf
        front_rate = {fl[0]: r for fl, r in zip(fills, rates) if fl[1] > 0}
        for gs, r, (s, per_byte) in zip(members, rates, fills):
            if r > 0 and per_byte < 0:
                dt = min(dt, float(pending[s].sum()) / r)
            elif r > 0:
                dt = min(dt, (1 - gs[0].q) * sizes[s] / r)
                fr = front_rate.get(s)
                if fr is not None and len(gs) == 1 and r > fr and gs[0].stretch == s:
                    lead = max(g.q for g in run.groups if g.done is None and g.stretch == s)
                    if gs[0].q < lead - EPS:
                        dt = min(dt, (lead - gs[0].q) * sizes[s] / (r - fr))
        if run.kill_at is not None and run.deaths_at is None:
            for gs, r in zip(members, rates):
                if r > 0 and gs:
                    dt = min(dt, max(0.0, (run.kill_at * run.total - self._position(gs[0], sizes)) / r))
        if not math.isfinite(dt):
            raise RuntimeError("simulation stalled: no flow can move (a link of zero capacity?)")
        return dt

    def _move(self, run: _Run, dt: float, members: list[list[_Group]], rates: list[float],
              fills: list[tuple[int, float]]) -> None:
        """Every flow moves `dt` seconds at its rate: readers on, node egress, fills from the origin."""
        for gs, r, (s, per_byte) in zip(members, rates, fills):
            moved = r * dt
            for g in gs:
                if not run.direct:
                    run.egress += g.readers.sum() * run.served[s] / run.sizes[s] * moved
                g.q = min(1.0, g.q + moved / run.sizes[s])
            if per_byte != 0:
                filled = min(float(run.pending[s].sum()), moved if per_byte < 0 else per_byte * moved)
                run.origin += filled
                need = float(run.pending[s].sum())
                run.pending[s] *= (1 - filled / need) if need > 0 else 0.0
            if run.direct:
                run.origin += moved * gs[0].readers.sum()

    def _end_stretches(self, run: _Run) -> None:
        """Groups at the end of a stretch go on to the next (a stretch whose fills are all done
        is cached); a group past the last stretch is done."""
        for g in run.groups:
            if g.done is None and g.q >= 1 - EPS:
                if not run.direct and run.pending[g.stretch].sum() <= EPS * run.sizes[g.stretch]:
                    a, b = self.bounds[g.stretch]
                    self.cached[a:b] = True
                    run.pending[g.stretch][:] = 0.0
                g.stretch, g.q = g.stretch + 1, 0.0
                if g.stretch == len(run.sizes):
                    g.done = run.t + self.params.setup_s

    def _kill_when_due(self, run: _Run) -> None:
        """The nodes die once the readers' front has read `kill_at` of the model."""
        if run.kill_at is not None and run.deaths_at is None and \
                max((self._position(g, run.sizes) for g in run.groups if g.done is None), default=run.total) \
                >= run.kill_at * run.total * (1 - EPS):
            run.deaths_at = run.t
            self._kill(run.pending)
            run.served, run.sizes = self._stretch_views()

    def _position(self, g: _Group, sizes: list[float]) -> float:
        return sum(sizes[:g.stretch]) + g.q * (sizes[g.stretch] if g.stretch < len(sizes) else 0)

    @staticmethod
    def _catch_up(groups: list[_Group]) -> None:
        """A reader that reached the front (within rounding) joins it."""
        by: dict[int, list[_Group]] = {}
        for g in groups:
            if g.done is None:
                by.setdefault(g.stretch, []).append(g)
        for gs in by.values():
            lead = max(g.q for g in gs)
            for g in gs:
                if lead - g.q < 1e-7:
                    g.q = lead

    def cold(self) -> PhaseResult:
        """Every reader starts at once on an empty cache; `fail` nodes die at `fail_at`."""
        kill = self.params.fail and self.params.fail_at < 1
        return self._load(False, self.params.fail_at if kill else None)

    def warm(self) -> PhaseResult:
        """Every reader starts at once on what the cold load left (after `fail` nodes died)."""
        if self.params.fail and not self.dead:
            self._kill([np.zeros(len(self.node_host)) for _ in self.bounds])
        return self._load(False, None)

    def prewarm(self) -> PhaseResult:
        """`cachenode warm` before anyone reads: every owner fills its own blocks, a few at a
        time, as background traffic paced by the node's governor beside the jobs' traffic.
        Leaves the cache as it found it (a separate scenario)."""
        p, c = self.params, self.cluster
        pending = np.bincount(self.placement.owner, weights=self.placement.sizes * ~self.cached,
                              minlength=len(self.node_host))
        demand = p.warm_concurrency * c.conn_rate
        caps = []
        for n, h in enumerate(self.node_host):
            link = c.hosts[h].nic_in
            caps.append(min(demand, background_rate(link, p.busy * link, demand)) if math.isfinite(link) else demand)
        t, origin, steps = 0.0, 0.0, 0
        while pending.sum() > EPS * self.placement.sizes.sum():
            steps += 1
            nodes = np.flatnonzero(pending > EPS * p.block_size)
            flows = [Flow({"origin": 1.0, f"in:{self.node_host[n]}": 1.0}, p.warm_concurrency, caps[n])
                     for n in nodes]
            rates = np.array(fair_rates(flows, self.capacity))
            dt = float(np.min(pending[nodes] / rates))
            moved = np.minimum(pending[nodes], rates * dt)
            pending[nodes] -= moved
            pending[pending <= EPS * p.block_size] = 0.0
            origin += float(moved.sum())
            t += dt
        return PhaseResult(t, [t], origin, np.zeros(len(self.node_host)), steps)

    def blob_direct(self) -> PhaseResult:
        """Every reader downloads the blob itself (the SDK, `sdk_concurrency` connections)."""
        return self._load(True, None)
