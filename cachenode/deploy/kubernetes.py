"""Render plain Kubernetes manifests for a cachenode cluster from documented values."""

from __future__ import annotations

import copy
import re
from importlib import resources
from typing import Any

import yaml

from ..blocks import check_block_size
from ..objects import check_namespace
from ..units import parse_rate, parse_size

CACHE_MOUNT = "/var/cache/cachenode"
TOKEN_MOUNT = "/var/run/secrets/cachenode"
WRITERS_MOUNT = "/var/run/secrets/cachenode-writers"  # namespace writer credentials (objects)
APP_LABEL = "app.kubernetes.io/name"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ValuesError(ValueError):
    """A values file that cannot be rendered; the message names the key."""


def default_values_text() -> str:
    """The shipped values file, comments included (what `--show-values` prints)."""
    return resources.files(__package__).joinpath("values.yaml").read_text()


def default_values() -> dict:
    return yaml.safe_load(default_values_text())


def load_values(text: str | None) -> dict:
    """Defaults merged with a user's values YAML, checked key by key."""
    values = default_values()
    if text:
        try:
            user = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValuesError(f"values file is not YAML: {exc}") from None
        if user is not None and not isinstance(user, dict):
            raise ValuesError("values file must be a mapping of keys to values")
        values = _merge(values, user or {}, "")
    check_values(values)
    return values


# Keys whose defaults are empty maps or lists: anything the Kubernetes field takes goes there.
_FREE = {"nodeSelector", "tolerations", "image.pullSecrets", "ucx.env", "allow", "extraArgs",
         "serviceAccount.annotations", "resources", "resources.requests", "resources.limits",
         "networkPolicy.loaderPodLabels", "networkPolicy.loaderNamespaceSelector",
         "networkPolicy.extraFrom", "metrics.podMonitor.labels", "warm.urls"}


def _merge(base: Any, over: Any, path: str) -> Any:
    """Maps merge recursively; unknown keys and type changes are errors naming the key."""
    if isinstance(base, dict) and path not in _FREE:
        if not isinstance(over, dict):
            raise ValuesError(f"{path}: expected a mapping, got {type(over).__name__}")
        out = dict(base)
        for k, v in over.items():
            key = f"{path}.{k}" if path else str(k)
            if k not in base:
                raise ValuesError(f"{key}: unknown key (see `cachenode deploy kubernetes --show-values`)")
            out[k] = _merge(base[k], v, key)
        return out
    if over is None:
        return base
    want = type(base)
    if want is float and isinstance(over, int) and not isinstance(over, bool):
        return float(over)
    if want is int and isinstance(over, float):
        raise ValuesError(f"{path}: expected an integer, got {over!r}")
    if base is not None and not isinstance(over, want) or isinstance(over, bool) != isinstance(base, bool):
        raise ValuesError(f"{path}: expected {want.__name__}, got {type(over).__name__} {over!r}")
    return over


def check_values(v: dict) -> None:
    """Checks a schema cannot express: names, sizes, rates, and combinations of keys."""
    for key in ("name", "namespace"):
        if not _DNS_LABEL.match(v[key]) or len(v[key]) > 40:
            raise ValuesError(f"{key}: {v[key]!r} is not a DNS label (lowercase letters, digits, '-', at most 40)")
    if not 1 <= v["port"] <= 65535:
        raise ValuesError(f"port: {v['port']} is not a TCP port")
    sizes = {}
    for key in ("memory", "disk", "blockSize"):
        try:
            sizes[key] = parse_size(str(v["cache"][key]))
        except ValueError as exc:
            raise ValuesError(f"cache.{key}: {exc}") from None
    try:
        check_block_size(sizes["blockSize"])
    except ValueError as exc:
        raise ValuesError(f"cache.blockSize: {exc}") from None
    if not v["cache"]["hostPath"].startswith("/"):
        raise ValuesError(f"cache.hostPath: {v['cache']['hostPath']!r} must be an absolute path")
    o = v["objects"]
    for key in ("memory", "disk", "maxObjectSize"):
        try:
            sizes[f"objects.{key}"] = parse_size(str(o[key]))
        except ValueError as exc:
            raise ValuesError(f"objects.{key}: {exc}") from None
    for name in o["namespaces"]:
        try:
            check_namespace(name)
        except ValueError as exc:
            raise ValuesError(f"objects.namespaces: {exc}") from None
    held = sizes["memory"] + (sizes["objects.memory"] if o["namespaces"] else 0)
    limit = v["resources"].get("limits", {}).get("memory")
    if limit is not None and _quantity_bytes(limit, "resources.limits.memory") <= held:
        raise ValuesError(f"resources.limits.memory: {limit} must exceed cache.memory "
                          f"({v['cache']['memory']})" + (f" plus objects.memory ({o['memory']})" if o["namespaces"]
                                                         else "") + ": fills in flight and buffers come on top")
    for key in ("maxEgress", "linkSpeed"):
        if v["qos"][key]:
            try:
                parse_rate(str(v["qos"][key]))
            except ValueError as exc:
                raise ValuesError(f"qos.{key}: {exc}") from None
    for entry in v["allow"]:
        if not isinstance(entry, str) or entry.count("/") != 1 or entry.startswith("file:"):
            raise ValuesError(f"allow: {entry!r}: use account/container or account/*")
    if v["logLevel"] not in ("debug", "info", "warning", "error"):
        raise ValuesError(f"logLevel: {v['logLevel']!r} is not one of debug, info, warning, error")
    auth = v["azure"]["auth"]
    if auth not in ("workloadIdentity", "connectionString", "none"):
        raise ValuesError(f"azure.auth: {auth!r} is not one of workloadIdentity, connectionString, none")
    if auth == "workloadIdentity" and not v["azure"]["workloadIdentity"]["clientId"]:
        raise ValuesError("azure.workloadIdentity.clientId: required with azure.auth: workloadIdentity "
                          "(or set azure.auth: connectionString / none)")
    if auth == "workloadIdentity" and not v["serviceAccount"]["create"]:
        raise ValuesError("serviceAccount.create: must be true with azure.auth: workloadIdentity "
                          "(the client id goes on the ServiceAccount)")
    if v["nodeToken"]["secretName"] and v["nodeToken"]["secretName"] == v["token"]["secretName"]:
        raise ValuesError("nodeToken.secretName: must differ from token.secretName (loaders read that one)")
    if v["token"]["create"] and not v["token"]["value"]:
        raise ValuesError("token.value: required with token.create: true")
    if v["preStopSeconds"] + 30 > v["terminationGracePeriodSeconds"]:
        raise ValuesError(f"terminationGracePeriodSeconds: {v['terminationGracePeriodSeconds']} leaves no "
                          f"time for preStopSeconds ({v['preStopSeconds']}) plus the node's 30s drain")
    for k, val in v["ucx"]["env"].items():
        if not str(k).startswith("UCX_"):
            raise ValuesError(f"ucx.env.{k}: only UCX_* variables belong here")
    for i, url in enumerate(v["warm"]["urls"]):
        if not isinstance(url, str) or "://" not in url:
            raise ValuesError(f"warm.urls[{i}]: {url!r} is not a checkpoint URL (az://container/path)")


_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_QUANTITY_UNIT = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                  "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def _quantity_bytes(q: Any, key: str) -> int:
    m = _QUANTITY.match(str(q))
    if not m:
        raise ValuesError(f"{key}: {q!r} is not a Kubernetes quantity like 6Gi")
    return int(float(m.group(1)) * _QUANTITY_UNIT[m.group(2)])


def service_dns(v: dict) -> str:
    return f"{v['name']}.{v['namespace']}.svc.{v['clusterDomain']}"


def serve_args(v: dict) -> list[str]:
    """The DaemonSet container's command; $(VAR) is expanded by the kubelet from the env."""
    c = v["cache"]
    args = ["cachenode", "--log-level", v["logLevel"], "serve",
            "--host", "0.0.0.0", "--port", str(v["port"]),
            "--cache-dir", CACHE_MOUNT, "--memory", str(c["memory"]), "--disk", str(c["disk"]),
            "--block-size", str(c["blockSize"]),
            "--token-file", f"{TOKEN_MOUNT}/{v['token']['key']}",
            "--peers-dns", f"{service_dns(v)}:{v['port']}",
            # The node name survives pod restarts, so a node's disk blocks keep their owner.
            "--member-id", "$(NODE_NAME)",
            "--advertise-url", f"http://$(POD_IP):{v['port']}",
            "--peer-timeout", str(v["peerTimeout"]), "--origin-retries", str(v["originRetries"])]
    for entry in v["allow"]:
        args += ["--allow", entry]
    if v["azure"]["blobEndpoint"]:
        args += ["--blob-endpoint", v["azure"]["blobEndpoint"]]
    q = v["qos"]
    for key, flag in (("maxEgress", "--max-egress"), ("linkSpeed", "--link-speed"), ("idleIface", "--idle-iface")):
        if q[key]:
            args += [flag, str(q[key])]
    if v["ucx"]["enabled"]:
        args.append("--ucx")
    o = v["objects"]
    if o["namespaces"]:
        for name in o["namespaces"]:
            args += ["--namespace", name]
        args += ["--object-memory", str(o["memory"]), "--object-disk", str(o["disk"]),
                 "--max-object-size", str(o["maxObjectSize"])]
        if o["writerSecret"]["name"]:
            args += ["--writer-token-file", f"{WRITERS_MOUNT}/{o['writerSecret']['key']}"]
    return args + [str(a) for a in v["extraArgs"]]


def _labels(v: dict, component: str) -> dict:
    return {APP_LABEL: "cachenode", "app.kubernetes.io/instance": v["name"],
            "app.kubernetes.io/component": component}


def _meta(v: dict, name: str, component: str, **extra) -> dict:
    return {"name": name, "namespace": v["namespace"], "labels": _labels(v, component), **extra}


def _sa_name(v: dict) -> str:
    return v["serviceAccount"]["name"] or v["name"]


def _env(v: dict) -> list[dict]:
    env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    nt = v["nodeToken"]
    if nt["secretName"]:
        env.append({"name": "CACHENODE_NODE_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": nt["secretName"], "key": nt["key"]}}})
    az = v["azure"]
    if az["accountName"]:
        env.append({"name": "AZURE_STORAGE_ACCOUNT_NAME", "value": az["accountName"]})
    if az["auth"] == "connectionString":
        s = az["connectionStringSecret"]
        env.append({"name": "AZURE_STORAGE_CONNECTION_STRING",
                    "valueFrom": {"secretKeyRef": {"name": s["name"], "key": s["key"]}}})
    if v["ucx"]["enabled"]:
        env += [{"name": str(k), "value": str(val)} for k, val in sorted(v["ucx"]["env"].items())]
        env.append({"name": "UCX_WARN_UNUSED_ENV_VARS", "value": "n"})
    return env


def daemonset(v: dict) -> dict:
    port, node = v["port"], _labels(v, "node")
    pod_labels = dict(node)
    if v["azure"]["auth"] == "workloadIdentity":
        pod_labels["azure.workload.identity/use"] = "true"
    annotations = {}
    if v["metrics"]["annotations"]:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                       "prometheus.io/path": "/metrics"}
    probe = {"httpGet": {"path": "/healthz", "port": port}}
    caps: dict = {"drop": ["ALL"]}
    if v["ucx"]["enabled"] and v["ucx"]["ipcLock"]:
        caps["add"] = ["IPC_LOCK"]
    container = {
        "name": "cachenode",
        "image": f"{v['image']['repository']}:{v['image']['tag']}",
        "imagePullPolicy": v["image"]["pullPolicy"],
        "command": serve_args(v),
        "env": _env(v),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": v["probes"]["readiness"]["periodSeconds"],
                           "failureThreshold": v["probes"]["readiness"]["failureThreshold"]},
        "livenessProbe": {**probe, "periodSeconds": v["probes"]["liveness"]["periodSeconds"],
                          "failureThreshold": v["probes"]["liveness"]["failureThreshold"],
                          "timeoutSeconds": v["probes"]["liveness"]["timeoutSeconds"]},
        # Keep serving while the endpoint leaves the Service's DNS record, then SIGTERM drains.
        "lifecycle": {"preStop": {"sleep": {"seconds": v["preStopSeconds"]}}},
        "resources": copy.deepcopy(v["resources"]),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": caps},
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_MOUNT},
                         {"name": "token", "mountPath": TOKEN_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    writers = v["objects"]["writerSecret"]
    if v["objects"]["namespaces"] and writers["name"]:
        container["volumeMounts"].append({"name": "writers", "mountPath": WRITERS_MOUNT, "readOnly": True})
    spec: dict = {
        "serviceAccountName": _sa_name(v),
        "terminationGracePeriodSeconds": v["terminationGracePeriodSeconds"],
        "nodeSelector": copy.deepcopy(v["nodeSelector"]),
        "tolerations": copy.deepcopy(v["tolerations"]),
        "containers": [container],
        "volumes": [
            {"name": "cache", "hostPath": {"path": v["cache"]["hostPath"], "type": "DirectoryOrCreate"}},
            {"name": "token", "secret": {"secretName": v["token"]["secretName"],
                                         "items": [{"key": v["token"]["key"], "path": v["token"]["key"]}]}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if v["objects"]["namespaces"] and writers["name"]:
        spec["volumes"].append({"name": "writers", "secret": {"secretName": writers["name"], "items": [
            {"key": writers["key"], "path": writers["key"]}]}})
    if v["hostNetwork"]:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if v["priorityClassName"]:
        spec["priorityClassName"] = v["priorityClassName"]
    if v["image"]["pullSecrets"]:
        spec["imagePullSecrets"] = [{"name": n} for n in v["image"]["pullSecrets"]]
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(v, v["name"], "node"),
            "spec": {"selector": {"matchLabels": node},
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                         "maxUnavailable": v["updateStrategy"]["maxUnavailable"]}},
                     "template": {"metadata": {"labels": pod_labels, "annotations": annotations},
                                  "spec": spec}}}


def headless_service(v: dict) -> dict:
    # clusterIP None: the name resolves to every ready pod's address, which is what --peers-dns reads.
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(v, v["name"], "node"),
            "spec": {"clusterIP": "None", "selector": _labels(v, "node"),
                     "ports": [{"name": "http", "port": v["port"], "targetPort": v["port"], "protocol": "TCP"}]}}


def service_account(v: dict) -> dict:
    ann = dict(v["serviceAccount"]["annotations"])
    wi = v["azure"]["workloadIdentity"]
    if v["azure"]["auth"] == "workloadIdentity":
        ann["azure.workload.identity/client-id"] = wi["clientId"]
        if wi["tenantId"]:
            ann["azure.workload.identity/tenant-id"] = wi["tenantId"]
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(v, _sa_name(v), "node", annotations=ann)}


def token_secret(v: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(v, v["token"]["secretName"], "token"),
            "type": "Opaque", "stringData": {v["token"]["key"]: v["token"]["value"]}}


def network_policy(v: dict) -> dict:
    np = v["networkPolicy"]
    loaders = {"podSelector": {"matchLabels": dict(np["loaderPodLabels"])},
               "namespaceSelector": copy.deepcopy(np["loaderNamespaceSelector"])}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(v, v["name"], "node"),
            "spec": {"podSelector": {"matchLabels": _labels(v, "node")}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": _labels(v, "node")}}, loaders,
                                           *copy.deepcopy(np["extraFrom"])],
                                  "ports": [{"protocol": "TCP", "port": v["port"]}]}]}}


def pod_disruption_budget(v: dict) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(v, v["name"], "node"),
            "spec": {"maxUnavailable": v["podDisruptionBudget"]["maxUnavailable"],
                     "selector": {"matchLabels": _labels(v, "node")}}}


def pod_monitor(v: dict) -> dict:
    pm = v["metrics"]["podMonitor"]
    meta = _meta(v, v["name"], "node")
    meta["labels"].update(pm["labels"])
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": meta,
            "spec": {"selector": {"matchLabels": _labels(v, "node")},
                     "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": pm["interval"],
                                              "authorization": {"type": "Bearer", "credentials": {
                                                  "name": v["token"]["secretName"], "key": v["token"]["key"]}}}]}}


def warm_args(v: dict, url: str) -> list[str]:
    return ["cachenode", "warm", url, "--node", f"http://{service_dns(v)}:{v['port']}"]


def warm_job(v: dict, i: int, url: str) -> dict:
    # The loader label lets the NetworkPolicy admit the Job; the token comes in as CACHENODE_TOKEN.
    labels = {**_labels(v, "warm"), **v["networkPolicy"]["loaderPodLabels"]}
    w = v["warm"]
    pod = {"restartPolicy": "OnFailure",
           "containers": [{"name": "warm", "image": f"{v['image']['repository']}:{v['image']['tag']}",
                           "imagePullPolicy": v["image"]["pullPolicy"], "command": warm_args(v, url),
                           "env": [{"name": "CACHENODE_TOKEN", "valueFrom": {"secretKeyRef": {
                               "name": v["token"]["secretName"], "key": v["token"]["key"]}}}],
                           "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                           "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                               "capabilities": {"drop": ["ALL"]}}}]}
    if v["image"]["pullSecrets"]:
        pod["imagePullSecrets"] = [{"name": n} for n in v["image"]["pullSecrets"]]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(v, f"{v['name']}-warm-{i}", "warm"),
            "spec": {"backoffLimit": w["backoffLimit"], "ttlSecondsAfterFinished": w["ttlSecondsAfterFinished"],
                     "template": {"metadata": {"labels": labels}, "spec": pod}}}


def manifests(v: dict) -> list[dict]:
    """Every object, in apply order (namespace and identities before the pods that use them)."""
    out: list[dict] = []
    if v["createNamespace"]:
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": v["namespace"], "labels": {APP_LABEL: "cachenode"}}})
    if v["serviceAccount"]["create"]:
        out.append(service_account(v))
    if v["token"]["create"]:
        out.append(token_secret(v))
    out.append(headless_service(v))
    out.append(daemonset(v))
    if v["podDisruptionBudget"]["enabled"]:
        out.append(pod_disruption_budget(v))
    if v["networkPolicy"]["enabled"]:
        out.append(network_policy(v))
    if v["metrics"]["podMonitor"]["enabled"]:
        out.append(pod_monitor(v))
    out += [warm_job(v, i, url) for i, url in enumerate(v["warm"]["urls"])]
    return out


class _Dumper(yaml.SafeDumper):
    """No &anchors/*aliases: reviewers and GitOps diffs read each object on its own."""

    def ignore_aliases(self, data) -> bool:
        return True


def render(values_text: str | None = None) -> str:
    """Multi-document YAML for `kubectl apply -f -`."""
    docs = manifests(load_values(values_text))
    return "".join("---\n" + yaml.dump(d, Dumper=_Dumper, sort_keys=False) for d in docs)
