#!/usr/bin/env bash
# On a CUDA host, over scripts/gpu-engine-build.sh's artifacts: the engine kernels' tests, the
# engine's GPU tests (logits, greedy picks and sampled tokens against the CPU engine, graph =
# eager), memcheck on the small ones, the dense-bf16 engine's tests, then the whole-model bench
# (the ternary engine and its dense-bf16 baseline in the same run). Logs go to $OUT. SKIP_BENCH=1
# leaves the bench out.
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
export WARP_BITNET_CACHE_DIR=${WARP_BITNET_CACHE_DIR:-/tmp/warp-bitnet-cache}
G=.gpu
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
echo "== engine kernel tests"
$G/lib-tests --include-ignored --test-threads=1 engine_ops 2>&1 | tee "$OUT/kernel-tests.txt"
echo "== dense-bf16 engine tests (the bench's baseline against an f64 reference forward)"
$G/lib-tests --include-ignored --test-threads=1 --nocapture dense_tests 2>&1 | tee "$OUT/dense-tests.txt"
echo "== engine GPU tests"
$G/engine-gpu-tests --include-ignored --test-threads=1 --nocapture 2>&1 | tee "$OUT/engine-tests.txt"
echo "== compute-sanitizer memcheck"
timeout "${SANITIZER_TIMEOUT:-300}" compute-sanitizer --tool memcheck --error-exitcode 9 $G/engine-gpu-tests \
  --include-ignored --test-threads=1 bitnet_logits graph_replay greedy_on_the_device sampling_ 2>&1 | tail -12 | tee "$OUT/memcheck.txt"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/memcheck.txt"
timeout "${SANITIZER_TIMEOUT:-300}" compute-sanitizer --tool memcheck --error-exitcode 9 $G/lib-tests \
  --include-ignored --test-threads=1 dense_bf16_graph_replay 2>&1 | tail -12 | tee "$OUT/memcheck-dense.txt"
echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/memcheck-dense.txt"
[ -n "${SKIP_BENCH:-}" ] && exit 0
echo "== bench (each row: the ternary engine, and the dense-bf16 engine as baseline, same run)"
$G/warp-bitnet bench --model bitnet-2b4t --device cuda --batch 1,16 --context 128 --prefill 512 \
  --json "$OUT/engine-bench.json" 2>&1 | tee "$OUT/engine-bench.txt"
$G/warp-bitnet bench --model bitnet-2b4t --device cuda --batch 1 --context 4000 --prefill 512 \
  --json "$OUT/engine-bench-ctx4096.json" 2>&1 | tee "$OUT/engine-bench-ctx4096.txt"
$G/warp-bitnet bench --model llama3-8b-ternary --device cuda --batch 1,16 --context 128 --prefill 512 \
  --json "$OUT/engine-bench-llama3-8b.json" 2>&1 | tee "$OUT/engine-bench-llama3-8b.txt"
