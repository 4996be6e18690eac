// Shared definitions of the position swap optimisation (see tdann_fast/swap/rng.py, windows.py, reference.py).
// The random numbers and the accept decision are defined so that this code reproduces the NumPy reference bit for
// bit: counter-based SplitMix64 streams, float64 gains summed left to right. Compile without FP contraction
// (-ffp-contract=off) so that no fused multiply-add changes a rounding.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define TDANN_HD __host__ __device__ __forceinline__
#else
#define TDANN_HD inline
#endif

namespace tdann_swap {

constexpr uint64_t G1 = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t G2 = 0xD1B54A32D192ED03ULL;
constexpr uint64_t M1 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t M2 = 0x94D049BB133111EBULL;
constexpr int STREAM_WINDOW = 0;
constexpr int STREAM_SUBSAMPLE = 1;
constexpr int STREAM_TRIAL = 2;
constexpr int64_t MIN_UNITS = 5;

TDANN_HD uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * M1;
  z = (z ^ (z >> 27)) * M2;
  return z ^ (z >> 31);
}

TDANN_HD uint64_t window_key(uint64_t seed, int stream, uint64_t window) {
  uint64_t base = mix(seed + G1 * (uint64_t)(stream + 1));
  return mix(base + G2 * (window + 1));
}

TDANN_HD uint64_t draw(uint64_t key, uint64_t counter) { return mix(key + G1 * (counter + 1)); }

// The pair (a, b), a != b, of a trial in a window of m >= 2 units.
TDANN_HD void trial_pair(uint64_t u, int64_t m, int64_t* a, int64_t* b) {
  uint64_t hi = u >> 32, lo = u & 0xFFFFFFFFULL;
  uint64_t aa = (hi * (uint64_t)m) >> 32;
  uint64_t bb = (lo * (uint64_t)(m - 1)) >> 32;
  if (bb >= aa) bb += 1;
  *a = (int64_t)aa;
  *b = (int64_t)bb;
}

// Objective of a window from maintained sums (float64). factor = 1 ("exact", lower-triangle pairs) or 2 ("tdann",
// all M*M entries): Sxy changes by factor * gain when a swap with that gain is accepted.
struct ObjectiveSums {
  double n = 0, sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0, factor = 1;
  TDANN_HD double value() const {
    double cxy = sxy - sx * sy / n;
    double cxx = sxx - sx * sx / n;
    double cyy = syy - sy * sy / n;
    double d = cxx * cyy;
    if (d < 1e-30) d = 1e-30;
    return (1.0 - cxy / sqrt(d)) / 2.0;
  }
};

// Per-window statistics row: [units, accepted, objective_before, objective_after, trials_done].
constexpr int STAT_COLS = 5;

// Slots of a window (defined in cpu/swap_cpu.cpp; also used by the CUDA host code): exact membership
// x0 <= x < x1, y0 <= y < y1 found through the slot grid, sorted by slot index, subsampled to max_units by
// counter-based keys.
void collect_window_slots(const double* slot_pos, const int64_t* cell_start, const int64_t* cell_slots,
                          const double* grid, const double* rect, uint64_t seed, int64_t window, int64_t max_units,
                          std::vector<int64_t>& slots);

}  // namespace tdann_swap
