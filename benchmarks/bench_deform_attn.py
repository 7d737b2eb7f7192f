"""Times multi-scale deformable attention (the core op) for a Mask2Former-sized encoder input.

Default input: batch 2, a 512x512 image's levels at strides 8/16/32 (64x64, 32x32, 16x16),
256 channels in 8 heads (D = 32), 4 points, and every pixel a query (as in the pixel-decoder
encoder). Prints forward and forward+backward medians of the PyTorch path on the CPU, and on
the GPU of both the PyTorch path and the CUDA kernel with their ratio when they are available.

    python benchmarks/bench_deform_attn.py [--image 512] [--batch 2] [--repeats 5]
"""
import argparse
import statistics
import time

import torch

from dataseg.modeling.ops import ms_deform_attn as mda


def make_inputs(batch, image, strides, heads, channels, points, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[image // s, image // s] for s in strides], dtype=torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    d = channels // heads
    nl = len(strides)
    value = torch.randn(batch, s, heads, d, generator=g)
    loc = torch.rand(batch, s, heads, nl, points, 2, generator=g)
    attn = torch.rand(batch, s, heads, nl, points, generator=g)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, inputs, device, backward, warmup, repeats):
    """Median seconds of fn (and its backward when asked) after warm-up runs."""
    value, shapes, starts, loc, attn = inputs
    if backward:
        value, loc, attn = (t.detach().requires_grad_(True) for t in (value, loc, attn))
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn(value, shapes, starts, loc, attn)
        if backward:
            out.backward(torch.ones_like(out))
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        value.grad = loc.grad = attn.grad = None
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--image", type=int, default=512)
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gpu-repeats", type=int, default=50)
    args = ap.parse_args()

    shapes = [args.image // s for s in args.strides]
    lq = sum(h * h for h in shapes)
    print(f"input: batch {args.batch}, levels {shapes} (image {args.image}, strides "
          f"{args.strides}), {args.channels} channels, {args.heads} heads, {args.points} points, "
          f"{lq} queries")
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"kernel: {mda.kernel_status()}")
    rows = []
    cfg = (args.batch, args.image, args.strides, args.heads, args.channels, args.points)

    cpu_inputs = make_inputs(*cfg, "cpu")
    for bwd in (False, True):
        t = time_fn(mda.ms_deform_attn_pytorch, cpu_inputs, "cpu", bwd, args.warmup,
                    args.repeats)
        rows.append(("cpu", "pytorch", "fwd+bwd" if bwd else "fwd", t, None))

    if not torch.cuda.is_available():
        print("no GPU: CUDA path not measured")
    else:
        gpu_inputs = make_inputs(*cfg, "cuda")
        have_kernel = mda.kernel_available()
        if not have_kernel:
            print(f"kernel not built: CUDA kernel not measured ({mda.kernel_status()})")
        for bwd in (False, True):
            mode = "fwd+bwd" if bwd else "fwd"
            t_py = time_fn(mda.ms_deform_attn_pytorch, gpu_inputs, "cuda", bwd, 5,
                           args.gpu_repeats)
            rows.append((torch.cuda.get_device_name(), "pytorch", mode, t_py, None))
            if have_kernel:
                t_k = time_fn(mda.ms_deform_attn_cuda, gpu_inputs, "cuda", bwd, 5,
                              args.gpu_repeats)
                rows.append((torch.cuda.get_device_name(), "cuda kernel", mode, t_k, t_py / t_k))
        if have_kernel:
            for fn in (mda.ms_deform_attn_pytorch, mda.ms_deform_attn_cuda):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                v, lo, a = (t.detach().requires_grad_(True)
                            for t in (gpu_inputs[0], gpu_inputs[3], gpu_inputs[4]))
                fn(v, gpu_inputs[1], gpu_inputs[2], lo, a).sum().backward()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                print(f"peak extra GPU memory fwd+bwd, {fn.__name__}: {peak:.0f} MiB")

    print(f"\n{'device':<28} {'path':<12} {'pass':<8} {'median ms':>10} {'speed-up':>9}")
    for dev, path, mode, t, ratio in rows:
        r = f"{ratio:8.1f}x" if ratio is not None else ""
        print(f"{dev:<28} {path:<12} {mode:<8} {t * 1e3:10.2f} {r:>9}")


if __name__ == "__main__":
    main()
