#!/usr/bin/env bash
# Builds the wheels for a before/after run of scripts/gpu-python.sh: this checkout's into .gpu/
# and that of git revision BASE (default: main) into .gpu/before/, so that on the CUDA host
#   ONLY_OVERHEAD=1 bash scripts/gpu-python.sh
# runs the Python GPU tests on this build and the eager-overhead table of both, in one call.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-main}
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/src" 2>/dev/null; rm -rf "$tmp"' EXIT
rm -rf .gpu/before .gpu/*.whl
mkdir -p .gpu/before
python3 -m maturin build --release --quiet -o .gpu
git worktree add --detach "$tmp/src" "$base" >/dev/null
# The base builds in our target folder: only the workspace's own crates compile again.
here=$PWD
(cd "$tmp/src" && CARGO_TARGET_DIR="$here/target" python3 -m maturin build --release --quiet -o "$here/.gpu/before")
ls -la .gpu .gpu/before
