#!/usr/bin/env bash
# Runs on a CUDA host over the wheel built elsewhere (scripts/gpu-build.sh puts it in
# .gpu/): the Python GPU tests, the per-call overhead, the training example and the
# whole-model benchmark. Logs and JSON go to $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu-env.sh"
export WARP_BITNET_CACHE_DIR=/tmp/warp-bitnet-cache
python3 -m pip install -q --no-deps --no-compile --target /tmp/site .gpu/*.whl || exit
export PYTHONPATH=/tmp/site
echo "== pytest -m gpu"
python3 -m pytest -q -m gpu python/tests 2>&1 | tail -15 | tee "$OUT/python-gpu-tests.txt"
echo "== python overhead"
python3 examples/python_overhead.py --json "$OUT/python-overhead.json" 2>&1 | tee "$OUT/python-overhead.txt"
# The same script against an earlier build (.gpu/before/*.whl), in the same call: the
# before/after table of a change to the eager path.
if ls .gpu/before/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-compile --target /tmp/site-before .gpu/before/*.whl \
    && PYTHONPATH=/tmp/site-before python3 examples/python_overhead.py --json "$OUT/python-overhead-before.json" \
      2>&1 | tee "$OUT/python-overhead-before.txt"
fi
[ -n "${ONLY_OVERHEAD:-}" ] && exit 0
echo "== train_mlp"
python3 examples/train_mlp.py --device cuda 2>&1 | tee "$OUT/train-mlp.txt"
for mode in ${MODEL_MODES:-eager compiled}; do
  echo "== bench_model ($mode)"
  flag=""; [ "$mode" = eager ] && flag="--eager"
  timeout "${MODEL_TIMEOUT:-300}" python3 examples/bench_model.py $flag --json "$OUT/model-$mode.json" 2>&1 \
    | grep -v Warning | tail -40 | tee "$OUT/model-$mode.txt"
done
