"""Train a small classifier with ternary weights (BitLinearTrain) beside the same model
in full precision, and report accuracy, loss and time per step for both.

    python examples/train_mlp.py [--device cuda] [--steps 600]

The task: labels from a fixed random 2-layer teacher on Gaussian inputs. On CUDA the
per-step time of both models is measured (median of the steps after a warm-up), and a
wider MLP (``--width``, ``--batch``) compares one training step of dense and
BitLinearTrain layers in float32 and bfloat16.
"""

import argparse
import statistics
import time

import torch
import warp_bitnet as wb
from torch import nn


def make_task(n, d=32, classes=4, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(1234)
    w1, w2 = torch.randn(d, 64, generator=g), torch.randn(64, classes, generator=g)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x.to(device), (torch.tanh(x @ w1) @ w2).argmax(1).to(device)


def train(model, x, y, steps, lr=3e-3, batch=128):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    times, loss = [], None
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=torch.Generator().manual_seed(step)).to(x.device)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return loss.item(), statistics.median(times[steps // 10 :]) * 1e3


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--width", type=int, default=4096, help="MLP width of the CUDA step-time comparison")
    ap.add_argument("--batch", type=int, default=256, help="tokens per step of the CUDA step-time comparison")
    a = ap.parse_args()
    x, y = make_task(32768, device=a.device)
    xt, yt = make_task(2048, seed=1, device=a.device)
    torch.manual_seed(3)
    full = nn.Sequential(nn.Linear(32, a.hidden), nn.ReLU(), nn.Linear(a.hidden, 4)).to(a.device)
    ternary = wb.convert_to_bitlinear(nn.Sequential(nn.Linear(32, a.hidden), nn.ReLU(), nn.Linear(a.hidden, 4)))
    ternary.load_state_dict(full.state_dict())
    ternary.to(a.device)
    for name, model in (("fp32", full), ("ternary", ternary)):
        loss, ms = train(model, x, y, a.steps)
        print(f"{name:8s} test accuracy {accuracy(model, xt, yt):.4f}  final loss {loss:.4f}  {ms:.3f} ms/step")
    wb.quantize(ternary)
    print(f"frozen   test accuracy {accuracy(ternary, xt, yt):.4f}  (BitLinear on packed weights)")
    if a.device == "cuda":
        step_times(a.width, a.batch)


def step_times(width: int, batch: int, steps: int = 50) -> None:
    """Median time of one training step (forward, backward, Adam) of a 3-layer MLP of
    ``width`` features at ``batch`` tokens: dense vs BitLinearTrain, float32 and bfloat16."""

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)
        )

    x = torch.randn(batch, width, device="cuda")
    y = torch.randint(0, 4, (batch,), device="cuda")
    print(f"training step, MLP {width}-{width}-{width}-4, batch {batch}:")
    for dtype in (torch.float32, torch.bfloat16):
        for name, model in (("dense", mlp()), ("ternary", wb.convert_to_bitlinear(mlp()))):
            model = model.to("cuda", dtype)
            xd = x.to(dtype)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                loss = nn.functional.cross_entropy(model(xd).float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            ms = statistics.median(times[steps // 5 :]) * 1e3
            print(f"  {name:8s} {str(dtype).removeprefix('torch.'):9s} {ms:.3f} ms/step")


if __name__ == "__main__":
    main()
