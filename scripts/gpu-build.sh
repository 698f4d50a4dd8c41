#!/usr/bin/env bash
# Builds the release CLI and the GPU test executable here and copies them to .gpu/
# (git-ignored) for `run` on a CUDA host; see scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p warp-bitnet-cli
exe=$(cargo test --release -p warp-bitnet --test cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])')
mkdir -p .gpu
cp target/release/warp-bitnet .gpu/
cp "$exe" .gpu/cuda-tests
ls -la .gpu
strip .gpu/warp-bitnet .gpu/cuda-tests
