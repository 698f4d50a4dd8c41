#!/usr/bin/env bash
# Runs on a CUDA host over artifacts built elsewhere (scripts/gpu-build.sh puts them
# in .gpu/): device info, the GPU test suite, compute-sanitizer on a few tests, the
# benchmark (JSON), and the SASS instruction mix of the hot kernel. Logs go to $OUT.
# SKIP_BENCH=1 leaves the benchmark out.
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
# Kept out of $OUT: only logs come back.
export WARP_BITNET_CACHE_DIR=${WARP_BITNET_CACHE_DIR:-/tmp/warp-bitnet-cache}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
G=.gpu
$G/warp-bitnet info 2>&1 | tee "$OUT/info.txt"
echo "== GPU tests"
[ -z "${SKIP_TESTS:-}" ] && $G/cuda-tests --include-ignored --test-threads=1 2>&1 | tee "$OUT/tests.txt"
# Every kernel family (token groups, split K, both prefill kernels and their split K, the
# dense route, layout and quantize kernels) under each sanitizer tool; each tool gets a time
# limit so that one slow tool cannot eat the whole lease (the log says if it ran out).
for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck}; do
  echo "== compute-sanitizer $tool"
  timeout "${SANITIZER_TIMEOUT:-200}" compute-sanitizer --tool $tool --error-exitcode 9 $G/cuda-tests \
    --include-ignored --test-threads=1 layout strided misaligned every_kernel dense_route cpu_and_gpu \
    quantizer wrong_lengths > "/tmp/$tool.log" 2>&1
  echo "exit $?" > "$OUT/$tool.txt"
  # Which kernels each reported hazard names (the whole log can be megabytes), then its end.
  grep -E "^========= +(Error|Race|Warning|Invalid|Barrier|.*in [A-Za-z_])" "/tmp/$tool.log" \
    | sed -E 's/0x[0-9a-f]+/0x./g' | sort | uniq -c | sort -rn | head -60 >> "$OUT/$tool.txt"
  tail -12 "/tmp/$tool.log" >> "$OUT/$tool.txt"
  cat "$OUT/$tool.txt" | tail -20
done
[ -n "${SKIP_BENCH:-}" ] && exit 0
echo "== bench"
$G/warp-bitnet bench --device cuda --batch "${BATCH:-1}" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
echo "== SASS and registers"
for family in gemm_t2 gemm_int2; do
  for f in "$WARP_BITNET_CACHE_DIR"/$family*.cubin; do
    cuobjdump -sass "$f" > "$OUT/$family.sass" 2>&1
    cuobjdump -res-usage "$f" 2>&1 | grep -E "Function|REG" | paste - - | sed -E 's/ +/ /g' > "$OUT/$family.resources.txt"
    break
  done
done
cat "$OUT"/gemm_*.resources.txt | awk '{print $2, $3, $4, $5, $6}' | head -45
