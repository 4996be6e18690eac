// CUDA backend of the position swap optimisation, host side (ATen): windows on the host, batched correlation
// matrices with cuBLAS, then one kernel launch (swap_kernels.cu) with a thread block per window. See swap_kernels.cu
// for how its results relate to the CPU backend's.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../cpu/swap_cpu.h"
#include "../swap_common.h"
#include "swap_cuda.h"

at::Tensor swap_round_cuda(const at::Tensor& z, const at::Tensor& slot_pos, const at::Tensor& cell_start,
                           const at::Tensor& cell_slots, const at::Tensor& grid, at::Tensor unit_at_slot,
                           const at::Tensor& rects, const at::Tensor& window_ids, const at::Tensor& trials,
                           uint64_t seed, int64_t max_units, bool exact, int64_t threads) {
  TORCH_CHECK(z.is_cuda() && z.scalar_type() == at::kFloat && z.dim() == 2 && z.is_contiguous(),
              "z must be a contiguous float32 CUDA tensor (N, S)");
  const at::Tensor* host_args[] = {&slot_pos, &cell_start, &cell_slots, &grid, &unit_at_slot, &rects, &window_ids,
                                   &trials};
  for (const at::Tensor* t : host_args)
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "host arguments must be contiguous CPU tensors");
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t r = window_ids.size(0);
  const int64_t n = slot_pos.size(0);
  TORCH_CHECK(z.size(0) == n, "z has ", z.size(0), " units, slot_pos ", n);
  const double* sp = slot_pos.data_ptr<double>();
  int64_t* uas = unit_at_slot.data_ptr<int64_t>();
  const int64_t* ids = window_ids.data_ptr<int64_t>();
  const int64_t* tr = trials.data_ptr<int64_t>();
  const double* rc = rects.data_ptr<double>();

  // 1. windows' slots on the host (same code as the CPU backend)
  std::vector<std::vector<int64_t>> slots(r);
#pragma omp parallel for num_threads(std::max<int64_t>(1, threads)) schedule(dynamic, 1)
  for (int64_t i = 0; i < r; ++i)
    tdann_swap::collect_window_slots(sp, cell_start.data_ptr<int64_t>(), cell_slots.data_ptr<int64_t>(),
                                     grid.data_ptr<double>(), rc + 4 * ids[i], seed, ids[i], max_units, slots[i]);
  int64_t mmax = tdann_swap::MIN_UNITS;
  for (const auto& s : slots) mmax = std::max<int64_t>(mmax, (int64_t)s.size());

  at::Tensor out = at::empty({r, tdann_swap::STAT_COLS}, at::kDouble);
  double* o = out.data_ptr<double>();
  at::Tensor units = at::zeros({r, mmax}, at::kLong);
  at::Tensor mask = at::zeros({r, mmax}, at::kDouble);
  at::Tensor pos = at::zeros({r, mmax, 2}, at::kDouble);
  at::Tensor msize = at::zeros({r}, at::kLong);
  int64_t* u = units.data_ptr<int64_t>();
  double* mk = mask.data_ptr<double>();
  double* p = pos.data_ptr<double>();
  int64_t* ms = msize.data_ptr<int64_t>();
  for (int64_t i = 0; i < r; ++i) {
    const int64_t m = (int64_t)slots[i].size();
    double* row = o + i * tdann_swap::STAT_COLS;
    row[0] = (double)m;
    if (m < tdann_swap::MIN_UNITS) {
      row[1] = 0; row[2] = row[3] = std::numeric_limits<double>::quiet_NaN(); row[4] = 0;
      continue;
    }
    ms[i] = m;
    row[4] = (double)tr[ids[i]];
    for (int64_t k = 0; k < m; ++k) {
      const int64_t s = slots[i][k];
      u[i * mmax + k] = uas[s];
      mk[i * mmax + k] = 1.0;
      p[(i * mmax + k) * 2] = sp[2 * s];
      p[(i * mmax + k) * 2 + 1] = sp[2 * s + 1];
    }
  }

  // 2. correlation matrices of all windows of the round: one batched float32 GEMM (TF32 off by torch default)
  const auto dev = z.device();
  const int64_t stimuli = z.size(1);
  at::Tensor units_d = units.to(dev);
  at::Tensor zw = z.index_select(0, units_d.view({-1})).view({r, mmax, stimuli});
  zw = zw * mask.to(dev, at::kFloat).unsqueeze(2);
  at::Tensor corr = at::bmm(zw, zw.transpose(1, 2)).div_((double)(stimuli - 1)).clamp_(-1.0, 1.0);
  corr = at::tril(corr) + at::tril(corr, -1).transpose(1, 2);  // exactly symmetric
  corr = at::nan_to_num(corr, 0.0).contiguous();

  // 3. trials: one block per window
  at::Tensor pos_d = pos.to(dev);
  at::Tensor msize_d = msize.to(dev);
  at::Tensor ids_d = window_ids.to(dev);
  at::Tensor round_trials = at::empty({r}, at::kLong);
  for (int64_t i = 0; i < r; ++i) round_trials.data_ptr<int64_t>()[i] = ms[i] >= tdann_swap::MIN_UNITS ? tr[ids[i]] : 0;
  at::Tensor trials_d = round_trials.to(dev);
  at::Tensor perm_d = at::zeros({r, mmax}, at::TensorOptions().dtype(at::kLong).device(dev));
  at::Tensor stats_d = at::zeros({r, 3}, at::TensorOptions().dtype(at::kDouble).device(dev));
  auto stream = at::cuda::getCurrentCUDAStream();
  const cudaError_t err = tdann_swap::launch_swap_windows(
      corr.data_ptr<float>(), pos_d.data_ptr<double>(), msize_d.data_ptr<int64_t>(), ids_d.data_ptr<int64_t>(),
      trials_d.data_ptr<int64_t>(), r, mmax, seed, exact, perm_d.data_ptr<int64_t>(), stats_d.data_ptr<double>(),
      stream.stream());
  TORCH_CHECK(err == cudaSuccess, "swap kernel launch failed: ", cudaGetErrorString(err));
  at::Tensor perm = perm_d.cpu();
  at::Tensor st = stats_d.cpu();
  const int64_t* pm = perm.data_ptr<int64_t>();
  const double* sv = st.data_ptr<double>();

  // 4. write back: unit k of window i now sits in slot slots[perm[k]]
  for (int64_t i = 0; i < r; ++i) {
    const int64_t m = ms[i];
    if (m < tdann_swap::MIN_UNITS) continue;
    for (int64_t k = 0; k < m; ++k) uas[slots[i][pm[i * mmax + k]]] = u[i * mmax + k];
    double* row = o + i * tdann_swap::STAT_COLS;
    row[1] = sv[i * 3]; row[2] = sv[i * 3 + 1]; row[3] = sv[i * 3 + 2];
  }
  return out;
}
