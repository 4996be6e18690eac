// Python bindings of tdann_fast._C (position swap optimisation).
#include <torch/extension.h>

#include "cpu/swap_cpu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tdann_fast C++/CUDA extension: position swap optimisation";
  m.def("swap_window_cpu", &swap_window_cpu, "Greedy swap trials on one window (C float32 (M,M), pos float64 (M,2))",
        py::arg("c"), py::arg("pos"), py::arg("seed"), py::arg("window"), py::arg("trials"), py::arg("exact"),
        py::call_guard<py::gil_scoped_release>());
  m.def("swap_round_cpu", &swap_round_cpu, "One round of disjoint windows on the CPU (OpenMP)",
        py::call_guard<py::gil_scoped_release>());
  m.def("window_correlation", &tdann_swap::window_correlation, "C of a window's units (float32 ATen BLAS; zt is (N, S))",
        py::arg("z"), py::arg("units"));
  m.def("schedule_rounds", &schedule_rounds, "Rounds of mutually disjoint windows", py::arg("rects"),
        py::arg("round_size"), py::arg("lookahead"));
#ifdef WITH_CUDA
  m.def("swap_round_cuda", &swap_round_cuda, "One round of disjoint windows on the GPU (a block per window)",
        py::call_guard<py::gil_scoped_release>());
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
