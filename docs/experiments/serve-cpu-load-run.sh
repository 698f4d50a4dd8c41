#!/usr/bin/env bash
# CPU load test of `warp-bitnet serve` at small scale, from the repository root:
#   bash docs/experiments/serve-cpu-load-run.sh OUT_DIR
set -euo pipefail
D=$1
mkdir -p "$D"
python3 examples/tiny_model.py /tmp/bench_small --hidden 128 --layers 2 --no-tokenizer --vocab 1000 --max-positions 512
cargo build --release --quiet -p warp-bitnet-cli
target/release/warp-bitnet serve /tmp/bench_small --port 18126 --max-batch 128 --max-context 512 --model-name small --threads 1 2>"$D/server.log" &
SP=$!
sleep 3
{ date -u; uptime; grep -m1 "model name" /proc/cpuinfo; nproc; } > "$D/machine.txt"
python3 examples/load_test.py --url http://127.0.0.1:18126 --model small --concurrency 1 16 64 128 \
  --requests-per-stream 1 --prompt-tokens 128 --max-tokens 256 --vocab 1000 --out "$D/load.json"
curl -s http://127.0.0.1:18126/metrics > "$D/metrics.txt"
uptime >> "$D/machine.txt"
kill -TERM "$SP"
wait "$SP"
echo "server exit $?" >> "$D/machine.txt"
