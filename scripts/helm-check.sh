#!/usr/bin/env bash
# Checks the Helm chart in helm/tollgate with real tools:
#   - Helm itself: Helm's Go SDK (v4) through the PyPI package helm-python-sdk
#     (no helm binary needed), for `helm lint --strict` and `helm template`;
#   - the Kubernetes OpenAPI schemas (PyPI: kubernetes-validate, strict mode:
#     unknown fields are errors).
# What it checks:
#   1. the chart's copy of the example catalog (files/policies, files/entitlements)
#      is identical to policies/ and entitlements/, its appVersion to Cargo.toml,
#      its README.md has a row for every value of values.yaml, and the example
#      route table commented in values.yaml is docs/envoy/routes.yaml;
#   2. lint and template with the default values, every ci/*-values.yaml, and the
#      example parent chart (examples/my-app) with classic and native sidecars;
#      the plain-YAML Deployment of docs/kubernetes.md is checked like a render;
#   3. every rendered manifest parses and is valid for the oldest Kubernetes the
#      chart supports (1.27; 1.29 with native sidecars) and the newest the
#      validator knows; prometheus-operator and cert-manager objects (no schema
#      here) are checked for apiVersion, kind and the fields the chart sets;
#   4. what the chart promises: hardened security contexts, gRPC probes on the
#      health-only listener, the API (and the AdminService, the HTTP front door,
#      ext_authz) on loopback beside an app and on the pod IP only with TLS and
#      callers (or insecure_listen, as tollgate itself demands), a grace period
#      covering the drain, no checksum of what tollgate reloads (only of the
#      chart's Secret and of the ext_authz route table, both read at start),
#      Secrets, ConfigMaps and projected volumes mounted without subPath, the
#      route table and JWT issuers file in a mounted volume, the licenses and
#      their keys in mounted directories (together, as tollgate demands) and
#      the license clock in a writable volume, service links
#      off, only TOLLGATE_* names that src/config_keys.rs knows, references to
#      ConfigMaps, Secrets, volumes and ports that exist, selectors that match,
#      NetworkPolicies that open only ports the pods listen on;
#   5. the deployment shapes: the sidecar's API on 127.0.0.1 with only health
#      and metrics on the pod IP; standalone with TLS and callers (an existing
#      Secret, or a cert-manager Certificate); the HTTP front door and ext_authz
#      beside an app (loopback) and standalone (Service ports, NetworkPolicy);
#      the route table and JWT issuers in their ConfigMaps, the JWKS Secret
#      projected beside issuers.yaml; signed licenses beside an app, standalone
#      (a floor under Redis, the clock on a claim) and in a parent chart's pods:
#      their Secrets mounted read-only, the license keys as TOLLGATE_*, no
#      entitlements ConfigMap where the licenses replace it; the opt-in Grafana
#      dashboard ConfigMap (sidecar label, folder annotation) and
#      PrometheusRule carry files/grafana/tollgate-dashboard.json and
#      files/prometheus/tollgate-alerts.yaml unchanged, but for the
#      stale-snapshot threshold, which follows redis.maxStaleMs;
#   6. values.schema.json and the chart refuse wrong values, naming the field.
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
import json
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
CERT_MANAGER = "cert-manager.io/v1"
# The fields of a cert-manager.io/v1 Certificate's spec, privateKey and issuerRef.
CERTIFICATE_FIELDS = {
    "secretName", "issuerRef", "dnsNames", "ipAddresses", "uris", "emailAddresses", "commonName",
    "duration", "renewBefore", "renewBeforePercentage", "privateKey", "usages", "secretTemplate",
    "subject", "literalSubject", "isCA", "keystores", "revisionHistoryLimit", "additionalOutputFormats",
    "nameConstraints", "otherNames", "encodeUsagesInRequest"}
PRIVATE_KEY_FIELDS = {"algorithm", "encoding", "size", "rotationPolicy"}
CERTIFICATE_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}
GO_DURATION = r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+"
# The Secret keys cert-manager writes.
CERTIFICATE_SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# The listeners, the container port each is published as, and whether tollgate
# applies its rule for non-loopback addresses (TLS and callers, or insecure_listen).
LISTENERS = (("TOLLGATE_LISTEN", "tg-grpc"), ("TOLLGATE_ADMIN_LISTEN", "tg-admin"),
             ("TOLLGATE_HTTP_LISTEN", "tg-http"), ("TOLLGATE_EXT_AUTHZ_LISTEN", "tg-ext-authz"))
# Where the chart mounts the ext_authz route table and the JWT issuers file.
EXT_AUTHZ_FILE = "/etc/tollgate/ext-authz/routes.yaml"
JWT_FILE = "/etc/tollgate/jwt/issuers.yaml"
# Where the chart mounts the licenses, their trusted keys, and the license clock.
LICENSES_DIR = "/etc/tollgate/licenses"
LICENSE_KEYS_DIR = "/etc/tollgate/license-keys"
LICENSE_CLOCK_FILE = "/var/lib/tollgate/license-clock/clock"
# Pod checksums the chart may set: of what tollgate reads only at start.
CHECKSUMS = {"checksum/secret", "checksum/ext-authz-routes"}
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

ENVOY_ROUTES = "docs/envoy/routes.yaml"
envoy_routes = yaml.safe_load(read(ENVOY_ROUTES))
commented = re.search(r"(?m)^  # routes:\n((?:  #(?:   .*)?\n)+)", read(f"{CHART}/values.yaml"))
if not commented:
    fail(f"{CHART}/values.yaml", "no commented example route table (`  # routes:`) under extAuthz")
elif yaml.safe_load(re.sub(r"(?m)^  #(   )?", "", commented.group(1))) != envoy_routes:
    fail(f"{CHART}/values.yaml", f"the commented example route table differs from {ENVOY_ROUTES}: copy it again")

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
chart_licenses = yaml.safe_load(read(f"{CHART}/values.yaml")).get("licenses") or {}
for value, key in (("pollMs", "license_poll_ms"), ("clockSkewMs", "license_clock_skew_ms")):
    if str(chart_licenses.get(value)) != key_defaults.get(key):
        fail(f"{CHART}/values.yaml", f"licenses.{value} is {chart_licenses.get(value)!r}, but tollgate's default "
             f"{key} is {key_defaults.get(key)!r} (src/config_keys.rs)")


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
    for name in ports:
        if name not in ("tg-health", "tg-metrics") + tuple(port for _, port in LISTENERS):
            fail(where, f"container port {name} is none of tollgate's listeners")
    # The kubelet probes the health-only listener, in plaintext, on the pod IP.
    health_port = ports.get("tg-health")
    if health_port is None:
        fail(where, "tollgate has no tg-health port (the health-only listener the kubelet probes)")
    health_listen = env_value(container, "TOLLGATE_HEALTH_LISTEN")
    if health_listen != f"0.0.0.0:{health_port}":
        fail(where, f"TOLLGATE_HEALTH_LISTEN is {health_listen!r}: the kubelet's gRPC probes need 0.0.0.0:{health_port}")
    if (env_value(container, "TOLLGATE_HEALTH_TLS") or "false") != "false":
        fail(where, "TOLLGATE_HEALTH_TLS is on: the kubelet's gRPC probes speak plaintext")
    for probe_kind, service in (("startupProbe", None), ("readinessProbe", "tollgate.v1.EntitlementService"),
                                ("livenessProbe", None)):
        probe = container.get(probe_kind)
        grpc = (probe or {}).get("grpc") or {}
        if not probe or grpc.get("port") != health_port:
            fail(where, f"tollgate {probe_kind} is not a grpc probe on the health port {health_port}")
        elif grpc.get("service") != service:
            fail(where, f"tollgate {probe_kind} asks for health service {grpc.get('service')!r}, not {service!r}")
    # The API, the AdminService, the HTTP front door and ext_authz: on loopback
    # they are no container ports; on the pod IP they are, and tollgate starts
    # only with TLS and callers, or insecure_listen.
    exposed = []
    for key, port_name in LISTENERS:
        address = env_value(container, key)
        if not address:
            if port_name in ports:
                fail(where, f"container port {port_name}, but {key} is not set")
            continue
        host = address.rpartition(":")[0].strip("[]")
        if host == "localhost" or host == "::1" or host.startswith("127."):
            if port_name in ports:
                fail(where, f"{key} is {address!r}, loopback only, yet the container declares port {port_name}")
        else:
            exposed.append(key)
            if address != f"0.0.0.0:{ports.get(port_name)}":
                fail(where, f"{key} is {address!r}, on the pod IP, but not 0.0.0.0:<container port {port_name}>")
    secured = env_value(container, "TOLLGATE_TLS_CERT_FILE") and env_value(container, "TOLLGATE_CALLERS_FILE")
    insecure = env_value(container, "TOLLGATE_INSECURE_LISTEN") == "true"
    if exposed and not secured and not insecure:
        fail(where, f"{' and '.join(exposed)} on a non-loopback address without TLS (TOLLGATE_TLS_CERT_FILE) and callers "
             f"(TOLLGATE_CALLERS_FILE), nor TOLLGATE_INSECURE_LISTEN=true: tollgate refuses to start")
    metrics_listen = env_value(container, "TOLLGATE_METRICS_LISTEN")
    if metrics_listen and metrics_listen != f"0.0.0.0:{ports.get('tg-metrics')}":
        fail(where, f"TOLLGATE_METRICS_LISTEN is {metrics_listen!r}, not 0.0.0.0:<container port tg-metrics>")
    if not metrics_listen and "tg-metrics" in ports:
        fail(where, "container port tg-metrics, but TOLLGATE_METRICS_LISTEN is not set")
    if native and container.get("restartPolicy") != "Always":
        fail(where, "tollgate as an init container without restartPolicy: Always is no sidecar")

    names = [entry["name"] for entry in container.get("env") or []]
    for name in names:
        if names.count(name) > 1:
            fail(where, f"env {name} is set twice")
        if name.startswith("TOLLGATE_") and name not in known_env:
            fail(where, f"env {name}: src/config_keys.rs has no key {name[len('TOLLGATE_'):].lower()} (tollgate refuses unknown TOLLGATE_* names)")
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
        if "subPath" in mount and ("configMap" in volume or "secret" in volume or "projected" in volume):
            fail(where, f"volumeMount {mount['name']} uses subPath: ConfigMap and Secret updates (policies, a renewed "
                 f"certificate, callers, JWT issuers and keys) would never arrive")
        sources = [volume] + ((volume.get("projected") or {}).get("sources") or [])
        for source in sources:
            if "configMap" in source:
                name = source["configMap"]["name"]
                if name not in config_maps and name not in values_text:
                    fail(where, f"volume {mount['name']}: ConfigMap {name} is neither rendered nor named in the values")
            if "secret" in source:
                name = source["secret"].get("secretName") or source["secret"].get("name")
                if name not in secrets and name not in values_text:
                    fail(where, f"volume {mount['name']}: Secret {name} is neither rendered nor issued nor named in the values")
            if "persistentVolumeClaim" in source:
                name = source["persistentVolumeClaim"]["claimName"]
                if name not in values_text:
                    fail(where, f"volume {mount['name']}: PersistentVolumeClaim {name} is not named in the values")
    # The TLS and callers files: in a mounted Secret, under the key the file is named after.
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
    for key in ("TOLLGATE_TLS_CERT_FILE", "TOLLGATE_TLS_KEY_FILE", "TOLLGATE_TLS_CLIENT_CA_FILE", "TOLLGATE_CALLERS_FILE"):
        path = env_value(container, key)
        if not path:
            continue
        mount = mounts.get(os.path.dirname(path))
        secret = (volumes.get(mount["name"]) or {}).get("secret") if mount else None
        if secret is None:
            fail(where, f"{key}={path}: its directory is no mounted Secret volume")
            continue
        name, file = secret["secretName"], os.path.basename(path)
        if name in secrets and file not in secrets[name]:
            fail(where, f"{key}={path}: Secret {name} has no key {file}")
        if secret.get("items") and not any(item.get("path") == file for item in secret["items"]):
            fail(where, f"{key}={path}: the volume's items leave {file} out")
    # The route table and the JWT issuers file: in a mounted ConfigMap (directly,
    # or projected), under the key the file is named after.
    for key in ("TOLLGATE_EXT_AUTHZ_FILE", "TOLLGATE_JWT_FILE"):
        path = env_value(container, key)
        if not path:
            continue
        mount = mounts.get(os.path.dirname(path))
        volume = volumes.get(mount["name"]) if mount else None
        if volume is None:
            fail(where, f"{key}={path}: its directory is no mounted volume")
            continue
        file = os.path.basename(path)
        maps = [s["configMap"] for s in [volume] + ((volume.get("projected") or {}).get("sources") or []) if "configMap" in s]
        if not any((name := m["name"]) in config_maps and file in config_maps[name]
                   and (not m.get("items") or any(item.get("path") == file for item in m["items"])) for m in maps):
            fail(where, f"{key}={path}: no rendered ConfigMap mounted at {os.path.dirname(path)} holds {file}")
    if env_value(container, "TOLLGATE_EXT_AUTHZ_LISTEN") and not env_value(container, "TOLLGATE_EXT_AUTHZ_FILE"):
        fail(where, "TOLLGATE_EXT_AUTHZ_LISTEN without TOLLGATE_EXT_AUTHZ_FILE: tollgate refuses to start")
    if bool(env_value(container, "TOLLGATE_TLS_CERT_FILE")) != bool(env_value(container, "TOLLGATE_TLS_KEY_FILE")):
        fail(where, "TOLLGATE_TLS_CERT_FILE and TOLLGATE_TLS_KEY_FILE go together")
    client_auth = env_value(container, "TOLLGATE_TLS_CLIENT_AUTH")
    if env_value(container, "TOLLGATE_TLS_CLIENT_CA_FILE"):
        if not env_value(container, "TOLLGATE_TLS_CERT_FILE"):
            fail(where, "TOLLGATE_TLS_CLIENT_CA_FILE without TOLLGATE_TLS_CERT_FILE")
        if client_auth not in (None, "required", "optional"):
            fail(where, f"TOLLGATE_TLS_CLIENT_AUTH is {client_auth!r}, neither required nor optional")
    elif client_auth is not None:
        fail(where, "TOLLGATE_TLS_CLIENT_AUTH without TOLLGATE_TLS_CLIENT_CA_FILE asks nothing")
    for key, path in (("TOLLGATE_POLICIES", "policies"), ("TOLLGATE_ENTITLEMENTS", "entitlements")):
        directory = env_value(container, key)
        if directory and not any(m["mountPath"] == directory for m in container.get("volumeMounts") or []):
            fail(where, f"{key}={directory} is not a mounted volume")
    # Signed licenses: the licenses and their keys together (tollgate refuses
    # one without the other), each a directory mounted read-only; the license
    # clock in a writable volume of its own (the root filesystem is read-only).
    licensed = [key for key in ("TOLLGATE_LICENSES", "TOLLGATE_LICENSE_KEYS") if env_value(container, key)]
    if len(licensed) == 1:
        fail(where, f"{licensed[0]} alone: tollgate refuses licenses without license_keys, and keys without licenses")
    for key in licensed:
        directory = env_value(container, key)
        mount = mounts.get(directory)
        if mount is None or not mount.get("readOnly"):
            fail(where, f"{key}={directory} is not a volume mounted read-only there")
        elif (volumes.get(mount["name"]) or {}).get("secret", {}).get("items"):
            fail(where, f"{key}={directory}: the Secret volume lists items, so a key added later never arrives")
    clock = env_value(container, "TOLLGATE_LICENSE_CLOCK_FILE")
    if clock:
        if not licensed:
            fail(where, "TOLLGATE_LICENSE_CLOCK_FILE without TOLLGATE_LICENSES is kept for nothing")
        mount = mounts.get(os.path.dirname(clock))
        volume = volumes.get(mount["name"]) if mount else None
        if volume is None or mount.get("readOnly") or not ("emptyDir" in volume or "persistentVolumeClaim" in volume):
            fail(where, f"TOLLGATE_LICENSE_CLOCK_FILE={clock}: its directory is no writable emptyDir or claim "
                 f"(tollgate replaces the file through a temporary one beside it)")
    elsewhere = [key for key in ("TOLLGATE_REDIS_URL", "TOLLGATE_LICENSES")
                 if any(e["name"] == key for e in container.get("env") or [])]
    if elsewhere and env_value(container, "TOLLGATE_ENTITLEMENTS"):
        fail(where, f"TOLLGATE_ENTITLEMENTS beside {' and '.join(elsewhere)}: tollgate reads no entitlements directory then")
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


def tollgate_containers(pod):
    """The tollgate containers of a pod template, each with whether it is a native sidecar."""
    spec = pod["spec"]
    return [(c, False) for c in spec.get("containers") or [] if env_value(c, "TOLLGATE_LISTEN")] + \
        [(c, True) for c in spec.get("initContainers") or [] if env_value(c, "TOLLGATE_LISTEN")]


def check_certificate(where, doc, pods):
    """A cert-manager Certificate: the fields cert-manager knows, a Secret, an issuer, names, and a pod mounting it."""
    problems = len(failures)
    if doc["kind"] != "Certificate":
        fail(where, f"{doc['kind']}: the chart renders only Certificates of {CERT_MANAGER}")
        return 0
    spec = doc.get("spec") or {}
    for unknown in sorted(set(spec) - CERTIFICATE_FIELDS):
        fail(where, f"spec.{unknown} is no field of a {CERT_MANAGER} Certificate")
    if not spec.get("secretName"):
        fail(where, "spec.secretName is not set")
    issuer = spec.get("issuerRef") or {}
    if not issuer.get("name") or set(issuer) - {"name", "kind", "group"}:
        fail(where, f"spec.issuerRef {issuer!r} needs a name (and only name, kind, group)")
    if not any(spec.get(k) for k in ("dnsNames", "ipAddresses", "uris", "commonName", "emailAddresses")):
        fail(where, "names nothing (dnsNames, ipAddresses, uris, commonName)")
    for field in ("duration", "renewBefore"):
        if field in spec and not re.fullmatch(GO_DURATION, str(spec[field])):
            fail(where, f"spec.{field} {spec[field]!r} is no Go duration")
    for unknown in sorted(set(spec.get("privateKey") or {}) - PRIVATE_KEY_FIELDS):
        fail(where, f"spec.privateKey.{unknown} is no field of a Certificate's privateKey")
    usages = spec.get("usages") or []
    for usage in usages:
        if usage not in CERTIFICATE_USAGES:
            fail(where, f"spec.usages: {usage!r} is no cert-manager key usage")
    if usages and "server auth" not in usages:
        fail(where, "spec.usages lacks server auth: tollgate serves with this certificate")
    mounted = [volume for _, pod in pods for volume in pod["spec"].get("volumes") or []
               if (volume.get("secret") or {}).get("secretName") == spec.get("secretName")]
    if pods and not mounted:
        fail(where, f"issues Secret {spec.get('secretName')}, which no rendered pod mounts")
    return int(len(failures) == problems)


def check_network_policy(where, doc, pods):
    """Every port the policy opens is one the selected tollgate pods listen on; the health port is open to all."""
    selector = (doc["spec"].get("podSelector") or {}).get("matchLabels") or {}
    selected = [pod for _, pod in pods if labels_match(selector, pod["metadata"].get("labels") or {})]
    listening = {p["containerPort"]: p["name"] for pod in selected for c, _ in tollgate_containers(pod)
                 for p in c.get("ports") or []}
    health = [port for port, name in listening.items() if name == "tg-health"]
    open_to_all = set()
    for rule in doc["spec"].get("ingress") or []:
        for port in rule.get("ports") or []:
            if port.get("port") not in listening and port.get("port") not in listening.values():
                fail(where, f"opens port {port.get('port')}, which no selected tollgate container listens on "
                     f"(listening: {sorted(listening.values())})")
            if not rule.get("from"):
                open_to_all.add(port.get("port"))
    for port in health:
        if port not in open_to_all and "tg-health" not in open_to_all:
            fail(where, f"the health port {port} is not open to every source: the kubelet's probes come from the node")


def check_manifests(label, manifests, values_text, kube_versions):
    count = 0
    config_maps = {}
    secrets = {}
    for _, doc in manifests:
        if doc.get("kind") == "ConfigMap":
            config_maps[doc["metadata"]["name"]] = doc.get("data") or {}
        if doc.get("kind") == "Secret":
            secrets[doc["metadata"]["name"]] = set((doc.get("stringData") or {}) | (doc.get("data") or {}))
        if doc.get("apiVersion") == CERT_MANAGER and doc.get("kind") == "Certificate":
            secrets[(doc.get("spec") or {}).get("secretName")] = CERTIFICATE_SECRET_KEYS
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
            elif doc["kind"] == "PrometheusRule":
                rules = [r for g in spec.get("groups") or [] for r in g.get("rules") or []]
                ok = set(spec) == {"groups"} and bool(rules) and all(g.get("name") for g in spec["groups"]) \
                    and all(("alert" in r) != ("record" in r) and r.get("expr") for r in rules)
            else:
                ok = False
            if not ok:
                fail(where, f"{doc['kind']} lacks its selector or endpoints")
            count += 1
            continue
        if doc["apiVersion"] == CERT_MANAGER:
            count += check_certificate(where, doc, pods)
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
        if kind == "NetworkPolicy":
            check_network_policy(where, doc, pods)
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
            if key.startswith("checksum/") and key not in CHECKSUMS:
                fail(where, f"annotation {key}: a checksum of what tollgate reloads (policies, snapshots, callers, "
                     f"certificates, JWT issuers) would restart pods and defeat hot reload")
        tollgates = tollgate_containers(pod)
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
renders = [("default values", CHART, {}, "tollgate", None),
           ("default values, mode example", CHART, {"mode": "example"}, "tollgate", None)]
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
# The front doors in a parent chart's own pods: the HTTP front door, ext_authz
# for an Envoy in the pod, and JWTs, all through the public helpers.
PARENT_FRONT_DOORS = {"tollgate": {
    "http": {"enabled": True, "authzen": {"namespace": "Shop", "types": "user=Shop::Customer"}},
    "extAuthz": {"enabled": True, "routes": envoy_routes},
    "jwt": {"enabled": True, "issuers": {"issuers": [{
        "issuer": "https://login.example.com/", "audiences": ["shop"], "algorithms": ["ES256"],
        "jwks_url": "https://login.example.com/.well-known/jwks.json", "tenant_claim": "org_id"}]}}}}
renders.append(("examples/my-app (sidecar, front doors)", parent, PARENT_FRONT_DOORS, "shop",
                os.path.join(parent, "values.yaml")))

# Signed licenses in a parent chart's own pods, through tollgate.volumes: no clock file.
PARENT_LICENSES = {"tollgate": {"licenses": {
    "enabled": True, "secretName": "shop-licenses", "keysSecretName": "shop-license-keys",
    "clusterId": "eu-west-k8s", "clock": {"enabled": False}}}}
renders.append(("examples/my-app (sidecar, licenses)", parent, PARENT_LICENSES, "shop",
                os.path.join(parent, "values.yaml")))

render_count = 0
manifest_count = 0
rendered = {}
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
        rendered[label] = manifests
        text = (read(values_file) if values_file else "") + (yaml.safe_dump(values) if values else "")
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


# 5. The deployment shapes ---------------------------------------------------------

def only_tollgate(label):
    """The one tollgate container (and its pod template) of a render; None after a failure."""
    manifests = rendered.get(label)
    if manifests is None:
        fail(label, "was not rendered (a ci/*-values.yaml file missing, or the render failed)")
        return None, None
    found = [(c, pod) for _, pod in pod_specs(manifests) for c, _ in tollgate_containers(pod)]
    if len(found) != 1:
        fail(label, f"{len(found)} tollgate containers, expected 1")
        return None, None
    return found[0]


def shape(label, check):
    failures_before = len(failures)
    check(label)
    status = "ok  " if len(failures) == failures_before else "FAIL"
    print(f"{status} shape {label}: {check.__doc__}")


def beside_an_app(label):
    """API on 127.0.0.1, only health and metrics on the pod IP, probes on the health port"""
    container, pod = only_tollgate(label)
    if container is None:
        return
    if env_value(container, "TOLLGATE_LISTEN") != "127.0.0.1:50051":
        fail(label, f"TOLLGATE_LISTEN is {env_value(container, 'TOLLGATE_LISTEN')!r}, not 127.0.0.1:50051")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
    if ports != {"tg-health": 50053, "tg-metrics": 9090}:
        fail(label, f"container ports {ports}: expected only tg-health 50053 and tg-metrics 9090")
    on_pod_ip = sorted(e["name"] for e in container.get("env") or [] if "0.0.0.0" in str(e.get("value")))
    if on_pod_ip != ["TOLLGATE_HEALTH_LISTEN", "TOLLGATE_METRICS_LISTEN"]:
        fail(label, f"listening on 0.0.0.0: {on_pod_ip}, expected only the health and metrics listeners")
    admin = env_value(container, "TOLLGATE_ADMIN_LISTEN")
    if admin and not admin.startswith("127.0.0.1:"):
        fail(label, f"TOLLGATE_ADMIN_LISTEN is {admin!r} beside an app: loopback only")
    for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if ((container.get(probe_kind) or {}).get("grpc") or {}).get("port") != 50053:
            fail(label, f"{probe_kind} does not probe the health port 50053")


def standalone_with_tls(label, certificate):
    container, pod = only_tollgate(label)
    if container is None:
        return
    expected = {"TOLLGATE_LISTEN": "0.0.0.0:50051", "TOLLGATE_HEALTH_LISTEN": "0.0.0.0:50053",
                "TOLLGATE_TLS_CERT_FILE": "/etc/tollgate/tls/tls.crt", "TOLLGATE_TLS_KEY_FILE": "/etc/tollgate/tls/tls.key",
                "TOLLGATE_TLS_CLIENT_CA_FILE": "/etc/tollgate/tls/ca.crt", "TOLLGATE_TLS_CLIENT_AUTH": "optional",
                "TOLLGATE_CALLERS_FILE": "/etc/tollgate/callers/callers.yaml"}
    for name, value in expected.items():
        if env_value(container, name) != value:
            fail(label, f"{name} is {env_value(container, name)!r}, not {value!r}")
    if env_value(container, "TOLLGATE_INSECURE_LISTEN") is not None:
        fail(label, "TOLLGATE_INSECURE_LISTEN is set although TLS and callers are")
    if "tg-grpc" not in {p["name"] for p in container.get("ports") or []}:
        fail(label, "no tg-grpc container port")
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
    manifests = rendered[label]
    values = load_values(f"{CHART}/{label}")
    for path, what in (("/etc/tollgate/tls", "TLS"), ("/etc/tollgate/callers", "callers")):
        mount = mounts.get(path)
        if mount is None or "subPath" in mount or "secret" not in volumes.get(mount["name"], {}):
            fail(label, f"the {what} Secret is not mounted as a whole directory at {path}")
    tls_secret = (volumes.get((mounts.get("/etc/tollgate/tls") or {}).get("name")) or {}).get("secret", {}).get("secretName")
    certificates = [doc for _, doc in manifests if doc.get("kind") == "Certificate"]
    if certificate:
        if len(certificates) != 1 or certificates[0]["apiVersion"] != CERT_MANAGER:
            fail(label, f"{len(certificates)} {CERT_MANAGER} Certificates rendered, expected 1")
        else:
            spec = certificates[0]["spec"]
            if spec.get("secretName") != tls_secret:
                fail(label, f"the Certificate writes Secret {spec.get('secretName')}, the pods mount {tls_secret}")
            if spec.get("issuerRef") != values["tls"]["certManager"]["issuerRef"]:
                fail(label, f"the Certificate's issuerRef {spec.get('issuerRef')} is not the values' one")
    else:
        if certificates:
            fail(label, "a Certificate is rendered although tls.secretName names the Secret")
        if tls_secret != values["tls"]["secretName"]:
            fail(label, f"the pods mount TLS Secret {tls_secret}, not tls.secretName {values['tls']['secretName']}")
    callers_secret = (volumes.get((mounts.get("/etc/tollgate/callers") or {}).get("name")) or {}).get("secret", {}).get("secretName")
    secret = next((doc for _, doc in manifests if doc.get("kind") == "Secret" and doc["metadata"]["name"] == callers_secret), None)
    if secret is None:
        fail(label, f"the callers Secret {callers_secret} is not rendered")
    else:
        data = secret.get("stringData") or {}
        if yaml.safe_load(data.get("callers.yaml", "")) != values["callers"]["config"]:
            fail(label, f"callers.yaml in Secret {callers_secret} is not callers.config")
        for name in values["callers"].get("tokens") or {}:
            if name not in data:
                fail(label, f"token file {name} is not in Secret {callers_secret}")
    checksums = [k for k in (pod["metadata"].get("annotations") or {}) if k.startswith("checksum/")]
    if any(k not in CHECKSUMS for k in checksums):
        fail(label, f"pod annotations {checksums}: a renewed certificate or edited callers file must not restart pods")


def standalone_tls_secret(label):
    """API on 0.0.0.0 with TLS from tls.secretName and callers from the chart's Secret, all mounted without subPath"""
    standalone_with_tls(label, certificate=False)


def standalone_cert_manager(label):
    """API on 0.0.0.0 with TLS from a cert-manager Certificate the pods mount, and callers"""
    standalone_with_tls(label, certificate=True)


def standalone_insecure(label):
    """API on 0.0.0.0 in plaintext only with TOLLGATE_INSECURE_LISTEN=true"""
    container, _ = only_tollgate(label)
    if container is None:
        return
    if env_value(container, "TOLLGATE_LISTEN") != "0.0.0.0:50051" or env_value(container, "TOLLGATE_INSECURE_LISTEN") != "true":
        fail(label, "expected TOLLGATE_LISTEN=0.0.0.0:50051 with TOLLGATE_INSECURE_LISTEN=true")


def front_doors(label, host, own_pod=True):
    """The HTTP front door, ext_authz and JWTs of a render as its values say: env, ports, ConfigMaps, volumes."""
    container, pod = only_tollgate(label)
    if container is None:
        return
    values = load_values(f"{CHART}/{label}") if label.startswith("ci/") else PARENT_FRONT_DOORS["tollgate"]
    manifests = rendered[label]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
    annotations = pod["metadata"].get("annotations") or {}
    config_maps = {doc["metadata"]["name"]: doc.get("data") or {} for _, doc in manifests if doc.get("kind") == "ConfigMap"}

    def expect_env(name, value):
        if env_value(container, name) != value:
            fail(label, f"{name} is {env_value(container, name)!r}, not {value!r}")

    def expect_port(port_name, port):
        if host == "0.0.0.0" and ports.get(port_name) != port:
            fail(label, f"container port {port_name} is {ports.get(port_name)!r}, not {port} (on the pod IP)")
        if host != "0.0.0.0" and port_name in ports:
            fail(label, f"container port {port_name} declared, although the listener is on loopback")

    def mounted(path):
        """The volume mounted at path, whole (no subPath) and read-only; None after a failure."""
        mount = mounts.get(path)
        if mount is None or "subPath" in mount or not mount.get("readOnly"):
            fail(label, f"nothing is mounted read-only as a whole directory at {path}")
            return None
        return volumes.get(mount["name"])

    http = values.get("http") or {}
    if http.get("enabled"):
        port = http.get("port", 8080)
        expect_env("TOLLGATE_HTTP_LISTEN", f"{host}:{port}")
        expect_port("tg-http", port)
        authzen = http.get("authzen") or {}
        for key, default in (("tenant", "header:x-tollgate-tenant"), ("namespace", ""), ("types", "")):
            expect_env(f"TOLLGATE_AUTHZEN_{key.upper()}", authzen.get(key, default) or None)
        app = [c for c in pod["spec"]["containers"] if c is not container]
        if own_pod and app and host != "0.0.0.0":
            scheme = "https" if (values.get("tls") or {}).get("enabled") else "http"
            if env_value(app[0], "ENTITLEMENTS_HTTP_TARGET") != f"{scheme}://127.0.0.1:{port}":
                fail(label, f"the app's ENTITLEMENTS_HTTP_TARGET is {env_value(app[0], 'ENTITLEMENTS_HTTP_TARGET')!r}")
    else:
        for name in ("TOLLGATE_HTTP_LISTEN", "TOLLGATE_AUTHZEN_TENANT", "TOLLGATE_AUTHZEN_NAMESPACE", "TOLLGATE_AUTHZEN_TYPES"):
            expect_env(name, None)

    ext = values.get("extAuthz") or {}
    if ext.get("enabled"):
        port = ext.get("port", 50054)
        expect_env("TOLLGATE_EXT_AUTHZ_LISTEN", f"{host}:{port}")
        expect_env("TOLLGATE_EXT_AUTHZ_FILE", EXT_AUTHZ_FILE)
        expect_port("tg-ext-authz", port)
        volume = mounted(os.path.dirname(EXT_AUTHZ_FILE))
        name = ((volume or {}).get("configMap") or {}).get("name")
        if volume is not None and name not in config_maps:
            fail(label, f"the route table's volume is no rendered ConfigMap ({volume})")
        elif volume is not None:
            routes = yaml.safe_load(config_maps[name].get("routes.yaml") or "null")
            if routes != ext["routes"]:
                fail(label, f"routes.yaml in ConfigMap {name} is not extAuthz.routes")
        if own_pod and "checksum/ext-authz-routes" not in annotations:
            fail(label, "no checksum/ext-authz-routes annotation: tollgate reads the route table at start, an edit must roll the pods")
    else:
        expect_env("TOLLGATE_EXT_AUTHZ_LISTEN", None)
        expect_env("TOLLGATE_EXT_AUTHZ_FILE", None)
        if "checksum/ext-authz-routes" in annotations:
            fail(label, "checksum/ext-authz-routes without extAuthz.enabled")

    jwt = values.get("jwt") or {}
    if jwt.get("enabled"):
        expect_env("TOLLGATE_JWT_FILE", JWT_FILE)
        volume = mounted(os.path.dirname(JWT_FILE))
        sources = ((volume or {}).get("projected") or {}).get("sources") or []
        if volume is not None and not sources:
            fail(label, f"the JWT directory is no projected volume ({volume})")
        maps = [s["configMap"] for s in sources if "configMap" in s]
        secrets = [s["secret"] for s in sources if "secret" in s]
        if len(maps) != 1 or maps[0]["name"] not in config_maps:
            fail(label, f"the JWT volume projects {len(maps)} ConfigMaps, expected the chart's issuers ConfigMap")
        elif yaml.safe_load(config_maps[maps[0]["name"]].get("issuers.yaml") or "null") != jwt["issuers"]:
            fail(label, f"issuers.yaml in ConfigMap {maps[0]['name']} is not jwt.issuers")
        wanted = [jwt["jwksSecret"]] if jwt.get("jwksSecret") else []
        if [s.get("name") for s in secrets] != wanted:
            fail(label, f"the JWT volume projects Secrets {[s.get('name') for s in secrets]}, expected {wanted}")
        for issuer in jwt["issuers"]["issuers"]:
            file = issuer.get("jwks_file")
            if file and not file.startswith("/") and not secrets:
                fail(label, f"issuer {issuer['issuer']}: jwks_file {file} resolves to {os.path.dirname(JWT_FILE)}/{file}, "
                     f"but no Secret is projected there")
        if any(k.startswith("checksum/") and "jwt" in k for k in annotations):
            fail(label, "a checksum of the JWT issuers: tollgate rereads them, an edit must not restart pods")
    else:
        expect_env("TOLLGATE_JWT_FILE", None)

    if host == "0.0.0.0":
        service = next((doc for _, doc in manifests if doc.get("kind") == "Service"), None)
        service_ports = {p["name"]: p for p in (service or {}).get("spec", {}).get("ports") or []}
        tls = (values.get("tls") or {}).get("enabled")
        for enabled, name, target, port, protocol in (
                (http.get("enabled"), "http", "tg-http", http.get("port", 8080), "https" if tls else "http"),
                (ext.get("enabled"), "ext-authz", "tg-ext-authz", ext.get("port", 50054),
                 "https" if tls else "kubernetes.io/h2c")):
            entry = service_ports.get(name)
            if not enabled:
                if entry:
                    fail(label, f"Service port {name} without its listener")
                continue
            if not entry or entry.get("port") != port or entry.get("targetPort") != target or entry.get("appProtocol") != protocol:
                fail(label, f"Service port {name} is {entry}, expected port {port} -> {target}, appProtocol {protocol}")
        policy = next((doc for _, doc in manifests if doc.get("kind") == "NetworkPolicy"), None)
        if policy is not None:
            network = values.get("networkPolicy") or {}
            for enabled, key, port in ((http.get("enabled"), "httpFrom", http.get("port", 8080)),
                                       (ext.get("enabled"), "extAuthzFrom", ext.get("port", 50054))):
                if not enabled:
                    continue
                rules = [r for r in policy["spec"].get("ingress") or [] if any(p.get("port") == port for p in r.get("ports") or [])]
                peers = network.get(key, [{"podSelector": {}}])
                if [r.get("from") for r in rules] != [peers]:
                    fail(label, f"the NetworkPolicy opens port {port} to {[r.get('from') for r in rules]}, not networkPolicy.{key} {peers}")


def http_beside_an_app(label):
    """HTTP front door (and AuthZEN settings) on 127.0.0.1 only, the app told where; API and probes as beside_an_app"""
    beside_an_app(label)
    front_doors(label, "127.0.0.1")


def ext_authz_beside_an_app(label):
    """ext_authz on 127.0.0.1 for an Envoy in the pod, routes.yaml = docs/envoy/routes.yaml in a ConfigMap directory, pods roll on an edit"""
    beside_an_app(label)
    front_doors(label, "127.0.0.1")
    values = load_values(f"{CHART}/{label}")
    if values["extAuthz"]["routes"] != envoy_routes:
        fail(label, f"extAuthz.routes is not {ENVOY_ROUTES}: copy it again")


def jwt_url_beside_an_app(label):
    """JWT issuers (jwks_url) as issuers.yaml in a projected ConfigMap at /etc/tollgate/jwt, no Secret, no checksum"""
    beside_an_app(label)
    front_doors(label, "127.0.0.1")


def jwt_jwks_secret_standalone(label):
    """JWKS Secret projected beside issuers.yaml (jwks_file resolves), ext_authz on 0.0.0.0 reading claims, insecureListen"""
    standalone_insecure(label)
    front_doors(label, "0.0.0.0")


def standalone_front_doors(label):
    """HTTP front door and ext_authz on 0.0.0.0 with TLS and callers: container ports, Service ports, NetworkPolicy peers"""
    standalone_tls_secret(label)
    front_doors(label, "0.0.0.0")


def parent_front_doors(label):
    """a parent chart's sidecar with HTTP, ext_authz and JWTs: all on 127.0.0.1, their ConfigMaps through tollgate.volumes"""
    beside_an_app(label)
    front_doors(label, "127.0.0.1", own_pod=False)


def licensed(label, own_pod=True):
    """Signed licenses as the values say: env, Secret volumes, the clock volume, no entitlements directory."""
    container, pod = only_tollgate(label)
    if container is None:
        return
    values = load_values(f"{CHART}/{label}") if label.startswith("ci/") else PARENT_LICENSES["tollgate"]
    defaults = load_values(f"{CHART}/values.yaml")["licenses"]
    licenses = {**defaults, **values["licenses"], "clock": {**defaults["clock"], **(values["licenses"].get("clock") or {})}}
    redis = (values.get("redis") or {}).get("enabled")
    manifests = rendered[label]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}

    def expect_env(name, value):
        if env_value(container, name) != value:
            fail(label, f"{name} is {env_value(container, name)!r}, not {value!r}")

    expect_env("TOLLGATE_LICENSES", LICENSES_DIR)
    expect_env("TOLLGATE_LICENSE_KEYS", LICENSE_KEYS_DIR)
    expect_env("TOLLGATE_LICENSE_POLL_MS", str(licenses["pollMs"]))
    expect_env("TOLLGATE_LICENSE_CLOCK_SKEW_MS", str(licenses["clockSkewMs"]))
    expect_env("TOLLGATE_INSTALL_ID", licenses["installId"] or None)
    expect_env("TOLLGATE_CLUSTER_ID", licenses["clusterId"] or None)
    for directory, secret_name in ((LICENSES_DIR, licenses["secretName"]), (LICENSE_KEYS_DIR, licenses["keysSecretName"])):
        mount = mounts.get(directory)
        if mount is None or "subPath" in mount or not mount.get("readOnly"):
            fail(label, f"nothing is mounted read-only as a whole directory at {directory}")
            continue
        secret = (volumes.get(mount["name"]) or {}).get("secret") or {}
        if secret.get("secretName") != secret_name or secret.get("items"):
            fail(label, f"{directory} is {volumes.get(mount['name'])}, expected all of Secret {secret_name}")
    if licenses["clock"]["enabled"]:
        expect_env("TOLLGATE_LICENSE_CLOCK_FILE", LICENSE_CLOCK_FILE)
        mount = mounts.get(os.path.dirname(LICENSE_CLOCK_FILE))
        volume = volumes.get(mount["name"]) if mount else None
        claim = licenses["clock"]["existingClaim"]
        expected = {"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {"sizeLimit": "1Mi"}}
        if volume is None or {k: v for k, v in volume.items() if k != "name"} != expected:
            fail(label, f"the license clock volume is {volume}, expected {expected}")
    else:
        expect_env("TOLLGATE_LICENSE_CLOCK_FILE", None)
        if os.path.dirname(LICENSE_CLOCK_FILE) in mounts:
            fail(label, "the license clock directory is mounted although licenses.clock.enabled is false")
    # The licenses (or Redis) serve the tenants: no entitlements directory.
    expect_env("TOLLGATE_ENTITLEMENTS", None)
    if any("entitlements" in name for name in volumes):
        fail(label, f"an entitlements volume although {'Redis and ' if redis else ''}the licenses serve the tenants")
    if any(doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].endswith("-entitlements") for _, doc in manifests):
        fail(label, "an entitlements ConfigMap is rendered although nothing reads it")
    if own_pod and any("licen" in key for key in pod["metadata"].get("annotations") or {}):
        fail(label, "a checksum of the licenses: tollgate rescans them, a new license must not restart pods")


def licenses_beside_an_app(label):
    """licenses and trusted keys from Secrets, read-only at /etc/tollgate/licenses and /etc/tollgate/license-keys; install and cluster ids; the clock in an emptyDir; no entitlements ConfigMap"""
    beside_an_app(label)
    licensed(label)


def licenses_standalone(label):
    """licenses as a floor under Redis, standalone in plaintext (insecureListen); the clock on an existing claim"""
    standalone_insecure(label)
    licensed(label)


def parent_licenses(label):
    """a parent chart's sidecar with licenses through tollgate.volumes, cluster id, no clock file"""
    beside_an_app(label)
    licensed(label, own_pod=False)


DASHBOARD_FILE = f"{CHART}/files/grafana/tollgate-dashboard.json"
RULES_FILE = f"{CHART}/files/prometheus/tollgate-alerts.yaml"
STALE_EXPR = "tollgate_snapshot_oldest_age_seconds > 300"


def expected_rules(threshold):
    """The groups of the rules file with the stale-snapshot threshold given."""
    text = read(RULES_FILE)
    if STALE_EXPR not in text:
        fail(RULES_FILE, f"TollgateSnapshotsStale no longer reads {STALE_EXPR!r}, which the chart replaces")
    return yaml.safe_load(text.replace(STALE_EXPR, f"tollgate_snapshot_oldest_age_seconds > {threshold}"))["groups"]


def monitoring_objects(manifests):
    """The dashboard ConfigMaps and the PrometheusRules of a render."""
    dashboards = [doc for _, doc in manifests if doc.get("kind") == "ConfigMap"
                  and "tollgate-dashboard.json" in (doc.get("data") or {})]
    rules = [doc for _, doc in manifests if doc.get("kind") == "PrometheusRule"]
    return dashboards, rules


def monitoring(label):
    """the Grafana dashboard ConfigMap (sidecar label, folder, namespace) and the PrometheusRule (extra labels, stale threshold from redis.maxStaleMs), both the repository's files; neither by default"""
    beside_an_app(label)
    values = load_values(f"{CHART}/{label}")
    dashboards, rules = monitoring_objects(rendered.get(label) or [])
    if len(dashboards) != 1:
        fail(label, f"{len(dashboards)} dashboard ConfigMaps, expected 1")
    else:
        meta = dashboards[0]["metadata"]
        if (meta.get("labels") or {}).get("grafana_dashboard") != "1":
            fail(label, f"the dashboard ConfigMap lacks the sidecar's label grafana_dashboard: \"1\": {meta.get('labels')}")
        if (meta.get("annotations") or {}).get("grafana_folder") != values["grafanaDashboard"]["folder"]:
            fail(label, f"the dashboard ConfigMap's folder annotation is {meta.get('annotations')}")
        if meta.get("namespace") != values["grafanaDashboard"]["namespace"]:
            fail(label, f"the dashboard ConfigMap is in namespace {meta.get('namespace')!r}")
        try:
            shipped = json.loads(dashboards[0]["data"]["tollgate-dashboard.json"])
        except ValueError as error:
            fail(label, f"the dashboard in the ConfigMap is no JSON: {error}")
        else:
            if shipped != json.loads(read(DASHBOARD_FILE)):
                fail(label, f"the dashboard in the ConfigMap differs from {DASHBOARD_FILE}")
    if len(rules) != 1:
        fail(label, f"{len(rules)} PrometheusRules, expected 1")
    else:
        labels = rules[0]["metadata"].get("labels") or {}
        for key, value in values["prometheusRule"]["labels"].items():
            if labels.get(key) != value:
                fail(label, f"the PrometheusRule lacks the label {key}: {value}")
        threshold = values["redis"]["maxStaleMs"] // 1000
        if rules[0]["spec"]["groups"] != expected_rules(threshold):
            fail(label, f"the PrometheusRule's groups are not {RULES_FILE} with the stale threshold {threshold}")
    # The threshold without redis.maxStaleMs (tollgate's default) and at its floor.
    for max_stale, threshold in ((None, 300), (0, 1), (1500, 1.5)):
        values = {"prometheusRule": {"enabled": True}, "redis": {"maxStaleMs": max_stale}}
        _, rules = monitoring_objects(render(CHART, values, "tollgate"))
        if len(rules) != 1 or rules[0]["spec"]["groups"] != expected_rules(threshold):
            fail(label, f"with redis.maxStaleMs {max_stale} the rules are not {RULES_FILE} with the stale threshold {threshold}")
    # Opt-in: no render of another values file has them.
    for other, manifests in rendered.items():
        if other != label and any(monitoring_objects(manifests)):
            fail(other, "renders the dashboard ConfigMap or the PrometheusRule without grafanaDashboard.enabled or prometheusRule.enabled")


shape("default values, mode example", beside_an_app)
shape("examples/my-app (sidecar)", beside_an_app)
shape("examples/my-app (native sidecar)", beside_an_app)
shape("ci/standalone-tls-values.yaml", standalone_tls_secret)
shape("ci/standalone-full-values.yaml", standalone_cert_manager)
shape("ci/standalone-insecure-values.yaml", standalone_insecure)
shape("ci/http-example-values.yaml", http_beside_an_app)
shape("ci/ext-authz-values.yaml", ext_authz_beside_an_app)
shape("ci/jwt-url-values.yaml", jwt_url_beside_an_app)
shape("ci/jwt-jwks-secret-values.yaml", jwt_jwks_secret_standalone)
shape("ci/standalone-http-values.yaml", standalone_front_doors)
shape("examples/my-app (sidecar, front doors)", parent_front_doors)
shape("ci/licenses-example-values.yaml", licenses_beside_an_app)
shape("ci/licenses-standalone-values.yaml", licenses_standalone)
shape("examples/my-app (sidecar, licenses)", parent_licenses)
shape("ci/monitoring-values.yaml", monitoring)


# Keys tollgate knows that the chart can set neither itself nor through `config`
# (extraEnv still can): a note, not a failure.
config_schema = helm.Chart.load(CHART).schema["properties"]["config"]["properties"]
# Keys the chart leaves alone on purpose.
deliberately_unset = {"health_tls": "the kubelet's gRPC probes speak plaintext"}
for key in sorted(known_keys - set(config_schema) - set(deliberately_unset)):
    if "TOLLGATE_" + key.upper() not in env_seen:
        print(f"note tollgate key {key} is not exposed by the chart (values.yaml config or a dedicated value); extraEnv can set it")


# 6. Wrong values are refused, and the message names the field ----------------------

def caller(**fields):
    """A caller entry of a callers file, with operations and tenants unless given."""
    return {"operations": ["check"], "tenants": ["*"], **fields}


def issuer(**fields):
    """An issuer entry of a JWT issuers file, keys (jwks_url or jwks_file) only if given."""
    return {"issuer": "https://login.example.com/", "audiences": ["tollgate"], "algorithms": ["RS256"], **fields}


JWKS_URL = "https://login.example.com/.well-known/jwks.json"
# A minimal route table tollgate accepts.
ROUTES = {"tenant": {"header": "x-tenant-id"}, "principal": {"header": "x-user-id"},
          "routes": [{"path": "/features/{feature}", "action": "use", "resource": {"type": "Feature", "id": "{feature}"}}]}


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
    ({"health": {"port": 50051}}, "health.port"),
    ({"mode": "standalone"}, ("tls.", "callers.", "insecureListen")),
    ({"mode": "standalone", "tls": {"enabled": True, "secretName": "tollgate-tls"}}, ("callers.", "insecureListen")),
    ({"mode": "standalone", "callers": {"existingSecret": "tollgate-callers"}}, ("tls.", "insecureListen")),
    ({"tls": {"enabled": True}}, "tls.secretName"),
    ({"tls": {"enabled": True, "secretName": "a", "certManager": {"enabled": True}}}, "tls.certManager.enabled"),
    ({"tls": {"certManager": {"enabled": True}}}, "tls.certManager.enabled"),
    ({"tls": {"enabled": True, "certManager": {"enabled": True}}}, "tls.certManager.issuerRef.name"),
    ({"tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}, "tls.certManager.dnsNames"),
    ({"tls": {"clientAuth": "maybe"}}, "/tls/clientAuth"),
    ({"tls": {"enabled": True, "certManager": {"enabled": True, "duration": "90 days"}}}, "/tls/certManager/duration"),
    ({"callers": {"config": {"callers": [caller(name="shop", token_file="shop.token")]}}}, "callers.tokens"),
    ({"callers": {"config": {"callers": [caller(name="shop", uri_san="spiffe://cluster.local/ns/shop/sa/shop")]}}},
     "tls.enabled"),
    ({"tls": {"enabled": True, "secretName": "tollgate-tls"},
      "callers": {"config": {"callers": [caller(name="job", token_file="job.token")]},
                  "tokens": {"job.token": "0123456789abcdef"}}}, "tls.clientAuth"),
    ({"callers": {"config": {"callers": [caller(name="shop")]}}},
     ("/callers/config/callers/0", "uri_san", "token_file")),
    ({"callers": {"config": {"callers": [{"name": "shop", "token_file": "/t", "operations": ["check"]}]}}},
     ("/callers/config/callers/0", "tenants")),
    ({"callers": {"config": {"callers": [caller(name="shop", token_file="/t", operations=["chek"])]}}},
     "/callers/config/callers/0/operations/0"),
    ({"callers": {"config": {"callers": [caller(name="shop", token_file="/t"), caller(name="shop", token_file="/u")]}}},
     "shop is named twice"),
    ({"callers": {"config": {"callers": [caller(name="admin", token_file="/t")]}}}, "tollgate's own"),
    ({"callers": {"config": {"callers": [caller(name="a", token_file="/t"), caller(name="b", token_file="/t")]}}},
     "another caller's"),
    ({"callers": {"config": {"callers": [caller(name="a", token_file="a.token"), caller(name="b", token_file="b.token")]},
                  "tokens": {"a.token": "0123456789abcdef", "b.token": "0123456789abcdef"}}}, "callers.tokens"),
    ({"callers": {"config": {"callers": [caller(name="a", token_file="a.token")]},
                  "tokens": {"a.token": "0123456789 abcdef"}}}, "/callers/tokens/a.token"),
    ({"callers": {"existingSecret": "tollgate-callers", "config": {"local": {"operations": ["check"]}}}},
     "callers.existingSecret"),
    ({"callers": {"tokens": {"a.token": "short"}}}, "/callers/tokens/a.token"),
    ({"callers": {"tokens": {"a.token": "0123456789abcdef"}}}, "callers.tokens"),
    # The HTTP front door.
    ({"mode": "standalone", "http": {"enabled": True}}, ("http.enabled", "tls.", "callers.", "insecureListen")),
    ({"mode": "standalone", "http": {"enabled": True}, "tls": {"enabled": True, "secretName": "tollgate-tls"}},
     ("http.enabled", "callers.", "insecureListen")),
    ({"http": {"enabled": True, "port": 9090}}, "http.port"),
    ({"http": {"port": 70000}}, "/http/port"),
    ({"http": {"authzen": {"tenant": "cookie:tenant"}}}, "/http/authzen/tenant"),
    ({"http": {"authzen": {"types": "user:Acme::User"}}}, "/http/authzen/types"),
    ({"http": {"authzen": {"namespace": "acme-billing"}}}, "/http/authzen/namespace"),
    ({"http": {"authzen": {"tennant": "caller"}}}, "tennant"),
    # Envoy external authorization.
    ({"extAuthz": {"enabled": True}}, "extAuthz.routes"),
    ({"extAuthz": {"enabled": True, "routes": {"tenant": {"header": "x-tenant-id"}, "principal": {"header": "x-user-id"}}}},
     ("extAuthz.routes", "routes")),
    ({"extAuthz": {"enabled": True, "routes": {**ROUTES, "tenant": {"claim": "org_id"}}}}, ("extAuthz.routes", "jwt.enabled")),
    ({"mode": "standalone", "extAuthz": {"enabled": True, "routes": ROUTES}},
     ("extAuthz.enabled", "tls.", "callers.", "insecureListen")),
    ({"extAuthz": {"enabled": True, "port": 50051, "routes": ROUTES}}, "extAuthz.port"),
    ({"extAuthz": {"routes": {**ROUTES, "tenat": {"header": "x-tenant-id"}}}}, ("/extAuthz/routes", "tenat")),
    ({"extAuthz": {"routes": {**ROUTES, "tenant": {"header": "x-tenant-id", "value": "acme"}}}}, "/extAuthz/routes/tenant"),
    ({"extAuthz": {"routes": {**ROUTES, "routes": [{"path": "/x", "action": "use"}]}}}, ("/extAuthz/routes/routes/0", "resource")),
    ({"extAuthz": {"routes": {**ROUTES, "statuses": {"deny": 200}}}}, "/extAuthz/routes/statuses/deny"),
    # Verified JWTs.
    ({"jwt": {"enabled": True}}, "jwt.issuers"),
    ({"jwt": {"enabled": True, "issuers": {"leeway_s": 30}}}, "jwt.issuers"),
    ({"jwt": {"enabled": True, "issuers": {"issuers": [issuer(jwks_file="login.jwks.json")]}}}, ("jwt.jwksSecret", "login.jwks.json")),
    ({"jwt": {"enabled": True, "jwksSecret": "jwks", "issuers": {"issuers": [issuer(jwks_file="issuers.yaml")]}}},
     ("jwt.issuers", "issuers.yaml")),
    ({"jwt": {"enabled": True, "issuers": {"issuers": [issuer(jwks_url=JWKS_URL), issuer(jwks_url=JWKS_URL)]}}},
     ("jwt.issuers", "listed twice")),
    ({"jwt": {"issuers": {"issuers": [issuer(jwks_url=JWKS_URL, jwks_file="login.jwks.json")]}}}, "/jwt/issuers/issuers/0"),
    ({"jwt": {"issuers": {"issuers": [issuer()]}}}, "/jwt/issuers/issuers/0"),
    ({"jwt": {"issuers": {"issuers": [issuer(jwks_url=JWKS_URL, algorithms=["HS256"])]}}}, "/jwt/issuers/issuers/0/algorithms/0"),
    ({"jwt": {"issuers": {"issuers": [issuer(jwks_url="http://login.example.com/jwks.json")]}}},
     "/jwt/issuers/issuers/0/jwks_url"),
    ({"jwt": {"issuers": {"issuers": [issuer(jwks_file="login.jwks.json", jwks_refresh_s=60)]}}}, "/jwt/issuers/issuers/0"),
    ({"jwt": {"issuers": {"issuers": [issuer(jwks_url=JWKS_URL)], "leeway_s": 600}}}, "/jwt/issuers/leeway_s"),
    ({"jwt": {"jwksSecret": "Login_JWKS"}}, "/jwt/jwksSecret"),
    # Signed licenses.
    ({"licenses": {"enabled": True}}, "licenses.secretName"),
    ({"licenses": {"enabled": True, "keysSecretName": "license-keys"}}, "licenses.secretName"),
    ({"licenses": {"enabled": True, "secretName": "acme-licenses"}}, "licenses.keysSecretName"),
    ({"licenses": {"enabled": "yes"}}, "/licenses/enabled"),
    ({"licenses": {"secretName": "Acme_Licenses"}}, "/licenses/secretName"),
    ({"licenses": {"keysSecretName": ["license-keys"]}}, "/licenses/keysSecretName"),
    ({"licenses": {"installId": 42}}, "/licenses/installId"),
    ({"licenses": {"clusterId": "eu west"}}, "/licenses/clusterId"),
    ({"licenses": {"pollMs": "60s"}}, "/licenses/pollMs"),
    ({"licenses": {"pollMs": 0}}, "/licenses/pollMs"),
    ({"licenses": {"clockSkewMs": -1}}, "/licenses/clockSkewMs"),
    ({"licenses": {"clock": {"existingClaim": "Clock_PVC"}}}, "/licenses/clock/existingClaim"),
    ({"licenses": {"clock": {"enabled": "true"}}}, "/licenses/clock/enabled"),
    ({"licenses": {"clockFile": True}}, "clockFile"),
    # The Grafana dashboard and the alert rules.
    ({"grafanaDashboard": {"enabled": "yes"}}, "/grafanaDashboard/enabled"),
    ({"grafanaDashboard": {"label": "grafana dashboard"}}, "/grafanaDashboard/label"),
    ({"grafanaDashboard": {"labelValue": 1}}, "/grafanaDashboard/labelValue"),
    ({"grafanaDashboard": {"namespace": "Monitoring"}}, "/grafanaDashboard/namespace"),
    ({"grafanaDashboard": {"folders": "Platform"}}, "folders"),
    ({"prometheusRule": {"labels": {"release": 1}}}, "/prometheusRule/labels/release"),
    ({"prometheusRule": {"enabled": True, "for": "5m"}}, "for"),
    ({"mode": "standalone", "insecureListen": True,
      "licenses": {"enabled": True, "secretName": "l", "keysSecretName": "k", "clock": {"existingClaim": "clock"}}},
     "licenses.clock.existingClaim"),
]
# The keys the chart manages itself are refused in `config`.
for key in ("listen", "health_listen", "health_tls", "insecure_listen", "tls_cert_file", "tls_key_file",
            "tls_client_ca_file", "tls_client_auth", "callers_file", "admin_listen", "metrics_listen",
            "http_listen", "authzen_tenant", "authzen_namespace", "authzen_types", "ext_authz_listen",
            "ext_authz_file", "jwt_file", "licenses", "license_keys", "license_poll_ms", "license_clock_file",
            "license_clock_skew_ms", "install_id", "cluster_id"):
    bad_values.append(({"config": {key: "x"}}, key))
refused = 0
with helm.Chart.load(CHART) as chart:
    for values, field in bad_values:
        try:
            chart.render(values, name="tollgate", namespace=RELEASE_NAMESPACE)
        except helm.HelmError as error:
            message = str(error)
            fields = field if isinstance(field, tuple) else (field,)
            missing = [f for f in fields if f not in message]
            if not missing:
                refused += 1
                detail = next((line.strip() for line in message.splitlines() if fields[0] in line), message)
                print(f"ok   refused {values}: {detail}")
            else:
                fail(f"bad values {values}", f"refused, but the message does not name {', '.join(missing)}: {message.strip()}")
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
