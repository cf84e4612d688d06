"""`cachenode` command line: run the daemon, and small admin commands."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import sys

import click

from .blocks import DEFAULT_BLOCK_SIZE, check_block_size
from .node.config import NodeConfig
from .errors import CacheError
from .env import read_env, resolve_token
from .credentials import AzureCredentials
from .units import format_size, parse_size


class Size(click.ParamType):
    """A click type for human sizes ("4GiB")."""

    name = "size"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Group(click.Group):
    """Our own errors end the command with their message, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CacheError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """cachenode: a peer-to-peer cluster cache for model checkpoints in blob storage.

    Run `cachenode serve` on every machine; loaders call cachenode.open(url).
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The Azure SDK logs every HTTP request and response at INFO.
    logging.getLogger("azure").setLevel(max(logging.WARNING, logging.getLogger().level))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Binding beyond loopback requires a cluster token.")
@click.option("--port", default=8470, show_default=True, type=int, help="Port; 0 picks a free one.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Disk tier directory [env CACHENODE_CACHE_DIR; default ~/.cache/cachenode].")
@click.option("--memory", "memory_bytes", default="2GiB", show_default=True, type=Size(),
              help="Memory tier budget.")
@click.option("--disk", "disk_bytes", default="50GiB", show_default=True, type=Size(),
              help="Disk tier budget.")
@click.option("--block-size", default=str(DEFAULT_BLOCK_SIZE // 2**20) + "MiB", show_default=True,
              type=Size(), help="Block size; every node and loader of a cluster uses the node's.")
@click.option("--allow", multiple=True, metavar="ACCOUNT/CONTAINER",
              help="Sources this node serves: account/container, account/*, or file:///dir. "
                   "Repeatable. Default: every container of the configured account, no local files.")
@click.option("--token", help="Cluster token clients must send [env CACHENODE_TOKEN].")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Read the cluster token from a file [env CACHENODE_TOKEN_FILE].")
@click.option("--node-token", help="Secret for node-to-node (forwarded) requests; give it to nodes only "
              "[env CACHENODE_NODE_TOKEN; default: derived from the cluster token].")
@click.option("--no-auth", is_flag=True, help="Serve without a token (loopback addresses only).")
@click.option("--connection-string", help="Azure Storage connection string [env AZURE_STORAGE_CONNECTION_STRING].")
@click.option("--account-name", help="Storage account [env AZURE_STORAGE_ACCOUNT_NAME].")
@click.option("--account-key", help="Account key [env AZURE_STORAGE_ACCOUNT_KEY].")
@click.option("--sas-token", help="SAS token [env AZURE_STORAGE_SAS_TOKEN].")
@click.option("--blob-endpoint", help="Blob service URL, if not https://<account>.blob.core.windows.net.")
@click.option("--origin-retries", default=4, show_default=True, type=click.IntRange(0, 20),
              help="Retries (with exponential backoff) on origin 5xx, throttling and connection errors.")
@click.option("--stale-stat", default=600.0, show_default=True, type=click.FloatRange(0, 86400),
              help="While the origin is unreachable, answer a file's stat from memory if at most this "
                   "many seconds old, so cached blocks stay readable through a short outage (0: off).")
@click.option("--origin-timeout", default=8.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds one origin call (retries included) may take before the request fails "
                   "naming the origin; keep it below the loaders' peer timeout (10 s).")
@click.option("--peers", multiple=True, metavar="URL[,URL...]",
              help="Cluster members: http://host:port or ID=http://host:port, comma-separated or repeated.")
@click.option("--peers-file", type=click.Path(dir_okay=False),
              help="File with one member per line; re-read when it changes.")
@click.option("--peers-dns", metavar="NAME:PORT",
              help="DNS name whose A/AAAA records are the members (Kubernetes headless Service); "
                   "re-resolved every few seconds.")
@click.option("--member-id", help="This node's stable id in the cluster [default: host:port it is reached at].")
@click.option("--advertise-url", help="URL other members use for this node [default: the listen address].")
@click.option("--ucx", is_flag=True,
              help="Also serve blocks over UCX (RDMA/InfiniBand, shared memory; pip install cachenode[ucx]). "
                   "UCX_TLS, UCX_NET_DEVICES etc. pass through to UCX.")
@click.option("--max-egress", metavar="RATE", help="Cap for all cache traffic, e.g. 10Gbit or 1GB/s.")
@click.option("--link-speed", metavar="RATE",
              help="NIC speed (e.g. 100Gbit): turns on idle mode, where background traffic (warming "
                   "in, background reads out) uses only what the other traffic on the link leaves "
                   "free, each direction on its own.")
@click.option("--idle-iface", help="NIC whose byte counters idle mode watches [default: busiest non-loopback].")
@click.option("--idle-headroom", default=0.1, show_default=True, type=click.FloatRange(0, 0.9),
              help="Fraction of the link background traffic never uses.")
@click.option("--idle-direction", hidden=True, type=click.Choice(["rx", "tx"]),
              help="Ignored (both directions are governed); kept so older command lines still start.")
@click.option("--peer-timeout", default=10.0, show_default=True, type=float,
              help="Seconds without progress before a peer transfer is abandoned for the next candidate.")
@click.option("--max-connections", default=512, show_default=True, type=click.IntRange(1, 65535),
              help="Open HTTP connections at most (lowered to fit the descriptor limit); when full, the "
                   "longest-silent connection without a request in progress is closed for a new one.")
@click.option("--idle-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a connection may stay without a complete request (new or kept alive).")
def serve(host, port, cache_dir, memory_bytes, disk_bytes, block_size, allow, token, token_file,
          node_token, no_auth, connection_string, account_name, account_key, sas_token, blob_endpoint,
          origin_retries, stale_stat, origin_timeout, peers, peers_file, peers_dns, member_id, advertise_url, ucx, max_egress,
          link_speed, idle_iface, idle_headroom, idle_direction, peer_timeout, max_connections,
          idle_timeout) -> None:
    """Run a cache node until SIGTERM or Ctrl-C.

    Without an account key, SAS or connection string, the node uses DefaultAzureCredential
    (managed identity, workload identity, az login).
    """
    env = read_env()
    try:
        check_block_size(block_size)
        token = resolve_token(token or env.token, token_file or env.token_file)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not token:
        if not no_auth:
            raise click.UsageError("no cluster token: pass --token, --token-file, set CACHENODE_TOKEN, "
                                   "or --no-auth (loopback only)")
        if not _is_loopback(host):
            raise click.UsageError(f"--no-auth refused on non-loopback address {host}: set a cluster token")
    azure = AzureCredentials(
        connection_string=connection_string or env.azure.connection_string,
        account_name=account_name or env.azure.account_name,
        account_key=account_key or env.azure.account_key,
        sas_token=sas_token or env.azure.sas_token,
        endpoint=blob_endpoint or env.azure.endpoint,
    )
    for entry in allow:
        if not entry.startswith("file://") and entry.count("/") != 1:
            raise click.BadParameter(f"{entry!r}: use account/container, account/* or file:///dir",
                                     param_hint="--allow")
    config = NodeConfig(
        host=host, port=port,
        cache_dir=os.path.abspath(os.path.expanduser(cache_dir or env.cache_dir or NodeConfig.cache_dir)),
        memory_bytes=memory_bytes, disk_bytes=disk_bytes, block_size=block_size, allow=tuple(allow),
        token=token, node_token=node_token or env.node_token, azure=azure, origin_retries=origin_retries, origin_timeout=origin_timeout,
        stale_stat=stale_stat,
        peers=_split_peers(peers), peers_file=peers_file, peers_dns=peers_dns, member_id=member_id,
        advertise_url=advertise_url, peer_timeout=peer_timeout, ucx=ucx,
        max_connections=max_connections, idle_timeout=idle_timeout,
        qos=_qos(max_egress, link_speed, idle_iface, idle_headroom, idle_direction),
    )
    if ucx:
        from .transport.registry import default_registry

        if not default_registry().available("ucx"):
            raise click.UsageError("--ucx needs the ucxx package: pip install 'cachenode[ucx]'")
    from .node.daemon import CannotListen, serve_forever

    click.echo(f"cachenode: memory {format_size(memory_bytes)}, disk {format_size(disk_bytes)}, "
               f"block {format_size(block_size)}, account {azure.account or '-'}", err=True)
    try:
        asyncio.run(serve_forever(config, announce=lambda s: click.echo(s, nl=True) or sys.stdout.flush()))
    except CannotListen as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("url")
@click.option("--node", "nodes", multiple=True, help="Node URL [env CACHENODE_NODES].")
@click.option("--token", help="Cluster token [env CACHENODE_TOKEN].")
def stat(url, nodes, token) -> None:
    """Print size, ETag and block size of a checkpoint file, as a node sees it."""
    from .client.api import Client

    with Client(nodes=nodes or None, token=token) as c:
        info = c.stat(url)
    click.echo(json.dumps(info, indent=2))


@main.command()
@click.argument("url")
@click.option("--node", "nodes", multiple=True, help="Node URL [env CACHENODE_NODES].")
@click.option("--token", help="Cluster token [env CACHENODE_TOKEN].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def warm(url, nodes, token, as_json) -> None:
    """Fill the cluster with a file, or every file under a prefix (ending in /).

    Each block goes to its owner, which reads it from blob storage once; owners fill in parallel.
    """
    from tqdm import tqdm

    from .client.api import Client

    with Client(nodes=nodes or None, token=token) as c, \
            tqdm(desc="warm", unit="B", unit_scale=True, unit_divisor=1024, disable=as_json) as bar:
        summary = c.warm(url, progress=bar.update)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return
    click.echo(f"warmed {summary.objects} object(s): {summary.blocks} blocks, "
               f"{format_size(summary.bytes)} in {summary.seconds:.2f}s "
               f"({summary.already_cached} blocks were already cached)")
    for mid, n in sorted(summary.per_member.items()):
        click.echo(f"  {mid}: {n} blocks")


@main.command()
@click.option("--node", "nodes", multiple=True, help="Node URL [env CACHENODE_NODES].")
@click.option("--token", help="Cluster token [env CACHENODE_TOKEN].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(nodes, token, as_json) -> None:
    """Members, their health, tier usage, hit ratio and origin bytes."""
    from .client.api import Client
    from .status import collect, render

    with Client(nodes=nodes or None, token=token) as c:
        members = c.members()
        token = c.config.token
    rows = collect(members, token)
    click.echo(json.dumps(rows, indent=2) if as_json else render(rows))


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--source", "sources", multiple=True, required=True, metavar="URL",
              help="Container or prefix to show, e.g. az://models/llama (repeatable). Appears as "
                   "MOUNTPOINT/<container>/<prefix>/...")
@click.option("--node", "nodes", multiple=True, help="Node URL [env CACHENODE_NODES].")
@click.option("--token", help="Cluster token [env CACHENODE_TOKEN].")
@click.option("--listing-ttl", default=10.0, show_default=True, type=click.FloatRange(0, 86400),
              help="Seconds a listing (names, sizes) is cached before the nodes are asked again.")
@click.option("--readahead", default="32MiB", show_default=True, type=Size(),
              help="Kernel readahead for the mount: how far ahead of a reader blocks are fetched.")
@click.option("--allow-other", is_flag=True,
              help="Let other users read the mount (non-root: needs user_allow_other in /etc/fuse.conf).")
@click.option("--daemon", is_flag=True, help="Mount, then return and serve in the background.")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="With --daemon: where the background process logs [default: MOUNTPOINT's parent/.cachenode-mount.log].")
def mount(mountpoint, sources, nodes, token, listing_ttl, readahead, allow_other, daemon, log_file) -> None:
    """Mount the cluster cache read-only at MOUNTPOINT: blobs are files, prefixes directories.

    Any program that reads a local path (from_pretrained, vllm serve, safe_open, cat) then reads
    through the cache; a file is pinned to its ETag when opened. Runs in the foreground until
    SIGTERM/Ctrl-C (then unmounts) unless --daemon. A mount whose process was killed is stale:
    `cachenode unmount MOUNTPOINT` cleans it up.
    """
    from .client.config import ClientConfig
    from .mount.run import MountConfig, check_mountpoint, serve as serve_mount

    config = MountConfig(mountpoint=mountpoint, sources=tuple(sources), listing_ttl=listing_ttl,
                         readahead=readahead, allow_other=allow_other)
    client_config = ClientConfig.resolve(nodes or None, token)
    if not client_config.nodes:
        raise click.UsageError("no cache node: pass --node URL or set CACHENODE_NODES")
    if daemon:
        check_mountpoint(mountpoint)
        _daemonize(mountpoint, log_file)
        return

    def ready(mp: str) -> None:
        click.echo(f"cachenode: mounted {', '.join(sources)} at {mp} (Ctrl-C or SIGTERM unmounts)", err=True)

    asyncio.run(serve_mount(config, client_config, ready=ready))


def _daemonize(mountpoint: str, log_file: str | None) -> None:
    """Run this same command without --daemon in a new session; return once it has mounted."""
    import subprocess
    import time

    from .mount.run import mount_at

    args = [a for a in sys.argv[1:] if a != "--daemon"]
    log_file = log_file or os.path.join(os.path.dirname(os.path.abspath(mountpoint)), ".cachenode-mount.log")
    with open(log_file, "ab") as log:
        start = log.seek(0, os.SEEK_END)  # this mount's own lines begin here
        child = subprocess.Popen([sys.executable, "-m", "cachenode", *args], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while mount_at(mountpoint) is None:
        if child.poll() is not None or time.monotonic() > deadline:
            with open(log_file, "rb") as f:
                f.seek(start)
                tail = f.read().decode(errors="replace")[-2000:]
            raise click.ClickException(f"the mount did not come up (see {log_file}):\n{tail}")
        time.sleep(0.1)
    click.echo(f"cachenode: mounted at {os.path.abspath(mountpoint)} by process {child.pid} (log {log_file})")


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--lazy", is_flag=True, help="Detach now even if busy; it goes away when the last user closes it.")
def unmount(mountpoint, lazy) -> None:
    """Unmount a cachenode mount, also a stale one left by a killed mount process (fusermount3 -u)."""
    from .mount.run import unmount as do_unmount

    do_unmount(mountpoint, lazy=lazy)


def _register_deploy() -> None:
    # Lazy: the deploy group's YAML and templates are loaded only when it runs.
    from .deploy.cli import deploy

    main.add_command(deploy)


_register_deploy()


def _qos(max_egress, link_speed, iface, headroom, direction=None):
    from .node.qos import QosConfig, read_counters
    from .units import parse_rate

    if direction:
        click.echo(f"warning: --idle-direction {direction} is ignored: idle mode now paces both "
                   "directions (warm fills in, background reads out)", err=True)
    try:
        cfg = QosConfig(max_rate=parse_rate(max_egress) if max_egress else None,
                        link_speed=parse_rate(link_speed) if link_speed else None,
                        iface=iface, headroom=headroom)
        if iface:
            read_counters(iface)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return cfg


def _split_peers(values: tuple[str, ...]) -> tuple[str, ...]:
    from .node.membership import parse_member

    out = tuple(p.strip() for v in values for p in v.split(",") if p.strip())
    for p in out:
        try:
            parse_member(p)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--peers") from None
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
