"""GPU tests: run on a CUDA host with ``pytest -m gpu``. Skipped (and reported as
skipped) where there is no CUDA device."""

import pytest
import torch
import warp_bitnet as wb

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def ref(W, x, scale=None, bias=None):
    y = x.double() @ W.double().T
    if scale is not None:
        y = y * scale.double()
    if bias is not None:
        y = y + bias.double()
    return y


def rel(a, b):
    assert torch.isfinite(a).all(), "unwritten or non-finite output"
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("m,n", [(1, 16), (127, 48), (300, 2560), (4097, 300)])
@pytest.mark.parametrize("batch", [1, 3, 17, 100, 130])  # 130: the dense path
def test_linear_matches_float64(dtype, tol, m, n, batch):
    g = torch.Generator().manual_seed(m * n + batch)
    W = torch.randint(-1, 2, (m, n), generator=g).float()
    scale = torch.rand(m, generator=g) + 0.5
    bias = torch.randn(m, generator=g)
    x = torch.randn(batch, n, generator=g)
    packed = wb.pack_ternary(W).cuda()
    xd = x.to(dtype).cuda()
    y = wb.linear(xd, packed, scale.cuda(), bias.to(dtype).cuda())
    assert y.dtype == dtype and y.shape == (batch, m)
    want = ref(W, xd.cpu(), scale, bias.to(dtype))
    assert rel(y.cpu(), want) <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_every_batch_of_the_issue_matches_float64(dtype, tol):
    # Odd M and N (N odd: the prefill pre-pass reads x element by element), every kernel family
    # (on sm_90a the prefill kernel from 257 tokens), and dX: the packed transposed matrix.
    g = torch.Generator().manual_seed(11)
    m, n = 999, 1003
    W = torch.randint(-1, 2, (m, n), generator=g).float()
    packed, packed_t = wb.pack_ternary(W).cuda(), wb.pack_ternary(W.T.contiguous()).cuda()
    for batch in (1, 2, 3, 7, 16, 33, 64, 257, 2048):
        x = torch.randn(batch, n, generator=g).to(dtype)
        y = wb.linear(x.cuda(), packed)
        assert rel(y.cpu(), ref(W, x)) <= tol, batch
        dy = torch.randn(batch, m, generator=g).to(dtype)
        dx = wb.linear(dy.cuda(), packed_t)
        assert rel(dx.cpu(), dy.double() @ W.double()) <= tol, batch


def test_old_usage_example():
    """The old project's README example, unchanged, through the compatibility module."""
    import warp_bitnet_cuda

    W = torch.randint(-1, 2, (4096, 4096), device="cuda", dtype=torch.float32)
    W_packed = warp_bitnet_cuda.pack_ternary(W)
    X = torch.randn(4096, dtype=torch.float16, device="cuda")
    Y = torch.zeros(4096, dtype=torch.float16, device="cuda")
    warp_bitnet_cuda.gemv(W_packed, X, Y)
    assert rel(Y.cpu(), ref(W.cpu(), X.cpu())) <= 1e-3


def test_w2a8_and_the_device_quantizer():
    g = torch.Generator().manual_seed(5)
    W = torch.randint(-1, 2, (200, 1000), generator=g).float()
    x = torch.randn(4, 1000, generator=g).half()
    q, s = wb.quantize_activations_int8(x.cuda())
    qc, sc = wb.quantize_activations_int8(x.float())
    assert q.dtype == qc.dtype and q.shape == qc.shape, (q.dtype, q.shape, qc.dtype, qc.shape)
    assert (q.cpu() != qc).sum().item() == 0, ((q.cpu() != qc).sum().item(), q.flatten()[:8], qc.flatten()[:8])
    assert torch.equal(s.cpu(), sc), (s, sc)
    y = wb.linear(x.cuda(), wb.pack_ternary(W).cuda(), quantize_activations=True)
    want = (qc.double() @ W.double().T) * sc.double()[:, None]
    e = rel(y.cpu(), want)
    assert e <= 1e-3, e


def test_bitlinear_modules_on_gpu_match_cpu():
    torch.manual_seed(6)
    lin = torch.nn.Linear(512, 300).half()
    layer = wb.BitLinear.from_linear(lin.float()).half()
    x = torch.randn(2, 7, 512).half()
    y_cpu = layer(x.float()).double()
    y_gpu = layer.cuda()(x.cuda()).cpu().double()
    assert (y_gpu - y_cpu).norm() / y_cpu.norm() <= 1e-3


def test_errors_name_the_argument():
    packed = wb.pack_ternary(torch.zeros(8, 32)).cuda()
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        wb.linear(torch.zeros(2, 32, device="cuda"), packed)
    with pytest.raises(ValueError, match="`packed_weight` is on cpu"):
        wb.linear(torch.zeros(2, 32, device="cuda").half(), packed.cpu())
    layer = wb.BitLinear(32, 8)
    with pytest.raises(ValueError, match="`weight_packed` is on cpu, `x` on cuda"):
        layer(torch.zeros(2, 32, device="cuda").half())
    with pytest.raises(ValueError, match="`x` has 31 features, `weight_packed` has 32 columns"):
        layer.cuda()(torch.zeros(2, 31, device="cuda").half())


def test_torch_compile_and_cuda_graph():
    g = torch.Generator().manual_seed(7)
    W = torch.randint(-1, 2, (256, 512), generator=g).float()
    layer = wb.BitLinear(512, 256, bias=False).cuda()
    layer.weight_packed.copy_(wb.pack_ternary(W).cuda())
    x = torch.randn(1, 512, generator=g).half().cuda()
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    layer(static_x)  # warm-up (T2 conversion cached) outside the capture
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        static_y = layer(static_x)
    static_x.copy_(torch.randn(1, 512, generator=g).half())
    graph.replay()
    torch.testing.assert_close(static_y, layer(static_x))


def test_float32_input_takes_the_exact_int8_path():
    g = torch.Generator().manual_seed(11)
    W = torch.randint(-1, 2, (96, 200), generator=g).float()
    layer = wb.BitLinear(200, 96, quantize_activations=True)
    layer.weight_packed.copy_(wb.pack_ternary(W))
    layer.weight_scale = torch.tensor(0.37)
    layer.bias = torch.randn(96, generator=g)
    x = torch.randn(3, 5, 200, generator=g)
    cpu = layer(x)
    gpu = layer.cuda()(x.cuda())
    assert gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="quantize_activations=True"):
        wb.linear(x.cuda(), layer.weight_packed)


def test_bitlinear_gpu_layout_follows_the_weights():
    g = torch.Generator().manual_seed(12)
    W1, W2 = (torch.randint(-1, 2, (64, 160), generator=g).float() for _ in range(2))
    layer = wb.BitLinear(160, 64, bias=False).cuda()
    assert layer.weight_t2 is None and "weight_t2" not in layer.state_dict()  # made on first use
    x = torch.randn(2, 160, generator=g).half().cuda()
    layer.weight_packed.copy_(wb.pack_ternary(W1).cuda())
    assert rel(layer(x).cpu(), ref(W1, x.cpu())) < 1e-3  # eager: remade
    layer.weight_packed.copy_(wb.pack_ternary(W2).cuda())
    layer.refresh()
    compiled = torch.compile(layer, fullgraph=True)
    assert rel(compiled(x).cpu(), ref(W2, x.cpu())) < 1e-3
    assert layer.cpu().weight_t2 is None


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("m,n", [(1, 16), (127, 48), (300, 2560), (4097, 300)])
@pytest.mark.parametrize("batch", [1, 3, 17, 100, 130])  # 130: the dense path
def test_linear_int2_matches_float64(dtype, tol, m, n, batch):
    g = torch.Generator().manual_seed(m * 7 + n + batch)
    W, scale = wb.quantize_int2(torch.randn(m, n, generator=g))
    L = wb.unpack_int2(W, n)
    bias = torch.randn(m, generator=g)
    x = torch.randn(batch, n, generator=g).to(dtype)
    got = wb.linear_int2(x.cuda(), W.cuda(), scale.cuda(), bias.to(dtype).cuda())
    assert got.dtype == dtype
    assert rel(got.cpu(), ref(L, x, scale, bias.to(dtype))) < tol


def test_int2_compatibility_module_on_gpu():
    import bitnet_int2_cuda

    g = torch.Generator().manual_seed(5)
    L = torch.randint(0, 4, (333, 1000), generator=g).float() - 1.5
    X = torch.randn(1000, generator=g).half().cuda()
    Y = torch.full((333,), float("nan"), dtype=torch.float16, device="cuda")
    bitnet_int2_cuda.gemv_int2(bitnet_int2_cuda.pack_int2(L).cuda(), X, Y)
    assert rel(Y.cpu(), ref(L, X.cpu())) < 1e-3
    s = torch.rand(333, generator=g) + 0.5
    bitnet_int2_cuda.gemv_int2_scaled(bitnet_int2_cuda.pack_int2(L).cuda(), X, s.cuda(), Y)
    assert rel(Y.cpu(), ref(L, X.cpu(), s)) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("levels", ["ternary", "int2"])
def test_one_token_w2a8_in_one_launch_equals_the_batched_path(dtype, levels):
    g = torch.Generator().manual_seed(21)
    m, n = 700, 2500
    if levels == "ternary":
        packed, scale = wb.quantize_ternary(torch.randn(m, n, generator=g))
    else:
        packed, scale = wb.quantize_int2(torch.randn(m, n, generator=g))
    t2 = wb.ops.to_t2(packed.cuda(), n, levels)
    x = torch.randn(3, n, generator=g).to(dtype).cuda()
    bias = torch.randn(m, generator=g).to(dtype).cuda()
    s = scale.cuda().reshape(-1).float()
    one = wb.functional._linear_t2(x[:1], t2, m, s, bias, True, levels)  # the quantizing kernel
    three = wb.functional._linear_t2(x, t2, m, s, bias, True, levels)  # quantize_i8, then gemm_i8
    assert torch.equal(one, three[:1])


@pytest.mark.parametrize("levels", ["ternary", "int2"])
def test_one_token_w2a8_past_the_kernels_shared_memory(levels):
    # 200,000 columns: an int8 row longer than the quantizing kernel's shared memory on any GPU
    # (the H100's holds 195,200), so the route says quantize first; the eager path (quantize_i8,
    # then gemm_i8) and the op that compiled graphs take (quantize_x, decided in Rust) give the
    # bytes of the batched path.
    g = torch.Generator().manual_seed(22)
    m, n = 24, 200_000
    cuda = torch.device("cuda")
    assert wb.functional.one_launch(cuda, m, 2500, levels, torch.float16)
    assert not wb.functional.one_launch(cuda, m, n, levels, torch.float16)
    quantize = wb.quantize_ternary if levels == "ternary" else wb.quantize_int2
    packed, scale = quantize(torch.randn(m, n, generator=g))
    t2 = wb.ops.to_t2(packed.cuda(), n, levels)
    x = torch.randn(2, n, generator=g).half().cuda()
    bias = torch.randn(m, generator=g).half().cuda()
    s = scale.cuda().reshape(-1).float()
    two = wb.functional._linear_t2(x, t2, m, s, bias, True, levels)
    one = wb.functional._linear_t2(x[:1], t2, m, s, bias, True, levels)
    op = wb.ops.gemm(t2, m, n, s, x[:1].contiguous(), bias, levels, True)
    assert torch.equal(one, two[:1]) and torch.equal(op, two[:1])


def test_bitlinear_train_runs_on_the_kernels_and_matches_the_reference():
    import copy

    torch.manual_seed(3)
    cpu_layer = wb.BitLinearTrain(300, 200)
    for method in ("absmean", "absmean_row"):
        cpu_layer.weight_method = method
        gpu_layer = copy.deepcopy(cpu_layer).cuda()
        x = torch.randn(2, 7, 300, requires_grad=True)
        xg = x.detach().cuda().requires_grad_()
        y, yg = cpu_layer(x), gpu_layer(xg)
        assert "TernaryLinearCuda" in yg.grad_fn.name()
        assert rel(yg.detach().cpu(), y.detach().double()) < 1e-5
        dy = torch.randn_like(y)
        y.backward(dy)
        yg.backward(dy.cuda())
        # dX through the kernel with float16-scaled dY (11-bit mantissa); dW, db dense.
        assert rel(xg.grad.cpu(), x.grad.double()) < 2e-3
        assert rel(gpu_layer.weight.grad.cpu(), cpu_layer.weight.grad.double()) < 1e-5
        assert rel(gpu_layer.bias.grad.cpu(), cpu_layer.bias.grad.double()) < 1e-5
        cpu_layer.zero_grad()


def test_bitlinear_train_bf16_on_the_kernels_matches_float64():
    torch.manual_seed(4)
    layer = wb.BitLinearTrain(256, 96, quantize_activations=False).cuda().to(torch.bfloat16)
    x = torch.randn(5, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    wq = wb.nn._quantize_weight(layer.weight.float(), "absmean").double()
    want = x.detach().double() @ wq.T + layer.bias.detach().double()
    assert rel(y.detach().cpu(), want.cpu()) < 1e-2
    dy = torch.randn_like(y)
    y.backward(dy)
    assert rel(x.grad.cpu(), (dy.double() @ wq).cpu()) < 1e-2
    assert rel(layer.weight.grad.cpu(), (dy.double().T @ x.detach().double()).cpu()) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["absmean", "absmean_row"])
def test_quantize_to_t2_is_quantize_then_pack(dtype, method):
    w = torch.randn(70, 333, device="cuda").to(dtype)
    q, s = wb.nn._ternary_weight(w, method)
    scale = s.reshape(-1)
    for transpose in (False, True):
        want = wb.ops.to_t2(wb.pack_ternary(q.T.contiguous() if transpose else q), 70 if transpose else 333)
        assert torch.equal(wb.ops.quantize_to_t2(w, scale, transpose), want)


def test_bitlinear_train_step_under_torch_compile():
    import copy

    torch.manual_seed(8)
    model = wb.convert_to_bitlinear(
        torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4))
    )
    model = model.cuda()
    twin = copy.deepcopy(model)
    x = torch.randn(16, 64, device="cuda")
    y = torch.randint(0, 4, (16,), device="cuda")
    compiled = torch.compile(twin)
    for m in (model, compiled):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("levels", ["ternary", "int2"])
@pytest.mark.parametrize("m,n", [(256, 512), (300, 1000)])  # int8 on cuBLAS; no dense path (300 % 8 != 0)
def test_large_batch_w2a8_equals_the_kernels(dtype, levels, m, n):
    g = torch.Generator().manual_seed(31)
    if levels == "ternary":
        packed, scale = wb.quantize_ternary(torch.randn(m, n, generator=g))
    else:
        packed, scale = wb.quantize_int2(torch.randn(m, n, generator=g))
    packed, s = packed.cuda(), scale.cuda().reshape(-1).float()
    t2 = wb.ops.to_t2(packed, n, levels)
    x = torch.randn(100, n, generator=g).to(dtype).cuda()
    bias = torch.randn(m, generator=g).to(dtype).cuda()
    # The dense path (int8 products exact, the same epilogue; None where m or n is not a
    # multiple of 8) and linear's choice between it and the kernels equal the kernels.
    kernels = wb.functional._linear_t2(x, t2, m, s, bias, True, levels)
    dense = wb.functional._linear_dense(x, packed, m, s, bias, True, levels, False)
    assert (dense is None) == bool(m % 8 or n % 8)
    for y in (dense, wb.functional._linear_t2(x, t2, m, s, bias, True, levels, i2=packed)):
        assert y is None or torch.equal(y, kernels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_writes_y_in_place(dtype):
    # The eager fast path launches one kernel into Y: every element written (Y poisoned
    # with NaN first), the same values as linear, for ternary and INT2 weights.
    g = torch.Generator().manual_seed(7)
    m, n = 300, 1000
    packed = wb.pack_ternary(torch.randint(-1, 2, (m, n), generator=g).float()).cuda()
    levels = torch.randint(0, 4, (m, n), generator=g).float() - 1.5
    packed2 = wb.pack_int2(levels).cuda()
    x = torch.randn(n, generator=g).to("cuda", dtype)
    for gemv, lin, w in ((wb.gemv, wb.linear, packed), (wb.functional.gemv_int2, wb.linear_int2, packed2)):
        y = torch.full((m,), float("nan"), device="cuda", dtype=dtype)
        gemv(w, x, y)
        assert torch.equal(y, lin(x.unsqueeze(0), w).squeeze(0))


def test_prepared_launches_follow_the_buffers():
    # The eager fast path plans each GEMM once per shape and buffer addresses: fresh inputs,
    # an in-place weight update (a new GPU layout, maybe at the old address) and a new bias
    # tensor must all show in the next call's result.
    g = torch.Generator().manual_seed(11)
    m, n = 200, 300
    layer = wb.BitLinear(n, m, bias=True).cuda().half()
    for step in range(3):
        w = torch.randint(-1, 2, (m, n), generator=g).float()
        layer.weight_packed.copy_(wb.pack_ternary(w).cuda())
        layer.bias = torch.randn(m, generator=g).half().cuda()
        for _ in range(2):
            x = torch.randn(1, n, generator=g).half().cuda()
            want = (x.double().cpu() @ w.double().T) * layer.weight_scale.double().cpu() + layer.bias.double().cpu()
            got = layer(x).double().cpu()
            assert (got - want).norm() / want.norm() < 1e-3, step


def test_dense_path_follows_the_planner():
    # On compute capability 9.0 the GEMM takes the prefill kernel from 65 tokens: with whole K
    # where its tiles fill the GPU (28672 x 8192), with K split over several CTAs per tile where
    # they do not and the split-K cluster kernels cannot take the batch (8192 x 28672: 32 row
    # blocks, K slices too long for them); it beats the dense path at every batch. Elsewhere the
    # mma.sync prefill and token-group kernels lose to the dense path from 65 int8 tokens.
    cuda = torch.device("cuda")
    hopper = torch.cuda.get_device_capability() == (9, 0)

    def dense(tokens, rows, cols):
        return wb.functional.dense_path(tokens, cuda, rows, cols, "ternary", True)

    for tokens in (100, 513, 2048):
        assert dense(tokens, 28672, 8192) != hopper
        assert dense(tokens, 8192, 28672) != hopper
    assert not dense(64, 28672, 8192)


def test_cuda_linear_with_a_gradient_wanted_refuses_backward():
    packed = wb.pack_ternary(torch.randint(-1, 2, (32, 64)).float()).cuda()
    x = torch.randn(3, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    y = wb.linear(x, packed)
    with pytest.raises(RuntimeError):
        y.sum().backward()
    with pytest.raises(ValueError, match="must be \\[M, 4\\]"):
        wb.ops.i2_to_dense(packed[:, :2].contiguous(), 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("levels", ["ternary", "int2"])
@pytest.mark.parametrize("per_row", [False, True])
def test_dense_path_ops_equal_the_torch_formulas(dtype, levels, per_row):
    g = torch.Generator().manual_seed(41)
    m, n, batch = 300, 1000, 70
    if levels == "ternary":
        packed, _ = wb.quantize_ternary(torch.randn(m, n, generator=g))
    else:
        packed, _ = wb.quantize_int2(torch.randn(m, n, generator=g))
    packed = packed.cuda()
    s = (torch.rand(m if per_row else 1, generator=g) * 3 + 1e-3).cuda()
    # The decode against the CPU unpackers, then with the scale folded in: level * scale in
    # float32, rounded once.
    levels_dense = wb.ops.i2_to_dense(packed, n, levels, dtype)
    unpack = wb.unpack_ternary if levels == "ternary" else wb.unpack_int2
    assert torch.equal(levels_dense.cpu(), unpack(packed.cpu(), n).to(dtype))
    want = (levels_dense.float() * (s[:, None] if per_row else s)).to(dtype)
    assert torch.equal(wb.ops.i2_to_dense(packed, n, levels, dtype, s), want)
    # The W2A8 epilogue on int32 sums: functional._w2a8_epilogue's formula, bit for bit.
    acc = torch.randint(-(2**20), 2**20, (batch, m), generator=g, dtype=torch.int32).cuda()
    qs = (torch.rand(batch, generator=g) * 1e-2).cuda()
    bias = torch.randn(m, generator=g).to(dtype).cuda()
    for sc, b in ((s, None), (s, bias), (None, None)):
        want = wb.functional._w2a8_epilogue(acc, qs, sc, b, levels).to(dtype)
        assert torch.equal(wb.ops.w2a8_epilogue(acc, qs, sc, b, dtype, levels), want)


def test_dense_path_ops_reject_bad_arguments():
    packed = wb.pack_ternary(torch.randint(-1, 2, (32, 64)).float()).cuda()
    s = torch.ones(32, device="cuda")
    with pytest.raises(ValueError, match="int8 dense weights"):
        wb.ops.i2_to_dense(packed, 64, "ternary", torch.int8, s)
    with pytest.raises(ValueError, match="`scale` must be float32"):
        wb.ops.i2_to_dense(packed, 64, "ternary", torch.float16, s[:5])
    acc = torch.zeros(4, 32, dtype=torch.int32, device="cuda")
    qs = torch.ones(4, device="cuda")
    with pytest.raises(ValueError, match="`acc` must be int32"):
        wb.ops.w2a8_epilogue(acc.float(), qs, None, None, torch.float16)
    with pytest.raises(ValueError, match="`x_scale` must be float32"):
        wb.ops.w2a8_epilogue(acc, qs[:3], None, None, torch.float16)
    with pytest.raises(ValueError, match="`bias` must be"):
        wb.ops.w2a8_epilogue(acc, qs, None, torch.zeros(32, device="cuda"), torch.float16)
    with pytest.raises(ValueError, match="`dtype` must be float16 or bfloat16"):
        wb.ops.w2a8_epilogue(acc, qs, None, None, torch.float32)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        wb.ops.w2a8_epilogue(acc.cpu(), qs, None, None, torch.float16)
