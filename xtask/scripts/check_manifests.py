"""Offline checks of deploy/*.yaml, run by `cargo xtask test`.

usage: check_manifests.py DEPLOY_DIR IMAGE

- Built-in kinds: kubernetes-validate in strict mode (unknown fields are
  errors) against the newest three Kubernetes minor versions it has schemas
  for. A deliberately misspelt copy of the first Deployment must fail, so a
  validator that accepts everything cannot pass.
- Custom resources (KEDA ScaledObject, prometheus-operator ServiceMonitor),
  for which it has no schema: every key must be one the project documents
  (URLs below), required keys present, KEDA trigger metadata all strings.
- Cross-references: images of the tracker are IMAGE, the seccomp profile named
  exists, Services/ServiceMonitors/ScaledObjects point at what the files define.
- The lazy-start proxy (`spawner-sidecar proxy` as a container's command): a
  Service selects its pods and targets a port it holds, never the server's
  behind it (refused while stopped), and no probe hits a port it holds (each
  probe would start the server).
- Node mode (`spawner-sidecar node`): the pod has hostPID (the tracker reads
  the host's processes through its own /proc) and the container the
  capabilities node mode needs (docs/node.md, Privileges).
Prints one line per document and check; exits 1 on the first failing file.
"""
import copy
import os
import re
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import all_versions, major_minor

TRACKER = "spawner-sidecar"
# docs/node.md, Privileges: load the program, setns, read other processes.
NODE_CAPABILITIES = {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}

# https://keda.sh/docs/2.20/reference/scaledobject-spec/
SCALED_OBJECT_SPEC = {
    "scaleTargetRef": {"apiVersion": None, "kind": None, "name": None, "envSourceContainerName": None},
    "pollingInterval": None,
    "cooldownPeriod": None,
    "initialCooldownPeriod": None,
    "idleReplicaCount": None,
    "minReplicaCount": None,
    "maxReplicaCount": None,
    "fallback": {"failureThreshold": None, "replicas": None, "behavior": None},
    "advanced": {
        "restoreToOriginalReplicaCount": None,
        "horizontalPodAutoscalerConfig": {"name": None, "behavior": "any"},
        "scalingModifiers": {"target": None, "activationTarget": None, "metricType": None, "formula": None},
    },
    "triggers": [{
        "type": None, "name": None, "metadata": "trigger", "metricType": None,
        "useCachedMetrics": None, "authenticationRef": {"name": None, "kind": None},
    }],
}
# Trigger metadata: (required, optional) keys.
TRIGGERS = {
    # https://keda.sh/docs/2.20/scalers/metrics-api/
    "metrics-api": ({"url", "valueLocation", "targetValue"},
                    {"format", "activationTargetValue", "unsafeSsl", "aggregateFromKubeServiceEndpoints",
                     "aggregationType", "authMode", "method", "keyParamName"}),
    # https://keda.sh/docs/2.20/scalers/prometheus/
    "prometheus": ({"serverAddress", "query", "threshold"},
                   {"activationThreshold", "namespace", "customHeaders", "queryParameters",
                    "ignoreNullValues", "unsafeSsl", "timeout", "authModes"}),
}
ENUMS = {
    ("metrics-api", "format"): {"json", "xml", "yaml", "prometheus"},
    ("metrics-api", "aggregationType"): {"average", "sum", "max", "min"},
}
# https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.ServiceMonitorSpec
# (the keys a scrape of a plain HTTP endpoint may use).
SERVICE_MONITOR_SPEC = {
    "selector": {"matchLabels": "any", "matchExpressions": "any"},
    "namespaceSelector": {"any": None, "matchNames": None},
    "jobLabel": None, "targetLabels": None, "podTargetLabels": None,
    "sampleLimit": None, "targetLimit": None, "scrapeProtocols": None, "attachMetadata": "any",
    "endpoints": [{
        "port": None, "targetPort": None, "path": None, "scheme": None, "interval": None,
        "scrapeTimeout": None, "honorLabels": None, "honorTimestamps": None, "params": "any",
        "relabelings": "any", "metricRelabelings": "any", "followRedirects": None,
        "enableHttp2": None, "filterRunning": None,
    }],
}
METADATA = {"name": None, "namespace": None, "labels": "any", "annotations": "any"}
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SPEC,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SPEC,
}


class Bad(Exception):
    pass


def check_keys(value, shape, path, on_trigger):
    """Every key of `value` is in `shape` (None: a leaf, "any": free-form)."""
    if shape is None or shape == "any":
        return
    if shape == "trigger":
        on_trigger(value, path)
        return
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise Bad(f"{path}: a list expected")
        for i, item in enumerate(value):
            check_keys(item, shape[0], f"{path}[{i}]", on_trigger)
        return
    if not isinstance(value, dict):
        raise Bad(f"{path}: a mapping expected")
    for key, sub in value.items():
        if key not in shape:
            raise Bad(f"{path}.{key}: not a documented field")
        check_keys(sub, shape[key], f"{path}.{key}", on_trigger)


def check_custom(doc, shape):
    kind = doc["kind"]
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "spec"):
            raise Bad(f"{kind}.{key}: not a documented field")
    check_keys(doc.get("metadata", {}), METADATA, f"{kind}.metadata", None)
    if "name" not in doc.get("metadata", {}):
        raise Bad(f"{kind}.metadata.name missing")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise Bad(f"{kind}.spec missing")

    triggers = []

    def on_trigger(metadata, path):
        triggers.append((metadata, path))

    check_keys(spec, shape, f"{kind}.spec", on_trigger)
    if kind == "ScaledObject":
        if not spec.get("scaleTargetRef", {}).get("name"):
            raise Bad("ScaledObject.spec.scaleTargetRef.name missing")
        if not spec.get("triggers"):
            raise Bad("ScaledObject.spec.triggers empty")
        for trigger, (metadata, path) in zip(spec["triggers"], triggers):
            ttype = trigger.get("type")
            if ttype not in TRIGGERS:
                raise Bad(f"{path}: trigger type {ttype!r} is not one this checker knows")
            required, optional = TRIGGERS[ttype]
            for key, value in metadata.items():
                if key not in required | optional:
                    raise Bad(f"{path}.{key}: not a documented {ttype} parameter")
                if not isinstance(value, str):
                    raise Bad(f"{path}.{key}: KEDA metadata values are strings, got {value!r}")
                allowed = ENUMS.get((ttype, key))
                if allowed and value not in allowed:
                    raise Bad(f"{path}.{key}: {value!r} not one of {sorted(allowed)}")
            missing = required - metadata.keys()
            if missing:
                raise Bad(f"{path}: missing {sorted(missing)}")
    if kind == "ServiceMonitor" and "selector" not in spec:
        raise Bad("ServiceMonitor.spec.selector missing")


def pod_spec(doc):
    if doc["kind"] == "Pod":
        return doc["spec"]
    return doc.get("spec", {}).get("template", {}).get("spec")


def check_tracker_containers(doc, image, deploy_dir):
    spec = pod_spec(doc)
    if spec is None:
        return 0
    found = 0
    init = spec.get("initContainers", [])
    for c in init + spec.get("containers", []):
        if TRACKER not in c.get("image", "") and c.get("name") != TRACKER:
            continue
        found += 1
        # The tracker never exits: as a plain init container it would keep
        # the pod from ever starting its application.
        if any(c is i for i in init) and c.get("restartPolicy") != "Always":
            raise Bad(f"init container {c.get('name')}: restartPolicy must be Always (a native sidecar)")
        if c.get("image") != image:
            raise Bad(f"container {c.get('name')}: image {c.get('image')!r}, but `cargo xtask image` builds {image!r}")
        profile = c.get("securityContext", {}).get("seccompProfile", {}).get("localhostProfile")
        if profile and not os.path.isfile(os.path.join(deploy_dir, "seccomp", profile)):
            raise Bad(f"container {c['name']}: seccomp profile {profile} is not in deploy/seccomp/")
        if c.get("args", [None])[0] == "node":
            if not spec.get("hostPID"):
                raise Bad(f"container {c['name']} runs node mode without hostPID: it would see only its own processes")
            added = set(c.get("securityContext", {}).get("capabilities", {}).get("add", []))
            if not NODE_CAPABILITIES <= added:
                raise Bad(f"container {c['name']}: node mode needs capabilities {sorted(NODE_CAPABILITIES - added)}")
    return found


def check_service_monitor(doc, services):
    """Some Service carries the selector's labels and names each endpoint's port."""
    wanted = doc["spec"]["selector"].get("matchLabels", {})
    matching = [s for s in services
                if wanted.items() <= s["metadata"].get("labels", {}).items()]
    if not matching:
        raise Bad(f"selector {wanted} matches no Service in deploy/")
    for endpoint in doc["spec"].get("endpoints", []):
        port = endpoint.get("port")
        if port and not any(p.get("name") == port for s in matching for p in s["spec"]["ports"]):
            raise Bad(f"endpoint port {port!r} is not a named port of {[s['metadata']['name'] for s in matching]}")


def check_service_urls(doc, services):
    """A metrics-api URL names a Service (and port) defined in deploy/."""
    for trigger in doc["spec"]["triggers"]:
        url = trigger.get("metadata", {}).get("url")
        if trigger.get("type") != "metrics-api" or not url:
            continue
        host_port = url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        name = host.split(".")[0]
        service = next((s for s in services if s["metadata"]["name"] == name), None)
        if service is None:
            raise Bad(f"{url}: no Service {name!r} in deploy/")
        if port and not any(str(p.get("port")) == port for p in service["spec"]["ports"]):
            raise Bad(f"{url}: Service {name!r} has no port {port}")


def check_tracker_names(doc, docs_dir):
    """The JSON field and metric names the triggers read are the tracker's
    documented ones (docs/http-api.md, docs/metrics.md)."""
    with open(os.path.join(docs_dir, "http-api.md")) as f:
        http_api = f.read()
    with open(os.path.join(docs_dir, "metrics.md")) as f:
        metrics = f.read()
    for trigger in doc["spec"]["triggers"]:
        metadata = trigger.get("metadata", {})
        if trigger.get("type") == "metrics-api":
            field = metadata.get("valueLocation", "")
            if f"`{field}`" not in http_api:
                raise Bad(f"valueLocation {field!r} is not a field docs/http-api.md documents")
        if trigger.get("type") == "prometheus":
            for name in re.findall(r"spawner_sidecar_[a-z_]+", metadata.get("query", "")):
                if f"`{name}`" not in metrics:
                    raise Bad(f"query names {name}, which docs/metrics.md does not document")


def proxy_arguments(container):
    """The words after `spawner-sidecar proxy` in the container's command
    and args, or None when it does not run the proxy."""
    words = [str(w) for w in container.get("command", []) + container.get("args", [])]
    for i, word in enumerate(words[:-1]):
        if word.rsplit("/", 1)[-1] == TRACKER and words[i + 1] == "proxy":
            return words[i + 2:]
    return None


def flag_values(words, names):
    """Values of the flags `names` (`-f V`, `-f=V`), up to `--`."""
    values, i = [], 0
    while i < len(words) and words[i] != "--":
        name, eq, value = words[i].partition("=")
        if name in names:
            if eq:
                values.append(value)
            elif i + 1 < len(words):
                values.append(words[i + 1])
                i += 1
        i += 1
    return values


def port_number(container, port):
    """A probe's or Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return int(port) if str(port).isdigit() else None


def check_proxy(doc, services):
    spec = pod_spec(doc)
    if spec is None:
        return
    labels = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        words = proxy_arguments(c)
        if words is None:
            continue
        held, behind = set(), set()
        for pairs in flag_values(words, {"-proxy", "--proxy", "-p"}):
            addresses = pairs.split()
            held |= {int(a.rsplit(":", 1)[1]) for a in addresses[0::2]}
            behind |= {int(a.rsplit(":", 1)[1]) for a in addresses[1::2] if not a.startswith("exec:")}
        if not held:
            raise Bad(f"container {c['name']}: runs the proxy without -proxy pairs")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind) or {}
            action = probe.get("httpGet") or probe.get("tcpSocket") or {}
            port = port_number(c, action.get("port"))
            if port in held:
                raise Bad(f"container {c['name']}: {kind} on port {port}, which the proxy holds: each probe would start the server")
        selecting = [s for s in services
                     if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items()]
        if not selecting:
            raise Bad(f"no Service in deploy/ selects the pods of the proxy in {c['name']}")
        for service in selecting:
            for p in service["spec"]["ports"]:
                target = port_number(c, p.get("targetPort", p["port"]))
                if target in behind:
                    raise Bad(f"Service {service['metadata']['name']} targets port {target}, the server behind the proxy: refused while it is stopped")
                if target not in held:
                    raise Bad(f"Service {service['metadata']['name']} targets port {target}, which the proxy does not hold")


def newest_minors(n):
    """The newest n minor versions, as full versions the library knows."""
    by_minor = {}
    for v in all_versions():
        by_minor[major_minor(v)] = v
    return [by_minor[m] for m in sorted(by_minor)[-n:]]


def main():
    deploy_dir, image = sys.argv[1], sys.argv[2]
    versions = newest_minors(3)
    print(f"[manifests] kubernetes-validate --strict against Kubernetes {', '.join(versions)}")
    files = sorted(f for f in os.listdir(deploy_dir) if f.endswith(".yaml"))
    docs = []
    for name in files:
        with open(os.path.join(deploy_dir, name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs.append((name, doc))
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    services = [d for _, d in docs if d["kind"] == "Service"]
    failed = False
    trackers = 0
    for name, doc in docs:
        what = f"{name}: {doc['kind']} {doc['metadata']['name']}"
        try:
            key = (doc["apiVersion"], doc["kind"])
            if key in CUSTOM:
                check_custom(doc, CUSTOM[key])
                how = "documented fields"
            else:
                for v in versions:
                    try:
                        kubernetes_validate.validate(doc, v, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        raise Bad(f"Kubernetes {v}: {'.'.join(map(str, e.path))}: {e.message}")
                how = "strict schema"
            trackers += check_tracker_containers(doc, image, deploy_dir)
            if doc["kind"] == "ScaledObject":
                target = doc["spec"]["scaleTargetRef"]
                if (target.get("kind", "Deployment"), target["name"]) not in defined:
                    raise Bad(f"scales {target['name']}, which no file in deploy/ defines")
                check_service_urls(doc, services)
                check_tracker_names(doc, os.path.join(deploy_dir, "..", "docs"))
            if doc["kind"] == "ServiceMonitor":
                check_service_monitor(doc, services)
            check_proxy(doc, services)
            print(f"[manifests] ok: {what} ({how})")
        except Bad as e:
            print(f"[manifests] FAILED: {what}: {e}")
            failed = True
    if trackers == 0:
        print("[manifests] FAILED: no container runs the tracker's image")
        failed = True

    # The validator must be able to fail: a misspelt field in a copy of the
    # first Deployment.
    first = next((d for _, d in docs if d["kind"] == "Deployment"), None)
    if first is not None:
        bad = copy.deepcopy(first)
        bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
        try:
            kubernetes_validate.validate(bad, versions[-1], strict=True)
            print("[manifests] FAILED: a misspelt field passed strict validation")
            failed = True
        except kubernetes_validate.ValidationError:
            print("[manifests] ok: a misspelt field fails strict validation")
    # The proxy check must be able to fail too: a readiness probe on the
    # port the proxy holds.
    proxied = next((d for _, d in docs if any(
        proxy_arguments(c) is not None for c in (pod_spec(d) or {}).get("containers", []))), None)
    if proxied is not None:
        bad = copy.deepcopy(proxied)
        container = next(c for c in pod_spec(bad)["containers"] if proxy_arguments(c) is not None)
        held = flag_values(proxy_arguments(container), {"-proxy", "--proxy", "-p"})[0].split()[0]
        container["readinessProbe"] = {"tcpSocket": {"port": int(held.rsplit(":", 1)[1])}}
        try:
            check_proxy(bad, services)
            print("[manifests] FAILED: a probe on the proxy's port passed the proxy check")
            failed = True
        except Bad:
            print("[manifests] ok: a probe on the proxy's port fails the proxy check")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
