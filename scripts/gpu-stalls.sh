#!/usr/bin/env bash
# Warp stall reasons of one kernel (Nsight Compute metrics), for the notes.
# Usage: KERNEL=gemm_t2_f16_f16_n8 ONLY="70b gate" BATCH=8 bash scripts/gpu-stalls.sh [build dir under .gpu]
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
v=${1:-.}
m=""
for r in long_scoreboard short_scoreboard wait math_pipe_throttle mio_throttle lg_throttle barrier membar \
         dispatch_stall no_instruction not_selected selected tex_throttle drain branch_resolving imc_miss misc sleeping; do
  m="$m,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
done
m="${m#,},smsp__inst_executed.sum,sm__cycles_elapsed.avg,dram__throughput.avg.pct_of_peak_sustained_elapsed"
# Which pipe is busiest, and how often a scheduler issues at all.
for p in tensor_op_hmma tensor_op_imma tensor_op_gmma alu fma fmaheavy lsu uniform; do
  m="$m,sm__pipe_${p}_cycles_active.avg.pct_of_peak_sustained_active"
done
m="$m,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active"
m="$m,smsp__warps_active.avg.per_cycle_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum"
WARP_BITNET_CACHE_DIR=/tmp/cache-stalls ncu --clock-control none --kernel-name "regex:${KERNEL:-gemm_t2_f16_f16_n8}" \
  --launch-skip 30 --launch-count 1 --metrics "$m" \
  .gpu/$v/warp-bitnet bench --device cuda --only "${ONLY:-70b gate}" --batch "${BATCH:-1}" --iters 40 2>&1 | grep -E "gemm_t2|lts__|bank|stalled|inst_executed|cycles|dram|pipe|issue_active|warps_active|wavefronts" \
  | sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | tee -a "$OUT/stalls.txt"
