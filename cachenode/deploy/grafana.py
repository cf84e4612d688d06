"""The Grafana dashboard for node metrics: the checked-in JSON, and the PromQL it queries."""

from __future__ import annotations

import json
import re
from importlib import resources

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# PromQL words that are not metric names (functions, aggregations, keywords) as the dashboard uses them.
_PROMQL_WORDS = {"sum", "rate", "by", "clamp_min", "label_values", "instance", "tier", "result", "class",
                 "kind", "without", "on", "ignoring", "and", "or", "unless", "max", "min", "avg", "irate",
                 "increase", "deriv", "namespace", "op", "direction"}


def dashboard() -> dict:
    return json.loads(resources.files(__package__).joinpath("grafana-dashboard.json").read_text())


def render(datasource_uid: str = "prometheus") -> str:
    """Dashboard JSON with its data-source variable defaulting to `datasource_uid`."""
    d = dashboard()
    for var in d["templating"]["list"]:
        if var["name"] == "datasource":
            var["current"] = {"text": datasource_uid, "value": datasource_uid}
    return json.dumps(d, indent=2)


def expressions(d: dict | None = None) -> list[str]:
    """Every PromQL expression in the dashboard (panel targets and variable queries)."""
    d = d or dashboard()
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in d["templating"]["list"] if v.get("definition")]
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside {...}, [...] and strings that are
    not PromQL words or Grafana variables."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\$\w+", "", bare)
    bare = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "", bare)
    return {w for w in _IDENT.findall(bare) if w not in _PROMQL_WORDS}
