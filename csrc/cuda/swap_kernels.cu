// CUDA backend of the position swap optimisation: one thread block per window, the block's threads compute the
// O(M) terms of a trial's gain and reduce them (warp shuffles + shared memory); thread 0 applies accepted swaps.
//
// Relation to the CPU backend: windows, their units and the trial pairs are identical (same host code and the same
// counter-based random numbers); the window correlation matrix is a float32 cuBLAS GEMM (the CPU's is a float32 CPU
// BLAS GEMM: the matrices can differ in the last bits), and every term of a gain is bit-identical to the CPU's (IEEE sqrt/div, no FMA:
// compiled with --fmad=false). Only the summation order of the gain differs (a tree instead of the CPU's 8-lane order), so an
// accept decision can differ only when |gain| is within rounding (~1e-16 relative) of zero. See README.
// This file holds only the device code (no ATen, so it compiles in seconds); swap_cuda.cpp is the host side.
#include <cuda_runtime.h>

#include <cstdint>

#include "../swap_common.h"
#include "swap_cuda.h"

namespace {

using namespace tdann_swap;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// Sum of v over the block; every thread gets the result. red must hold kWarps + 1 doubles.
__device__ double block_sum(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int i = 0; i < kWarps; ++i) s += red[i];
    red[kWarps] = s;
  }
  __syncthreads();
  const double s = red[kWarps];
  __syncthreads();
  return s;
}

__device__ __forceinline__ double sim(double x0, double y0, double x1, double y1) {
  const double dx = __dsub_rn(x0, x1), dy = __dsub_rn(y0, y1);
  return __ddiv_rn(1.0, __dadd_rn(__dsqrt_rn(__dadd_rn(__dmul_rn(dx, dx), __dmul_rn(dy, dy))), 1.0));
}

__global__ void swap_windows_kernel(const float* __restrict__ corr, const double* __restrict__ pos,
                                    const int64_t* __restrict__ msize, const int64_t* __restrict__ window_ids,
                                    const int64_t* __restrict__ trials, int64_t mmax, uint64_t seed, bool exact,
                                    int64_t* __restrict__ perm_out, double* __restrict__ stats) {
  extern __shared__ double shared[];
  double* px = shared;
  double* py = shared + mmax;
  double* red = shared + 2 * mmax;
  int* perm = reinterpret_cast<int*>(red + kWarps + 1);
  const int64_t r = blockIdx.x;
  const int64_t m = msize[r];
  if (m < MIN_UNITS) return;
  const float* c = corr + r * mmax * mmax;
  for (int64_t k = threadIdx.x; k < m; k += blockDim.x) {
    px[k] = pos[(r * mmax + k) * 2];
    py[k] = pos[(r * mmax + k) * 2 + 1];
    perm[k] = (int)k;
  }
  __syncthreads();

  // objective sums over the lower triangle (and the diagonal for "tdann")
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0, dsum = 0, dsq = 0;
  for (int64_t idx = threadIdx.x; idx < m * m; idx += blockDim.x) {
    const int64_t i = idx / m, j = idx % m;
    if (j < i) {
      const double s = sim(px[i], py[i], px[j], py[j]);
      const double x = (double)c[i * mmax + j];
      sx += x; sy += s; sxx += x * x; syy += s * s; sxy += x * s;
    } else if (j == i) {
      const double x = (double)c[i * mmax + i];
      dsum += x; dsq += x * x;
    }
  }
  sx = block_sum(sx, red); sy = block_sum(sy, red); sxx = block_sum(sxx, red);
  syy = block_sum(syy, red); sxy = block_sum(sxy, red); dsum = block_sum(dsum, red); dsq = block_sum(dsq, red);
  ObjectiveSums o;
  if (exact) {
    o.n = (double)m * (double)(m - 1) / 2.0;
    o.sx = sx; o.sy = sy; o.sxx = sxx; o.syy = syy; o.sxy = sxy; o.factor = 1.0;
  } else {
    o.n = (double)m * (double)m;
    o.sx = 2 * sx + dsum; o.sy = 2 * sy + (double)m; o.sxx = 2 * sxx + dsq; o.syy = 2 * syy + (double)m;
    o.sxy = 2 * sxy + dsum; o.factor = 2.0;
  }
  const double before = o.value();

  const int64_t w = window_ids[r];
  const int64_t nt = trials[r];  // trials of this block's window
  const uint64_t key = window_key(seed, STREAM_TRIAL, (uint64_t)w);
  int64_t accepted = 0;
  for (int64_t t = 0; t < nt; ++t) {
    int64_t a, b;
    trial_pair(draw(key, (uint64_t)t), m, &a, &b);
    const float* ca = c + a * mmax;
    const float* cb = c + b * mmax;
    const double pax = px[a], pay = py[a], pbx = px[b], pby = py[b];
    double local = 0.0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      if (j == a || j == b) continue;
      const double sa = sim(pax, pay, px[j], py[j]);
      const double sb = sim(pbx, pby, px[j], py[j]);
      local = __dadd_rn(local, __dmul_rn(__dsub_rn((double)ca[j], (double)cb[j]), __dsub_rn(sb, sa)));
    }
    const double gain = block_sum(local, red);  // ends with __syncthreads: all reads of px/py are done
    if (gain > 0.0) {
      if (threadIdx.x == 0) {
        double tx = px[a]; px[a] = px[b]; px[b] = tx;
        double ty = py[a]; py[a] = py[b]; py[b] = ty;
        int tp = perm[a]; perm[a] = perm[b]; perm[b] = tp;
      }
      o.sxy += o.factor * gain;
      ++accepted;
      __syncthreads();
    }
  }
  for (int64_t k = threadIdx.x; k < m; k += blockDim.x) perm_out[r * mmax + k] = perm[k];
  if (threadIdx.x == 0) {
    stats[r * 3 + 0] = (double)accepted;
    stats[r * 3 + 1] = before;
    stats[r * 3 + 2] = o.value();
  }
}

}  // namespace

namespace tdann_swap {

size_t swap_windows_shared_bytes(int64_t mmax) {
  return (2 * mmax + kWarps + 1) * sizeof(double) + mmax * sizeof(int);
}

cudaError_t launch_swap_windows(const float* corr, const double* pos, const int64_t* msize, const int64_t* window_ids,
                                const int64_t* trials, int64_t num_windows, int64_t mmax, uint64_t seed, bool exact,
                                int64_t* perm_out, double* stats, cudaStream_t stream) {
  const size_t shmem = swap_windows_shared_bytes(mmax);
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(swap_windows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shmem);
    if (e != cudaSuccess) return e;
  }
  swap_windows_kernel<<<(unsigned)num_windows, kThreads, shmem, stream>>>(corr, pos, msize, window_ids, trials, mmax,
                                                                          seed, exact, perm_out, stats);
  return cudaGetLastError();
}

}  // namespace tdann_swap
