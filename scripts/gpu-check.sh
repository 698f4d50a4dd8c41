#!/usr/bin/env bash
# Runs on a CUDA host over artifacts built elsewhere (scripts/gpu-build.sh puts them
# in .gpu/): device info, the GPU test suite, compute-sanitizer on a few tests, the
# benchmark (JSON), and the SASS instruction mix of the hot kernel. Logs go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
export WARP_BITNET_CACHE_DIR=$OUT/cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
G=.gpu
$G/warp-bitnet info 2>&1 | tee "$OUT/info.txt"
echo "== GPU tests"
$G/cuda-tests --include-ignored --test-threads=1 2>&1 | tee "$OUT/tests.txt"
echo "== compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --error-exitcode 9 $G/cuda-tests --include-ignored --test-threads=1 \
  layout strided misaligned every_kernel cpu_and_gpu quantizer wrong_lengths 2>&1 | tail -25 | tee "$OUT/memcheck.txt"
echo "== bench"
$G/warp-bitnet bench --device cuda --batch "${BATCH:-1}" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
echo "== SASS and registers"
for family in gemm_t2 gemm_int2; do
  for f in "$OUT"/cache/$family*.cubin; do
    cuobjdump -sass "$f" > "$OUT/$family.sass" 2>&1
    cuobjdump -res-usage "$f" 2>&1 | grep -E "Function|REG" | paste - - | sed -E 's/ +/ /g' > "$OUT/$family.resources.txt"
    break
  done
done
cat "$OUT"/gemm_*.resources.txt | awk '{print $2, $3, $4, $5, $6}' | head -45
rm -rf "$OUT/cache"
