"""Where a benchmark's results go: a JSON file and a plot, each only when asked for."""

from __future__ import annotations

import json

import click


def write_results(result: dict, json_path: str | None, plot_path: str | None, title: str) -> None:
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        click.echo(f"wrote {json_path}")
    if plot_path:
        from .plot import plot_scenarios

        plot_scenarios(result, plot_path, title)
        click.echo(f"wrote {plot_path}")
