"""`cachenode deploy`: manifests valid for Kubernetes, commands valid for our CLI, bad values named."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from cachenode.cli import main
from cachenode.deploy import grafana, kubernetes as k8s
from cachenode.units import parse_rate
from helpers import TOKEN

# The newest release kubernetes-validate ships schemas for, and the oldest AKS still supports.
K8S_VERSIONS = ("1.37.0", "1.33.0")

NON_DEFAULT = """
namespace: ml-cache
name: cn
image: {repository: registry.example/cachenode, tag: "0.1.0-ucx", pullSecrets: [regcred]}
port: 9470
hostNetwork: true
nodeSelector: {agentpool: gpu}
tolerations: []
priorityClassName: system-node-critical
ucx: {enabled: true, env: {UCX_TLS: "rc_x,tcp", UCX_NET_DEVICES: "mlx5_0:1"}}
cache: {hostPath: /mnt/nvme/cachenode, memory: 32GiB, disk: 2TiB, blockSize: 16MiB}
allow: [acct/models, other/*]
qos: {maxEgress: 25Gbit, linkSpeed: 200Gbit, idleIface: eth0}
peerTimeout: 5
logLevel: debug
extraArgs: [--origin-retries, "6"]
token: {secretName: cn-token, key: t, create: true, value: s3cret}
nodeToken: {secretName: cn-node-token}
azure:
  accountName: acct
  blobEndpoint: https://acct.blob.core.windows.net
  auth: workloadIdentity
  workloadIdentity: {clientId: 00000000-0000-0000-0000-000000000001, tenantId: tenant}
serviceAccount: {name: cn-nodes, annotations: {team: ml}}
resources: {requests: {cpu: "4", memory: 40Gi}, limits: {memory: 48Gi, rdma/ib: "1"}}
networkPolicy:
  loaderPodLabels: {role: inference}
  loaderNamespaceSelector: {matchLabels: {cachenode.io/loaders: "true"}}
  extraFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
metrics: {annotations: false, podMonitor: {enabled: true, labels: {release: prom}}}
warm: {urls: ["az://models/llama-3-70b/", "az://models/mistral/model.safetensors"]}
"""

CONN_STRING = """
azure: {auth: connectionString, connectionStringSecret: {name: blob, key: conn}}
podDisruptionBudget: {enabled: false}
networkPolicy: {enabled: false}
serviceAccount: {create: false}
createNamespace: false
"""


def docs_of(values: str | None) -> list[dict]:
    return k8s.manifests(k8s.load_values(values))


def kinds(docs: list[dict]) -> list[str]:
    return [d["kind"] for d in docs]


@pytest.mark.parametrize("values", [None, NON_DEFAULT, CONN_STRING], ids=["default", "non-default", "conn-string"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid_kubernetes(values, version):
    docs = list(yaml.safe_load_all(k8s.render(values)))
    assert docs == docs_of(values)  # the YAML says what the objects say
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD: kubernetes-validate has no schema for it; check the fields Prometheus reads.
            ep = doc["spec"]["podMetricsEndpoints"][0]
            assert ep["port"] == "http" and ep["path"] == "/metrics"
            assert ep["authorization"]["credentials"]["name"] == doc_named(docs, "Secret")["metadata"]["name"]
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def doc_named(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_manifest_lists():
    assert kinds(docs_of(None)) == ["Namespace", "ServiceAccount", "Service", "DaemonSet",
                                    "PodDisruptionBudget", "NetworkPolicy"]
    assert kinds(docs_of(NON_DEFAULT)) == ["Namespace", "ServiceAccount", "Secret", "Service", "DaemonSet",
                                           "PodDisruptionBudget", "NetworkPolicy", "PodMonitor", "Job", "Job"]
    assert kinds(docs_of(CONN_STRING)) == ["Service", "DaemonSet"]


def kubelet_expand(args: list[str], env: dict[str, str]) -> list[str]:
    """$(VAR) expansion as the kubelet does it for command/args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def parse_with_cli(args: list[str]) -> tuple[str, dict]:
    """Parse a container command with the real click parsers, without running the command."""
    assert args[0] == "cachenode"
    ctx = main.make_context("cachenode", list(args[1:]), resilient_parsing=False)
    # click 8.x keeps the subcommand name apart from the rest (public name deprecated in 8.2).
    tokens = [*getattr(ctx, "_protected_args", ()), *ctx.args]
    name, cmd, rest = main.resolve_command(ctx, tokens)
    sub = cmd.make_context(name, rest, parent=ctx)
    return name, sub.params


@pytest.mark.parametrize("values", [None, NON_DEFAULT, CONN_STRING], ids=["default", "non-default", "conn-string"])
def test_daemonset_command_is_accepted_by_cachenode_serve(values):
    docs = docs_of(values)
    v = k8s.load_values(values)
    (container,) = doc_named(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    env_names = {e["name"] for e in container["env"]}
    assert re.findall(r"\$\((\w+)\)", " ".join(container["command"])) and \
        set(re.findall(r"\$\((\w+)\)", " ".join(container["command"]))) <= env_names
    args = kubelet_expand(container["command"], {"NODE_NAME": "aks-gpu-0", "POD_IP": "10.1.2.3"})
    name, p = parse_with_cli(args)
    assert name == "serve"
    assert p["member_id"] == "aks-gpu-0"  # the node name: stable across pod restarts
    assert p["advertise_url"] == f"http://10.1.2.3:{v['port']}"
    assert p["peers_dns"] == f"{v['name']}.{v['namespace']}.svc.cluster.local:{v['port']}"
    assert p["memory_bytes"] == k8s.parse_size(v["cache"]["memory"])
    assert p["disk_bytes"] == k8s.parse_size(v["cache"]["disk"])
    assert p["block_size"] == k8s.parse_size(v["cache"]["blockSize"])
    assert p["cache_dir"] == k8s.CACHE_MOUNT and p["port"] == v["port"] and p["host"] == "0.0.0.0"
    assert p["token_file"].startswith(k8s.TOKEN_MOUNT) and not p["no_auth"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert k8s.CACHE_MOUNT in mounts and k8s.TOKEN_MOUNT in mounts
    assert p["ucx"] == v["ucx"]["enabled"]
    assert p["allow"] == tuple(v["allow"])
    if values == NON_DEFAULT:
        assert p["max_rate"] == parse_rate("25Gbit") and p["link_speed"] == parse_rate("200Gbit")
        assert p["origin_retries"] == 6
        assert {"UCX_TLS", "UCX_NET_DEVICES", "CACHENODE_NODE_TOKEN"} <= env_names
        assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]


def test_warm_job_command_is_accepted_by_cachenode_warm():
    for job in [d for d in docs_of(NON_DEFAULT) if d["kind"] == "Job"]:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        name, p = parse_with_cli(container["command"])
        assert name == "warm" and p["url"].startswith("az://models/")
        assert p["nodes"] == ("http://cn.ml-cache.svc.cluster.local:9470",)
        # The NetworkPolicy admits the job as a loader.
        assert job["spec"]["template"]["metadata"]["labels"]["role"] == "inference"


def test_daemonset_wiring():
    docs = docs_of(NON_DEFAULT)
    ds, svc = doc_named(docs, "DaemonSet"), doc_named(docs, "Service")
    pod = ds["spec"]["template"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["hostNetwork"] and pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    sa = doc_named(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == pod["spec"]["serviceAccountName"] == "cn-nodes"
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"].endswith("0001")
    np = doc_named(docs, "NetworkPolicy")
    assert np["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9470}]
    assert np["spec"]["ingress"][0]["from"][1]["podSelector"]["matchLabels"] == {"role": "inference"}
    (c,) = pod["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    conn = doc_named(docs_of(CONN_STRING), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "AZURE_STORAGE_CONNECTION_STRING",
            "valueFrom": {"secretKeyRef": {"name": "blob", "key": "conn"}}} in conn["env"]


def test_object_namespaces_become_flags_and_the_writer_secret_a_file():
    v = k8s.load_values("objects: {namespaces: [kv-llama3, compile], writerSecret: {name: writers}}")
    args = k8s.serve_args(v)
    assert args[args.index("--namespace") + 1] == "kv-llama3" and args.count("--namespace") == 2
    assert args[args.index("--writer-token-file") + 1] == f"{k8s.WRITERS_MOUNT}/writers"
    assert args[args.index("--object-memory") + 1] == "1GiB"
    ds = k8s.daemonset(v)["spec"]["template"]["spec"]
    assert {"name": "writers", "secret": {"secretName": "writers", "items": [{"key": "writers", "path": "writers"}]}} \
        in ds["volumes"]
    assert "--namespace" not in k8s.serve_args(k8s.load_values(None))  # objects off by default


@pytest.mark.parametrize("values, key", [
    ("cache: {memory: lots}", "cache.memory"),
    ("cache: {blockSize: 1GiB}", "cache.blockSize"),
    ("cache: {hostPath: relative/dir}", "cache.hostPath"),
    ("cache: {memory: 8GiB}", "resources.limits.memory"),
    ("port: eighty", "port"),
    ("port: 70000", "port"),
    ("hostNetwork: 'yes'", "hostNetwork"),
    ("nodeselector: {a: b}", "nodeselector"),
    ("ucx: {enable: true}", "ucx.enable"),
    ("ucx: {env: {TLS: tcp}}", "ucx.env.TLS"),
    ("azure: {auth: workloadIdentity}", "azure.workloadIdentity.clientId"),
    ("azure: {auth: sas}", "azure.auth"),
    ("token: {create: true}", "token.value"),
    ("qos: {maxEgress: fast}", "qos.maxEgress"),
    ("allow: [justacontainer]", "allow"),
    ("name: Cache_Node", "name"),
    ("warm: {urls: [llama]}", "warm.urls[0]"),
    ("terminationGracePeriodSeconds: 10", "terminationGracePeriodSeconds"),
    ("nodeToken: {secretName: cachenode-token}", "nodeToken.secretName"),
    ("image: registry/cachenode:1", "image"),
    ("- a list", "values file"),
    ("objects: {namespaces: ['bad name']}", "objects.namespaces"),
    ("objects: {memory: lots}", "objects.memory"),
    ("{objects: {namespaces: [kv], memory: 4GiB}, cache: {memory: 2GiB}, resources: {limits: {memory: 5Gi}}}",
     "resources.limits.memory"),
])
def test_bad_values_name_the_key(values, key, tmp_path):
    with pytest.raises(k8s.ValuesError) as err:
        k8s.load_values(values)
    assert str(err.value).startswith(key), str(err.value)
    f = tmp_path / "v.yaml"
    f.write_text(values)
    r = CliRunner().invoke(main, ["deploy", "kubernetes", "--values", str(f)])
    assert r.exit_code == 1 and key in r.output, r.output


def test_show_values_is_the_default_and_documented():
    r = CliRunner().invoke(main, ["deploy", "kubernetes", "--show-values"])
    assert r.exit_code == 0
    assert yaml.safe_load(r.output) == k8s.default_values()
    # Every top-level key carries a comment in the file (on it or on the lines above).
    lines = r.output.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-zA-Z]\w*:", line):
            above = lines[i - 1] if i else ""
            assert "#" in line or above.startswith("#") or lines[i + 1].lstrip().startswith("#"), line


def test_cli_renders_from_an_installed_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cachenode", "deploy", "kubernetes"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert kinds(list(yaml.safe_load_all(out))) == kinds(docs_of(None))


def test_grafana_dashboard_renders_and_queries_something():
    r = CliRunner().invoke(main, ["deploy", "grafana", "--datasource", "prom-uid"])
    assert r.exit_code == 0
    d = __import__("json").loads(r.output)
    assert {p["title"] for p in d["panels"]} >= {"Hit ratio", "Origin bytes/s", "Served bytes/s", "Fills",
                                                 "QoS: background limit vs other traffic", "Memory tier", "Disk tier"}
    names = set().union(*map(grafana.metric_names, grafana.expressions(d)))
    assert "cachenode_origin_bytes_total" in names and len(names) >= 10


def test_metric_name_extraction_sees_through_selectors():
    expr = 'sum by (tier) (rate(cachenode_hits_total{instance=~"$instance",x="rate"}[$__rate_interval])) / 1e-9'
    assert grafana.metric_names(expr) == {"cachenode_hits_total"}
    with pytest.raises(click.exceptions.UsageError):
        parse_with_cli(["cachenode", "serve", "--no-such-flag"])


def exported_names(node_url: str) -> set[str]:
    """Sample names a node's /metrics can carry, from its # TYPE lines (a labelled counter that
    never counted has no sample yet, but its family is declared)."""
    import urllib.request

    req = urllib.request.Request(f"{node_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.add(family)  # prometheus_client declares counters by their _total sample name
            if kind == "counter" and not family.endswith("_total"):
                names.add(family + "_total")
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def test_dashboard_queries_only_metrics_a_node_exports(nodes, blobs):
    import cachenode

    node = nodes.start("--block-size", "64KiB")
    url = blobs.put("g.bin", b"x" * 200_000)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:  # counters with samples, too
        assert len(f.read()) == 200_000
    exported = exported_names(node.url)
    assert "cachenode_origin_bytes_total" in exported
    for expr in grafana.expressions():
        unknown = grafana.metric_names(expr) - exported
        assert not unknown, f"{expr!r} queries {unknown}, which the node does not export"
