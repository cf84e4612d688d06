"""The quickstart job: Azurite + a local cluster, a generated checkpoint, loaded cold then warm."""

from __future__ import annotations

import json

import click

from cachenode.client.admin import scrape
from cachenode.units import format_size

from .loads import LoadResult, blob_sdk_tensors, cache_tensors, timed
from .table import byte_bar, print_table
from .testbed import CONTAINER, testbed

BLOB = "demo/model.safetensors"


def run_quickstart(size: int, block_size: str, workdir: str | None, keep: bool, n_nodes: int = 3) -> list[dict]:
    rows: list[dict] = []
    with testbed(workdir, "cachenode-quickstart-", keep=keep) as bed:
        azurite, token = bed.azurite, bed.token
        click.echo(f"workdir {bed.base}")
        click.echo(f"Azurite (Azure Blob emulator) on {azurite.endpoint}")
        ckpt, file_size = bed.checkpoint(size, BLOB, upload_label="upload to Azurite")
        ckpt.unlink()  # the blob is the only copy now
        click.echo(f"uploaded {format_size(file_size)} to {CONTAINER}/{BLOB}")
        cluster = bed.cluster(n_nodes, "--block-size", block_size, "--memory", "4GiB")
        click.echo(f"cachenode cluster of {n_nodes}: {' '.join(cluster.urls)}")
        url = bed.url(BLOB)

        def origin_bytes() -> float:
            return sum(scrape(u, token).get("cachenode_origin_bytes_total", 0.0) for u in cluster.urls)

        with byte_bar("blob direct (azure SDK)", file_size) as bar:
            direct = timed(lambda: blob_sdk_tensors(azurite.connection_string, CONTAINER, BLOB, 8,
                                                    on_bytes=bar.update), file_size)
        rows.append(_row("blob direct (azure-storage-blob)", direct, file_size, direct.digest))
        # cold: the first reader on an empty cluster; warm: another reader (its own client and
        # fresh memory) entering at another node, every block served by its owner.
        for name, entry in (("cache cold", 0), ("cache warm", 1 % n_nodes)):
            before = origin_bytes()
            with byte_bar(name, file_size) as bar:
                res = timed(lambda: cache_tensors(url, [cluster.urls[entry]], token, on_bytes=bar.update),
                            file_size)
            rows.append(_row(name, res, origin_bytes() - before, direct.digest))
    return rows


def _row(name: str, res: LoadResult, origin: float, reference: str) -> dict:
    return {"scenario": name, "seconds": res.seconds, "gb_per_s": res.gb_per_s,
            "origin_bytes": int(origin), "tensors": res.tensors, "verified": res.digest == reference}


def show(rows: list[dict], file_size: int | None = None) -> None:
    print_table(rows, [("scenario", "scenario", "{}"), ("seconds", "seconds", "{:.2f}"),
                       ("GB/s", "gb_per_s", "{:.2f}"), ("origin bytes", "origin_bytes", format_size),
                       ("tensors", "tensors", "{}"), ("verified", "verified", "{}")])


def command(size: int, block_size: str, n_nodes: int, workdir: str | None, keep: bool, json_path: str | None) -> None:
    """`cachebench quickstart`: the loads, their table and (if asked) JSON; fails if a load's bytes differ."""
    rows = run_quickstart(size, block_size, workdir, keep, n_nodes)
    click.echo()
    show(rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"scenarios": rows}, f, indent=2)
    if not all(r["verified"] for r in rows):
        raise click.ClickException("a load returned bytes that differ from the checkpoint")
