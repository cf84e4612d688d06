"""`cachebench`: load-time benchmarks of cachenode against the alternatives."""

from __future__ import annotations

import json

import click

from cachenode.cli import Size


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure how long a checkpoint takes to land in memory, cache vs blob storage.

    Everything runs on this machine: Azurite, node processes and a generated checkpoint.
    """


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Checkpoint size.")
@click.option("--block-size", default="8MiB", show_default=True, help="Node block size.")
@click.option("--nodes", "n_nodes", default=3, show_default=True, type=click.IntRange(1, 16),
              help="Cache nodes in the local cluster.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep files here instead of a temp dir.")
@click.option("--keep", is_flag=True, help="Keep the temp dir after the run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write results as JSON.")
def quickstart(size, block_size, n_nodes, workdir, keep, json_path) -> None:
    """Start Azurite and a local cluster, upload a generated checkpoint, load it cold then warm."""
    from .quickstart import run_quickstart, show

    rows = run_quickstart(size, block_size, workdir, keep, n_nodes)
    click.echo()
    show(rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"scenarios": rows}, f, indent=2)
    if not all(r["verified"] for r in rows):
        raise click.ClickException("a load returned bytes that differ from the checkpoint")


if __name__ == "__main__":
    main()
