#!/usr/bin/env bash
# Issue 20's CPU kernel measurement in one command (run it on a quiet machine, without nice):
#
#   bash scripts/cpu-speed.sh [OUT_DIR]
#
# Writes into OUT_DIR (default bench/results/<date>-cpu-<model>-<commit>-cpu-speed/):
#   machine.txt      CPU model and flags, caches, load average before and after, commit
#   gemv-2b.*        `warp-bitnet bench --device cpu` on the bitnet-b1.58-2B-4T shapes, batch 1,
#                    1 and 2 threads, weights rotated from DRAM, median of 200, with the same
#                    run's copy bandwidth and pool overhead (header lines)
#   gemv-70b-*.*     the same on the 70B-class shapes (28672x8192, 8192x28672), median of 20
#   prefill-2b.*     the 2B-4T shapes at 16 and 128 tokens (blocked GEMM), median of 10
#   micro-cold.txt   examples/cpu_micro from DRAM: min and median of 2000 calls (2B-4T shapes),
#                    40 (70B-class shapes); the dense f32 line is hot (one copy)
#   python-linear-4096.txt   examples/bench_cpu_linear.py (JSON after the load line) with a
#                    wheel built from this checkout (SKIP_PYTHON=1 skips it)
# The load average is written before every step: numbers taken above ~0.5 are shared-machine
# numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=$(git rev-parse --short HEAD)
model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
out=${1:-bench/results/$(date -u +%F)-cpu-${model}-${commit}-cpu-speed}
mkdir -p "$out"

# Two builds: with `--example`, cargo would build only the example, not the CLI binary.
cargo build --release -p warp-bitnet-cli
cargo build --release -p warp-bitnet --example cpu_micro
bin=target/release/warp-bitnet
micro=target/release/examples/cpu_micro

load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }

{
  echo "commit $(git rev-parse HEAD), $(date -u)"
  grep -m1 'model name' /proc/cpuinfo
  grep -m1 '^flags' /proc/cpuinfo
  lscpu | grep -E 'Model name|CPU\(s\)|Thread|cache|MHz' || true
  load
} > "$out/machine.txt"

run_bench() { # name iters extra-args...
  local name=$1 iters=$2
  shift 2
  { load; "$bin" bench --device cpu --threads 1,2 --iters "$iters" --json "$out/$name.json" "$@"; } \
    | tee "$out/$name.txt"
}
run_bench gemv-2b 200 --only bitnet-2b
run_bench gemv-70b-gate-up 20 --only "llama3-70b gate"
run_bench gemv-70b-down 20 --only "llama3-70b down"
run_bench prefill-2b 10 --only bitnet-2b --batch 16,128

{
  load
  for shape in "2560 2560 2000" "640 2560 2000" "6912 2560 2000" "2560 6912 2000" \
    "28672 8192 40" "8192 28672 40"; do
    read -r rows cols iters <<< "$shape"
    for t in 1 2; do
      "$micro" "$rows" "$cols" 1 "$t" "$iters" cold | grep -v '^portable'
    done
  done
  load
} | tee "$out/micro-cold.txt"

# The Python package built from this checkout, installed privately (not the shared site).
if [ "${SKIP_PYTHON:-0}" != 1 ]; then
  rm -rf target/wheels target/pysite
  python3 -m maturin build --release --quiet -o target/wheels
  python3 -m pip install --quiet --no-deps --target target/pysite target/wheels/warp_bitnet-*.whl
  { load; PYTHONPATH=$PWD/target/pysite python3 examples/bench_cpu_linear.py --shape 4096x4096 \
    --iters 200; } > "$out/python-linear-4096.txt"
fi
load >> "$out/machine.txt"
echo "wrote $out"
