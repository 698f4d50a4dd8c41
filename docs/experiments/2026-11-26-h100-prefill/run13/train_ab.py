# A/B of one BitLinearTrain step (forward + backward) at large batches: the kernels
# (_TernaryLinearCuda: W and W^T quantized and packed on the device, the prefill kernel for
# y and dX) against the dense PyTorch path BitLinearTrain takes from 65 tokens.
import statistics, torch, warp_bitnet as wb
from warp_bitnet import nn as wnn

def step_ms(fn, iters=20):
    for _ in range(3): fn()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
    return statistics.median(ts)

for (m, n) in [(28672, 8192), (14336, 4096)]:
    for dtype in (torch.bfloat16,):
        for tokens in (256, 2048):
            layer = wnn.BitLinearTrain(n, m, bias=False).cuda().to(dtype)
            x = torch.randn(tokens, n, device="cuda", dtype=dtype, requires_grad=True)
            def kernels():
                y = wnn._TernaryLinearCuda.apply(x, layer.weight, None, "absmean", True)
                y.sum().backward()
            def dense():
                w = wnn._TernarySTE.apply(layer.weight, wnn._quantize_weight(layer.weight, "absmean"))
                xq = wnn._TernarySTE.apply(x, wnn._quantize_act(x))
                torch.nn.functional.linear(xq, w).sum().backward()
            tk, td = step_ms(kernels), step_ms(dense)
            print(f"{m}x{n} {str(dtype):15s} tokens {tokens:5d}  kernels {tk:7.3f} ms  dense {td:7.3f} ms  ({td / tk:4.2f}x)", flush=True)
