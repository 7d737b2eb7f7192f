// Multi-scale deformable attention CUDA kernels for DaTaSeg (written for this project).
//
// Layouts (all contiguous): value (N, S, M, D); spatial_shapes (L, 2) int64 (H, W);
// level_start_index (L,) int64; sampling_loc (N, Lq, M, L, P, 2) normalised (x, y);
// attn_weight (N, Lq, M, L, P); output (N, Lq, M*D).
// One thread per output element (n, q, m, d), d fastest. Pixel centres are at (i + 0.5) / W
// (align_corners=False) and samples outside a level read zeros, as F.grid_sample does.
// Backward scatters into value with atomics; the per-sample gradients of the location and the
// weight are sums over d, reduced across the D neighbouring lanes with warp shuffles when D is
// a power of two <= 32 (else one atomic per lane). Gradients accumulate in fp32 (fp64 for
// double) and are cast back to the input dtype.
// Only c10/ATen headers that need no CUDA math libraries (cuBLAS/cuSPARSE) are included, so
// a toolkit with just nvcc and the runtime builds it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

namespace {

constexpr int kThreads = 256;

inline int64_t num_blocks(int64_t total) { return (total + kThreads - 1) / kThreads; }

// Bilinear read of one channel at pixel coordinates (y, x) with zero padding.
// `v` points at (n, level start, m, d); consecutive pixels are `stride` = M*D apart.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t bilinear_read(const scalar_t* __restrict__ v, int h, int w,
                                               int64_t stride, acc_t y, acc_t x) {
  const int y0 = static_cast<int>(floor(y));
  const int x0 = static_cast<int>(floor(x));
  const int y1 = y0 + 1, x1 = x0 + 1;
  const acc_t ly = y - y0, lx = x - x0;
  const acc_t hy = 1 - ly, hx = 1 - lx;
  acc_t out = 0;
  if (y0 >= 0 && x0 >= 0) out += hy * hx * static_cast<acc_t>(v[(int64_t(y0) * w + x0) * stride]);
  if (y0 >= 0 && x1 < w) out += hy * lx * static_cast<acc_t>(v[(int64_t(y0) * w + x1) * stride]);
  if (y1 < h && x0 >= 0) out += ly * hx * static_cast<acc_t>(v[(int64_t(y1) * w + x0) * stride]);
  if (y1 < h && x1 < w) out += ly * lx * static_cast<acc_t>(v[(int64_t(y1) * w + x1) * stride]);
  return out;
}

template <typename scalar_t, typename acc_t>
__global__ void ms_deform_attn_forward_kernel(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts, const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn, scalar_t* __restrict__ out, int64_t total, int64_t S,
    int M, int D, int64_t Lq, int L, int P) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int d = idx % D;
  const int64_t nqm = idx / D;  // ((n * Lq + q) * M + m)
  const int m = nqm % M;
  const int64_t n = nqm / (int64_t(M) * Lq);
  const int64_t stride = int64_t(M) * D;
  const scalar_t* v_nmd = value + n * S * stride + int64_t(m) * D + d;
  const scalar_t* loc_p = loc + nqm * L * P * 2;
  const scalar_t* attn_p = attn + nqm * L * P;
  acc_t acc = 0;
  for (int l = 0; l < L; ++l) {
    const int h = static_cast<int>(shapes[2 * l]);
    const int w = static_cast<int>(shapes[2 * l + 1]);
    const scalar_t* v_l = v_nmd + starts[l] * stride;
    for (int p = 0; p < P; ++p) {
      const acc_t x = static_cast<acc_t>(loc_p[0]) * w - acc_t(0.5);
      const acc_t y = static_cast<acc_t>(loc_p[1]) * h - acc_t(0.5);
      const acc_t a = static_cast<acc_t>(*attn_p);
      loc_p += 2;
      ++attn_p;
      if (y > -1 && x > -1 && y < h && x < w) acc += a * bilinear_read<scalar_t, acc_t>(v_l, h, w, stride, y, x);
    }
  }
  out[idx] = static_cast<scalar_t>(acc);
}

// Sum over the `seg` neighbouring lanes (seg a power of two <= 32); lane 0 of each segment
// ends with the total. Every lane of the warp must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t segment_sum(acc_t v, int seg) {
  for (int offset = seg / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset, seg);
  }
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void ms_deform_attn_backward_kernel(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts, const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
    acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_loc, acc_t* __restrict__ grad_attn,
    int64_t total, int64_t S, int M, int D, int64_t Lq, int L, int P, int seg) {
  const int64_t raw = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  // Lanes past the end still take part in the shuffles (seg > 1) but add nothing.
  const bool valid = raw < total;
  if (!valid && seg == 1) return;
  const int64_t idx = valid ? raw : total - 1;
  const int d = idx % D;
  const int64_t nqm = idx / D;
  const int m = nqm % M;
  const int64_t n = nqm / (int64_t(M) * Lq);
  const int64_t stride = int64_t(M) * D;
  const int64_t v_off = n * S * stride + int64_t(m) * D + d;
  const scalar_t* v_nmd = value + v_off;
  acc_t* gv_nmd = grad_value + v_off;
  const int64_t lp0 = nqm * L * P;
  const acc_t g = valid ? static_cast<acc_t>(grad_out[idx]) : acc_t(0);
  const bool writer = valid && (seg == 1 || d % seg == 0);

  for (int l = 0; l < L; ++l) {
    const int h = static_cast<int>(shapes[2 * l]);
    const int w = static_cast<int>(shapes[2 * l + 1]);
    const int64_t lvl = starts[l] * stride;
    for (int p = 0; p < P; ++p) {
      const int64_t lp = lp0 + int64_t(l) * P + p;
      const acc_t x = static_cast<acc_t>(loc[2 * lp]) * w - acc_t(0.5);
      const acc_t y = static_cast<acc_t>(loc[2 * lp + 1]) * h - acc_t(0.5);
      const acc_t a = static_cast<acc_t>(attn[lp]);
      acc_t sample = 0, gx = 0, gy = 0;
      if (y > -1 && x > -1 && y < h && x < w) {
        const int y0 = static_cast<int>(floor(y));
        const int x0 = static_cast<int>(floor(x));
        const int y1 = y0 + 1, x1 = x0 + 1;
        const acc_t ly = y - y0, lx = x - x0;
        const acc_t hy = 1 - ly, hx = 1 - lx;
        const acc_t ga = g * a;
        const bool in00 = y0 >= 0 && x0 >= 0, in01 = y0 >= 0 && x1 < w;
        const bool in10 = y1 < h && x0 >= 0, in11 = y1 < h && x1 < w;
        const int64_t o00 = lvl + (int64_t(y0) * w + x0) * stride;
        const int64_t o01 = lvl + (int64_t(y0) * w + x1) * stride;
        const int64_t o10 = lvl + (int64_t(y1) * w + x0) * stride;
        const int64_t o11 = lvl + (int64_t(y1) * w + x1) * stride;
        const acc_t v00 = in00 ? static_cast<acc_t>(v_nmd[o00]) : acc_t(0);
        const acc_t v01 = in01 ? static_cast<acc_t>(v_nmd[o01]) : acc_t(0);
        const acc_t v10 = in10 ? static_cast<acc_t>(v_nmd[o10]) : acc_t(0);
        const acc_t v11 = in11 ? static_cast<acc_t>(v_nmd[o11]) : acc_t(0);
        sample = hy * hx * v00 + hy * lx * v01 + ly * hx * v10 + ly * lx * v11;
        gx = ga * (hy * (v01 - v00) + ly * (v11 - v10)) * w;
        gy = ga * (hx * (v10 - v00) + lx * (v11 - v01)) * h;
        if (valid) {
          if (in00) gpuAtomicAdd(gv_nmd + o00, hy * hx * ga);
          if (in01) gpuAtomicAdd(gv_nmd + o01, hy * lx * ga);
          if (in10) gpuAtomicAdd(gv_nmd + o10, ly * hx * ga);
          if (in11) gpuAtomicAdd(gv_nmd + o11, ly * lx * ga);
        }
      }
      acc_t ga_w = g * sample;
      if (seg > 1) {
        ga_w = segment_sum(ga_w, seg);
        gx = segment_sum(gx, seg);
        gy = segment_sum(gy, seg);
      }
      if (writer) {
        gpuAtomicAdd(grad_attn + lp, ga_w);
        gpuAtomicAdd(grad_loc + 2 * lp, gx);
        gpuAtomicAdd(grad_loc + 2 * lp + 1, gy);
      }
    }
  }
}

int shuffle_segment(int64_t D) {
  // Power of two up to a warp: reduce over lanes; else plain per-lane atomics.
  if (D <= 32 && (D & (D - 1)) == 0) return static_cast<int>(D);
  return 1;
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight) {
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_loc.size(1), L = sampling_loc.size(3), P = sampling_loc.size(4);
  auto out = at::empty({N, Lq, M * D}, value.options());
  const int64_t total = N * Lq * M * D;
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        ms_deform_attn_forward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<scalar_t>(),
            attn_weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, S,
            static_cast<int>(M), static_cast<int>(D), Lq, static_cast<int>(L),
            static_cast<int>(P));
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc,
                                                     const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output) {
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_loc.size(1), L = sampling_loc.size(3), P = sampling_loc.size(4);
  const auto acc_type = at::toOpMathType(value.scalar_type());
  auto acc_opts = value.options().dtype(acc_type);
  auto grad_value = at::zeros(value.sizes(), acc_opts);
  auto grad_loc = at::zeros(sampling_loc.sizes(), acc_opts);
  auto grad_attn = at::zeros(attn_weight.sizes(), acc_opts);
  const int64_t total = N * Lq * M * D;
  if (total > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int seg = shuffle_segment(D);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          ms_deform_attn_backward_kernel<scalar_t, acc_t>
              <<<num_blocks(total), kThreads, 0, stream>>>(
                  value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
                  level_start_index.data_ptr<int64_t>(), sampling_loc.data_ptr<scalar_t>(),
                  attn_weight.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
                  grad_value.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(),
                  grad_attn.data_ptr<acc_t>(), total, S, static_cast<int>(M),
                  static_cast<int>(D), Lq, static_cast<int>(L), static_cast<int>(P), seg);
        });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto dt = value.scalar_type();
  return {grad_value.to(dt), grad_loc.to(dt), grad_attn.to(dt)};
}
