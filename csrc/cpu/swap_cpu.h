// Declarations of the C++ CPU backend of the swap optimisation (used by the bindings and the CUDA host code).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace tdann_swap {
struct WindowResult {
  int64_t accepted = 0;
  double before = 0, after = 0;
};
WindowResult optimize_window(const float* C, int64_t m, double* px, double* py, int64_t* perm, uint64_t seed,
                             int64_t window, int64_t trials, bool exact);
at::Tensor window_correlation(const at::Tensor& z, const at::Tensor& units);
}  // namespace tdann_swap

std::tuple<at::Tensor, int64_t, double, double> swap_window_cpu(const at::Tensor& c, const at::Tensor& pos,
                                                                 uint64_t seed, int64_t window, int64_t trials,
                                                                 bool exact);
at::Tensor swap_round_cpu(const at::Tensor& z, const at::Tensor& slot_pos, const at::Tensor& cell_start,
                          const at::Tensor& cell_slots, const at::Tensor& grid, at::Tensor unit_at_slot,
                          const at::Tensor& rects, const at::Tensor& window_ids, const at::Tensor& trials,
                          uint64_t seed, int64_t max_units, bool exact, int64_t threads);
std::tuple<at::Tensor, at::Tensor> schedule_rounds(const at::Tensor& rects, int64_t round_size, int64_t lookahead);
#ifdef WITH_CUDA
at::Tensor swap_round_cuda(const at::Tensor& z, const at::Tensor& slot_pos, const at::Tensor& cell_start,
                           const at::Tensor& cell_slots, const at::Tensor& grid, at::Tensor unit_at_slot,
                           const at::Tensor& rects, const at::Tensor& window_ids, const at::Tensor& trials,
                           uint64_t seed, int64_t max_units, bool exact, int64_t threads);
#endif
