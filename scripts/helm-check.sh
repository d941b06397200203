#!/usr/bin/env bash
# Checks the Helm chart in helm/tollgate with real tools:
#   - Helm itself: Helm's Go SDK (v4) through the PyPI package helm-python-sdk
#     (no helm binary needed), for `helm lint --strict` and `helm template`;
#   - the Kubernetes OpenAPI schemas (PyPI: kubernetes-validate, strict mode:
#     unknown fields are errors).
# What it checks:
#   1. the chart's copy of the example catalog (files/policies, files/entitlements)
#      is identical to policies/ and entitlements/, its appVersion to Cargo.toml,
#      and its README.md has a row for every value of values.yaml;
#   2. lint and template with the default values, every ci/*-values.yaml, and the
#      example parent chart (examples/my-app) with classic and native sidecars;
#      the plain-YAML Deployment of docs/kubernetes.md is checked like a render;
#   3. every rendered manifest parses and is valid for the oldest Kubernetes the
#      chart supports (1.27; 1.29 with native sidecars) and the newest the
#      validator knows; prometheus-operator objects (no schema here) are checked
#      for apiVersion, kind and the fields the chart sets;
#   4. what the chart promises: hardened security contexts, gRPC probes, a grace
#      period covering the drain, no ConfigMap checksum (hot reload), service
#      links off, only TOLLGATE_* names that src/config_keys.rs knows, references to
#      ConfigMaps, Secrets, volumes and ports that exist, selectors that match;
#   5. values.schema.json and the chart refuse wrong values, naming the field.
# Exits non-zero on any failure; ends with a summary line.
#
# Tools are installed once (PyPI) into ${TOLLGATE_TOOLS:-~/.cache/tollgate-tools}/venv.
# Usage: scripts/helm-check.sh [-v]     (-v: print every rendered manifest's name)
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${TOLLGATE_TOOLS:-${HOME:-/tmp}/.cache/tollgate-tools}
venv=$tools/venv
requirements="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0"
stamp=$venv/.tollgate-helm-check

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
  echo "helm-check: installing $requirements into $venv (PyPI)"
  rm -rf "$venv"
  mkdir -p "$tools"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # the list of requirements is meant to split
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $requirements
  echo "$requirements" >"$stamp"
fi

exec "$venv/bin/python" - "$@" <<'PYTHON'
import glob
import os
import re
import shutil
import sys
import tempfile
import time

import yaml
import helm_python as helm
from kubernetes_validate import utils as kubernetes_validate

started = time.monotonic()
verbose = "-v" in sys.argv[1:]
CHART = "helm/tollgate"
RELEASE_NAMESPACE = "tollgate-check"
UID = 65532
CRD_GROUP = "monitoring.coreos.com/v1"
failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# 1. The chart against the rest of the repository -----------------------------

def compare_copy(source_dir, patterns, copy_dir):
    """The chart's copy of example files must be identical to the originals."""
    originals = {os.path.basename(p) for pattern in patterns for p in glob.glob(os.path.join(source_dir, pattern))}
    copies = {os.path.basename(p) for p in glob.glob(os.path.join(copy_dir, "*"))}
    if not originals:
        fail(source_dir, "no files found")
    for name in sorted(originals - copies):
        fail(copy_dir, f"{name} is missing: cp {source_dir}/{name} {copy_dir}/")
    for name in sorted(copies - originals):
        fail(copy_dir, f"{name} is not in {source_dir}/: remove it or add it there")
    for name in sorted(originals & copies):
        if read(os.path.join(source_dir, name)) != read(os.path.join(copy_dir, name)):
            fail(copy_dir, f"{name} differs from {source_dir}/{name}: cp {source_dir}/{name} {copy_dir}/")
    return {name: read(os.path.join(source_dir, name)) for name in originals}


shipped_policies = compare_copy("policies", ["schema.cedarschema", "*.cedar"], f"{CHART}/files/policies")
shipped_entitlements = compare_copy("entitlements", ["*.json"], f"{CHART}/files/entitlements")

chart_yaml = yaml.safe_load(read(f"{CHART}/Chart.yaml"))
cargo_version = re.search(r'(?m)^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', read("Cargo.toml"))
if not cargo_version or str(chart_yaml.get("appVersion")) != cargo_version.group(1):
    fail(f"{CHART}/Chart.yaml", f"appVersion {chart_yaml.get('appVersion')!r} is not the version in Cargo.toml "
         f"({cargo_version.group(1) if cargo_version else 'not found'})")
min_kubernetes = re.search(r">=\s*v?(\d+\.\d+)", str(chart_yaml.get("kubeVersion", "")))
min_kubernetes = min_kubernetes.group(1) if min_kubernetes else "1.27"
NATIVE_SIDECAR_KUBERNETES = "1.29"
latest_kubernetes = kubernetes_validate.major_minor(kubernetes_validate.latest_version())

# Every value documented in the chart's README (as `dotted.path`).
def leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix

chart_readme = read(f"{CHART}/README.md")
for path in leaf_paths(yaml.safe_load(read(f"{CHART}/values.yaml"))):
    if f"\n| `{path}` |" not in chart_readme:
        fail(f"{CHART}/README.md", f"value `{path}` has no row in the table of values")

# The configuration keys tollgate knows: the KEYS table of src/config_keys.rs.
config_source = read("src/config_keys.rs")
keys_table = re.search(r"pub const KEYS[^=]*=\s*&\[(.*?)\n\];", config_source, re.S)
known_keys = set(re.findall(r'^\s*\(\s*"([a-z0-9_]+)"\s*,', keys_table.group(1), re.M)) if keys_table else set()
if not known_keys:
    fail("src/config_keys.rs", "cannot find the KEYS table of configuration keys")
known_env = {"TOLLGATE_CONFIG"} | {"TOLLGATE_" + key.upper() for key in known_keys}
key_defaults = dict(re.findall(r'^\s*\(\s*"([a-z0-9_]+)"\s*,\s*"([^"]*)"', keys_table.group(1), re.M)) if keys_table else {}
env_seen = set()


def quantity_bytes(text):
    """Bytes of a Kubernetes memory quantity such as 640Mi or 1G; None if absent."""
    if text is None:
        return None
    match = re.fullmatch(r"([0-9.]+)([KMGTE]i?)?", str(text))
    if not match:
        return None
    units = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "E": 10**18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Ei": 2**60}
    return float(match.group(1)) * units[match.group(2)]


# 2. Lint and render ------------------------------------------------------------

def load_values(path):
    return yaml.safe_load(read(path)) or {}


def lint(chart_dir, values, where):
    report = helm.lint(chart_dir, values, strict=True, namespace=RELEASE_NAMESPACE,
                       kube_version=f"v{latest_kubernetes}.0")
    for message in report.get("messages", []):
        if message.get("severity", 0) >= 2:  # warning or error
            fail(where, f"helm lint: {message.get('path')}: {message.get('error', '').strip()}")
    for error in report.get("errors", []):
        if not any(error.strip() == m.get("error", "").strip() for m in report.get("messages", [])):
            fail(where, f"helm lint: {error.strip()}")


def render(chart_dir, values, release):
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name=release, namespace=RELEASE_NAMESPACE, is_install=True)
    manifests = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                manifests.append((template, document))
    return manifests


# 3. and 4. Validate what was rendered --------------------------------------------

def kind_name(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def pod_specs(manifests):
    for _, doc in manifests:
        if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]


def labels_match(selector, labels):
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def env_value(container, name):
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            return entry.get("value")
    return None


def check_tollgate_container(where, container, pod, values_text, secrets, config_maps, native):
    sc = container.get("securityContext") or {}
    expected = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for key, value in expected.items():
        if sc.get(key) is not value:
            fail(where, f"tollgate securityContext.{key} is {sc.get(key)!r}, not {value!r}")
    if not isinstance(sc.get("runAsUser"), int) or sc["runAsUser"] == 0:
        fail(where, f"tollgate securityContext.runAsUser is {sc.get('runAsUser')!r}: a fixed non-root UID")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        fail(where, "tollgate securityContext.capabilities.drop lacks ALL")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(where, "tollgate securityContext.seccompProfile.type is not RuntimeDefault")
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(part) or {}):
                fail(where, f"tollgate resources.{part}.{resource} is not set")

    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
    grpc_port = ports.get("tg-grpc")
    if grpc_port is None:
        fail(where, "tollgate has no tg-grpc port")
    for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(probe_kind)
        if not probe or (probe.get("grpc") or {}).get("port") != grpc_port:
            fail(where, f"tollgate {probe_kind} is not a grpc probe on port {grpc_port}")
    if native and container.get("restartPolicy") != "Always":
        fail(where, "tollgate as an init container without restartPolicy: Always is no sidecar")

    names = [entry["name"] for entry in container.get("env") or []]
    for name in names:
        if names.count(name) > 1:
            fail(where, f"env {name} is set twice")
        if name.startswith("TOLLGATE_") and name not in known_env:
            fail(where, f"env {name}: src/config_keys.rs has no key {name[len('TOLLGATE_'):].lower()} (tollgate refuses unknown TOLLGATE_* names)")
    listen = env_value(container, "TOLLGATE_LISTEN")
    if listen != f"0.0.0.0:{grpc_port}":
        fail(where, f"TOLLGATE_LISTEN is {listen!r}: the kubelet's gRPC probes need 0.0.0.0:{grpc_port}")
    for entry in container.get("env") or []:
        ref = ((entry.get("valueFrom") or {}).get("secretKeyRef")) or None
        if ref is None:
            continue
        if ref["name"] in secrets:
            if ref["key"] not in secrets[ref["name"]]:
                fail(where, f"env {entry['name']}: Secret {ref['name']} has no key {ref['key']}")
        elif ref["name"] not in values_text:
            fail(where, f"env {entry['name']}: Secret {ref['name']} is neither rendered nor named in the values")

    env_seen.update(names)
    if env_value(container, "TOLLGATE_REDIS_URL") is not None or any(
            e["name"] == "TOLLGATE_REDIS_URL" for e in container.get("env") or []):
        cache = int(env_value(container, "TOLLGATE_CACHE_MAX_BYTES") or key_defaults.get("cache_max_bytes") or 0)
        limit = quantity_bytes(((container.get("resources") or {}).get("limits") or {}).get("memory"))
        if limit is not None and cache > limit / 2:
            fail(where, f"cache_max_bytes {cache} is more than half the memory limit ({limit} bytes)")

    delay = int(env_value(container, "TOLLGATE_SHUTDOWN_DELAY_MS") or 0)
    grace = int(env_value(container, "TOLLGATE_SHUTDOWN_GRACE_MS") or 10000)
    period = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if period * 1000 < delay + grace:
        fail(where, f"terminationGracePeriodSeconds {period} does not cover shutdown delay {delay} ms + grace {grace} ms")

    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            fail(where, f"volumeMount {mount['name']} has no volume")
            continue
        if "subPath" in mount and "configMap" in volume:
            fail(where, f"volumeMount {mount['name']} uses subPath: ConfigMap updates would never arrive")
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            if name not in config_maps and name not in values_text:
                fail(where, f"volume {mount['name']}: ConfigMap {name} is neither rendered nor named in the values")
    for key, path in (("TOLLGATE_POLICIES", "policies"), ("TOLLGATE_ENTITLEMENTS", "entitlements")):
        directory = env_value(container, key)
        if directory and not any(m["mountPath"] == directory for m in container.get("volumeMounts") or []):
            fail(where, f"{key}={directory} is not a mounted volume")
    socket = env_value(container, "TOLLGATE_LISTEN_UNIX")
    if socket:
        socket_dir = os.path.dirname(socket)
        sharing = [c["name"] for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
                   if c is not container and any(m["mountPath"] == socket_dir for m in c.get("volumeMounts") or [])]
        mounted = [m for m in container.get("volumeMounts") or [] if m["mountPath"] == socket_dir]
        if not mounted or "emptyDir" not in volumes.get(mounted[0]["name"], {}):
            fail(where, f"the socket directory {socket_dir} is not an emptyDir mounted into tollgate")
        if not sharing:
            fail(where, f"no other container mounts the socket directory {socket_dir}")


def check_manifests(label, manifests, values_text, kube_versions):
    count = 0
    config_maps = {}
    secrets = {}
    for _, doc in manifests:
        if doc.get("kind") == "ConfigMap":
            config_maps[doc["metadata"]["name"]] = doc.get("data") or {}
        if doc.get("kind") == "Secret":
            secrets[doc["metadata"]["name"]] = set((doc.get("stringData") or {}) | (doc.get("data") or {}))
    pods = list(pod_specs(manifests))
    for template, doc in manifests:
        where = f"{label}: {template}: {kind_name(doc)}"
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") \
                or not (doc.get("metadata") or {}).get("name"):
            fail(where, "not a Kubernetes object (apiVersion, kind, metadata.name)")
            continue
        if verbose:
            print(f"  {label}: {kind_name(doc)}")
        if doc["apiVersion"] == CRD_GROUP:
            spec = doc.get("spec") or {}
            if doc["kind"] == "ServiceMonitor":
                ok = bool(spec.get("selector", {}).get("matchLabels")) and all("port" in e for e in spec.get("endpoints") or [{}])
                services = [d for _, d in manifests if d.get("kind") == "Service"
                            and labels_match(spec["selector"]["matchLabels"], d["metadata"].get("labels") or {})]
                if not services:
                    fail(where, "selects no rendered Service")
                for endpoint in spec.get("endpoints") or []:
                    if services and not any(p.get("name") == endpoint.get("port") for s in services for p in s["spec"]["ports"]):
                        fail(where, f"port {endpoint.get('port')} is not a port of the Service")
            elif doc["kind"] == "PodMonitor":
                ok = bool(spec.get("selector", {}).get("matchLabels")) and all("port" in e for e in spec.get("podMetricsEndpoints") or [{}])
            else:
                ok = False
            if not ok:
                fail(where, f"{doc['kind']} lacks its selector or endpoints")
            count += 1
            continue
        valid = True
        for version in kube_versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                fail(where, f"invalid for Kubernetes {version}: {path}: {error.message}")
                valid = False
            except kubernetes_validate.SchemaNotFoundError as error:
                fail(where, error.message)
                valid = False
        count += valid

        kind = doc["kind"]
        if kind == "ConfigMap":
            size = sum(len(k) + len(v.encode()) for k, v in (doc.get("data") or {}).items())
            if size > 1024 * 1024:
                fail(where, f"{size} bytes: over the 1 MiB a ConfigMap may hold")
        if kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            selector = doc["spec"].get("selector") if kind == "Service" else \
                (doc["spec"].get("selector") or doc["spec"].get("podSelector") or {}).get("matchLabels")
            if not any(labels_match(selector, pod["metadata"].get("labels") or {}) for _, pod in pods):
                fail(where, "its selector matches no rendered pod")
        if kind == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]["name"]
            if not any(workload["metadata"]["name"] == target for workload, _ in pods):
                fail(where, f"scales {target}, which is not rendered")
            if any("replicas" in workload["spec"] for workload, _ in pods if workload["metadata"]["name"] == target):
                fail(where, f"{target} sets replicas, which fights the autoscaler")
        if kind == "Service":
            for port in doc["spec"]["ports"]:
                if not any(port["targetPort"] in [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports") or []]
                           for _, pod in pods):
                    fail(where, f"targetPort {port['targetPort']} is no container port")

    for workload, pod in pods:
        where = f"{label}: {kind_name(workload)}"
        spec = pod["spec"]
        if spec.get("enableServiceLinks") is not False:
            fail(where, "enableServiceLinks is not false: a Service named tollgate* would set TOLLGATE_* variables")
        for key in (pod["metadata"].get("annotations") or {}):
            if key.startswith("checksum/") and key != "checksum/secret":
                fail(where, f"annotation {key}: a checksum of policies or snapshots would restart pods and defeat hot reload")
        tollgates = [(c, False) for c in spec.get("containers") or [] if env_value(c, "TOLLGATE_LISTEN")]
        tollgates += [(c, True) for c in spec.get("initContainers") or [] if env_value(c, "TOLLGATE_LISTEN")]
        if len(tollgates) != 1:
            fail(where, f"{len(tollgates)} tollgate containers, expected 1")
        for container, native in tollgates:
            check_tollgate_container(where, container, pod, values_text, secrets, config_maps, native)

    # The shipped catalog reaches the pods unchanged.
    for suffix, shipped, override in (("-policies", shipped_policies, "policies"),
                                      ("-entitlements", shipped_entitlements, "entitlements")):
        for name, data in config_maps.items():
            if name.endswith(suffix) and f"{override}:\n  files:" not in values_text and data != shipped:
                fail(f"{label}: ConfigMap/{name}", f"differs from the repository's {override}/")
    return count


# The renders: default values, every ci/*-values.yaml, the example parent chart.
renders = [("default values", CHART, {}, "tollgate", None)]
for path in sorted(glob.glob(f"{CHART}/ci/*-values.yaml")):
    renders.append((os.path.relpath(path, CHART), CHART, load_values(path), "tollgate", path))

workdir = tempfile.mkdtemp(prefix="helm-check-")
parent = os.path.join(workdir, "my-app")
shutil.copytree(f"{CHART}/examples/my-app", parent)
shutil.copytree(CHART, os.path.join(parent, "charts", "tollgate"), ignore=shutil.ignore_patterns("examples"))
parent_values = load_values(os.path.join(parent, "values.yaml"))
renders.append(("examples/my-app (sidecar)", parent, {}, "shop", os.path.join(parent, "values.yaml")))
renders.append(("examples/my-app (native sidecar)", parent, {"tollgate": {"sidecar": {"native": True}}}, "shop",
                os.path.join(parent, "values.yaml")))

render_count = 0
manifest_count = 0
try:
    for label, chart_dir, values, release, values_file in renders:
        failures_before = len(failures)
        lint(chart_dir, values or None, label)
        try:
            manifests = render(chart_dir, values or None, release)
        except helm.HelmError as error:
            fail(label, f"helm template: {error}")
            continue
        render_count += 1
        text = read(values_file) if values_file else ""
        native = any(c.get("restartPolicy") == "Always" for _, pod in pod_specs(manifests)
                     for c in pod["spec"].get("initContainers") or [])
        versions = [NATIVE_SIDECAR_KUBERNETES if native else min_kubernetes, latest_kubernetes]
        valid = check_manifests(label, manifests, text, versions)
        manifest_count += valid
        status = "ok  " if len(failures) == failures_before else "FAIL"
        print(f"{status} {label}: lint, template, {valid}/{len(manifests)} manifests valid for Kubernetes "
              f"{' and '.join(versions)}, {len(failures) - failures_before} problems")
finally:
    shutil.rmtree(workdir, ignore_errors=True)

# The plain-YAML Deployment of docs/kubernetes.md, for users without Helm.
DOCS = "docs/kubernetes.md"
docs_text = read(DOCS)
docs_manifests = []
for block in re.findall(r"```yaml\n(.*?)```", docs_text, re.S):
    if "{{" in block or not re.search(r"(?m)^apiVersion:", block):
        continue
    try:
        docs_manifests += [(DOCS, doc) for doc in yaml.safe_load_all(block) if doc]
    except yaml.YAMLError as error:
        fail(DOCS, f"a YAML example does not parse: {error}")
if not any(doc.get("kind") == "Deployment" for _, doc in docs_manifests):
    fail(DOCS, "no plain-YAML Deployment example found")
failures_before = len(failures)
valid = check_manifests(DOCS, docs_manifests, docs_text, [min_kubernetes, latest_kubernetes])
manifest_count += valid
status = "ok  " if len(failures) == failures_before else "FAIL"
print(f"{status} {DOCS}: {valid}/{len(docs_manifests)} YAML examples valid for Kubernetes "
      f"{min_kubernetes} and {latest_kubernetes}, {len(failures) - failures_before} problems")


# Keys tollgate knows that the chart can set neither itself nor through `config`
# (extraEnv still can): a note, not a failure.
config_schema = helm.Chart.load(CHART).schema["properties"]["config"]["properties"]
for key in sorted(known_keys - set(config_schema)):
    if "TOLLGATE_" + key.upper() not in env_seen:
        print(f"note tollgate key {key} is not exposed by the chart (values.yaml config or a dedicated value); extraEnv can set it")


# 5. Wrong values are refused, and the message names the field ----------------------

bad_values = [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"mode": "mesh"}, "/mode"),
    ({"grpc": {"port": -1}}, "/grpc/port"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"config": {"log_fromat": "json"}}, "log_fromat"),
    ({"config": {"policy_errors": "ignore"}}, "/config/policy_errors"),
    ({"replicas": 3}, "replicas"),
    ({"mode": "standalone", "metrics": {"port": 50051}}, "metrics.port"),
    ({"shutdown": {"delayMs": 30000, "graceMs": 10000}, "terminationGracePeriodSeconds": 20}, "terminationGracePeriodSeconds"),
    ({"redis": {"enabled": True}}, "redis.url"),
    ({"admin": {"enabled": True}}, "admin.token"),
    ({"mode": "sidecar", "networkPolicy": {"enabled": True}}, "networkPolicy.enabled"),
    ({"admin": {"enabled": True, "token": {"value": "short"}}}, "/admin/token/value"),
    ({"redis": {"enabled": True, "url": {"value": "http://redis:6379"}}}, "/redis/url/value"),
]
refused = 0
with helm.Chart.load(CHART) as chart:
    for values, field in bad_values:
        try:
            chart.render(values, name="tollgate", namespace=RELEASE_NAMESPACE)
        except helm.HelmError as error:
            message = str(error)
            if field in message:
                refused += 1
                detail = next((line.strip() for line in message.splitlines() if field in line), message)
                print(f"ok   refused {values}: {detail}")
            else:
                fail(f"bad values {values}", f"refused, but the message does not name {field}: {message.strip()}")
            continue
        fail(f"bad values {values}", "rendered without complaint")

elapsed = time.monotonic() - started
if failures:
    print(f"helm-check: {len(failures)} failures ({render_count} renders, {manifest_count} manifests valid, "
          f"{refused}/{len(bad_values)} bad values refused, {elapsed:.1f} s)")
    sys.exit(1)
print(f"helm-check: {render_count} renders, {manifest_count} manifests valid, {refused} bad values refused "
      f"({elapsed:.1f} s)")
PYTHON
