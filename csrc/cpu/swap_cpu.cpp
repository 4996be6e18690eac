// C++ (OpenMP) backend of the position swap optimisation. Mirrors tdann_fast/swap/reference.py exactly.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../swap_common.h"
#include "swap_cpu.h"

namespace tdann_swap {

void collect_window_slots(const double* slot_pos, const int64_t* cell_start, const int64_t* cell_slots,
                          const double* grid, const double* rect, uint64_t seed, int64_t window, int64_t max_units,
                          std::vector<int64_t>& slots) {
  const double gx0 = grid[0], gy0 = grid[1], cell = grid[2];
  const int64_t nx = (int64_t)grid[3], ny = (int64_t)grid[4];
  const double x0 = rect[0], y0 = rect[1], x1 = rect[2], y1 = rect[3];
  auto clampi = [](int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); };
  const int64_t cx0 = clampi((int64_t)std::floor((x0 - gx0) / cell), nx - 1);
  const int64_t cx1 = clampi((int64_t)std::floor((x1 - gx0) / cell), nx - 1);
  const int64_t cy0 = clampi((int64_t)std::floor((y0 - gy0) / cell), ny - 1);
  const int64_t cy1 = clampi((int64_t)std::floor((y1 - gy0) / cell), ny - 1);
  slots.clear();
  for (int64_t cy = cy0; cy <= cy1; ++cy) {
    for (int64_t cx = cx0; cx <= cx1; ++cx) {
      const int64_t c = cy * nx + cx;
      for (int64_t k = cell_start[c]; k < cell_start[c + 1]; ++k) {
        const int64_t s = cell_slots[k];
        const double x = slot_pos[2 * s], y = slot_pos[2 * s + 1];
        if (x >= x0 && x < x1 && y >= y0 && y < y1) slots.push_back(s);
      }
    }
  }
  std::sort(slots.begin(), slots.end());
  if ((int64_t)slots.size() > max_units) {
    const uint64_t key = window_key(seed, STREAM_SUBSAMPLE, (uint64_t)window);
    std::vector<std::pair<uint64_t, int64_t>> keyed(slots.size());
    for (size_t i = 0; i < slots.size(); ++i) keyed[i] = {draw(key, (uint64_t)slots[i]), slots[i]};
    std::nth_element(keyed.begin(), keyed.begin() + (max_units - 1), keyed.end());
    slots.resize(max_units);
    for (int64_t i = 0; i < max_units; ++i) slots[i] = keyed[i].second;
    std::sort(slots.begin(), slots.end());
  }
}

// Similarity matrix S (M x M, float64, symmetric, S_ii = 1) and the sums of the window objective (O(M^2)).
static ObjectiveSums similarity_and_sums(const float* C, int64_t m, const double* px, const double* py, bool exact,
                                         double* S) {
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  for (int64_t i = 0; i < m; ++i) {
    const float* ci = C + i * m;
    S[i * m + i] = 1.0;
    for (int64_t j = 0; j < i; ++j) {
      const double dx = px[i] - px[j], dy = py[i] - py[j];
      const double s = 1.0 / (std::sqrt(dx * dx + dy * dy) + 1.0);
      S[i * m + j] = s;
      S[j * m + i] = s;
      const double x = (double)ci[j];
      sx += x; sy += s; sxx += x * x; syy += s * s; sxy += x * s;
    }
  }
  ObjectiveSums o;
  if (exact) {
    o.n = (double)m * (double)(m - 1) / 2.0;
    o.sx = sx; o.sy = sy; o.sxx = sxx; o.syy = syy; o.sxy = sxy; o.factor = 1.0;
  } else {  // all entries: twice the lower triangle (C symmetric) plus the diagonal (S_ii = 1)
    double dx = 0, dxx = 0;
    for (int64_t i = 0; i < m; ++i) { const double c = (double)C[i * m + i]; dx += c; dxx += c * c; }
    o.n = (double)m * (double)m;
    o.sx = 2 * sx + dx; o.sy = 2 * sy + (double)m; o.sxx = 2 * sxx + dxx; o.syy = 2 * syy + (double)m;
    o.sxy = 2 * sxy + dx; o.factor = 2.0;
  }
  return o;
}

// gain = sum_{j not in {a,b}} (C_aj - C_bj)(S_bj - S_aj) in the reference's lane order (reference.lane_sum):
// term j goes to lane j % 8, lanes add left to right, then ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
// Only IEEE-exact element-wise operations: the clones for AVX2 and the default ISA give identical bits.
__attribute__((target_clones("avx2", "default")))
static double swap_gain(const float* ca, const float* cb, const double* sa, const double* sb, int64_t m, int64_t a,
                        int64_t b) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  // terms j = a and j = b are replaced by 0 (a select, so the loop vectorises; a signed zero cannot change a sum
  // that is not zero, so the result's value equals the reference's)
  for (; j + 8 <= m; j += 8) {
    for (int k = 0; k < 8; ++k) {
      const int64_t q = j + k;
      const double t = ((double)ca[q] - (double)cb[q]) * (sb[q] - sa[q]);
      acc[k] += (q == a || q == b) ? 0.0 : t;
    }
  }
  for (int k = 0; j + k < m; ++k) {
    const int64_t q = j + k;
    const double t = ((double)ca[q] - (double)cb[q]) * (sb[q] - sa[q]);
    acc[k] += (q == a || q == b) ? 0.0 : t;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

WindowResult optimize_window(const float* C, int64_t m, double* px, double* py, int64_t* perm, uint64_t seed,
                             int64_t window, int64_t trials, bool exact) {
  WindowResult res;
  std::vector<double> smat((size_t)m * (size_t)m);
  double* S = smat.data();
  ObjectiveSums sums = similarity_and_sums(C, m, px, py, exact, S);
  res.before = sums.value();
  const uint64_t key = window_key(seed, STREAM_TRIAL, (uint64_t)window);
  for (int64_t trial = 0; trial < trials && m >= 2; ++trial) {
    int64_t a, b;
    trial_pair(draw(key, (uint64_t)trial), m, &a, &b);
    const double gain = swap_gain(C + a * m, C + b * m, S + a * m, S + b * m, m, a, b);
    if (gain > 0.0) {
      // swapping the positions of a and b swaps rows a, b and columns a, b of S (exactly: S is symmetric)
      std::swap_ranges(S + a * m, S + a * m + m, S + b * m);
      for (int64_t i = 0; i < m; ++i) std::swap(S[i * m + a], S[i * m + b]);
      std::swap(px[a], px[b]);
      std::swap(py[a], py[b]);
      std::swap(perm[a], perm[b]);
      sums.sxy += sums.factor * gain;
      res.accepted += 1;
    }
  }
  res.after = sums.value();
  return res;
}

// C = clip(Z_w Z_w^T / (S - 1), -1, 1) in float32 through ATen/BLAS; zt is (N, S) (a unit per row). The same
// operations as reference.window_correlation, so both see the same bits.
at::Tensor window_correlation(const at::Tensor& zt, const at::Tensor& units) {
  at::Tensor zw = zt.index_select(0, units);
  at::Tensor c = at::mm(zw, zw.t()).div_((double)(zt.size(1) - 1)).clamp_(-1.0, 1.0);
  c = at::tril(c) + at::tril(c, -1).t();  // exactly symmetric (a GEMM need not be); the gain formula needs it
  return at::nan_to_num(c, 0.0).contiguous();
}

}  // namespace tdann_swap

using namespace tdann_swap;

static void check_cpu(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

std::tuple<at::Tensor, int64_t, double, double> swap_window_cpu(const at::Tensor& c, const at::Tensor& pos,
                                                                 uint64_t seed, int64_t window, int64_t trials,
                                                                 bool exact) {
  check_cpu(c, at::kFloat, 2, "c");
  check_cpu(pos, at::kDouble, 2, "pos");
  const int64_t m = c.size(0);
  TORCH_CHECK(c.size(1) == m && pos.size(0) == m && pos.size(1) == 2, "c must be (M, M) and pos (M, 2)");
  std::vector<double> px(m), py(m);
  const double* p = pos.data_ptr<double>();
  for (int64_t i = 0; i < m; ++i) { px[i] = p[2 * i]; py[i] = p[2 * i + 1]; }
  at::Tensor perm = at::arange(m, at::kLong);
  WindowResult r = optimize_window(c.data_ptr<float>(), m, px.data(), py.data(), perm.data_ptr<int64_t>(), seed,
                                   window, trials, exact);
  return {perm, r.accepted, r.before, r.after};
}

at::Tensor swap_round_cpu(const at::Tensor& z, const at::Tensor& slot_pos, const at::Tensor& cell_start,
                          const at::Tensor& cell_slots, const at::Tensor& grid, at::Tensor unit_at_slot,
                          const at::Tensor& rects, const at::Tensor& window_ids, const at::Tensor& trials,
                          uint64_t seed, int64_t max_units, bool exact, int64_t threads) {
  check_cpu(z, at::kFloat, 2, "z");
  check_cpu(slot_pos, at::kDouble, 2, "slot_pos");
  check_cpu(cell_start, at::kLong, 1, "cell_start");
  check_cpu(cell_slots, at::kLong, 1, "cell_slots");
  check_cpu(grid, at::kDouble, 1, "grid");
  check_cpu(unit_at_slot, at::kLong, 1, "unit_at_slot");
  check_cpu(rects, at::kDouble, 2, "rects");
  check_cpu(window_ids, at::kLong, 1, "window_ids");
  check_cpu(trials, at::kLong, 1, "trials");
  const int64_t n = slot_pos.size(0);
  TORCH_CHECK(z.size(0) == n && unit_at_slot.size(0) == n && cell_slots.size(0) == n, "unit count mismatch");
  const int64_t r = window_ids.size(0);
  at::Tensor out = at::empty({r, STAT_COLS}, at::kDouble);
  double* o = out.data_ptr<double>();
  const double* sp = slot_pos.data_ptr<double>();
  int64_t* uas = unit_at_slot.data_ptr<int64_t>();
  const int64_t* ids = window_ids.data_ptr<int64_t>();
  const int64_t* tr = trials.data_ptr<int64_t>();
  const double* rc = rects.data_ptr<double>();
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(threads, r));

#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
  for (int64_t i = 0; i < r; ++i) {
    const int64_t w = ids[i];
    std::vector<int64_t> slots;
    collect_window_slots(sp, cell_start.data_ptr<int64_t>(), cell_slots.data_ptr<int64_t>(), grid.data_ptr<double>(),
                         rc + 4 * w, seed, w, max_units, slots);
    const int64_t m = (int64_t)slots.size();
    double* row = o + i * STAT_COLS;
    if (m < MIN_UNITS) {
      row[0] = (double)m; row[1] = 0; row[2] = row[3] = std::numeric_limits<double>::quiet_NaN(); row[4] = 0;
      continue;
    }
    at::Tensor units = at::empty({m}, at::kLong);
    int64_t* u = units.data_ptr<int64_t>();
    std::vector<double> px(m), py(m);
    std::vector<int64_t> perm(m);
    for (int64_t k = 0; k < m; ++k) {
      u[k] = uas[slots[k]];
      px[k] = sp[2 * slots[k]];
      py[k] = sp[2 * slots[k] + 1];
      perm[k] = k;
    }
    at::Tensor c = window_correlation(z, units);
    WindowResult res = optimize_window(c.data_ptr<float>(), m, px.data(), py.data(), perm.data(), seed, w, tr[w],
                                       exact);
    for (int64_t k = 0; k < m; ++k) uas[slots[perm[k]]] = u[k];
    row[0] = (double)m; row[1] = (double)res.accepted; row[2] = res.before; row[3] = res.after;
    row[4] = (double)tr[w];
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> schedule_rounds(const at::Tensor& rects, int64_t round_size, int64_t lookahead) {
  check_cpu(rects, at::kDouble, 2, "rects");
  TORCH_CHECK(round_size >= 1 && lookahead >= 1, "round_size and lookahead must be >= 1");
  const int64_t k = rects.size(0);
  const double* rc = rects.data_ptr<double>();
  std::vector<int64_t> pending, ids, offsets{0}, taken, rest;
  ids.reserve(k);
  int64_t nxt = 0;
  while (nxt < k || !pending.empty()) {
    while ((int64_t)pending.size() < lookahead && nxt < k) pending.push_back(nxt++);
    taken.clear();
    rest.clear();
    size_t idx = 0;
    for (; idx < pending.size(); ++idx) {
      const int64_t w = pending[idx];
      const double* a = rc + 4 * w;
      bool ok = true;
      for (int64_t t : taken) {
        const double* b = rc + 4 * t;
        if (!(a[2] <= b[0] || b[2] <= a[0] || a[3] <= b[1] || b[3] <= a[1])) { ok = false; break; }
      }
      if (ok) {
        taken.push_back(w);
        if ((int64_t)taken.size() == round_size) { ++idx; break; }
      } else {
        rest.push_back(w);
      }
    }
    for (; idx < pending.size(); ++idx) rest.push_back(pending[idx]);
    ids.insert(ids.end(), taken.begin(), taken.end());
    offsets.push_back((int64_t)ids.size());
    pending.swap(rest);
  }
  at::Tensor tid = at::empty({(int64_t)ids.size()}, at::kLong);
  at::Tensor toff = at::empty({(int64_t)offsets.size()}, at::kLong);
  std::copy(ids.begin(), ids.end(), tid.data_ptr<int64_t>());
  std::copy(offsets.begin(), offsets.end(), toff.data_ptr<int64_t>());
  return {tid, toff};
}
