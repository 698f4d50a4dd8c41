#!/usr/bin/env bash
# A/B of two builds of the CLI on the CPU engine (bitnet-b1.58-2B-4T architecture, random
# weights): prefill of 128 tokens and decode at context 128, threads 1 and 2, the runs of the
# two builds interleaved so that both see the same machine (this VM's speed drifts by up to 2x
# within minutes when other processes run). Run it on a quiet machine, without `nice`:
#
#   bash scripts/cpu-engine-ab.sh BEFORE_BIN AFTER_BIN OUT_DIR [ROUNDS]
#
# BEFORE_BIN / AFTER_BIN: `warp-bitnet` binaries (e.g. built in a worktree of the base commit).
# OUT_DIR receives machine.txt and, per round r and build b, {b}-r{r}.json / .txt.
set -euo pipefail
before=$1 after=$2 out=$3 rounds=${4:-3}
mkdir -p "$out"
load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }
{
    echo "date: $(date -u +%FT%TZ)"
    grep -m1 'model name' /proc/cpuinfo
    echo "cpus: $(nproc)"
    echo "before: $before ($("$before" --version 2>/dev/null || true))"
    echo "after: $after ($("$after" --version 2>/dev/null || true))"
    load
} > "$out/machine.txt"
for r in $(seq 1 "$rounds"); do
    for b in before after; do
        bin=$before
        [ "$b" = after ] && bin=$after
        { load; "$bin" bench --model bitnet-2b4t --threads 1,2 --prefill 128 --context 128 \
            --steps 8 --json "$out/$b-r$r.json"; } 2>&1 | tee "$out/$b-r$r.txt"
    done
done
load >> "$out/machine.txt"
echo "results in $out"
