"""Speedup over cuBLAS f16 against batch size, one line per shape, from recorded results:
``warp-bitnet bench --batch ... --json`` rows (the ternary kernels, L2-cold, the batches recorded) and
``examples/bench_prefill.py --json`` rows (what ``warp_bitnet.linear`` runs, 32-2048 tokens).

    python scripts/plot_batches.py OUT.png PREFILL.json BENCH.json [BENCH.json ...]   (needs matplotlib)

Several bench files (e.g. one run per batch range) go on one panel; they must come from one GPU.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(out: str, prefill_path: str, *bench_paths: str) -> None:
    benches = [json.loads(Path(p).read_text()) for p in bench_paths]
    gpus = {b["run"]["gpu"] for b in benches}
    if len(gpus) != 1:
        raise SystemExit(f"bench files from several GPUs: {sorted(gpus)}")
    prefill = json.loads(Path(prefill_path).read_text())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for act, style in (("f16", "-"), ("i8", "--")):
        lines = defaultdict(list)
        for r in (r for b in benches for r in b["rows"]):
            if r["format"] == "t2" and r["activation"] == act:
                lines[r["shape"]].append((r["batch"], r["speedup"]))
        for shape, pts in sorted(lines.items()):
            pts.sort()
            axes[0].plot([b for b, _ in pts], [s for _, s in pts], style, marker="o", ms=3, label=f"{shape} {act}")
    axes[0].set_title(f"ternary kernels vs cuBLAS f16 (L2-cold), {gpus.pop()}")
    for key, style in (("speedup_f16", "-"), ("speedup_w2a8", "--")):
        lines = defaultdict(list)
        for r in prefill["rows"]:
            if key in r:  # the dX rows have no W2A8 time
                lines[r["shape"]].append((r["batch"], r[key]))
        for shape, pts in sorted(lines.items()):
            pts.sort()
            label = f"{shape} {'f16' if key == 'speedup_f16' else 'W2A8'}"
            axes[1].plot([b for b, _ in pts], [s for _, s in pts], style, marker="o", ms=3, label=label)
    axes[1].set_title(f"warp_bitnet.linear vs torch F.linear f16, {prefill['device']}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("tokens (batch)")
        ax.set_ylabel("speedup (x)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
