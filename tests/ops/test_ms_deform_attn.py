"""Multi-scale deformable attention: the PyTorch path against a naive per-point reference, its
gradients, the module, the kernel dispatch, and (on a GPU with the kernel built) the kernel
against the PyTorch path.
"""
import math
import subprocess
import sys

import pytest
import torch

from dataseg.modeling.ops import ms_deform_attn as mda
from dataseg.modeling.ops.ms_deform_attn import (
    MSDeformAttn,
    kernel_available,
    kernel_status,
    ms_deform_attn_pytorch,
)

CUDA_REASON = ("needs an NVIDIA GPU and the compiled kernel dataseg._C "
               f"(build: {mda.BUILD_HINT}); kernel: {kernel_status()}, "
               f"GPU: {torch.cuda.is_available()}")
needs_kernel_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and kernel_available()),
                                      reason=CUDA_REASON)


def level_index(shapes):
    shapes = torch.as_tensor(shapes, dtype=torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return shapes, starts, int(sizes.sum())


def make_inputs(shapes, n=2, m=2, d=3, lq=5, p=3, dtype=torch.float64, device="cpu", seed=0,
                spread=0.3):
    """Random inputs; locations in [-spread, 1 + spread] so some fall outside the image."""
    g = torch.Generator().manual_seed(seed)
    shapes, starts, s = level_index(shapes)
    nl = shapes.shape[0]
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    loc = torch.rand(n, lq, m, nl, p, 2, generator=g, dtype=dtype) * (1 + 2 * spread) - spread
    attn = torch.rand(n, lq, m, nl, p, generator=g, dtype=dtype)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def naive_reference(value, shapes, starts, loc, attn):
    """Explicit bilinear interpolation, one sample at a time (pixel centres at i + 0.5)."""
    n, _, m, d = value.shape
    _, lq, _, nl, p, _ = loc.shape
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    v = value.double()
    for b in range(n):
        for q in range(lq):
            for h in range(m):
                for lvl in range(nl):
                    hh, ww = int(shapes[lvl, 0]), int(shapes[lvl, 1])
                    st = int(starts[lvl])
                    for k in range(p):
                        x = float(loc[b, q, h, lvl, k, 0]) * ww - 0.5
                        y = float(loc[b, q, h, lvl, k, 1]) * hh - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(d, dtype=torch.float64)
                        for yy in (y0, y0 + 1):
                            for xx in (x0, x0 + 1):
                                if 0 <= yy < hh and 0 <= xx < ww:
                                    wgt = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                    sample += wgt * v[b, st + yy * ww + xx, h]
                        out[b, q, h] += float(attn[b, q, h, lvl, k]) * sample
    return out.view(n, lq, m * d)


SHAPES = [
    [(4, 4)],
    [(5, 7), (3, 2), (1, 1)],
    [(2, 6), (6, 2)],
]


@pytest.mark.parametrize("shapes", SHAPES)
def test_pytorch_path_matches_naive_reference(shapes):
    value, sh, st, loc, attn = make_inputs(shapes)
    # Points exactly on borders, half a pixel outside, and far outside.
    loc[0, 0, 0, 0, 0] = torch.tensor([0.0, 0.0])
    loc[0, 0, 0, 0, 1] = torch.tensor([1.0, 1.0])
    loc[0, 1, 0, 0, 0] = torch.tensor([-0.5 / float(sh[0, 1]), 0.5])
    loc[0, 1, 1, 0, 1] = torch.tensor([5.0, -3.0])
    out = ms_deform_attn_pytorch(value, sh, st, loc, attn)
    ref = naive_reference(value, sh, st, loc, attn)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_samples_at_pixel_centres_read_the_pixel_and_far_outside_reads_zero():
    value, sh, st, loc, attn = make_inputs([(3, 5)], n=1, m=1, d=2, lq=2, p=1)
    # Query 0 at the centre of pixel (row 2, col 3); query 1 far outside.
    loc[0, 0, 0, 0, 0] = torch.tensor([(3 + 0.5) / 5, (2 + 0.5) / 3])
    loc[0, 1, 0, 0, 0] = torch.tensor([-1.0, 2.0])
    attn.fill_(1.0)
    out = ms_deform_attn_pytorch(value, sh, st, loc, attn)
    torch.testing.assert_close(out[0, 0], value[0, 2 * 5 + 3, 0])
    assert torch.all(out[0, 1] == 0)


def test_pytorch_path_gradcheck():
    value, sh, st, loc, attn = make_inputs([(3, 4), (2, 2)], n=1, m=2, d=2, lq=2, p=2, seed=1)
    value.requires_grad_(True)
    loc.requires_grad_(True)
    attn.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, lo, a: ms_deform_attn_pytorch(v, sh, st, lo, a), (value, loc, attn),
        eps=1e-6, atol=1e-5)


def test_pytorch_path_rejects_mismatched_shapes():
    value, sh, st, loc, attn = make_inputs([(3, 4)])
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn_pytorch(value[:, :-1], sh, st, loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn_pytorch(value, sh, st, loc, attn[..., :-1])


def _module_inputs(n=2, lq=7, c=16, shapes=((6, 5), (3, 3), (2, 1)), seed=0):
    g = torch.Generator().manual_seed(seed)
    sh, st, s = level_index(list(shapes))
    query = torch.randn(n, lq, c, generator=g)
    src = torch.randn(n, s, c, generator=g)
    ref = torch.rand(n, lq, len(shapes), 2, generator=g)
    return query, ref, src, sh, st


def test_module_forward_backward_on_cpu():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, impl="pytorch")
    # Non-zero offsets/weights so their gradients flow through the sampling.
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.1)
    query, ref, src, sh, st = _module_inputs()
    query.requires_grad_(True)
    src.requires_grad_(True)
    out = attn(query, ref, src, sh, st)
    assert out.shape == query.shape
    out.square().sum().backward()
    for name, prm in attn.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name
    assert query.grad.abs().sum() > 0 and src.grad.abs().sum() > 0
    # Box reference points (cx, cy, w, h) work too.
    boxes = torch.cat([ref, torch.full_like(ref, 0.2)], dim=-1)
    assert attn(query, boxes, src, sh, st).shape == query.shape


def test_module_initialisation_follows_deformable_detr():
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=8, n_points=3)
    assert torch.all(attn.sampling_offsets.weight == 0)
    assert torch.all(attn.attention_weights.weight == 0)
    assert torch.all(attn.attention_weights.bias == 0)
    bias = attn.sampling_offsets.bias.view(8, 2, 3, 2)
    # Point k of every head and level sits at (k + 1) times the head's unit-ring direction.
    for k in range(3):
        torch.testing.assert_close(bias[:, :, k], bias[:, :, 0] * (k + 1))
    torch.testing.assert_close(bias[:, 0], bias[:, 1])
    assert torch.allclose(bias[:, 0, 0].abs().max(-1).values, torch.ones(8))
    # Head 0 looks right (+x), head 2 down (+y), head 4 left.
    torch.testing.assert_close(bias[0, 0, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(bias[2, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[4, 0, 0], torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)
    assert attn.value_proj.weight.std() > 0 and torch.all(attn.value_proj.bias == 0)


def test_padding_mask_removes_padded_positions():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=4, impl="pytorch")
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=1.0)
    query, ref, src, sh, st = _module_inputs(seed=3)
    mask = torch.zeros(src.shape[:2], dtype=torch.bool)
    mask[:, 5:17] = True
    mask[1, -2:] = True
    base = attn(query, ref, src, sh, st, input_padding_mask=mask)
    changed = src.clone()
    changed[mask] = torch.randn(int(mask.sum()), src.shape[-1]) * 100
    torch.testing.assert_close(attn(query, ref, changed, sh, st, input_padding_mask=mask), base)
    # Without the mask the same change does alter the output.
    assert not torch.allclose(attn(query, ref, changed, sh, st), attn(query, ref, src, sh, st))


def test_module_rejects_bad_inputs():
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2)
    query, ref, src, sh, st = _module_inputs()
    with pytest.raises(ValueError, match="reference_points"):
        attn(query, ref[:, :, :2], src, sh, st)
    with pytest.raises(ValueError, match="input_padding_mask"):
        attn(query, ref, src, sh, st, input_padding_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="impl"):
        MSDeformAttn(impl="triton")


def test_auto_impl_uses_pytorch_path_on_cpu_tensors():
    torch.manual_seed(0)
    auto = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, impl="auto")
    ref_mod = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, impl="pytorch")
    ref_mod.load_state_dict(auto.state_dict())
    inputs = _module_inputs()
    torch.testing.assert_close(auto(*inputs), ref_mod(*inputs))


def test_cuda_impl_error_names_the_build_command(monkeypatch):
    monkeypatch.setattr(mda, "_KERNEL", (None, "ImportError: simulated"))
    with pytest.raises(RuntimeError, match="DATASEG_BUILD_CUDA=1 pip install"):
        MSDeformAttn(d_model=16, n_levels=1, n_heads=4, n_points=1, impl="cuda")
    assert kernel_status().startswith("not built (ImportError: simulated)")


def test_cuda_impl_on_cpu_tensors_is_an_error():
    if not kernel_available():
        pytest.skip(f"kernel not built here: {kernel_status()}")
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, impl="cuda")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        attn(*_module_inputs())


def test_module_imports_without_the_kernel():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'dataseg._C':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from dataseg.modeling.ops.ms_deform_attn import MSDeformAttn, kernel_status\n"
        "m = MSDeformAttn(16, 1, 4, 1)\n"
        "out = m(torch.randn(1, 2, 16), torch.rand(1, 2, 1, 2), torch.randn(1, 6, 16),\n"
        "        torch.tensor([[2, 3]]), torch.tensor([0]))\n"
        "assert out.shape == (1, 2, 16)\n"
        "print(kernel_status())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("not built (ImportError")


# --------------------------------------------------------------- kernel vs PyTorch (GPU only)

KERNEL_CASES = [
    # shapes, N, M, D, Lq, P
    ([(8, 8), (4, 4), (2, 2)], 2, 8, 32, 50, 4),     # M2F-like, D = 32 (warp reduction)
    ([(7, 13), (4, 7), (2, 3)], 1, 4, 16, 33, 3),    # non-square levels, D = 16
    ([(5, 3)], 3, 2, 6, 17, 5),                      # D not a power of two (per-lane atomics)
    ([(1, 9), (9, 1)], 1, 3, 64, 8, 2),              # D > 32
]


@needs_kernel_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_kernel_matches_pytorch_forward_and_backward(case):
    shapes, n, m, d, lq, p = case
    inputs = make_inputs(shapes, n=n, m=m, d=d, lq=lq, p=p, dtype=torch.float32,
                         device="cuda", seed=7, spread=0.4)
    value, sh, st, loc, attn = inputs
    grad = torch.randn(n, lq, m * d, device="cuda")
    results = []
    for fn in (mda.ms_deform_attn_pytorch, mda.ms_deform_attn_cuda):
        v, lo, a = (t.detach().clone().requires_grad_(True) for t in (value, loc, attn))
        out = fn(v, sh, st, lo, a)
        out.backward(grad)
        results.append((out.detach(), v.grad, lo.grad, a.grad))
    for name, ref, got in zip(("out", "grad_value", "grad_loc", "grad_attn"), *results):
        scale = ref.abs().max().clamp_min(1e-6)
        err = ((got - ref).abs().max() / scale).item()
        assert err < 1e-4, f"{name}: relative error {err:.2e}"


@needs_kernel_gpu
@pytest.mark.cuda
def test_kernel_gradcheck_double():
    value, sh, st, loc, attn = make_inputs([(3, 4), (2, 2)], n=1, m=2, d=4, lq=3, p=2,
                                           device="cuda", seed=2)
    for t in (value, loc, attn):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, lo, a: mda.ms_deform_attn_cuda(v, sh, st, lo, a), (value, loc, attn),
        eps=1e-6, atol=1e-5)


@needs_kernel_gpu
@pytest.mark.cuda
def test_module_auto_uses_kernel_on_gpu_and_matches_pytorch():
    torch.manual_seed(0)
    auto = MSDeformAttn(d_model=64, n_levels=3, n_heads=8, n_points=4, impl="auto").cuda()
    torch.nn.init.normal_(auto.sampling_offsets.weight, std=0.5)
    ref_mod = MSDeformAttn(d_model=64, n_levels=3, n_heads=8, n_points=4, impl="pytorch").cuda()
    ref_mod.load_state_dict(auto.state_dict())
    q, r, s, sh, st = (t.cuda() for t in _module_inputs(c=64, lq=40))
    assert auto._use_kernel(s)
    torch.testing.assert_close(auto(q, r, s, sh, st), ref_mod(q, r, s, sh, st), rtol=1e-4,
                               atol=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        out = auto(q, r, s, sh, st)
    assert torch.isfinite(out).all()
