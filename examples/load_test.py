"""Load generator for `warp-bitnet serve`: N concurrent streams against /v1/completions.

Each stream sends requests one after another (a prompt of --prompt-tokens random token ids,
--max-tokens generated with ``ignore_eos`` so every request generates them all) through the
official ``openai`` client, streaming. For every concurrency level it reports aggregate
generated tokens/s (completion tokens from the usage chunk over the level's wall time),
p50/p99 time to first token, and p50/p99 inter-token latency (gaps between streamed chunks;
one chunk per token, except where the server holds text back for a stop string or a split
character). Prompts are token ids, so models without a tokenizer (``random:PRESET``) work too.

    warp-bitnet serve random:bitnet-2b4t --device cuda --max-batch 128 --port 8000 &
    python examples/load_test.py --url http://127.0.0.1:8000 --model bitnet-2b4t \\
        --concurrency 1 16 64 128 --prompt-tokens 128 --max-tokens 256 --out results.json

The client is one Python process; check that its CPU use (printed) stays below one core,
or the numbers measure the client. The server's own view comes with each row too: p50/p99 of
its time-to-first-token and inter-token histograms (/metrics, the level's increase; each value
is the upper bound of its bucket), which a slow or starved client cannot distort (on a
loaded machine the client reads several tokens at once and its gaps become bursts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import time
import urllib.request
from dataclasses import dataclass, field

import openai


@dataclass
class Sample:
    """What one request measured."""

    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None


async def one_request(client: openai.AsyncOpenAI, args: argparse.Namespace, rng: random.Random) -> Sample:
    prompt = [rng.randrange(args.min_token_id, args.vocab) for _ in range(args.prompt_tokens)]
    sample = Sample()
    start = last = time.perf_counter()
    try:
        stream = await client.completions.create(
            model=args.model,
            prompt=prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                sample.completion_tokens = chunk.usage.completion_tokens
            if not chunk.choices or not chunk.choices[0].text:
                continue
            if sample.ttft is None:
                sample.ttft = now - start
            else:
                sample.gaps.append(now - last)
            last = now
    except openai.OpenAIError as e:
        sample.error = f"{type(e).__name__}: {e}"
    return sample


def histograms(url: str) -> dict[str, list[tuple[float, float]]]:
    """The server's TTFT and inter-token histograms: (upper bound, cumulative count) pairs."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[float, float]]] = {"ttft": [], "itl": []}
    names = {"time_to_first_token": "ttft", "inter_token_latency": "itl"}
    for line in text.splitlines():
        for metric, key in names.items():
            prefix = f'warp_bitnet_{metric}_seconds_bucket{{le="'
            if line.startswith(prefix):
                le, count = line[len(prefix) :].split('"} ')
                out[key].append((float(le), float(count)))
    return out


def histogram_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` of what was added between two scrapes."""
    added = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    if not added or added[-1][1] == 0:
        return None
    target = q * added[-1][1]
    return next(le for le, count in added if count >= target)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


async def run_level(args: argparse.Namespace, concurrency: int) -> dict:
    client = openai.AsyncOpenAI(base_url=args.url + "/v1", api_key="none", max_retries=0, timeout=args.timeout)
    samples: list[Sample] = []

    async def stream_worker(worker: int) -> None:
        rng = random.Random(args.seed * 1_000_003 + concurrency * 1009 + worker)
        for _ in range(args.requests_per_stream):
            samples.append(await one_request(client, args, rng))

    server0 = histograms(args.url)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    await asyncio.gather(*(stream_worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await client.close()
    server1 = histograms(args.url)
    ok = [s for s in samples if s.error is None]
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    gaps = [g for s in ok for g in s.gaps]
    tokens = sum(s.completion_tokens for s in ok)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1e3, 3)

    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "first_error": next((s.error for s in samples if s.error), None),
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "completion_tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "itl_p50_ms": ms(percentile(gaps, 50)),
        "itl_p99_ms": ms(percentile(gaps, 99)),
        "server_ttft_p50_ms": ms(histogram_quantile(server0["ttft"], server1["ttft"], 0.5)),
        "server_ttft_p99_ms": ms(histogram_quantile(server0["ttft"], server1["ttft"], 0.99)),
        "server_itl_p50_ms": ms(histogram_quantile(server0["itl"], server1["itl"], 0.5)),
        "server_itl_p99_ms": ms(histogram_quantile(server0["itl"], server1["itl"], 0.99)),
        "client_cpu_fraction": round((cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (without /v1)")
    p.add_argument("--model", required=True, help="the served model name (GET /v1/models)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 128], help="concurrent streams per level")
    p.add_argument("--requests-per-stream", type=int, default=2, help="requests each stream sends in turn")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1000, help="prompt token ids are drawn below this")
    p.add_argument("--min-token-id", type=int, default=3, help="and from this (skips BOS/EOS-like ids)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()
    if not 0 <= args.min_token_id < args.vocab:
        p.error("--min-token-id must be below --vocab")
    if min(args.concurrency) < 1 or args.requests_per_stream < 1 or args.prompt_tokens < 1 or args.max_tokens < 1:
        p.error("--concurrency, --requests-per-stream, --prompt-tokens and --max-tokens must be >= 1")
    rows = []
    for c in args.concurrency:
        row = asyncio.run(run_level(args, c))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
