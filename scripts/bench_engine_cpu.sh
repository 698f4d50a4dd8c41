#!/usr/bin/env bash
# The engine's CPU measurement (issues 18/20): bitnet-b1.58-2B-4T architecture with random
# weights, 128-token prompt, decode at context 128, threads 1 and 2, the bf16 lm_head and the
# opt-in int8 one, with a per-phase breakdown of the decode step and the same run's copy
# bandwidth. Run it on a quiet machine, without `nice`:
#
#   bash scripts/bench_engine_cpu.sh [OUT_DIR]
#
# OUT_DIR defaults to bench/results/<date>-cpu-<cpu>-<commit>-engine-cpu/; it receives
# bench.json (rows + breakdown), console.txt and machine.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo -dirty)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | awk '{print tolower($2)}')
out=${1:-bench/results/$(date -u +%F)-cpu-${cpu:-x86}-${commit}-engine-cpu}
mkdir -p "$out"
cargo build --release -p warp-bitnet-cli --quiet
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $commit"
    grep -m1 'model name' /proc/cpuinfo
    echo "cpus: $(nproc)"
    grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512_vnni|avx_vnni)$' | tr '\n' ' '
    echo
    grep -E 'MemTotal|MemAvailable' /proc/meminfo
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "WARP_BITNET_CPU_ISA=${WARP_BITNET_CPU_ISA:-} WARP_BITNET_THREADS=${WARP_BITNET_THREADS:-}"
} > "$out/machine.txt"
./target/release/warp-bitnet bench --model bitnet-2b4t --threads 1,2 --prefill 128 --context 128 \
    --steps 16 --lm-head as-stored,int8 --json "$out/bench.json" 2>&1 | tee "$out/console.txt"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
echo "results in $out"
