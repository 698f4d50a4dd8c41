#!/usr/bin/env bash
# A/B: the bench of several builds in one run (same card, same process order), then
# an Nsight Compute profile of the last build's batch-1 f16 kernel on one shape.
# Usage: VARIANTS="v2 v3" ONLY="70b gate" bash scripts/gpu-ab.sh
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
for v in $VARIANTS; do
  for only in ${ONLY_LIST:-"70b gate" "8b qkv" "2b k"}; do
    WARP_BITNET_CACHE_DIR=/tmp/cache-$v .gpu/$v/warp-bitnet bench --device cuda --only "$only" --batch "${BATCH:-1}" \
      --json "$OUT/bench-$v-${only//[ /]/_}.json" 2>&1 | grep -v wrote | sed "s/^/$v /" | tee -a "$OUT/ab.txt"
  done
done
last=${VARIANTS##* }
[ -n "${NCU_KERNEL:-}" ] && WARP_BITNET_CACHE_DIR=/tmp/cache-$last ncu --clock-control none --kernel-name "regex:$NCU_KERNEL" \
  --launch-skip 30 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats --section LaunchStats \
  .gpu/$last/warp-bitnet bench --device cuda --only "${NCU_ONLY:-70b gate}" --iters 40 > "$OUT/ncu.txt" 2>&1
grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers|Stall|Issued Ipc|No Eligible|Eligible Warps|Active Warps|Warp Cycles|Theoretical Occ|Block Limit" "$OUT/ncu.txt" | head -60
