#!/usr/bin/env bash
# Runs every test of i2kit: installs the system packages the tests drive
# (a real registry, skopeo, ...), then fmt, clippy and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
