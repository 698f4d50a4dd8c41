#!/usr/bin/env bash
# Builds what a CUDA host needs to test and time the GPU engine (issue 18) and copies it to
# .gpu/ (git-ignored): the release CLI, the engine's GPU test executable (tests/engine_gpu.rs)
# and the library's unit-test executable (the engine kernels' tests, cuda/engine_ops/tests.rs).
# Then run scripts/gpu-engine-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p warp-bitnet-cli
# The executable of test target $1 ("warp_bitnet" with kind lib: the library's unit tests).
artifact() {
  python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}
engine=$(cargo test --release -p warp-bitnet --test engine_gpu --no-run --message-format=json 2>/dev/null | artifact engine_gpu)
lib=$(cargo test --release -p warp-bitnet --lib --no-run --message-format=json 2>/dev/null | artifact warp_bitnet)
mkdir -p .gpu
cp target/release/warp-bitnet .gpu/
cp "$engine" .gpu/engine-gpu-tests
cp "$lib" .gpu/lib-tests
strip .gpu/warp-bitnet .gpu/engine-gpu-tests .gpu/lib-tests
ls -la .gpu
