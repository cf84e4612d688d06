"""`cachebench qos`: does background warming stay out of the way of other traffic on a link?

A node in its own network namespace sits behind a veth link shaped with tc tbf; its origin
(Azurite behind a proxy) is on the far side of that link, so warming pulls across it. A bulk
TCP flow across the same link (iperf3) plays the GPU job's traffic. Needs root and iperf3.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from cachenode.client.admin import scrape
from cachenode.testing.azurite import Azurite, connection_string
from cachenode.testing.netns import VethHost
from cachenode.testing.node import NodeProcess
from cachenode.testing.ports import free_port
from cachenode.testing.relay import Relay

from .rounds import median_range


def bulk_flow(server_at: tuple[str, ...], server_ip: str, seconds: float,
              client_at: tuple[str, ...] = ()) -> tuple[float, list[float]]:
    """An iperf3 TCP flow to `server_ip`, the server run with prefix `server_at` (a namespace),
    the client with `client_at` (default: the root namespace); returns (bytes/s received,
    per-second rates). iperf3 is C in its own processes, so the flow's rate is the link's
    share, not what a Python loop could get of 2 busy cores."""
    port = free_port()
    server = subprocess.Popen([*server_at, "iperf3", "-s", "-1", "--forceflush",
                               "-B", server_ip, "-p", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:  # ready once it says so (a probe connection would end it)
            if "listening" in line:
                break
        else:
            raise RuntimeError(f"iperf3 server did not start (exit {server.wait()})")
        p = subprocess.run([*client_at, "iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J"],
                           capture_output=True, text=True, timeout=seconds + 30)
        r = json.loads(p.stdout)
        if "error" in r:
            raise RuntimeError(f"iperf3: {r['error']}")
        per_second = [iv["sum"]["bits_per_second"] / 8 for iv in r["intervals"]]
        return r["end"]["sum_received"]["bits_per_second"] / 8, per_second
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def too_fast(what: str) -> str:
    return (f"the {what} ended before the competing flow did, so the idle link was not measured: "
            "the link is too fast for the blob; use a slower --link")


def _round(host: VethHost, node, token: str, url: str, link_bytes_per_s: float,
           flow_seconds: float) -> dict:
    """One measurement: the flow alone, the flow while a warm of a new blob runs, then the
    warm alone once the flow stops."""
    import cachenode

    alone, alone_ps = bulk_flow(host.exec_prefix(), host.ns_ip, flow_seconds)
    warm_done: list[float] = []
    t_warm = time.monotonic()
    warm = threading.Thread(target=lambda: (cachenode.warm(url, nodes=[node.url], token=token),
                                            warm_done.append(time.monotonic())))
    warm.start()
    time.sleep(1.0)  # the warm has the link to itself first
    shared, shared_ps = bulk_flow(host.exec_prefix(), host.ns_ip, flow_seconds)
    t1 = time.monotonic()
    b1 = scrape(node.url, token)["cachenode_origin_bytes_total"]
    warm.join(600)
    b2 = scrape(node.url, token)["cachenode_origin_bytes_total"]
    if warm_done and warm_done[0] <= t1:
        raise RuntimeError(too_fast("warm"))
    idle_rate = (b2 - b1) / (warm_done[0] - t1) if warm_done else 0.0
    return {"foreground_alone_gb_per_s": alone / 1e9,
            "foreground_with_cache_gb_per_s": shared / 1e9,
            "cache_idle_gb_per_s": idle_rate / 1e9,
            "foreground_kept": shared / alone,
            "cache_idle_link_share": idle_rate / link_bytes_per_s,
            "warm_seconds": (warm_done[0] - t_warm) if warm_done else None,
            # per-second rates of the bulk flow (iperf3 intervals): the measurement's own spread
            "foreground_alone_per_s_mb": [round(x / 1e6, 2) for x in alone_ps],
            "foreground_with_cache_per_s_mb": [round(x / 1e6, 2) for x in shared_ps]}


SUMMARY_KEYS = ("foreground_alone_gb_per_s", "foreground_with_cache_gb_per_s", "cache_idle_gb_per_s",
                "foreground_kept", "cache_idle_link_share", "warm_seconds", "read_seconds")


def run_qos(workdir: str | Path, link: str = "100mbit", link_bytes_per_s: float = 12.5e6,
            blob_mib: int = 128, headroom: float = 0.05, flow_seconds: float = 8.0,
            repeat: int = 3, progress=None) -> dict:
    """`repeat` rounds on one link and node, each warming a blob of its own; the top-level
    figures are the medians, `ranges` their min and max, `runs` every round."""
    if shutil.which("iperf3") is None:
        raise RuntimeError("cachebench qos needs iperf3 for the competing flow (apt-get install iperf3)")
    base = Path(workdir)
    runs = []
    with ExitStack() as stack:
        azurite = stack.enter_context(Azurite(base / "azurite"))
        host = stack.enter_context(VethHost("qos"))
        host.shape(link)
        # a relay on the link's root address to Azurite on 127.0.0.1 (which stays private)
        proxy_port = stack.enter_context(Relay(host.root_ip, "127.0.0.1", azurite.port)).port
        token = secrets.token_urlsafe(16)
        node = stack.enter_context(NodeProcess(
            base / "node", token=token, conn_str=connection_string(proxy_port, host=host.root_ip),
            wrap=host.exec_prefix(), port=free_port(),
            args=("--host", host.ns_ip, "--block-size", "1MiB", "--link-speed", link.replace("mbit", "Mbit"),
                  "--idle-iface", host.ns_if, "--idle-headroom", str(headroom))))
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
            svc.create_container("qos")
            for i in range(repeat):  # uploaded before any round: not through the shaped link
                svc.get_blob_client("qos", f"w{i}.bin").upload_blob(bytes(blob_mib << 20))
        for i in range(repeat):
            runs.append(_round(host, node, token, f"{azurite.endpoint}/qos/w{i}.bin", link_bytes_per_s,
                               flow_seconds))
            if progress:
                progress(i, runs[-1])
        m = scrape(node.url, token)
    return summarize(runs, link_bytes_per_s, repeat, m)


def summarize(runs: list[dict], link_bytes_per_s: float, repeat: int, metrics: dict) -> dict:
    """The rounds' medians at the top level, `ranges` their min and max, `runs` every round."""
    out = {"link_gbit": link_bytes_per_s * 8 / 1e9, "repeat": repeat,
           "throttled_seconds": metrics.get("cachenode_qos_throttled_seconds", 0.0)}
    out["ranges"] = {}
    for k in SUMMARY_KEYS:
        values = [r[k] for r in runs if r.get(k) is not None]
        if not values and not all(k in r for r in runs):
            continue  # the other scenario's figure
        out[k], lo, hi = median_range(values) if values else (None, None, None)
        if k in ("foreground_alone_gb_per_s", "foreground_kept", "cache_idle_link_share"):
            out["ranges"][k] = [lo, hi]
    out["runs"] = runs
    return out


def command(link: str, transport: str | None, repeat: int, workdir: str | None, json_path: str | None) -> None:
    """`cachebench qos` (root): a line per round, then the medians against the targets."""
    import click

    from cachenode.units import parse_rate

    from .output import write_results
    from .qos_read import run_qos_read

    if os.geteuid() != 0:
        raise click.ClickException("cachebench qos creates a network namespace and needs root")
    try:
        rate = parse_rate(link.lower().replace("mbit", "Mbit").replace("gbit", "Gbit"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--link") from None

    what = f"{transport} read" if transport else "warm"

    def progress(i, r):
        click.echo(f"round {i + 1}/{repeat}: flow alone {r['foreground_alone_gb_per_s'] * 1e3:5.1f} MB/s, "
                   f"during {what} {r['foreground_with_cache_gb_per_s'] * 1e3:5.1f} MB/s "
                   f"({100 * r['foreground_kept']:.0f}% kept), {what} after "
                   f"{r['cache_idle_gb_per_s'] * 1e3:5.1f} MB/s ({100 * r['cache_idle_link_share']:.0f}% of the link)")

    with tempfile.TemporaryDirectory(prefix="cachebench-qos-") as tmp:
        try:
            if transport:
                r = run_qos_read(workdir or tmp, transport=transport, link=link, link_bytes_per_s=rate,
                                 repeat=repeat, progress=progress)
            else:
                r = run_qos(workdir or tmp, link=link, link_bytes_per_s=rate, repeat=repeat, progress=progress)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    kept, share = r["ranges"]["foreground_kept"], r["ranges"]["cache_idle_link_share"]
    click.echo(f"link {r['link_gbit']:.2f} Gbit/s, {repeat} rounds (median, min-max)")
    alone = r["ranges"]["foreground_alone_gb_per_s"]
    click.echo(f"{'bulk flow alone':<30s}{r['foreground_alone_gb_per_s'] * 1e3:8.1f} MB/s "
               f"({alone[0] * 1e3:.1f}-{alone[1] * 1e3:.1f}; the link's {r['link_gbit'] * 125:.1f} less framing)")
    click.echo(f"{'bulk flow beside ' + what:<30s}{r['foreground_with_cache_gb_per_s'] * 1e3:8.1f} MB/s "
               f"({100 * r['foreground_kept']:.0f}% kept, {100 * kept[0]:.0f}-{100 * kept[1]:.0f}%; target >= 90%)")
    click.echo(f"{what + ' once the flow stops':<30s}{r['cache_idle_gb_per_s'] * 1e3:8.1f} MB/s "
               f"({100 * r['cache_idle_link_share']:.0f}% of the link, {100 * share[0]:.0f}-{100 * share[1]:.0f}%; "
               "target >= 80%)")
    write_results(r, json_path, None, "")


if __name__ == "__main__":
    print(json.dumps(run_qos(tempfile.mkdtemp()), indent=2))
