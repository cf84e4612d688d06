"""`cachenode deploy`: print Kubernetes manifests or the Grafana dashboard to stdout."""

from __future__ import annotations

import click


@click.group()
def deploy() -> None:
    """Render deployment files (plain YAML / JSON on stdout; pipe to kubectl apply -f -)."""


@deploy.command()
@click.option("--values", "values_file", type=click.File("r"),
              help="YAML file with the values to change (see --show-values for all, with defaults).")
@click.option("--show-values", is_flag=True, help="Print the documented default values and exit.")
def kubernetes(values_file, show_values) -> None:
    """Manifests for a node DaemonSet, its headless Service, policies and optional warm Jobs."""
    from .kubernetes import ValuesError, default_values_text, render

    if show_values:
        click.echo(default_values_text(), nl=False)
        return
    try:
        click.echo(render(values_file.read() if values_file else None), nl=False)
    except ValuesError as exc:
        raise click.ClickException(f"{values_file.name if values_file else 'values'}: {exc}") from None


@deploy.command()
@click.option("--datasource", default="prometheus", show_default=True,
              help="UID of the Prometheus data source the panels query.")
def grafana(datasource) -> None:
    """The Grafana dashboard (JSON) for the metrics nodes export."""
    from .grafana import render

    click.echo(render(datasource))
