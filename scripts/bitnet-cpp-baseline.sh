#!/usr/bin/env bash
# A same-machine baseline for issue 20's CPU speed targets: bitnet.cpp and our engine time the
# same GGUF file (examples/random_gguf.py: the bitnet-b1.58-2B-4T architecture, random I2_S
# weights, F16 tied embedding / lm_head) on this machine, back to back. Not part of CI.
#
#   bash scripts/bitnet-cpp-baseline.sh BITNET_DIR [OUT_DIR]
#
# BITNET_DIR is a bitnet.cpp source tree already built as its README says (i2_s on x86):
# this script runs BITNET_DIR/build/bin/llama-bench and, if present, the kernel harness that
# bitnet.cpp's utils/test_gemm_kernel.sh builds (BITNET_DIR/build/test_gemm_kernel); it builds
# nothing of bitnet.cpp. Set BITNET_COMMIT to record where that tree came from.
#
# Environment: MODEL (the GGUF file; written if missing, default /tmp/bitnet-2b4t-random.gguf),
# REPS (repetitions, default 5), MAX_LOAD (wait until the 1-minute load average is below it,
# default 1.5), WAIT_S (longest wait per step, default 900 s; then it goes on and the load is
# recorded beside the numbers).
#
# Writes into OUT_DIR (default bench/results/<date>-cpu-<cpu>-<commit>-bitnet-cpp-baseline/):
#   machine.txt            CPU, flags, caches, memory, compilers, commits
#   commands.txt           every timed command, with the load average before it
#   llama-bench-rR.json    bitnet.cpp (repetition R): pp128 and tg128 at 1 and 2 threads
#   ours-rR.json/.txt      our engine on the same file, right after: prefill 128, decode at
#                          context 128, threads 1 and 2
#   kernels-bitnet-cpp.txt bitnet.cpp's kernel harness (one thread, one weight matrix reused)
#   kernels-ours.json/.txt `warp-bitnet bench --device cpu --only bitnet-2b` (weights from DRAM)
#   kernels-hot-interleaved.txt  bitnet.cpp's harness and examples/cpu_micro, same shapes, one
#                          thread, weights hot in cache, alternating, 3 rounds
#   summary.md             the medians over the repetitions, side by side
set -euo pipefail
cd "$(dirname "$0")/.."

bitnet=${1:?usage: bash scripts/bitnet-cpp-baseline.sh BITNET_DIR [OUT_DIR]}
bench_bin=$bitnet/build/bin/llama-bench
gemm_bin=$bitnet/build/test_gemm_kernel
[ -x "$bench_bin" ] || {
    echo "no $bench_bin: build bitnet.cpp first (its README, quant type i2_s)" >&2
    exit 1
}
model_file=${MODEL:-/tmp/bitnet-2b4t-random.gguf}
reps=${REPS:-5}
max_load=${MAX_LOAD:-1.5}
wait_s=${WAIT_S:-900}
commit=$(git rev-parse --short HEAD)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
out=${2:-bench/results/$(date -u +%F)-cpu-${cpu}-${commit}-bitnet-cpp-baseline}
mkdir -p "$out"

nice -n 15 cargo build --release -p warp-bitnet-cli --quiet
ours=target/release/warp-bitnet
[ -f "$model_file" ] || nice -n 15 python3 examples/random_gguf.py "$model_file" --arch bitnet-2b4t --seed 0

load1() { cut -d' ' -f1 /proc/loadavg; }
# Waits (up to wait_s) for the 1-minute load average to fall below max_load.
wait_quiet() {
    local waited=0
    while awk -v l="$(load1)" -v m="$max_load" 'BEGIN { exit !(l >= m) }' && [ "$waited" -lt "$wait_s" ]; do
        sleep 15
        waited=$((waited + 15))
    done
}
# Runs a timed command after waiting for a quiet machine, logging it with the load average.
timed() {
    wait_quiet
    echo "[$(date -u +%T)] load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a "$out/commands.txt" >&2
    top -b -n1 -w 120 | sed -n '8,10p' | sed 's/^/    busiest now: /' >> "$out/commands.txt"
    "$@"
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "warp-bitnet commit: $(git rev-parse HEAD)"
    echo "bitnet.cpp: ${BITNET_COMMIT:-unknown (set BITNET_COMMIT)}, tree $bitnet"
    grep -m1 'model name' /proc/cpuinfo
    grep -m1 -E 'cpu family' /proc/cpuinfo
    grep -m1 -E '^model\s' /proc/cpuinfo
    echo "cpus: $(nproc)"
    grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512_vnni|avx_vnni)$' | tr '\n' ' '
    echo
    lscpu | grep -E 'Model name|Thread|cache|MHz' || true
    grep -E 'MemTotal|MemAvailable' /proc/meminfo
    echo "model file: $model_file ($(stat -c %s "$model_file") bytes, sha256 $(sha256sum "$model_file" | cut -c1-16))"
    echo "bitnet.cpp build options:"
    grep -E '^(CMAKE_(C|CXX)_COMPILER|CMAKE_BUILD_TYPE|GGML_NATIVE|GGML_AVX[0-9A-Z_]*|BITNET_X86_TL2):' \
        "$bitnet/build/CMakeCache.txt" || true
    "$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$bitnet/build/CMakeCache.txt")" --version | head -1 || true
    echo "rustc: $(rustc --version)"
} > "$out/machine.txt"

# Read the model once so that neither program pays for the page cache first.
cat "$model_file" > /dev/null

# Interleaved, one repetition of each program at a time, so that both see the same machine
# (on a shared host the background changes by the minute; a spinning 2-thread run suffers most).
for r in $(seq 1 "$reps"); do
    timed "$bench_bin" -m "$model_file" -p 128 -n 128 -t 1,2 -r 1 -o json > "$out/llama-bench-r$r.json"
    timed "$ours" bench --device cpu --model "$model_file" --threads 1,2 --prefill 128 --context 128 \
        --steps 16 --json "$out/ours-r$r.json" > "$out/ours-r$r.txt" 2>&1
done

if [ -x "$gemm_bin" ]; then
    : > "$out/kernels-bitnet-cpp.txt"
    for shape in "2560 6912" "6912 2560" "2560 2560" "2560 640"; do
        set -- $shape
        timed env LD_LIBRARY_PATH="$bitnet/build/3rdparty/llama.cpp/ggml/src" \
            "$gemm_bin" -n "$1" -r 1 -c "$2" -i 2000 -w 50 >> "$out/kernels-bitnet-cpp.txt"
    done
fi
timed "$ours" bench --device cpu --threads 1,2 --only bitnet-2b --iters 200 \
    --json "$out/kernels-ours.json" > "$out/kernels-ours.txt" 2>&1
# The same GEMVs with one weight matrix kept hot in cache, as bitnet.cpp's harness times them
# (int8 activations quantized before the clock starts in both), interleaved, 3 rounds.
if [ -x "$gemm_bin" ]; then
    nice -n 15 cargo build --release -p warp-bitnet --example cpu_micro --quiet
    hot=$out/kernels-hot-interleaved.txt
    : > "$hot"
    wait_quiet
    for round in 1 2 3; do
        for shape in "6912 2560" "2560 6912" "2560 2560" "640 2560"; do
            set -- $shape
            echo "== round $round ${1}x${2} load $(load1)" >> "$hot"
            echo "-- bitnet.cpp test_gemm_kernel -n $2 -r 1 -c $1 -i 2000 -w 50" >> "$hot"
            LD_LIBRARY_PATH="$bitnet/build/3rdparty/llama.cpp/ggml/src" "$gemm_bin" -n "$2" -r 1 -c "$1" -i 2000 -w 50 \
                | grep -E "Average time|Min time" >> "$hot"
            echo "-- ours cpu_micro $1 $2 1 1 2000 (hot)" >> "$hot"
            target/release/examples/cpu_micro "$1" "$2" 1 1 2000 >> "$hot" 2>&1
        done
    done
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/commands.txt"

python3 - "$out" <<'EOF'
import glob, json, re, statistics, sys

out = sys.argv[1]
lines = [
    "| threads | phase | bitnet.cpp tokens/s: median (min-max) | ours: median (min-max) | ours / bitnet.cpp, medians | best / best |",
    "|---|---|---|---|---|---|",
]
for t in (1, 2):
    cpp = {"prefill": [], "decode": []}
    for path in sorted(glob.glob(f"{out}/llama-bench-r*.json")):
        for r in json.load(open(path)):
            if r["n_threads"] == t:
                phase, n = ("prefill", r["n_prompt"]) if r["n_gen"] == 0 else ("decode", r["n_gen"])
                cpp[phase] += [n / (ns / 1e9) for ns in r["samples_ns"]]
    ours = {"prefill": [], "decode": []}
    for path in sorted(glob.glob(f"{out}/ours-r*.json")):
        for row in json.load(open(path))["rows"]:
            if row["threads"] == t:
                phase = row["shape"].split(" ", 1)[1]
                if phase in ours:
                    ours[phase].append(row["tokens_per_s"])
    for phase in ("decode", "prefill"):
        c, o = cpp[phase], ours[phase]
        cm, om = statistics.median(c), statistics.median(o)
        lines.append(
            f"| {t} | {phase} 128 | {cm:.2f} ({min(c):.2f}-{max(c):.2f}) | {om:.2f} ({min(o):.2f}-{max(o):.2f}) "
            f"| {om / cm:.2f}x | {max(o) / max(c):.2f}x |"
        )
lines.append(f"\n{len(o)} repetitions of each, interleaved.")
kern = open(f"{out}/kernels-bitnet-cpp.txt").read() if glob.glob(f"{out}/kernels-bitnet-cpp.txt") else ""
shapes = re.findall(
    r"Embedding dimension \(n\)\s*: (\d+).*?Matrix X columns \(nc\)\s*: (\d+).*?Average time\s*: ([\d.]+) ms.*?Min time\s*: ([\d.]+) ms",
    kern,
    re.S,
)
if shapes:
    lines += ["", "| bitnet.cpp kernel harness (1 thread, weights reused) | mean us | min us |", "|---|---|---|"]
    lines += [f"| {nc} x {n} | {float(avg) * 1e3:.1f} | {float(mn) * 1e3:.1f} |" for n, nc, avg, mn in shapes]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "results in $out"
