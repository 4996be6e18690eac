// Launcher of the swap kernel (device code in swap_kernels.cu, called from swap_cuda.cpp). Per block r (window
// window_ids[r]): msize[r] units, trials[r] trials, corr (R, mmax, mmax) float32, pos (R, mmax, 2) float64;
// outputs perm_out (R, mmax) and stats (R, 3) = accepted, objective before, objective after.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tdann_swap {
size_t swap_windows_shared_bytes(int64_t mmax);
cudaError_t launch_swap_windows(const float* corr, const double* pos, const int64_t* msize, const int64_t* window_ids,
                                const int64_t* trials, int64_t num_windows, int64_t mmax, uint64_t seed, bool exact,
                                int64_t* perm_out, double* stats, cudaStream_t stream);
}  // namespace tdann_swap
