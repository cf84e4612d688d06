"""`cachenode` command line: run the daemon, and small admin commands."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import sys

import click

from .blocks import check_block_size
from .client.config import ClientConfig
from .client.mount.config import MountConfig
from .credentials import AzureCredentials
from .env import read_env, resolve_token
from .errors import CacheError
from .node.config import NodeConfig
from .objects import check_namespace
from .node.qos import QosConfig, read_counters
from .options import config_options, config_values
from .units import format_size


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


# Flags that are not config: they decide the token, or are kept for old command lines.
_TOKEN_FILE = click.option("--token-file", type=click.Path(dir_okay=False),
                           help="Read the cluster token from a file [env CACHENODE_TOKEN_FILE].")
_NO_AUTH = click.option("--no-auth", is_flag=True, help="Serve without a token (loopback addresses only).")
_IDLE_DIRECTION = click.option("--idle-direction", hidden=True, type=click.Choice(["rx", "tx"]),
                               help="Ignored (both directions are governed); kept so older command lines still start.")


@main.command()
@config_options(NodeConfig, after={"token": [_TOKEN_FILE], "node_token": [_NO_AUTH], "headroom": [_IDLE_DIRECTION]})
def serve(token_file, no_auth, idle_direction, **params) -> None:
    """Run a cache node until SIGTERM or Ctrl-C.

    Without an account key, SAS or connection string, the node uses DefaultAzureCredential
    (managed identity, workload identity, az login).
    """
    env = read_env()
    host, block_size = params["host"], params["block_size"]
    try:
        check_block_size(block_size)
        token = resolve_token(params["token"] or env.token, token_file or env.token_file)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not token:
        if not no_auth:
            raise click.UsageError("no cluster token: pass --token, --token-file, set CACHENODE_TOKEN, "
                                   "or --no-auth (loopback only)")
        if not _is_loopback(host):
            raise click.UsageError(f"--no-auth refused on non-loopback address {host}: set a cluster token")
    azure = AzureCredentials(**{name: value or getattr(env.azure, name)
                                for name, value in config_values(AzureCredentials, params).items()})
    for entry in params["allow"]:
        if not entry.startswith("file://") and entry.count("/") != 1:
            raise click.BadParameter(f"{entry!r}: use account/container, account/* or file:///dir",
                                     param_hint="--allow")
    config = NodeConfig(**{
        **config_values(NodeConfig, params),
        "cache_dir": os.path.abspath(os.path.expanduser(params["cache_dir"] or env.cache_dir or NodeConfig.cache_dir)),
        "token": token, "node_token": params["node_token"] or env.node_token, "azure": azure,
        "peers": _split_peers(params["peers"]),
        "qos": _qos(config_values(QosConfig, params), idle_direction),
    })
    try:  # objects: namespace names and writer credentials, refused here naming the entry
        for name in config.namespaces:
            check_namespace(name)
        unknown = sorted(set(config.writers()) - set(config.namespaces))
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--namespace / --writer-token(-file)") from None
    if unknown:
        raise click.BadParameter(f"writer credential for {', '.join(unknown)}: not a --namespace of this node",
                                 param_hint="--writer-token")
    if config.ucx:
        from .transport.registry import default_registry

        if not default_registry().available("ucx"):
            raise click.UsageError("--ucx needs the ucxx package: pip install 'cachenode[ucx]'")
    from .node.daemon import CannotListen, serve_forever

    click.echo(f"cachenode: memory {format_size(config.memory_bytes)}, disk {format_size(config.disk_bytes)}, "
               f"block {format_size(block_size)}, account {azure.account or '-'}", err=True)
    try:
        asyncio.run(serve_forever(config, announce=lambda s: click.echo(s, nl=True) or sys.stdout.flush()))
    except CannotListen as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("url")
@config_options(ClientConfig)
def stat(url, nodes, token) -> None:
    """Print size, ETag and block size of a checkpoint file, as a node sees it."""
    from .client.api import Client

    with Client(nodes=nodes or None, token=token) as c:
        info = c.stat(url)
    click.echo(json.dumps(info, indent=2))


@main.command()
@click.argument("url")
@config_options(ClientConfig)
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
@config_options(ClientConfig)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(nodes, token, as_json) -> None:
    """Members, their health, tier usage, hit ratio and origin bytes."""
    from .client.api import Client
    from .client.admin import collect, render

    with Client(nodes=nodes or None, token=token) as c:
        members = c.members()
        token = c.config.token
    rows = collect(members, token)
    click.echo(json.dumps(rows, indent=2) if as_json else render(rows))


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@config_options(MountConfig, after={"sources": [config_options(ClientConfig)]})
@click.option("--daemon", is_flag=True, help="Mount, then return and serve in the background.")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="With --daemon: where the background process logs [default: MOUNTPOINT's parent/.cachenode-mount.log].")
def mount(mountpoint, nodes, token, daemon, log_file, **params) -> None:
    """Mount the cluster cache read-only at MOUNTPOINT: blobs are files, prefixes directories.

    Any program that reads a local path (from_pretrained, vllm serve, safe_open, cat) then reads
    through the cache; a file is pinned to its ETag when opened. Runs in the foreground until
    SIGTERM/Ctrl-C (then unmounts) unless --daemon. A mount whose process was killed is stale:
    `cachenode unmount MOUNTPOINT` cleans it up.
    """
    from .client.mount.run import check_mountpoint, serve as serve_mount

    config = MountConfig(mountpoint=mountpoint, **config_values(MountConfig, params))
    client_config = ClientConfig.resolve(nodes or None, token)
    if not client_config.nodes:
        raise click.UsageError("no cache node: pass --node URL or set CACHENODE_NODES")
    if daemon:
        check_mountpoint(mountpoint)
        _daemonize(mountpoint, log_file)
        return

    def ready(mp: str) -> None:
        click.echo(f"cachenode: mounted {', '.join(config.sources)} at {mp} (Ctrl-C or SIGTERM unmounts)", err=True)

    asyncio.run(serve_mount(config, client_config, ready=ready))


def _daemonize(mountpoint: str, log_file: str | None) -> None:
    """Run this same command without --daemon in a new session; return once it has mounted."""
    import subprocess
    import time

    from .client.mount.run import mount_at

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
    from .client.mount.run import unmount as do_unmount

    do_unmount(mountpoint, lazy=lazy)


def _register_deploy() -> None:
    # Lazy: the deploy group's YAML and templates are loaded only when it runs.
    from .deploy.cli import deploy

    main.add_command(deploy)


_register_deploy()


def _qos(values: dict, direction: str | None) -> QosConfig:
    if direction:
        click.echo(f"warning: --idle-direction {direction} is ignored: idle mode now paces both "
                   "directions (warm fills in, background reads out)", err=True)
    try:
        if values["iface"]:
            read_counters(values["iface"])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return QosConfig(**values)


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
