#!/usr/bin/env bash
# On a CUDA host, over scripts/gpu-engine-build.sh's artifacts: the per-kernel breakdown of the
# GPU engine's decode step (bitnet-2b4t, random weights) with Nsight Compute, each kernel's GPU
# time (gpu__time_duration) summed per kernel name. Two runs: a one-token prompt and 6 new tokens
# (every pass is a one-token pass: the step without attention's length), and the attention
# kernel alone at context ~128 (after a 128-token prompt). Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
export WARP_BITNET_CACHE_DIR=${WARP_BITNET_CACHE_DIR:-/tmp/warp-bitnet-cache}
G=.gpu
ids=$(seq -s, 1 128)
# Warm the kernel cache (NVRTC) outside the profiler.
$G/warp-bitnet run random:bitnet-2b4t --device cuda --prompt-ids 1 --max-tokens 2 --json > /dev/null
timeout "${PROFILE_TIMEOUT:-200}" ncu --metrics gpu__time_duration.sum --print-summary per-kernel \
  $G/warp-bitnet run random:bitnet-2b4t --device cuda --prompt-ids 1 --max-tokens 6 --json \
  > "$OUT/profile-decode.txt" 2>&1
echo "exit $?" >> "$OUT/profile-decode.txt"
timeout "${PROFILE_TIMEOUT:-200}" ncu --metrics gpu__time_duration.sum --print-summary per-kernel \
  -k regex:attention --launch-skip 30 --launch-count 60 \
  $G/warp-bitnet run random:bitnet-2b4t --device cuda --prompt-ids "$ids" --max-tokens 3 --json \
  > "$OUT/profile-attention-ctx128.txt" 2>&1
echo "exit $?" >> "$OUT/profile-attention-ctx128.txt"
grep -E "^  [A-Za-z_].*\(|gpu__time_duration|Invocations|exit" "$OUT"/profile-*.txt | head -120
